"""Dataset files into ``{split: [record, ...]}``: the seed's ``datasets.pkl`` (read by a safe
unpickler), a JSON Lines manifest, or a CSV manifest. Records come back as read;
``validation.validate_dataset`` checks and normalises them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from medclip_nb.data.safe_pickle import load_plain_pickle
from medclip_nb.errors import DataError, one_line, quote
from medclip_nb.files import read_text_limited

REQUIRED_SPLITS = ("train", "val", "test")
MAX_MANIFEST_BYTES = 4 << 30  # a JSON Lines manifest of all of MIMIC-CXR is about 250 MB
# Optional splits of unpaired training data (unpaired.py): image-only and text-only records.
UNPAIRED_SPLITS = ("train_images", "train_texts")
# MIMIC-CXR's split file calls the validation split "validate".
SPLIT_ALIASES = {"validate": "val", "valid": "val", "validation": "val"}


def load_dataset_file(path: str | os.PathLike) -> dict[str, list[dict]]:
    """Read a dataset file into ``{split: [record, ...]}``.

    ``.pkl``/``.pickle``: the seed's ``datasets.pkl``, read with an unpickler that allows
    plain containers, strings, numbers and NumPy arrays only. ``.jsonl``: one JSON object
    per line with a ``split`` key. ``.csv``: columns ``split, image_path, report, labels``
    (14 ``;``-separated values, blank = not mentioned), further columns kept.
    Records are returned as read; ``validate_dataset`` checks and normalises them.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: dataset file not found (config key 'data_path')")
    suffix = path.suffix.lower()
    if suffix in (".pkl", ".pickle"):
        return _load_pickle(path)
    if suffix == ".jsonl":
        return _load_jsonl(path)
    if suffix == ".csv":
        return _load_csv(path)
    raise DataError(f"{path}: unknown dataset file type '{suffix}' (use .pkl, .jsonl or .csv)")


def _load_pickle(path: Path) -> dict[str, list[dict]]:
    # pure-Python restricted unpickler: see safe_pickle.py
    data = load_plain_pickle(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a dict of splits (train/val/test), got {type(data).__name__}")
    return data


def _split_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: key 'split' must be a non-empty string, got {quote(value)}")
    value = value.strip().lower()
    return SPLIT_ALIASES.get(value, value)


def _load_jsonl(path: Path) -> dict[str, list[dict]]:
    splits: dict[str, list[dict]] = {}
    lines = read_text_limited(path, MAX_MANIFEST_BYTES, error=DataError).splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON ({exc.msg})") from None
        except (ValueError, RecursionError) as exc:  # a 5000-digit number, 100000 nested brackets
            raise DataError(f"{where}: unusable JSON ({type(exc).__name__}: {one_line(exc, 120)})") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if "split" not in record:
            raise DataError(f"{where}: key 'split' is missing")
        split = _split_name(record.pop("split"), where)
        splits.setdefault(split, []).append(record)
    return splits


def _parse_csv_labels(cell: str, where: str) -> list[float | None]:
    values: list[float | None] = []
    for part in cell.split(";"):
        part = part.strip()
        if not part:
            values.append(None)
            continue
        try:
            values.append(float(part))
        except ValueError:
            raise DataError(f"{where}: key 'labels': {quote(part)} is not a number") from None
    return values


def _load_csv(path: Path) -> dict[str, list[dict]]:
    try:
        # All cells as strings, blanks kept as "" (a blank label is NaN, decided below).
        table = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.EmptyDataError, UnicodeDecodeError, ValueError, OverflowError) as exc:  # ParserError too
        raise DataError(f"{path}: not a readable CSV manifest ({one_line(exc, 160)})") from None
    missing = [c for c in ("split", "image_path", "report", "labels") if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (need split, image_path, report, labels)")
    splits: dict[str, list[dict]] = {}
    for row_number, row in enumerate(table.to_dict("records")):
        where = f"{path}: line {row_number + 2}"  # 1-based, after the header
        record: dict[str, Any] = {
            "image_path": row["image_path"],
            "report": row["report"],
            "labels": _parse_csv_labels(row["labels"], where),
        }
        for key, value in row.items():
            if key in record or key == "split" or value == "":
                continue
            # isascii: "²".isdigit() is True but int("²") fails
            record[key] = int(value) if key in ("study_id", "subject_id") and value.isascii() and value.isdigit() \
                else value
        splits.setdefault(_split_name(row["split"], where), []).append(record)
    return splits
