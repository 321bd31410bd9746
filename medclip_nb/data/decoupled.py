"""MedCLIP's decoupling inside one dataset (config `unpaired_pool: train_fraction_rest`): the
training patients that `train_fraction` leaves out become unpaired data instead of being dropped.

A data-efficiency run at train_fraction f trains on the pairs of f of the training patients.
With this pool the other training patients join as MedCLIP adds CheXpert's images and report
sentences without their partner:

- `train_images`: each of their training images (the frontal views `prepare` kept) as an
  image-only item with its study's labels, no report;
- `train_texts`: each sentence of each of their reports (`text.split_sentences`, one report per
  study) as a text-only item with the sentence's own labels from the `sentence_labels` table
  (a sentence the table lacks gets what `sentence_label_miss` says, as in the paired dataset:
  its study's labels, No Finding = 1, or an error; `misses` counts them).

The paired items are exactly the plain run's (same patients, same order), so a decoupled arm and
a plain arm at the same fraction differ only by these items. At train_fraction 1 no patient is
left out: there is nothing to decouple and the run is the plain one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from medclip_nb.errors import DataError
from medclip_nb.text import sentence_key, split_sentences, unlisted_sentence_labels

IMAGE_KEYS = ("image_path", "labels", "study_id", "subject_id", "dicom_id", "view")


@dataclass
class DecoupledPool:
    """The unpaired splits made of the left-out training patients, and what they hold."""

    splits: dict[str, list[dict]] = field(default_factory=dict)  # train_images, train_texts (those asked for)
    patients: int = 0  # left-out patients (or studies / records where no patient id is given)
    studies: int = 0  # left-out studies whose reports gave the text-only items
    misses: int = 0  # text-only sentences missing from the sentence-label table
    miss_rule: str = "study_labels"  # what those got (sentence_label_miss)

    def line(self) -> str:
        """What the pool holds, for the training log."""
        sizes = ", ".join(f"{name} {len(items)}" for name, items in self.splits.items())
        miss = f"; {self.misses} sentence(s) missing from the sentence-label table ({self.miss_rule})" \
            if self.misses else ""
        return f"unpaired pool: the {self.patients} training patient(s) train_fraction leaves out ({sizes}){miss}"


def _patient(record: Mapping, index: int):
    for key in ("subject_id", "study_id"):
        if record.get(key) is not None:
            return (key, record[key])
    return ("record", index)


def image_only(record: Mapping) -> dict:
    """The image-only item of a training record: its image and its study's labels, no report."""
    return {**{key: record[key] for key in IMAGE_KEYS if key in record}, "report": ""}


def text_only(records: Sequence[Mapping], table: Mapping[str, Sequence[float]],
              miss: str = "study_labels") -> tuple[list[dict], int, int]:
    """(one item per sentence of each study's report, with the sentence's labels from `table`;
    studies read; sentences missing from `table`). A study with several images gives its report once.
    A sentence `table` lacks gets its study's labels (`miss` 'study_labels'), No Finding = 1
    ('no_finding', MedCLIP's reader) or stops the build ('error'), as `sentence_label_miss` says."""
    items, seen, misses = [], set(), 0
    for i, record in enumerate(records):
        study = record.get("study_id", ("record", i))
        if study in seen:
            continue
        seen.add(study)
        for sentence in split_sentences(record["report"]):
            labels = table.get(sentence_key(sentence))
            if labels is None:
                misses += 1
                if miss == "error":
                    raise DataError(f"sentence_labels: the table has no entry for {sentence!r} "
                                    "(sentence_label_miss: error)")
                labels = record["labels"] if miss == "study_labels" else unlisted_sentence_labels()
            items.append({"report": sentence, "labels": [float(v) for v in labels], "study_id": record.get("study_id"),
                          "subject_id": record.get("subject_id")})
    return items, len(seen), misses


def decoupled_pool(rest: Sequence[Mapping], sources: Sequence[str],
                   table: Mapping[str, Sequence[float]] | None, miss: str = "study_labels") -> DecoupledPool:
    """The `train_images` / `train_texts` splits (as `sources` asks: 'images', 'texts') of the
    left-out training records `rest`; `table` is the sentence-label table ({sentence_key: 14
    labels}), needed for 'texts'; `miss` is `sentence_label_miss` (see `text_only`)."""
    pool = DecoupledPool(patients=len({_patient(r, i) for i, r in enumerate(rest)}), miss_rule=miss)
    if "images" in sources:
        pool.splits["train_images"] = [image_only(r) for r in rest]
    if "texts" in sources:
        if table is None:
            raise ValueError("decoupled_pool: text-only items need a sentence-label table")
        pool.splits["train_texts"], pool.studies, pool.misses = text_only(rest, table, miss)
    return pool


__all__ = ["DecoupledPool", "decoupled_pool", "image_only", "text_only"]
