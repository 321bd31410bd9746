"""Evaluation of a pretrained model: embeddings, zero-shot, retrieval, linear probe.

Protocols (the README repeats them):

- Label binarisation: a CheXpert label counts as positive only when it is 1.0; 0.0, -1.0
  (uncertain) and blank (NaN) count as negative. Used by the multi-label zero-shot AUROC
  and the linear probe alike.
- CheXpert-5x200 (zero-shot classification): test images positive (1.0) for exactly one of
  the five competition classes and not positive for the other four (0.0, -1.0 and blank
  are all accepted there), up to `per_class` each, drawn with a fixed seed.
- Retrieval: image i is paired with the report of image i. Images of one study share their
  report, so every gallery text with the same token sequence as the query's own report
  counts as a match. Ties count against the query, so a collapsed model that maps
  everything to one point scores zero, not a perfect recall.
- AUROC of a label whose test labels hold one class only is undefined: NaN in Python,
  `null` in metrics.json, and left out of the means.

The metric functions are pure NumPy/scikit-learn functions; the model-facing functions
only need `encode_image` / `encode_text` (docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medclip_nb.errors import DataError
from medclip_nb.files import write_json_atomic
from medclip_nb.intervals import mean_auroc_interval, mean_interval, statistic_interval
from medclip_nb.labels import CHEXPERT_LABELS, COMPETITION_TASKS, LABEL_INDEX, NUM_LABELS
from medclip_nb.progress import progress
from medclip_nb.prompts import class_prompts, label_prompt_pairs
from medclip_nb.runtime import amp_dtype, autocast, eval_mode, pick_device

DEFAULT_CS = (0.01, 0.1, 1.0, 10.0)
DEFAULT_C = 1.0  # used when no validation split can choose C for a label
ROUND_DIGITS = 4


# ---- small helpers ------------------------------------------------------------------------------
def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float32 if x.is_floating_point() else x.dtype).numpy()
    return np.asarray(x)


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (models already do this; cosine similarity needs it)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def binarize_labels(labels) -> np.ndarray:
    """CheXpert values -> 0/1: only 1.0 is positive; 0.0, -1.0 and NaN are negative."""
    return (np.asarray(labels, dtype=np.float64) == 1.0).astype(np.int64)


def json_ready(obj: Any, digits: int = ROUND_DIGITS) -> Any:
    """Plain JSON data: floats rounded, NaN/inf -> None, NumPy scalars/arrays -> Python."""
    if isinstance(obj, Mapping):
        return {str(k): json_ready(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v, digits) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist(), digits)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return round(float(obj), digits) if math.isfinite(obj) else None
    return obj


# ---- metrics --------------------------------------------------------------------------------------
def accuracy(y_true, y_pred) -> float:
    """Share of predictions equal to the truth."""
    return float(accuracy_score(np.asarray(y_true), np.asarray(y_pred)))


def macro_f1(y_true, y_pred, n_classes: int | None = None) -> float:
    """Unweighted mean of the per-class F1 scores. With `n_classes`, over classes 0..n-1
    (a class never predicted nor present scores 0); without, over the classes that occur."""
    labels = None if n_classes is None else list(range(n_classes))
    return float(f1_score(np.asarray(y_true), np.asarray(y_pred), labels=labels, average="macro", zero_division=0))


def confusion(y_true, y_pred, n: int) -> np.ndarray:
    """[n, n] counts: row = true class, column = predicted class."""
    return confusion_matrix(np.asarray(y_true), np.asarray(y_pred), labels=list(range(n)))


def auroc_per_label(y_true_binary, scores, names: Sequence[str]) -> dict[str, float]:
    """ROC AUC of each column; NaN for a column whose truth holds a single class."""
    y_true = np.asarray(y_true_binary)
    scores = np.asarray(scores, dtype=np.float64)
    if y_true.ndim != 2 or y_true.shape != scores.shape or y_true.shape[1] != len(names):
        raise ValueError(
            f"auroc_per_label: truth {y_true.shape}, scores {scores.shape} and {len(names)} names do not match"
        )
    result = {}
    for j, name in enumerate(names):
        column = y_true[:, j]
        result[name] = float(roc_auc_score(column, scores[:, j])) if np.unique(column).size == 2 else math.nan
    return result


def mean_defined(values: Iterable[float]) -> float:
    """Mean of the finite values (labels with an undefined AUROC left out); NaN if none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _match_ranks(similarity: np.ndarray, query_ids: np.ndarray, gallery_ids: np.ndarray) -> np.ndarray:
    """Per query row: how many non-matching gallery items score at least as high as its best
    match (0 = the match is first). A query with no match in the gallery gets +inf."""
    is_match = query_ids[:, None] == gallery_ids[None, :]
    best_match = np.where(is_match, similarity, -np.inf).max(axis=1)
    ranks = ((similarity >= best_match[:, None]) & ~is_match).sum(axis=1).astype(np.float64)
    ranks[~is_match.any(axis=1)] = np.inf
    return ranks


