"""A seeded fraction of the training pairs (config `train_fraction`), for data-efficiency runs.

Whole patients are kept or left out together (`subject_id`, else `study_id`, else each record on
its own), so a 10 % run never sees one image of a study it half knows. The patients are shuffled by
a generator seeded with `train_fraction_seed` and taken in that order until the kept records reach
the fraction; a larger fraction with the same seed keeps a superset of a smaller one, so 10 % <
30 % < 100 % are nested.

`split_train_fraction` also returns the records left out (whole patients too): the pool that
`unpaired_pool: train_fraction_rest` turns into image-only and text-only items (data/decoupled.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _group_key(record: dict, index: int):
    for key in ("subject_id", "study_id"):
        if record.get(key) is not None:
            return (key, record[key])
    return ("record", index)


def split_train_fraction(records: Sequence[dict], fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(kept, left out): the records of a seeded set of whole patients holding about `fraction` of
    `records` (at least one patient), and every other record, each in the original order.
    `fraction` 1 keeps every record and leaves none out."""
    if not 0 < fraction <= 1:
        raise ValueError(f"train_fraction must be in (0, 1], got {fraction}")
    if fraction == 1 or not records:
        return list(records), []
    groups: dict = {}
    for i, record in enumerate(records):
        groups.setdefault(_group_key(record, i), []).append(i)
    order = list(groups.values())
    permutation = np.random.default_rng(seed).permutation(len(order))
    target = max(1, math.ceil(fraction * len(records)))
    kept: list[int] = []
    for g in permutation:
        if len(kept) >= target:
            break
        kept.extend(order[g])
    chosen = set(kept)
    return [records[i] for i in sorted(kept)], [r for i, r in enumerate(records) if i not in chosen]


def keep_train_fraction(records: Sequence[dict], fraction: float, seed: int = 0) -> list[dict]:
    """The kept records of `split_train_fraction`."""
    return split_train_fraction(records, fraction, seed)[0]
