"""Pure evaluation metrics: classification, AUROC, retrieval, CheXpert-5x200, zero-shot scores, linear probe.

Protocols (docs/evaluation.md repeats them):

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

These are pure NumPy/scikit-learn functions of arrays: no model is called here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from joblib import Parallel, delayed
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

from medclip_nb.errors import DataError
from medclip_nb.evaluate.intervals import mean_auroc_interval, mean_interval
from medclip_nb.labels import CHEXPERT_LABELS, COMPETITION_TASKS, LABEL_INDEX, NUM_LABELS

DEFAULT_CS = (0.01, 0.1, 1.0, 10.0)
DEFAULT_C = 1.0  # used when no validation split can choose C for a label


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
    groups=None,
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
        # 95 % bootstrap intervals over the queries' patients `groups` (the gallery stays the whole set).
        "image_to_text_ci": {f"R@{k}": mean_interval(i2t < k, groups=groups) for k in ks},
        "text_to_image_ci": {f"R@{k}": mean_interval(t2i < k, groups=groups) for k in ks},
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


def multilabel_auroc(probabilities, labels, names: Sequence[str] = CHEXPERT_LABELS, groups=None) -> dict[str, Any]:
    """AUROC per label (truth binarised: 1.0 positive, the rest negative) and their mean over
    the labels with both classes present, also over the five competition labels; the mean's
    interval resamples the patients `groups`."""
    truth = binarize_labels(labels)
    per_label = auroc_per_label(truth, probabilities, names)
    defined = [j for j, name in enumerate(names) if math.isfinite(per_label[name])]
    return {
        "auroc": per_label,
        "auroc_mean": mean_defined(per_label.values()),
        "auroc_mean_ci": mean_auroc_interval(truth[:, defined], np.asarray(probabilities)[:, defined], groups=groups)
        if defined else None,
        "auroc_mean_competition": mean_defined(per_label[t] for t in COMPETITION_TASKS if t in per_label),
    }


# ---- linear probe ------------------------------------------------------------------------------------
def _probe_one_label(x_train, y_train, x_val, y_val, x_test, Cs: Sequence[float], seed: int):
    """One label's probe: (C, test scores). With a validation split holding both classes, the C
    grid is fitted in ascending order, each fit starting from the last one's weights (the
    regularisation path: same optimum, far fewer L-BFGS iterations), and the C with the best
    validation AUROC wins (ties: the stronger regularisation); otherwise DEFAULT_C."""
    grid = sorted(Cs) if y_val is not None and np.unique(y_val).size == 2 else [DEFAULT_C]
    model = LogisticRegression(C=grid[0], max_iter=2000, random_state=seed, warm_start=True)
    best = (-math.inf, None, None)
    for C in grid:
        model.set_params(C=C).fit(x_train, y_train)
        score = roc_auc_score(y_val, model.predict_proba(x_val)[:, 1]) if len(grid) > 1 else 0.0
        if score > best[0]:
            best = (score, C, model.predict_proba(x_test)[:, 1])
    return best[1], best[2]


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
    test_groups=None,
) -> dict[str, Any]:
    """One logistic regression per label on frozen image embeddings; the mean AUROC's interval
    resamples the test patients `test_groups`.

    Labels are binarised (1.0 positive; 0.0, -1.0 and blank negative). Features are
    standardised on the training split. For each label, C is the grid value with the best
    validation AUROC (DEFAULT_C when there is no validation split or it holds one class);
    the model fitted on train with that C is scored on test. A label with one class in
    train or test gets AUROC None. The labels are fitted in parallel (joblib, one process per
    intra-op thread this process was given: a run sharing the cores with others stays in its share;
    with one thread, in this process); each fit is deterministic, so the result does not depend on
    the number of processes.
    Returns {"auroc": {name: v}, "auroc_mean", "C": {name: C}, "n_train", "n_val", "n_test"}.
    """
    x_train = _numpy(train_emb).astype(np.float64)
    scaler = StandardScaler().fit(x_train)
    x_train, x_test = scaler.transform(x_train), scaler.transform(_numpy(test_emb).astype(np.float64))
    y_train, y_test = binarize_labels(train_labels), binarize_labels(test_labels)
    has_val = val_emb is not None and val_labels is not None and len(val_emb) > 0
    x_val = scaler.transform(_numpy(val_emb).astype(np.float64)) if has_val else None
    y_val = binarize_labels(val_labels) if has_val else None

    columns = [j for j in range(len(names))
               if np.unique(y_train[:, j]).size == 2 and np.unique(y_test[:, j]).size == 2]
    fits = Parallel(n_jobs=min(len(columns), torch.get_num_threads()) or 1)(
        delayed(_probe_one_label)(x_train, y_train[:, j], x_val, None if y_val is None else y_val[:, j], x_test,
                                  Cs, seed)
        for j in columns)
    chosen: dict[str, float | None] = {name: None for name in names}
    auroc: dict[str, float] = {name: math.nan for name in names}
    for j, (C, scores) in zip(columns, fits):
        chosen[names[j]], auroc[names[j]] = float(C), float(roc_auc_score(y_test[:, j], scores))
    return {
        "auroc": auroc,
        "auroc_mean": mean_defined(auroc.values()),
        "auroc_mean_ci": mean_auroc_interval(y_test[:, columns], np.stack([s for _, s in fits], axis=1),
                                             groups=test_groups, seed=seed) if columns else None,
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