def _recall_from_ranks(ranks: np.ndarray, ks: Sequence[int]) -> dict[int, float]:
    return {int(k): float(np.mean(ranks < k)) if len(ranks) else math.nan for k in ks}


def recall_at_k(similarity, ks: Sequence[int] = (1, 5, 10), query_ids=None, gallery_ids=None) -> dict[int, float]:
    """Recall@K of a [Q, G] similarity matrix (rows are queries).

    Query i matches gallery item i, or, given ids, every gallery item with the same id
    (several images of a study share one report). A hit at K: fewer than K non-matching
    items score at least as high as the best match (ties count against the query).
    """
    sim = _numpy(similarity).astype(np.float64)
    q_ids = np.arange(sim.shape[0]) if query_ids is None else np.asarray(query_ids)
    g_ids = np.arange(sim.shape[1]) if gallery_ids is None else np.asarray(gallery_ids)
    return _recall_from_ranks(_match_ranks(sim, q_ids, g_ids), ks)


def precision_at_k(similarity, query_classes, gallery_classes, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """MedCLIP's Precision@K: share of the top-K gallery items whose class equals the query's,
    averaged over queries. Queries with a negative class id (no class) are left out; the
    top K are taken in a stable order (on ties, the lower gallery index first)."""
    sim = _numpy(similarity).astype(np.float64)
    q_cls, g_cls = np.asarray(query_classes), np.asarray(gallery_classes)
    keep = q_cls >= 0
    if not keep.any():
        return {int(k): math.nan for k in ks}
    order = np.argsort(-sim[keep], axis=1, kind="stable")[:, : max(ks)]
    hits = g_cls[order] == q_cls[keep][:, None]
    return {int(k): float(hits[:, :k].mean()) for k in ks}


def retrieval_metrics(
    image_emb,
    text_emb,
    ks: Sequence[int] = (1, 5, 10),
    chunk: int = 1024,
    class_ids=None,
    pair_ids=None,
) -> dict[str, Any]:
    """Image->text and text->image Recall@K (pairs i <-> i, or same `pair_ids`), and with
    `class_ids` the image->text Precision@K of MedCLIP (a hit is a text of the same class).

    Similarities are computed `chunk` query rows at a time, so memory grows as chunk x N,
    never N x N. Returns {"n", "image_to_text": {"R@1": ..}, "text_to_image": {..}} plus
    "image_to_text_precision": {"P@1": ..} when class ids are given.
    """
    images, texts = _l2_normalise(_numpy(image_emb)), _l2_normalise(_numpy(text_emb))
    if images.shape != texts.shape:
        raise ValueError(f"retrieval_metrics: image {images.shape} and text {texts.shape} embeddings differ in shape")
    n = len(images)
    for what, values in (("class_ids", class_ids), ("pair_ids", pair_ids)):
        if values is not None and len(values) != n:
            raise ValueError(f"retrieval_metrics: {what} has {len(values)} entries for {n} pairs")
    ids = np.arange(n) if pair_ids is None else np.asarray(pair_ids)
    classes = None if class_ids is None else np.asarray(class_ids)
    i2t_ranks, t2i_ranks = [], []
    # Precision@K summed over queries chunk by chunk, so the chunk size does not change the mean.
    precision_sums, n_queries = {k: 0.0 for k in ks}, 0
    for start in range(0, n, chunk):
        rows = slice(start, min(start + chunk, n))
        sim = images[rows] @ texts.T
        i2t_ranks.append(_match_ranks(sim, ids[rows], ids))
        if classes is not None:
            m = int((classes[rows] >= 0).sum())
            if m:
                for k, v in precision_at_k(sim, classes[rows], classes, ks).items():
                    precision_sums[k] += v * m
                n_queries += m
        del sim
        t2i_ranks.append(_match_ranks(texts[rows] @ images.T, ids[rows], ids))
    i2t = np.concatenate(i2t_ranks) if i2t_ranks else np.zeros(0)
    t2i = np.concatenate(t2i_ranks) if t2i_ranks else np.zeros(0)
    result: dict[str, Any] = {
        "n": n,
        "image_to_text": {f"R@{k}": v for k, v in _recall_from_ranks(i2t, ks).items()},
        "text_to_image": {f"R@{k}": v for k, v in _recall_from_ranks(t2i, ks).items()},
        # 95 % bootstrap intervals over the queries (the gallery stays the whole set).
        "image_to_text_ci": {f"R@{k}": mean_interval(i2t < k) for k in ks},
        "text_to_image_ci": {f"R@{k}": mean_interval(t2i < k) for k in ks},
    }
    if classes is not None:
        result["image_to_text_precision"] = {
            f"P@{k}": (precision_sums[k] / n_queries if n_queries else math.nan) for k in ks
        }
    return result


# ---- CheXpert-5x200 ---------------------------------------------------------------------------------
def select_5x200(labels, per_class: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rows of a [N, 14] label matrix for CheXpert-5x200 and their class (0..4, the order of
    COMPETITION_TASKS).

    A row qualifies for a class when it is 1.0 for that class and not 1.0 for the other four
    competition classes (0.0, -1.0 and blank accepted). Up to `per_class` rows per class are
    sampled without replacement by a generator seeded with (seed, class), so each class's
    draw does not depend on the others. Returned sorted by row.
    """
    labels = np.asarray(labels, dtype=np.float64).reshape(-1, NUM_LABELS)
    competition = labels[:, [LABEL_INDEX[t] for t in COMPETITION_TASKS]] == 1.0
    exactly_one = competition.sum(axis=1) == 1
    rows, classes = [], []
    for c in range(len(COMPETITION_TASKS)):
        candidates = np.flatnonzero(exactly_one & competition[:, c])
        if len(candidates) > per_class:
            rng = np.random.default_rng([seed, c])
            candidates = np.sort(rng.choice(candidates, size=per_class, replace=False))
        rows.append(candidates)
        classes.append(np.full(len(candidates), c, dtype=np.int64))
    rows_all, classes_all = np.concatenate(rows), np.concatenate(classes)
    order = np.argsort(rows_all, kind="stable")
    return rows_all[order].astype(np.int64), classes_all[order]


def build_5x200(records: Sequence[Mapping], per_class: int = 200, seed: int = 0) -> list[tuple[int, int]]:
    """CheXpert-5x200 from dataset records (the test split): sorted (record index, class
    index) pairs, class index in the order of COMPETITION_TASKS; rule in `select_5x200`."""
    matrix = np.full((len(records), NUM_LABELS), np.nan)
    for i, record in enumerate(records):
        values = record.get("labels") if isinstance(record, Mapping) else None
        if values is None or len(values) != NUM_LABELS:
            got = "missing" if values is None else f"{len(values)} values"
            raise DataError(f"record {i}: 'labels' must hold {NUM_LABELS} values, got {got}")
        matrix[i] = np.asarray(values, dtype=np.float64)  # None (JSON null) becomes NaN
    rows, classes = select_5x200(matrix, per_class, seed)
    return [(int(r), int(c)) for r, c in zip(rows, classes)]


# ---- zero-shot ------------------------------------------------------------------------------------
def zero_shot_classify(image_emb, class_text_embs: Sequence, mode: str = "mean") -> np.ndarray:
    """Class scores [N, C] from image embeddings and each class's prompt embeddings [P_c, D].

    mean: cosine similarity to the normalised mean of the class's prompt embeddings (the
    prompt ensemble); max: the highest similarity over the class's prompts.
    """
    if mode not in ("mean", "max"):
        raise ValueError(f"zero_shot_classify: mode must be 'mean' or 'max', got {mode!r}")
    images = _l2_normalise(_numpy(image_emb))
    columns = []
    for prompts in class_text_embs:
        prompts = _l2_normalise(_numpy(prompts).reshape(-1, images.shape[1]))
        if mode == "mean":
            columns.append(images @ _l2_normalise(prompts.mean(axis=0)))
        else:
            columns.append((images @ prompts.T).max(axis=1))
    return np.stack(columns, axis=1)


def zero_shot_multilabel(image_emb, pos_emb, neg_emb, scale: float) -> np.ndarray:
    """Probability of each label [N, L]: softmax over the label's (positive, negative) prompt
    pair of scale x cosine similarity; the probability of the positive prompt is returned."""
    images = _l2_normalise(_numpy(image_emb))
    pos, neg = _l2_normalise(_numpy(pos_emb)), _l2_normalise(_numpy(neg_emb))
    if pos.shape != neg.shape:
        raise ValueError(f"zero_shot_multilabel: positive {pos.shape} and negative {neg.shape} prompts differ")
    logits = torch.from_numpy(np.stack([images @ pos.T, images @ neg.T], axis=-1) * float(scale))
    return logits.softmax(dim=-1)[..., 0].numpy()


def multilabel_auroc(probabilities, labels, names: Sequence[str] = CHEXPERT_LABELS) -> dict[str, Any]:
    """AUROC per label (truth binarised: 1.0 positive, the rest negative) and their mean over
    the labels with both classes present, also over the five competition labels."""
    truth = binarize_labels(labels)
    per_label = auroc_per_label(truth, probabilities, names)
    defined = [j for j, name in enumerate(names) if math.isfinite(per_label[name])]
    return {
        "auroc": per_label,
        "auroc_mean": mean_defined(per_label.values()),
        "auroc_mean_ci": mean_auroc_interval(truth[:, defined], np.asarray(probabilities)[:, defined])
        if defined else None,
        "auroc_mean_competition": mean_defined(per_label[t] for t in COMPETITION_TASKS if t in per_label),
    }


# ---- linear probe ------------------------------------------------------------------------------------
def linear_probe(
    train_emb,
    train_labels,
    test_emb,
    test_labels,
    val_emb=None,
    val_labels=None,
    Cs: Sequence[float] = DEFAULT_CS,
    seed: int = 0,
    names: Sequence[str] = CHEXPERT_LABELS,
) -> dict[str, Any]:
    """One logistic regression per label on frozen image embeddings.

    Labels are binarised (1.0 positive; 0.0, -1.0 and blank negative). Features are
    standardised on the training split. For each label, C is the grid value with the best
    validation AUROC (DEFAULT_C when there is no validation split or it holds one class);
    the model fitted on train with that C is scored on test. A label with one class in
    train or test gets AUROC None. Returns {"auroc": {name: v}, "auroc_mean", "C": {name: C},
    "n_train", "n_val", "n_test"}.
    """
    x_train, x_test = _numpy(train_emb).astype(np.float64), _numpy(test_emb).astype(np.float64)
    y_train, y_test = binarize_labels(train_labels), binarize_labels(test_labels)
    has_val = val_emb is not None and val_labels is not None and len(val_emb) > 0
    x_val = _numpy(val_emb).astype(np.float64) if has_val else None
    y_val = binarize_labels(val_labels) if has_val else None

    def fit(C: float, y: np.ndarray):
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed))
        return model.fit(x_train, y)

    auroc: dict[str, float] = {}
    chosen: dict[str, float | None] = {}
    test_scores: dict[int, np.ndarray] = {}  # label column -> probe scores on test, for the interval
    for j, name in enumerate(names):
        if np.unique(y_train[:, j]).size < 2 or np.unique(y_test[:, j]).size < 2:
            auroc[name], chosen[name] = math.nan, None
            continue
        if has_val and np.unique(y_val[:, j]).size == 2:
            fits = {C: fit(C, y_train[:, j]) for C in Cs}
            val_scores = {C: roc_auc_score(y_val[:, j], m.predict_proba(x_val)[:, 1]) for C, m in fits.items()}
            best_C = max(Cs, key=lambda C: (val_scores[C], -C))  # ties: the stronger regularisation
            model = fits[best_C]
        else:
            best_C = DEFAULT_C
            model = fit(best_C, y_train[:, j])
        test_scores[j] = model.predict_proba(x_test)[:, 1]
        auroc[name] = float(roc_auc_score(y_test[:, j], test_scores[j]))
        chosen[name] = float(best_C)
    columns = sorted(test_scores)
    return {
        "auroc": auroc,
        "auroc_mean": mean_defined(auroc.values()),
        "auroc_mean_ci": mean_auroc_interval(y_test[:, columns], np.stack([test_scores[j] for j in columns], axis=1),
                                             seed=seed) if columns else None,
        "C": chosen,
        "n_train": len(x_train),
        "n_val": len(x_val) if has_val else 0,
        "n_test": len(x_test),
    }


def linear_probe_fractions(train_emb, train_labels, fractions: Sequence[float], *, full: Mapping | None = None,
                           seed: int = 0, **probe_args) -> dict[str, dict[str, Any]]:
    """The linear probe fitted on a seeded random fraction of the training images (1 %, 10 %,
    100 % in this literature's low-label protocol): {"0.01": {"fraction", "n_train",
    "auroc_mean", "auroc_mean_ci"}, ...}. `full`, the probe on all labels, is reused for 1.0.
    Validation (for C) and test stay whole."""
    n = len(train_emb)
    out: dict[str, dict[str, Any]] = {}
    for i, fraction in enumerate(sorted(float(f) for f in fractions)):
        if fraction >= 1.0 and full is not None:
            result = full
        else:
            size = min(n, max(2, math.ceil(fraction * n)))
            rows = np.sort(np.random.default_rng([seed, i, size]).choice(n, size=size, replace=False))
            result = linear_probe(_numpy(train_emb)[rows], _numpy(train_labels)[rows], seed=seed, **probe_args)
        out[f"{fraction:g}"] = {"fraction": fraction, "n_train": result["n_train"],
                                "auroc_mean": result["auroc_mean"], "auroc_mean_ci": result.get("auroc_mean_ci")}
    return out


# ---- model-facing ------------------------------------------------------------------------------------
def _token_key(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> bytes:
    """Digest of a row's real tokens: equal digests = identical text input."""
    tokens = input_ids[attention_mask.bool()].to(torch.int64).numpy()
    return hashlib.blake2b(tokens.tobytes(), digest_size=16).digest()


