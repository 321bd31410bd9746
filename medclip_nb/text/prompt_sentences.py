"""The text of an image-only item, as MedCLIP gives it one (config `image_only_text: prompt_sentence`):
a sentence of the sentence-label table sampled from the image's labels.

Restated from MedCLIP's `ImageTextContrastiveDataset` (medclip/dataset.py, commit f8599d2):

- `_build_prompt_sentence(n=200)`: for each of the 14 findings, the table's sentences positive (1)
  for it, 200 of them drawn when there are more; concatenated, duplicates dropped: the pool.
- `sample_sent_prompts(row)`: when all 14 image labels are 0, a sentence of the whole table with
  No Finding = 1. Otherwise the products sentence labels x image labels (negative products set to
  0); the pool's sentences with a non-zero product outside No Finding are the candidates (none: the
  pool's No Finding sentences), one drawn uniformly. The sentence's own table row is its label.

Departures, both named: draws use the item's seeded `random.Random` (MedCLIP: numpy's global
state), and the all-zero branch returns the sentence: MedCLIP's takes `['report'].values[0][0]`,
the sentence's **first character** (its column holds strings by then), a bug not reproduced.
Blank labels read as 0, as MedCLIP reads its table with `fillna(0)`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import numpy as np

from medclip_nb.errors import DataError
from medclip_nb.labels import LABEL_INDEX, NUM_LABELS

NO_FINDING = LABEL_INDEX["No Finding"]


class PromptSentences:
    """`sample(image_labels, rng)` -> (sentence, its 14 labels) from a sentence-label table
    {sentence: 14 values} (text/sentence_labels.py)."""

    def __init__(self, table: Mapping[str, Sequence[float]], per_label: int = 200, seed: int = 0):
        sentences = list(table)
        labels = np.nan_to_num(np.array([[np.nan if v is None else float(v) for v in table[s]] for s in sentences],
                                        dtype=np.float64).reshape(-1, NUM_LABELS), nan=0.0)
        rng = np.random.default_rng(seed)
        chosen: list[int] = []
        for column in range(NUM_LABELS):
            rows = np.flatnonzero(labels[:, column] == 1)
            chosen += (rng.choice(rows, per_label, replace=False) if len(rows) > per_label else rows).tolist()
        pool = list(dict.fromkeys(chosen))  # duplicates dropped, first kept
        self.sentences, self.labels = sentences, labels
        self.pool = np.array(pool, dtype=np.int64)
        self.pool_no_finding = self.pool[labels[self.pool, NO_FINDING] == 1]
        self.all_no_finding = np.flatnonzero(labels[:, NO_FINDING] > 0)
        if not len(self.all_no_finding) or not len(self.pool_no_finding):
            raise DataError("image_only_text prompt_sentence: the sentence_labels table has no No Finding sentence "
                            "(MedCLIP draws one for images without a positive label)")

    def candidates(self, image_labels: Sequence[float]) -> np.ndarray:
        """Table rows an image with these labels (blank = 0) may draw its sentence from."""
        image = np.nan_to_num(np.asarray(image_labels, dtype=np.float64), nan=0.0)
        if (image == 0).all():
            return self.all_no_finding
        products = np.clip(self.labels[self.pool] * image, 0.0, None)
        outside = np.delete(products, NO_FINDING, axis=1)
        rows = self.pool[(outside != 0).any(axis=1)]
        return rows if len(rows) else self.pool_no_finding

    def sample(self, image_labels: Sequence[float], rng: random.Random) -> tuple[str, list[float]]:
        rows = self.candidates(image_labels)
        row = int(rows[rng.randrange(len(rows))])
        return self.sentences[row], self.labels[row].tolist()
