"""Checks of loaded records, one validator for paired and unpaired splits: every refusal is a
``DataError`` naming the file, split, index and key; what is accepted is normalised in place.
Also the ``clip_indices`` of ``text_encoder: precomputed``.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from medclip_nb.data.loading import REQUIRED_SPLITS, UNPAIRED_SPLITS
from medclip_nb.errors import DataError, quote
from medclip_nb.labels import NUM_LABELS
from medclip_nb.text import clip_index_list

if TYPE_CHECKING:
    from medclip_nb.config import Config
    from medclip_nb.data.dataset import CXRDataset

ALLOWED_LABEL_VALUES = (1.0, 0.0, -1.0)


def _plain(value: Any) -> Any:
    """NumPy arrays/scalars as Python lists/numbers (records must be plain data)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _validated_labels(labels: Any, where: str) -> list[float]:
    if isinstance(labels, np.ndarray):
        labels = labels.tolist()
    if not isinstance(labels, (list, tuple)):
        raise DataError(f"{where}: key 'labels' must be a list of {NUM_LABELS} values, got {type(labels).__name__}")
    if len(labels) != NUM_LABELS:
        raise DataError(f"{where}: key 'labels' has {len(labels)} values, expected {NUM_LABELS}")
    out: list[float] = []
    for position, value in enumerate(labels):
        value = _plain(value)
        if value is None:
            out.append(math.nan)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DataError(f"{where}: key 'labels'[{position}]: {quote(value)} is not a number")
        try:
            value = float(value)
        except OverflowError:
            raise DataError(f"{where}: key 'labels'[{position}]: {quote(value)} is not 1, 0, -1 or blank") from None
        if not (math.isnan(value) or value in ALLOWED_LABEL_VALUES):
            raise DataError(f"{where}: key 'labels'[{position}]: {quote(value)} is not 1, 0, -1 or blank")
        out.append(value)
    return out


def _check_encodable(record: dict, where: str) -> None:
    """Text that cannot be written as UTF-8 (a lone surrogate such as JSON's "\\ud800") cannot
    name a file or reach the tokenizer."""
    for key in ("image_path", "report", "regions"):
        value = record.get(key)
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise DataError(f"{where}: key '{key}' holds text that is not valid Unicode "
                                f"(character {exc.start})") from None


def validate_dataset(
    splits: Mapping[str, Any], source: str | os.PathLike, image_root: str | os.PathLike | None = None
) -> list[str]:
    """Check a loaded dataset and normalise it in place; return warnings.

    Refused (``DataError`` naming the file, split, index and key): a missing train/val/test
    split, an empty train or val split, a record without a non-empty string ``image_path``,
    a string ``report``, or 14 ``labels`` in {1, 0, -1, NaN/None}. Normalised: ``None``
    labels become NaN, NumPy arrays/scalars become plain lists/numbers. Warned: an empty
    test split, unknown splits, empty reports, and image paths found in more than one split
    (leakage between training and evaluation). The optional unpaired splits (unpaired.py) go
    through the same record validator with their own required keys (``_RECORD_KINDS``).
    """
    source = str(source)
    warnings_out = _check_split_lists(splits, source)
    # Leakage is judged on the files the paths name: relative ones taken from image_root (else the
    # dataset file's folder), so 'a.jpg' in train and '/data/a.jpg' in test are the same image.
    base = os.path.abspath(image_root if image_root is not None else os.path.dirname(os.path.abspath(source)))
    first_split_of: dict[str, str] = {}
    leaked: list[tuple[str, str, str]] = []
    for split in (*REQUIRED_SPLITS, *(s for s in UNPAIRED_SPLITS if s in splits)):
        records = splits[split]
        if not isinstance(records, list):
            raise DataError(f"{source}: split '{split}' must be a list of records, got {type(records).__name__}")
        kind = _RECORD_KINDS.get(split, "paired")
        empty_reports = 0
        for index, record in enumerate(records):
            image_path = _validate_record(record, f"{source}: {split}[{index}]", kind)
            empty_reports += kind == "paired" and not record["report"].strip()
            if image_path is not None:
                file_key = os.path.normpath(os.path.join(base, image_path))
                first = first_split_of.setdefault(file_key, split)
                if first != split:
                    leaked.append((image_path, first, split))
        if empty_reports:
            warnings_out.append(f"{source}: {empty_reports} record(s) of split '{split}' have an empty report")
    if leaked:
        path, first, second = leaked[0]
        warnings_out.append(
            f"{source}: {len(leaked)} image path(s) appear in more than one split (leakage), "
            f"e.g. '{path}' in {first} and {second}"
        )
    return warnings_out


def _check_split_lists(splits: Mapping[str, Any], source: str) -> list[str]:
    """The splits themselves: train/val/test present as lists, train and val not empty."""
    if not isinstance(splits, Mapping):
        raise DataError(f"{source}: expected a dict of splits, got {type(splits).__name__}")
    warnings_out: list[str] = []
    for split in REQUIRED_SPLITS:
        if split not in splits:
            raise DataError(f"{source}: split '{split}' is missing (need {', '.join(REQUIRED_SPLITS)})")
        if not isinstance(splits[split], list):
            raise DataError(f"{source}: split '{split}' must be a list of records, got {type(splits[split]).__name__}")
    for split in ("train", "val"):
        if not splits[split]:
            raise DataError(f"{source}: split '{split}' is empty")
    if not splits["test"]:
        warnings_out.append(f"{source}: split 'test' is empty; evaluation will have no test images")
    unknown = sorted(set(splits) - set(REQUIRED_SPLITS) - set(UNPAIRED_SPLITS), key=str)
    if unknown:
        warnings_out.append(f"{source}: ignoring split(s) {quote(unknown)}")
    return warnings_out