def compute_embeddings(
    model: torch.nn.Module,
    loader: Iterable[Mapping[str, Any]],
    device: torch.device | str,
    *,
    with_text: bool = True,
    amp: bool = True,
    progress_desc: str | None = "embedding",
) -> dict[str, Any]:
    """Embeddings of every sample a loader yields (batches as in docs/architecture.md).

    Runs in eval mode without gradients (the model's mode is restored afterwards); autocast
    only on CUDA. Returns NumPy arrays: image [N, D], text [N, D] (None without text),
    labels [N, 14], index [N] (dataset index of each row), text_group [N] (rows with the
    same id had identical text tokens, i.e. the same report), n_skipped (unreadable
    images the loader dropped) and skipped_paths (their files). `progress_desc`: the label of a
    progress bar over the batches (None: no bar; TQDM_DISABLE turns every bar off).
    """
    device = torch.device(device)
    images, texts, labels, index, text_keys = [], [], [], [], []
    n_skipped, skipped_paths = 0, []
    with eval_mode(model), autocast(amp_dtype(device, amp)):
        for batch in progress(loader, desc=progress_desc or "", disable=progress_desc is None, unit="batch", leave=False):
            n_skipped += int(batch.get("n_skipped", 0))
            skipped_paths.extend(batch.get("skipped_paths", []))
            if len(batch["index"]) == 0:
                continue
            pixels = batch["pixel_values"]
            if pixels.dtype == torch.uint8:
                raise ValueError(
                    "compute_embeddings: got uint8 pixel_values; evaluation needs the normalised "
                    "float images of the eval transforms (build the loader without raw_uint8)"
                )
            images.append(model.encode_image(pixels.to(device, non_blocking=True)).float().cpu())
            if with_text:
                ids, mask = batch["input_ids"], batch["attention_mask"]
                texts.append(model.encode_text(ids.to(device), mask.to(device)).float().cpu())
                text_keys.extend(_token_key(i, m) for i, m in zip(ids.cpu(), mask.cpu()))
            labels.append(torch.as_tensor(batch["labels"], dtype=torch.float32).cpu())
            index.append(torch.as_tensor(batch["index"], dtype=torch.int64).cpu())
    if not images:
        raise DataError("compute_embeddings: the loader yielded no readable samples")
    group_of: dict[bytes, int] = {}
    return {
        "image": torch.cat(images).numpy(),
        "text": torch.cat(texts).numpy() if with_text else None,
        "labels": torch.cat(labels).numpy(),
        "index": torch.cat(index).numpy(),
        "text_group": np.array([group_of.setdefault(k, len(group_of)) for k in text_keys], dtype=np.int64)
        if with_text else None,
        "n_skipped": n_skipped,
        "skipped_paths": skipped_paths,
    }


