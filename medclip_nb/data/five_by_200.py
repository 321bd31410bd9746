"""CheXpert-5x200 selection rules named for their source: GLoRIA's and MedCLIP's own.

Our rule (class positive, the other four competition classes not positive) is
`evaluate.metrics.select_5x200`. The two published ones, restated from their code:

- `gloria` (GLoRIA's `preprocess_chexpert_5x200_data`, which MedCLIP's evaluation code
  followed until its own script): blank -> 0, **-1 kept**; a row qualifies for a class when it
  is 1 for the class and 0 for the twelve other findings (No Finding free, so a -1 among them
  disqualifies it); frontal images only; up to `per_class` rows per class. GLoRIA draws without
  a seed; here the draw is seeded with (seed, class).
- `medclip` (MedCLIP's `examples/process_chexpert.py` and `process_mimic_cxr.py`, repository
  commit f8599d2): `np.random.seed(42)`; blank -> 0 and **-1 -> 0 first**, then the same
  one-class test; frontal **and lateral** views; `sample(n=400)` per class in the order of
  COMPETITION_TASKS, the pools in table order; the 2,000 rows concatenated; `sample(frac=0.5)`.
  pandas' `DataFrame.sample` without `random_state` takes numpy's global legacy RandomState and
  returns `permutation(len(pool))[:n]` in that order, so `medclip_5x200` replays the same stream
  with `RandomState(seed)` and returns MedCLIP's rows **in its order**: the same table gives
  MedCLIP's exact rows (tests/test_five_by_200.py checks this against a pandas restatement of
  the script). `per_class` is the 5x200's 200: the rule draws 2 x per_class per class (MedCLIP:
  400) and keeps half of them. A pool smaller than 2 x per_class (MedCLIP's script stops there
  with pandas' ValueError) is taken whole; the stream stays MedCLIP's, since the permutation is
  drawn over the whole pool either way, and `short_pools` names the classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from medclip_nb.labels import CHEXPERT_LABELS, COMPETITION_TASKS, LABEL_INDEX, NUM_LABELS

MEDCLIP_SEED = 42  # np.random.seed(42) at the top of MedCLIP's process_chexpert.py
FRONTAL_VIEWS = ("PA", "AP")


def _one_class_masks(labels: np.ndarray) -> np.ndarray:
    """[N, 5] bool: row is 1 for the competition class and 0 for the twelve other findings
    (No Finding not tested), the test both published rules share."""
    masks = []
    for task in COMPETITION_TASKS:
        others = [LABEL_INDEX[name] for name in CHEXPERT_LABELS if name not in (task, "No Finding")]
        masks.append((labels[:, LABEL_INDEX[task]] == 1) & (labels[:, others] == 0).all(axis=1))
    return np.stack(masks, axis=1)


def label_matrix(labels) -> np.ndarray:
    """A [N, 14] float64 label matrix (NaN = blank) from an array or from records' `labels`."""
    if isinstance(labels, np.ndarray):
        return np.asarray(labels, dtype=np.float64).reshape(-1, NUM_LABELS)
    return np.array([[np.nan if v is None else float(v) for v in (r["labels"] if isinstance(r, Mapping) else r)]
                     for r in labels], dtype=np.float64).reshape(-1, NUM_LABELS)


def frontal_mask(records: Sequence[Mapping]) -> np.ndarray:
    """True for records whose `view` is PA or AP, and for records without a `view` (prepare
    keeps frontal views only, so a record without one came from an already frontal split)."""
    return np.array([str(r.get("view", "PA")).strip() in FRONTAL_VIEWS for r in records], dtype=bool)


def select_5x200_gloria(labels, per_class: int = 200, seed: int = 0, frontal=None) -> tuple[np.ndarray, np.ndarray]:
    """GLoRIA's rule: rows of a [N, 14] label matrix and their class (0..4, COMPETITION_TASKS
    order), sorted by row. After blank -> 0 (-1 kept) a row qualifies when it is 1 for the class
    and 0 for the twelve other findings and, with `frontal` (bool [N]), is a frontal image. Up to
    `per_class` rows per class, drawn by a generator seeded with (seed, class)."""
    labels = np.nan_to_num(label_matrix(labels), nan=0.0)
    keep = np.ones(len(labels), dtype=bool) if frontal is None else np.asarray(frontal, dtype=bool)
    masks = _one_class_masks(labels) & keep[:, None]
    rows, classes = [], []
    for c in range(len(COMPETITION_TASKS)):
        candidates = np.flatnonzero(masks[:, c])
        if len(candidates) > per_class:
            candidates = np.sort(np.random.default_rng([seed, c]).choice(candidates, size=per_class, replace=False))
        rows.append(candidates)
        classes.append(np.full(len(candidates), c, dtype=np.int64))
    rows_all, classes_all = np.concatenate(rows), np.concatenate(classes)
    order = np.argsort(rows_all, kind="stable")
    return rows_all[order].astype(np.int64), classes_all[order]


@dataclass
class MedclipDraw:
    """MedCLIP's draw on one label table. `rows` / `classes`: the 5x200 in MedCLIP's order
    (its chexpert-5x200 file); `finetune_rows`: the other half of the per-class draw (its
    5x200-finetune file, in draw order); `pool_sizes`: rows that qualified per class;
    `short_pools`: classes whose pool was smaller than the 2 x per_class draw (taken whole)."""

    rows: np.ndarray
    classes: np.ndarray
    finetune_rows: np.ndarray
    finetune_classes: np.ndarray
    pool_sizes: dict[str, int]
    short_pools: list[str]


def medclip_5x200(labels, per_class: int = 200, seed: int = MEDCLIP_SEED) -> MedclipDraw:
    """MedCLIP's own rule (module docstring) on a [N, 14] label matrix in table order: -1 -> 0
    and blank -> 0, the one-class test over every view, 2 x `per_class` drawn per class with
    `RandomState(seed)`, then half of the concatenation (`round(0.5 * n)`, as pandas' frac)."""
    if per_class < 1:
        raise ValueError(f"medclip_5x200: per_class must be at least 1, got {per_class}")
    labels = label_matrix(labels)
    labels = np.where(np.isnan(labels) | (labels == -1), 0.0, labels)
    masks = _one_class_masks(labels)
    stream = np.random.RandomState(seed)
    drawn, drawn_classes, sizes, short = [], [], {}, []
    for c, task in enumerate(COMPETITION_TASKS):
        pool = np.flatnonzero(masks[:, c])  # table order, as pandas' boolean mask keeps it
        sizes[task] = len(pool)
        if len(pool) < 2 * per_class:
            short.append(task)
        take = stream.permutation(len(pool))[: 2 * per_class]
        drawn.append(pool[take])
        drawn_classes.append(np.full(len(take), c, dtype=np.int64))
    pooled, pooled_classes = np.concatenate(drawn), np.concatenate(drawn_classes)
    half = stream.permutation(len(pooled))[: round(0.5 * len(pooled))]
    rest = np.setdiff1d(np.arange(len(pooled)), half)  # the finetune file keeps the concatenation's order
    return MedclipDraw(pooled[half].astype(np.int64), pooled_classes[half], pooled[rest].astype(np.int64),
                       pooled_classes[rest], sizes, short)


def select_5x200_medclip(labels, per_class: int = 200, seed: int = MEDCLIP_SEED) -> tuple[np.ndarray, np.ndarray]:
    """MedCLIP's 5x200 as (rows, classes) in MedCLIP's order (see `medclip_5x200`)."""
    draw = medclip_5x200(labels, per_class, seed)
    return draw.rows, draw.classes