# What a record of each split must hold. Paired: image, report and labels. train_images (image-only):
# ``report`` may be missing, null or empty (it becomes ""). train_texts (text-only): a non-empty
# ``report``, no image.
_RECORD_KINDS = {"train_images": "image_only", "train_texts": "text_only", "chexpert_5x200": "image_only",
                 "chexpert_valid": "image_only"}
_REQUIRED_KEYS = {
    "paired": ("image_path", "report", "labels"),
    "image_only": ("image_path", "labels"),
    "text_only": ("report", "labels"),
}


def _validate_record(record: Any, where: str, kind: str) -> str | None:
    """Check and normalise one record in place; return its image path (None for text-only)."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: record must be a dict, got {type(record).__name__}")
    for key in _REQUIRED_KEYS[kind]:
        if key not in record:
            raise DataError(f"{where}: key '{key}' is missing")
    for key, value in record.items():
        if key != "labels":
            record[key] = _plain(value)
    image_path = None
    if kind != "text_only":
        image_path = record["image_path"]
        if not isinstance(image_path, str) or not image_path.strip() or "\x00" in image_path:
            raise DataError(f"{where}: key 'image_path' must be a non-empty string, got {quote(image_path)}")
        record["image_path"] = image_path = str(image_path)
    report = record.get("report")
    if kind == "paired" and not isinstance(report, str):
        raise DataError(f"{where}: key 'report' must be a string, got {type(report).__name__}")
    if kind == "image_only":
        if report is not None and not isinstance(report, str):
            raise DataError(f"{where}: key 'report' must be a string or missing, got {type(report).__name__}")
        report = report or ""
    if kind == "text_only" and (not isinstance(report, str) or not report.strip()):
        raise DataError(f"{where}: key 'report' must be a non-empty string (a text-only record), got {quote(report)}")
    record["report"] = str(report)
    regions = record.get("regions")  # optional: the finding-region file of the image (data/regions.py)
    if regions is not None and (not isinstance(regions, str) or not regions.strip() or "\x00" in regions):
        raise DataError(f"{where}: key 'regions' must be a non-empty string (a region file), got {quote(regions)}")
    _check_encodable(record, where)
    record["labels"] = _validated_labels(record["labels"], where)
    return image_path


def validate_splits(splits: Mapping[str, Any], source: str | os.PathLike, names: Sequence[str]) -> None:
    """Check and normalise the records of the named splits of a dataset file that holds no paired
    splits (prepare-chexpert's, named by unpaired_data_path): each must be a non-empty list."""
    if not isinstance(splits, Mapping):
        raise DataError(f"{source}: expected a dict of splits, got {type(splits).__name__}")
    for split in names:
        records = splits.get(split)
        if not isinstance(records, list) or not records:
            raise DataError(f"{source}: split '{split}' is missing or empty")
        for index, record in enumerate(records):
            _validate_record(record, f"{source}: {split}[{index}]", _RECORD_KINDS.get(split, "paired"))


def uses_precomputed_text(cfg: "Config") -> bool:
    """True when the model's text input is each record's ``clip_indices`` (rows of
    ``cfg.text_features_path``) rather than tokenised report text."""
    return cfg.model != "simple" and cfg.text_encoder == "precomputed"


def validate_clip_indices(
    splits: Mapping[str, Sequence[dict]],
    source: str | os.PathLike,
    num_features: int | None = None,
    features_path: str | os.PathLike | None = None,
) -> None:
    """Check every record of train/val/test for ``clip_indices`` and normalise them in place
    to lists of ints. With ``num_features`` (rows of the features file) each index must also
    pick one of those rows. Raises ``DataError`` naming the file, split and index."""
    for split in REQUIRED_SPLITS:
        for index, record in enumerate(splits.get(split) or ()):
            where = f"{source}: {split}[{index}]"
            if "clip_indices" not in record:
                raise DataError(
                    f"{where}: key 'clip_indices' is missing (text_encoder 'precomputed' needs each "
                    f"record's rows of text_features_path)"
                )
            indices = clip_index_list(record["clip_indices"], where)
            if num_features is not None and max(indices) >= num_features:
                raise DataError(
                    f"{where}: clip index {max(indices)} is out of range: text_features_path "
                    f"{features_path} has {num_features} feature rows"
                )
            record["clip_indices"] = indices


def check_clip_index_rows(datasets: Mapping[str, "CXRDataset"], text_encoder: Any, source: str | os.PathLike) -> None:
    """After the model is built: every record's ``clip_indices`` must pick a row of the
    features its ``PrecomputedTextEncoder`` (``text_encoder``) read; ``DataError`` naming the
    dataset file, split and index otherwise."""
    validate_clip_indices(
        {name: dataset.records for name, dataset in datasets.items()}, source,
        num_features=int(text_encoder.features.shape[0]), features_path=text_encoder.path,
    )