def encode_texts(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    device: torch.device | str,
    batch_size: int = 64,
    *,
    amp: bool = True,
) -> np.ndarray:
    """Text embeddings [T, D] of a list of strings (prompts), tokenised by `tokenizer`."""
    device = torch.device(device)
    out = []
    with eval_mode(model), autocast(amp_dtype(device, amp)):
        for start in range(0, len(texts), batch_size):
            encoded = tokenizer.encode(list(texts[start : start + batch_size]))
            emb = model.encode_text(encoded["input_ids"].to(device), encoded["attention_mask"].to(device))
            out.append(emb.float().cpu())
    if not out:
        raise ValueError("encode_texts: no texts given")
    return torch.cat(out).numpy()


def model_logit_scale(model: torch.nn.Module) -> float:
    """The similarity multiplier: the model's `logit_multiplier()` when it has one, else exp
    of its learnable log scale `logit_scale` clamped to [0, ln 100] (docs/architecture.md)."""
    with torch.no_grad():
        if callable(getattr(model, "logit_multiplier", None)):
            return float(model.logit_multiplier())
        log_scale = getattr(model, "logit_scale", None)
        if log_scale is None:
            raise AttributeError(f"{type(model).__name__} has no 'logit_scale' (see docs/architecture.md, Models)")
        return float(torch.as_tensor(log_scale).float().clamp(0, math.log(100)).exp())


