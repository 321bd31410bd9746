"""`python -m medclip_nb convert`: a dataset pickle, once, into a JSON Lines manifest.

A manifest is read by the JSON parser alone (nothing in it can name code or ask for memory it
does not hold) and loads in a fraction of the time the pure-Python unpickler
(`safe_pickle.py`) needs. Every record is checked as training would check it before anything
is written; the output is written to a temporary file and renamed, and an existing file is
never replaced.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from medclip_nb.data.loading import REQUIRED_SPLITS, UNPAIRED_SPLITS, load_dataset_file
from medclip_nb.data.validation import validate_dataset
from medclip_nb.errors import DataError, os_error_reason
from medclip_nb.files import check_output
from medclip_nb.paths import resolve, shown


def _json_value(value: Any, where: str) -> Any:
    """Plain JSON data for a record value (NaN -> null), or a DataError naming the record."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return None if math.isnan(value) else value if math.isfinite(value) else _refuse(where, value)
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(v, where) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _json_value(v, f"{where}.{k}") for k, v in value.items()}
    return _refuse(where, value)


def _refuse(where: str, value: Any) -> Any:
    raise DataError(f"{where}: a {type(value).__name__} value has no JSON form; fix the pickle or drop the key")


def _rebase_image_paths(splits: dict, source_dir: Path, target_dir: Path) -> int:
    """Relative image paths are taken from the dataset file's folder: for a manifest written to
    another folder, rewrite them relative to it so they name the same files. Returns how many."""
    if os.path.realpath(source_dir) == os.path.realpath(target_dir):
        return 0
    moved = 0
    for records in splits.values():
        for record in records if isinstance(records, list) else ():
            path = record.get("image_path") if isinstance(record, dict) else None
            if isinstance(path, str) and path and not os.path.isabs(path) and not path.startswith("~"):
                record["image_path"] = os.path.relpath(source_dir / path, target_dir)
                moved += 1
    return moved


def convert_to_jsonl(data_path: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the records of `data_path` (a .pkl) as `out` (default: the same name, .jsonl):
    one JSON object per record with its `split`, in split order; relative image paths are
    rewritten for `out`'s folder. Returns the path written."""
    source = resolve(data_path)
    target = resolve(out) if out is not None else source.with_suffix(".jsonl")
    if target.suffix.lower() != ".jsonl":
        raise DataError(f"--out {target}: the manifest's name must end in .jsonl")
    if target.exists() or target.is_symlink():
        raise DataError(f"--out {target}: exists; move it away or choose another name (it is never replaced)")
    check_output(target, flag="--out", inputs=(source,), error=DataError)
    splits = load_dataset_file(source)
    for warning in validate_dataset(splits, source):
        print(f"warning: {warning}")
    moved = _rebase_image_paths(splits, source.parent, target.parent)
    if moved:
        print(f"rewrote {moved} relative image_path values for {target.parent} (they were relative to {source.parent}; "
              f"with image_root set, give convert an --out in the pickle's folder instead)")

    lines = []
    for split in (*REQUIRED_SPLITS, *UNPAIRED_SPLITS):  # the splits validate_dataset checked; others it ignores
        for index, record in enumerate(splits.get(split, [])):
            where = f"{source}: {split}[{index}]"
            if "split" in record:
                raise DataError(f"{where}: key 'split' clashes with the manifest's split column")
            if not all(isinstance(k, str) for k in record):
                raise DataError(f"{where}: a key that is not a string has no JSON form")
            row = {"split": split, **{k: _json_value(v, f"{where}: key '{k}'") for k, v in record.items()}}
            lines.append(json.dumps(row, allow_nan=False) + "\n")
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(lines)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:
        raise DataError(f"could not write {target}: {os_error_reason(e)}; nothing was written") from None
    finally:
        tmp.unlink(missing_ok=True)
    print(f"converted {len(lines)} records: {shown(source)} -> {shown(target)}")
    return target
