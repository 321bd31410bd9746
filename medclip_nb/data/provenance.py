"""What `phantom`, `prepare` and `data` wrote, so that they never delete what they did not.

- A phantom folder is ours when it holds `phantom.json` (the phantom's marker: generator,
  version, studies, size, seed, complete). A complete phantom of other parameters is replaced
  only when forced (`--force`, config key `force`); an incomplete one (an interrupted run) is
  redone. Its `files/` tree is deleted only when every file in it has a name the generator
  writes; anything else there stops the replacement with one line naming it.
- A prepared dataset is ours when `prepare_report.json` sits beside it; `prepare` records the
  phantom parameters it read (`source_phantom`). When that phantom is replaced the datasets
  prepared from it in its folder (or one level below) are deleted, and any other copy is
  refused as stale when it is loaded (`check_not_stale`). Image stores built from a replaced
  dataset are refused by the store's own staleness check (store.py).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from medclip_nb.errors import DataError

PHANTOM_MANIFEST = "phantom.json"
PREPARE_REPORT = "prepare_report.json"
PHANTOM_PARAMS = ("generator", "version", "finding_regions", "studies", "size", "seed", "test_studies")
# What the user chose: a phantom that differs only by generator version is ours to rewrite.
USER_PHANTOM_PARAMS = ("studies", "size", "seed", "test_studies")
# files/pXX/pSUBJECT/sSTUDY.txt, files/pXX/pSUBJECT/sSTUDY/<dicom_id>.jpg and <dicom_id>.regions.json
_PHANTOM_FILE = re.compile(r"p\d\d/p\d+/s\d+(\.txt|/[0-9a-f]{8}(-[0-9a-f]{8}){4}(\.jpg|\.regions\.json))")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def phantom_record(folder: str | os.PathLike) -> dict | None:
    """The phantom marker of `folder`, or None when there is none or it is unreadable."""
    recorded = _read_json(Path(folder) / PHANTOM_MANIFEST)
    return recorded if isinstance(recorded, dict) else None


def phantom_params(recorded: dict | None) -> dict | None:
    """The parameters that decide a phantom's bytes, of a complete phantom only."""
    if not recorded or recorded.get("complete") is not True:
        return None
    return {k: recorded.get(k) for k in PHANTOM_PARAMS}


def user_params(params: dict) -> dict:
    """The user's phantom parameters (a phantom written before test_studies existed had 0)."""
    return {k: params.get(k) if params.get(k) is not None or k != "test_studies" else 0 for k in USER_PHANTOM_PARAMS}


def describe_phantom(params: dict) -> str:
    return f"{params.get('studies')} studies, {params.get('size')} px, seed {params.get('seed')}"


def foreign_file(files_dir: Path) -> Path | None:
    """The first file under a phantom's `files/` that the generator does not write, or None."""
    if not files_dir.exists():
        return None
    if not files_dir.is_dir():
        return files_dir
    for path in sorted(files_dir.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        relative = path.relative_to(files_dir).as_posix()
        if not path.is_file() or path.is_symlink() or not _PHANTOM_FILE.fullmatch(relative):
            return path
    return None


def prepare_record(data_path: str | os.PathLike) -> dict | None:
    """The `prepare_report.json` beside a dataset file (None: not prepared by us)."""
    record = _read_json(Path(data_path).parent / PREPARE_REPORT)
    return record if isinstance(record, dict) else None


def stale_reason(data_path: str | os.PathLike) -> str | None:
    """Why a dataset prepared from a phantom no longer matches that phantom, or None."""
    record = prepare_record(data_path)
    source = record.get("source_phantom") if record else None
    if not isinstance(source, dict) or not isinstance(record.get("mimic_root"), str):
        return None
    current = phantom_params(phantom_record(record["mimic_root"]))
    if current == source:
        return None
    now = f"now holds a phantom of {describe_phantom(current)}" if current else "no longer holds a complete phantom"
    return (f"{data_path}: prepared from the phantom of {describe_phantom(source)} in {record['mimic_root']}, "
            f"which {now}; "
            f"run `python -m medclip_nb data` (it prepares it again) or give another data_path")


def check_not_stale(data_path: str | os.PathLike) -> None:
    reason = stale_reason(data_path)
    if reason:
        raise DataError(reason)


def remove_derived_datasets(phantom_dir: Path, params: dict, log=print) -> list[Path]:
    """Delete the datasets `prepare` wrote from the phantom of `params` in `phantom_dir` (its
    folder and the folders one level below): each `datasets.pkl` with its prepare_report.json."""
    removed = []
    candidates = [phantom_dir, *(p for p in sorted(phantom_dir.iterdir()) if p.is_dir() and p.name != "files")]
    for folder in candidates:
        report_path = folder / PREPARE_REPORT
        record = _read_json(report_path)
        if not isinstance(record, dict) or record.get("source_phantom") != params:
            continue
        for name in ("datasets.pkl", PREPARE_REPORT):
            if (folder / name).is_file():
                (folder / name).unlink()
                removed.append(folder / name)
    if removed:
        log(f"Removed the datasets prepared from the replaced phantom: {', '.join(map(str, removed))}")
    return removed