# ---- the whole evaluation ---------------------------------------------------------------------------
@dataclass
class EvaluationArrays:
    """The raw arrays behind the metrics, for notebook figures (not written to JSON)."""

    embeddings: dict[str, dict[str, Any]] = field(default_factory=dict)  # split -> compute_embeddings output
    five_x_200_rows: np.ndarray | None = None  # rows of the test embeddings
    five_x_200_classes: np.ndarray | None = None  # class index per row (COMPETITION_TASKS order)
    zero_shot_scores: dict[str, np.ndarray] = field(default_factory=dict)  # mode -> [n, 5]
    multilabel_probabilities: np.ndarray | None = None  # [N_test, 14]
    prompts: dict[str, list[str]] = field(default_factory=dict)
    class_names: tuple[str, ...] = COMPETITION_TASKS


def _loader_for(dataset_or_batches, cfg, tokenizer):
    """A DataLoader for a Dataset (eval settings); an iterable of batches is used as it is."""
    if isinstance(dataset_or_batches, torch.utils.data.Dataset):
        from medclip_nb.data import make_collate, make_loader

        return make_loader(dataset_or_batches, cfg, train=False, batch_size=cfg.eval_batch_size,
                           collate_fn=make_collate(tokenizer))
    return dataset_or_batches


def _zero_shot_5x200(model, tokenizer, image_emb, rows, classes, batch_size, device, amp, arrays, seed=0) -> dict:
    """CheXpert-5x200: prompt-ensemble classification of the selected rows into the five
    competition classes, in both ensemble modes."""
    prompts = class_prompts(COMPETITION_TASKS)
    arrays.prompts = prompts
    class_embs = [encode_texts(model, tokenizer, prompts[t], device, batch_size, amp=amp) for t in COMPETITION_TASKS]
    result: dict[str, Any] = {
        "classes": list(COMPETITION_TASKS),
        "n": len(rows),
        "n_per_class": {t: int((classes == c).sum()) for c, t in enumerate(COMPETITION_TASKS)},
        "prompts_per_class": {t: len(prompts[t]) for t in COMPETITION_TASKS},
    }
    for mode in ("mean", "max"):
        if len(rows) == 0:
            result[mode] = {"accuracy": None, "macro_f1": None, "confusion": None}
            continue
        scores = zero_shot_classify(image_emb[rows], class_embs, mode)
        arrays.zero_shot_scores[mode] = scores
        predicted = scores.argmax(axis=1)
        n_classes = len(COMPETITION_TASKS)
        result[mode] = {
            "accuracy": accuracy(classes, predicted),
            "accuracy_ci": mean_interval(predicted == classes, seed=seed),
            "macro_f1": macro_f1(classes, predicted),
            "macro_f1_ci": statistic_interval(lambda r: macro_f1(classes[r], predicted[r], n_classes),
                                              len(classes), seed=seed),
            "confusion": confusion(classes, predicted, n_classes).tolist(),
        }
    return result


