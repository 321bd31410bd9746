"""The evaluation of one model as one object: `Evaluation(model, tokenizer, cfg, device)`.

`run(splits)` embeds the test split, then `zero_shot`, `retrieval`, `localisation` and `probe` each
return their metrics.json entries (plain JSON data once `run` rounds them); the arrays behind them
(embeddings, scores, the 5x200 rows) collect in `arrays` for the figures.

    metrics, arrays = Evaluation(model, tokenizer, cfg, device, seed=0).run(splits)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from medclip_nb.config import Config
from medclip_nb.errors import DataError
from medclip_nb.evaluate.embeddings import (
    EvaluationArrays,
    compute_embeddings,
    encode_texts,
    loader_for,
    model_logit_scale,
)
from medclip_nb.evaluate.intervals import INTERVAL_METHOD, macro_f1_interval, mean_interval, patient_codes
from medclip_nb.evaluate.localisation import localisation_entry, localisation_pairs, pair_groups, score_pairs
from medclip_nb.evaluate.metrics import (
    accuracy,
    confusion,
    linear_probe,
    linear_probe_fractions,
    macro_f1,
    multilabel_auroc,
    retrieval_metrics,
    select_5x200,
    zero_shot_classify,
    zero_shot_multilabel,
)
from medclip_nb.evaluate.zeroshot_medclip import zero_shot_5x200_medclip
from medclip_nb.labels import CHEXPERT_LABELS, COMPETITION_TASKS
from medclip_nb.progress import working
from medclip_nb.prompts import class_prompts, label_prompt_pairs
from medclip_nb.runtime import set_cpu_threads

ROUND_DIGITS = 4


@dataclass
class Evaluation:
    """Zero-shot (CheXpert-5x200 and per label), retrieval, localisation and the linear probe of one model.

    `seed` draws the 5x200 subset and the bootstrap resamples: keep it fixed to compare
    checkpoints on the same images. `log` receives progress lines."""

    model: torch.nn.Module
    tokenizer: Any
    cfg: Config
    device: torch.device
    seed: int = 0
    log: Callable[[str], Any] = print
    arrays: EvaluationArrays = field(default_factory=EvaluationArrays)

    def __post_init__(self):
        self.device = torch.device(self.device)
        self.amp = self.cfg.use_amp

    def run(self, splits: Mapping[str, Any]) -> tuple[dict[str, Any], EvaluationArrays]:
        """`splits` maps "train"/"val"/"test" to datasets (loaded with the eval transforms) or to
        iterables of batches. "test" is required; the linear probe needs "train" too (and uses
        "val" to choose C). Returns (metrics: plain JSON data, floats rounded to ROUND_DIGITS,
        arrays). On the CPU, torch uses cores - num_workers threads meanwhile (runtime.set_cpu_threads)."""
        if "test" not in splits:
            raise DataError("evaluate_model: no 'test' split to evaluate on")
        threads_before = torch.get_num_threads()
        set_cpu_threads(self.device, self.cfg.cpu_threads, self.cfg.num_workers)
        try:
            return self._run(splits)
        finally:
            torch.set_num_threads(threads_before)

    def _run(self, splits: Mapping[str, Any]) -> tuple[dict[str, Any], EvaluationArrays]:
        test = self.embed(splits["test"], "test")
        groups = self.arrays.test_groups = patient_ids(splits["test"], test["index"])
        metrics: dict[str, Any] = {"n": {"test": len(test["index"])}, "skipped_images": {"test": test["n_skipped"]}}
        metrics["intervals"] = {**INTERVAL_METHOD, "unit": "patient" if groups is not None else "image",
                                "test_patients": int(patient_codes(groups, len(groups)).max(initial=-1)) + 1
                                if groups is not None else None}
        rows, classes = select_5x200(test["labels"], self.cfg.zeroshot_per_class, self.seed)
        self.arrays.five_x_200_rows, self.arrays.five_x_200_classes = rows, classes
        metrics["n"]["test_5x200"] = len(rows)
        with working("evaluate: zero-shot"):
            metrics.update(self.zero_shot(splits["test"], test, rows, classes))
        with working("evaluate: retrieval"):
            metrics["retrieval"] = self.retrieval(test, rows, classes)
        with working("evaluate: localisation"):
            metrics["localisation"] = self.localisation(splits["test"])
        if splits.get("train") is not None:
            with working("evaluate: linear probe"):
                metrics.update(self.probe(splits, test, metrics))
        else:
            metrics["linear_probe"] = metrics["linear_probe_fractions"] = None
        return json_ready(metrics), self.arrays

    def embed(self, split, name: str, with_text: bool = True) -> dict[str, Any]:
        self.log(f"Embedding the {name} split" + ("..." if with_text else " for the linear probe..."))
        embedded = compute_embeddings(self.model, loader_for(split, self.cfg, self.tokenizer), self.device,
                                      with_text=with_text, amp=self.amp, progress_desc=f"evaluate: {name} split")
        self.arrays.embeddings[name] = embedded
        return embedded

    def encode(self, texts: list[str]) -> np.ndarray:
        return encode_texts(self.model, self.tokenizer, texts, self.device, self.cfg.eval_batch_size, amp=self.amp)

    # ---- zero-shot -------------------------------------------------------------------------------
    def zero_shot(self, test_split, test: dict, rows: np.ndarray, classes: np.ndarray) -> dict[str, Any]:
        """One CheXpert-5x200 entry per rule of `cfg.zeroshot_protocols`, each naming its "rule":
        `zero_shot_5x200` (ours), `zero_shot_5x200_gloria`, `zero_shot_5x200_medclip` (MedCLIP's
        procedure on that rule's images: zeroshot_medclip.py); and the per-label AUROC of
        `zero_shot_multilabel`."""
        rules = self.cfg.zeroshot_protocols
        if self.cfg.text_encoder == "precomputed":
            # Its "text" input is a row index into stored report features: prompts cannot be encoded.
            reason = "text_encoder 'precomputed' cannot encode prompts"
            return {**{five_x_200_key(rule): {"skipped": reason, "rule": rule} for rule in rules},
                    "zero_shot_multilabel": {"skipped": reason}}
        entries: dict[str, Any] = {}
        for rule in rules:
            if rule == "ours":
                entries[five_x_200_key(rule)] = {"rule": "ours", **self.five_x_200(test["image"], rows, classes)}
            else:
                entries[five_x_200_key(rule)] = zero_shot_5x200_medclip(
                    self.model, self.tokenizer, test_split, self.cfg, self.device, rule=rule, seed=self.seed,
                    log=self.log)
        # Per label: softmax over a positive/negative prompt pair.
        positive, negative = label_prompt_pairs(CHEXPERT_LABELS)
        probabilities = zero_shot_multilabel(test["image"], self.encode(positive), self.encode(negative),
                                             model_logit_scale(self.model))
        self.arrays.multilabel_probabilities = probabilities
        entries["zero_shot_multilabel"] = multilabel_auroc(probabilities, test["labels"], CHEXPERT_LABELS,
                                                           groups=self.arrays.test_groups)
        return entries

    def five_x_200(self, image_emb: np.ndarray, rows: np.ndarray, classes: np.ndarray) -> dict[str, Any]:
        """Our CheXpert-5x200: prompt-ensemble classification of the selected rows into the five
        competition classes, in both ensemble modes."""
        prompts = class_prompts(COMPETITION_TASKS)
        self.arrays.prompts = prompts
        class_embs = [self.encode(prompts[t]) for t in COMPETITION_TASKS]
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
            self.arrays.zero_shot_scores[mode] = scores
            predicted = scores.argmax(axis=1)
            n_classes, groups = len(COMPETITION_TASKS), self.groups(rows)
            result[mode] = {
                "accuracy": accuracy(classes, predicted),
                "accuracy_ci": mean_interval(predicted == classes, groups=groups, seed=self.seed),
                "macro_f1": macro_f1(classes, predicted),
                "macro_f1_ci": macro_f1_interval(classes, predicted, n_classes, groups=groups, seed=self.seed),
                "confusion": confusion(classes, predicted, n_classes).tolist(),
            }
        return result

    def groups(self, rows: np.ndarray) -> np.ndarray | None:
        """Patient ids of some test rows (None: the test split names no patients)."""
        return None if self.arrays.test_groups is None else self.arrays.test_groups[rows]

    # ---- localisation ----------------------------------------------------------------------------
    def localisation(self, test_split) -> dict[str, Any]:
        """Where the maps of a finding's text fall against the finding's region (localisation.py):
        pointing game, CNR and IoU per map method and finding, with patient-level intervals; the
        per-pair scores and a few maps go to `arrays.localisation`."""
        if self.cfg.localisation_images == 0:
            return {"skipped": "localisation_images is 0"}
        if self.cfg.model != "simple" and self.cfg.text_encoder == "precomputed":
            return {"skipped": "text_encoder 'precomputed' cannot encode a finding's text"}
        pairs = localisation_pairs(test_split, self.cfg, self.seed)
        if isinstance(pairs, str):
            return {"skipped": pairs}
        self.log(f"Localisation: {len(pairs)} finding regions on {pairs.images} test images "
                 f"({', '.join(self.cfg.localisation_maps)} maps)...")
        scores, readable, examples = score_pairs(self.model, self.tokenizer, test_split, pairs, self.cfg, self.device)
        groups = pair_groups(test_split, pairs)
        self.arrays.localisation = {"pairs": pairs, "scores": scores, "readable": readable, "groups": groups,
                                    "examples": examples}
        return localisation_entry(scores, readable, pairs, groups, self.seed)

    # ---- retrieval and the linear probe ----------------------------------------------------------
    def retrieval(self, test: dict, rows: np.ndarray, classes: np.ndarray) -> dict[str, Any]:
        """Recall@K on the whole test split; the 5x200 subset adds MedCLIP's Precision@K."""
        entry = {"test": retrieval_metrics(test["image"], test["text"], pair_ids=test["text_group"],
                                           groups=self.arrays.test_groups)}
        if len(rows):
            entry["test_5x200"] = retrieval_metrics(test["image"][rows], test["text"][rows], class_ids=classes,
                                                    pair_ids=test["text_group"][rows], groups=self.groups(rows))
        return entry

    def probe(self, splits: Mapping[str, Any], test: dict, metrics: dict[str, Any]) -> dict[str, Any]:
        """Linear probe: fit on train, choose C on val, report on test; also on fractions of the
        train labels (cfg.probe_label_fractions). The splits' sizes go into metrics["n"] and
        metrics["skipped_images"]."""
        embedded = {}
        for name in ("train", "val"):
            if splits.get(name) is not None:
                embedded[name] = self.embed(splits[name], name, with_text=False)
                metrics["n"][name] = len(embedded[name]["index"])
                metrics["skipped_images"][name] = embedded[name]["n_skipped"]
        val = embedded.get("val")
        args = dict(test_emb=test["image"], test_labels=test["labels"], seed=self.seed,
                    test_groups=self.arrays.test_groups,
                    val_emb=None if val is None else val["image"], val_labels=None if val is None else val["labels"])
        train = embedded["train"]
        full = linear_probe(train["image"], train["labels"], **args)
        fractions = linear_probe_fractions(train["image"], train["labels"], self.cfg.probe_label_fractions,
                                           full=full, **args)
        return {"linear_probe": full, "linear_probe_fractions": fractions}


def patient_ids(split, index: np.ndarray) -> np.ndarray | None:
    """The patient (subject_id) of each embedded row of a split (`index`: dataset rows), -1 where a
    record names none (it is then its own patient); None when the split is not a dataset with
    records (an iterable of batches)."""
    records = getattr(split, "records", None)
    if records is None or not hasattr(records, "subject_ids"):
        return None
    return records.subject_ids()[np.asarray(index, dtype=np.int64)]


def five_x_200_key(rule: str) -> str:
    """The metrics.json key of a 5x200 rule's entry: ours keeps `zero_shot_5x200`."""
    return "zero_shot_5x200" if rule == "ours" else f"zero_shot_5x200_{rule}"


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
        return round(float(obj), digits) if np.isfinite(obj) else None
    return obj