def _zero_shot_protocols(model, tokenizer, test_split, test_image, rows, classes, cfg, device, amp, arrays,
                         seed, log) -> dict[str, Any]:
    """The CheXpert-5x200 entries `cfg.zeroshot_protocol` asks for, each with its "protocol":
    ours and/or MedCLIP's (zeroshot_paper.py). The one protocol asked for is `zero_shot_5x200`;
    with 'both', ours is `zero_shot_5x200` and the paper's `zero_shot_5x200_paper`."""
    from medclip_nb.zeroshot_paper import zero_shot_5x200_paper

    protocol = getattr(cfg, "zeroshot_protocol", "ours")
    entries: dict[str, Any] = {}
    if protocol in ("ours", "both"):
        ours = _zero_shot_5x200(model, tokenizer, test_image, rows, classes, cfg.eval_batch_size, device, amp, arrays,
                                 seed)
        entries["zero_shot_5x200"] = {"protocol": "ours", **ours}
    if protocol in ("paper", "both"):
        paper = zero_shot_5x200_paper(model, tokenizer, test_split, cfg, device, seed=seed, log=log)
        entries["zero_shot_5x200" if protocol == "paper" else "zero_shot_5x200_paper"] = paper
    return entries


def evaluate_model(
    model: torch.nn.Module,
    tokenizer,
    splits: Mapping[str, Any],
    cfg,
    device: torch.device | str,
    *,
    seed: int = 0,
    log=print,
) -> tuple[dict[str, Any], EvaluationArrays]:
    """Zero-shot (CheXpert-5x200 and per-label), retrieval and linear probe of one model.

    `splits` maps "train"/"val"/"test" to datasets (loaded with the eval transforms) or to
    iterables of batches. "test" is required; the linear probe needs "train" too (and uses
    "val" to choose C). `seed` draws the 5x200 subset: keep it fixed to compare checkpoints
    on the same images. Returns (metrics, arrays): metrics is plain JSON data with floats
    rounded to 4 decimals; arrays holds the embeddings and scores for figures.
    """
    if "test" not in splits:
        raise DataError("evaluate_model: no 'test' split to evaluate on")
    device = torch.device(device)
    amp = bool(getattr(cfg, "use_amp", True))
    arrays = EvaluationArrays()

    log("Embedding the test split...")
    test = compute_embeddings(model, _loader_for(splits["test"], cfg, tokenizer), device, amp=amp)
    arrays.embeddings["test"] = test
    metrics: dict[str, Any] = {"n": {"test": len(test["index"])}, "skipped_images": {"test": test["n_skipped"]}}

    rows, classes = select_5x200(test["labels"], cfg.zeroshot_per_class, seed)
    arrays.five_x_200_rows, arrays.five_x_200_classes = rows, classes
    metrics["n"]["test_5x200"] = len(rows)
    if getattr(cfg, "text_encoder", None) == "precomputed":
        # Its "text" input is a row index into stored report features: prompts cannot be encoded.
        reason = "text_encoder 'precomputed' cannot encode prompts"
        metrics["zero_shot_5x200"] = {"skipped": reason, "protocol": getattr(cfg, "zeroshot_protocol", "ours")}
        metrics["zero_shot_multilabel"] = {"skipped": reason}
    else:
        metrics.update(_zero_shot_protocols(model, tokenizer, splits["test"], test["image"], rows, classes,
                                            cfg, device, amp, arrays, seed, log))
        # Per-label zero-shot: softmax over a positive/negative prompt pair per CheXpert label.
        positive, negative = label_prompt_pairs(CHEXPERT_LABELS)
        pos_emb = encode_texts(model, tokenizer, positive, device, cfg.eval_batch_size, amp=amp)
        neg_emb = encode_texts(model, tokenizer, negative, device, cfg.eval_batch_size, amp=amp)
        probabilities = zero_shot_multilabel(test["image"], pos_emb, neg_emb, model_logit_scale(model))
        arrays.multilabel_probabilities = probabilities
        metrics["zero_shot_multilabel"] = multilabel_auroc(probabilities, test["labels"], CHEXPERT_LABELS)

    # Retrieval: whole test split (Recall@K); the 5x200 subset adds MedCLIP's Precision@K.
    metrics["retrieval"] = {"test": retrieval_metrics(test["image"], test["text"], pair_ids=test["text_group"])}
    if len(rows):
        metrics["retrieval"]["test_5x200"] = retrieval_metrics(
            test["image"][rows], test["text"][rows], class_ids=classes, pair_ids=test["text_group"][rows]
        )

    # Linear probe: fit on train, choose C on val, report on test.
    if splits.get("train") is not None:
        probe_embs = {}
        for name in ("train", "val"):
            if splits.get(name) is None:
                continue
            log(f"Embedding the {name} split for the linear probe...")
            probe_embs[name] = compute_embeddings(
                model, _loader_for(splits[name], cfg, tokenizer), device, with_text=False, amp=amp
            )
            arrays.embeddings[name] = probe_embs[name]
            metrics["n"][name] = len(probe_embs[name]["index"])
            metrics["skipped_images"][name] = probe_embs[name]["n_skipped"]
        val = probe_embs.get("val")
        probe_args = dict(test_emb=test["image"], test_labels=test["labels"], seed=seed,
                          val_emb=None if val is None else val["image"],
                          val_labels=None if val is None else val["labels"])
        metrics["linear_probe"] = linear_probe(probe_embs["train"]["image"], probe_embs["train"]["labels"],
                                               **probe_args)
        metrics["linear_probe_fractions"] = linear_probe_fractions(
            probe_embs["train"]["image"], probe_embs["train"]["labels"],
            getattr(cfg, "probe_label_fractions", [1.0]), full=metrics["linear_probe"], **probe_args)
    else:
        metrics["linear_probe"] = metrics["linear_probe_fractions"] = None
    return json_ready(metrics), arrays


# ---- reports ---------------------------------------------------------------------------------------
def confusion_figure(confusions: Mapping[str, Any], class_names: Sequence[str] = COMPETITION_TASKS):
    """A matplotlib Figure with one confusion matrix per zero-shot mode. Built on the Agg
    canvas directly, so it never changes the notebook's pyplot backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    modes = [m for m, cm in confusions.items() if cm is not None]
    fig = Figure(figsize=(5.2 * max(len(modes), 1), 4.6))
    FigureCanvasAgg(fig)
    for i, mode in enumerate(modes):
        ax = fig.add_subplot(1, len(modes), i + 1)
        display = ConfusionMatrixDisplay(np.asarray(confusions[mode]), display_labels=list(class_names))
        display.plot(ax=ax, colorbar=False, xticks_rotation=30, values_format="d")
        ax.set_title(f"zero-shot 5x200 ({mode} over prompts)")
    fig.tight_layout()
    return fig


def summary_lines(metrics: Mapping[str, Any]) -> list[str]:
    """A short human-readable table of the headline numbers."""

    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    rows: list[tuple[str, Any]] = []
    for key in ("zero_shot_5x200", "zero_shot_5x200_paper"):
        zs = metrics.get(key)
        if zs is None or "skipped" in zs:
            continue
        tag = "" if zs.get("protocol", "ours") == "ours" else f"{zs['protocol']}, "
        for mode in ("mean", "max"):
            draws = zs[mode].get("accuracy_draws")
            rows.append((f"5x200 zero-shot accuracy ({tag}{mode}, n={zs['n']})", zs[mode]["accuracy"]))
            if draws:
                rows.append((f"  its std over {len(draws)} prompt draws", zs[mode]["accuracy_std"]))
            rows.append((f"5x200 zero-shot macro-F1 ({tag}{mode})", zs[mode]["macro_f1"]))
    multilabel = metrics["zero_shot_multilabel"]
    if "skipped" not in multilabel:
        rows.append(("per-label zero-shot AUROC (mean)", multilabel["auroc_mean"]))
        rows.append(("per-label zero-shot AUROC (5 competition)", multilabel["auroc_mean_competition"]))
    test_retrieval = metrics["retrieval"]["test"]
    for direction in ("image_to_text", "text_to_image"):
        for k, v in test_retrieval[direction].items():
            rows.append((f"retrieval {direction} {k} (n={test_retrieval['n']})", v))
    probe = metrics.get("linear_probe")
    rows.append(("linear probe AUROC (mean)", probe["auroc_mean"] if probe else None))
    width = max([46] + [len(label) for label, _ in rows])
    lines = [f"{'metric':{width}s} value", "-" * (width + 8)]
    lines += [f"{label:{width}s} {fmt(value)}" for label, value in rows]
    return lines


def read_metrics(path: str | Path) -> dict[str, Any]:
    """The JSON object in `path` ({} when there is no file); a DataError when it cannot be used."""
    path = Path(path)
    if not path.exists():
        return {}
    if not path.is_file():
        raise DataError(f"{path}: is not a file; move it away, metrics.json is written there")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}); fix or move it, it was left unchanged") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise DataError(f"{path}: cannot be read ({type(e).__name__}); fix or move it, it was left unchanged") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: must hold a JSON object, got {type(data).__name__}; it was left unchanged")
    return data


def merge_metrics(path: str | Path, key: str, entry: Any) -> Path:
    """Put `entry` under `key` in the JSON file at `path`, keeping every other key."""
    path = Path(path)
    data = read_metrics(path)
    data[key] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, data, sort_keys=True, what="metrics file", error=DataError)
    return path


def checkpoint_name(checkpoint: str | Path) -> str:
    """Key of a checkpoint in metrics.json: '<run folder>/<file stem>', e.g. 'run1/best'."""
    p = Path(checkpoint)
    return f"{p.parent.name}/{p.stem}" if p.parent.name else p.stem


def eval_datasets(cfg, tokenizer) -> tuple[dict[str, Any], list[str]]:
    """Every split of `cfg.data_path` as evaluation sees it: eval transform (no random
    augmentation) and whole reports, images from the config's image store when it has one.

    `data.build_datasets` gives the train split the training augmentation; the linear probe
    needs the plain training images, so that split is rebuilt here with the eval transform.
    Returns (datasets, dataset warnings).
    """
    from medclip_nb.data import build_datasets, build_transforms, CXRDataset
    from medclip_nb.data.store import find_store

    store = find_store(cfg)
    splits, _records, warnings = build_datasets(cfg, tokenizer, store=store)
    splits = dict(splits)
    train = splits.get("train")
    if train is not None:
        splits["train"] = CXRDataset(
            train.records, root=train.root, transform=build_transforms(cfg, train=False),
            on_bad_image=cfg.on_bad_image, report_sampling="full", store=store, resize_size=cfg.resize_size,
        )
    return splits, warnings


def evaluate_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path = "reports",
    overrides: Mapping[str, Any] | None = None,
    *,
    name: str | None = None,
    log=print,
) -> dict[str, Any]:
    """Evaluate a saved checkpoint and record the result.

    The checkpoint's config is used with `overrides` applied (data_path, image_root,
    eval_batch_size, gpu_id, ...). Writes `out_dir/metrics.json` (merged under the key
    `name`, default '<run folder>/<file stem>') and
    `out_dir/figures/zeroshot_confusion_<name>.png`, prints a short table, and returns the
    metrics entry. The 5x200 subset is drawn with seed 0 unless `overrides` sets `seed`.
    """
    from medclip_nb.checkpoint import load_model
    from medclip_nb.data import check_clip_index_rows, uses_precomputed_text
    from medclip_nb.paths import resolve


    overrides = dict(overrides or {})
    checkpoint = resolve(checkpoint)
    out = resolve(out_dir)
    read_metrics(out / "metrics.json")  # an unusable metrics.json fails now, not after the evaluation
    model, tokenizer, cfg = load_model(checkpoint, "cpu")
    if overrides:
        cfg = cfg.replace(**overrides)
    device = pick_device(cfg.gpu_id, log=log)  # the same checked choice as train
    model.to(device)
    log(f"Evaluating {checkpoint} on {device}")

    splits, warnings = eval_datasets(cfg, tokenizer)
    for warning in warnings:
        log(f"warning: {warning}")
    if uses_precomputed_text(cfg):  # clip indices must pick rows of the features file the model read
        check_clip_index_rows(splits, model.text_encoder, resolve(cfg.data_path))
    metrics, _arrays = evaluate_model(model, tokenizer, splits, cfg, device, seed=int(overrides.get("seed", 0)), log=log)

    name = name or checkpoint_name(checkpoint)
    entry = {
        "checkpoint": str(checkpoint),
        "model": cfg.model,
        "vision_backbone": cfg.vision_backbone if cfg.model != "simple" else None,
        "text_encoder": cfg.text_encoder if cfg.model != "simple" else None,
        "loss": cfg.loss,
        "data_path": str(cfg.data_path),
        **metrics,
    }
    metrics_path = merge_metrics(out / "metrics.json", name, entry)
    figure_path = out / "figures" / f"zeroshot_confusion_{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}.png"
    confusions = {m: metrics["zero_shot_5x200"].get(m, {}).get("confusion") for m in ("mean", "max")}
    if any(cm is not None for cm in confusions.values()):
        figure_path.parent.mkdir(parents=True, exist_ok=True)
        confusion_figure(confusions).savefig(figure_path, dpi=110, bbox_inches="tight", metadata={"Software": None})
        log(f"Saved figure: {figure_path}")
    for line in summary_lines(metrics):
        log(line)
    log(f"Saved metrics: {metrics_path} (key '{name}')")
    return entry
