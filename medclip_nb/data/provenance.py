"""What `phantom`, `prepare` and `data` wrote, so that they never delete what they did not.

- A phantom folder is ours when it holds `phantom.json` (the phantom's marker: generator,
  version, studies, size, seed, complete). A complete phantom of other parameters is replaced
  only when forced (`--force`, config key `force`); an incomplete one (an interrupted run) is
  redone. Replacing deletes only the files its listing `phantom_files.sha256` names (the
  SHA-256 of every file the generator wrote), each only while it still has that hash; a file
  the listing does not name, or one changed since, stops the replacement with one line naming
  it, before anything is deleted. (A phantom of an earlier version, written without a listing,
  is listed by its own split table.)
- A prepared dataset is ours when `prepare_report.json` sits beside it; `prepare` records the
  phantom parameters it read (`source_phantom`). When that phantom is replaced the datasets
  prepared from it in its folder (or one level below) are deleted, and any other copy is
  refused as stale when it is loaded (`check_not_stale`). Image stores built from a replaced
  dataset are refused by the store's own staleness check (store.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from medclip_nb.errors import DataError
from medclip_nb.files import sha256_file

PHANTOM_MANIFEST = "phantom.json"
PHANTOM_FILES = "phantom_files.sha256"  # `<sha256>  <path>` of every file the generator wrote
LEGACY_TABLES = ("mimic-cxr-2.0.0-split.csv.gz", "mimic-cxr-2.0.0-chexpert.csv.gz", "mimic-cxr-2.0.0-negbio.csv.gz",
                 "mimic-cxr-2.0.0-metadata.csv.gz", "sentence-label.csv.gz")
PREPARE_REPORT = "prepare_report.json"
PHANTOM_PARAMS = ("generator", "version", "finding_regions", "generator_sha256", "studies", "size", "seed",
                  "test_studies")
# What the user chose: a phantom that differs only by generator version is ours to rewrite.
USER_PHANTOM_PARAMS = ("studies", "size", "seed", "test_studies")


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


def read_phantom_listing(folder: Path) -> dict[str, str | None] | None:
    """{path relative to `folder`: SHA-256} of what the generator wrote there, from its listing;
    for a phantom written before listings, the images and reports its split table names (no
    hashes) and the tables; None when neither can be read."""
    try:
        text = (folder / PHANTOM_FILES).read_text(encoding="utf-8")
        return {name: digest for digest, name in (line.split("  ", 1) for line in text.splitlines())}
    except FileNotFoundError:
        pass
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    try:
        import pandas as pd

        table = pd.read_csv(folder / "mimic-cxr-2.0.0-split.csv.gz", dtype=str)
        rows = zip(table["subject_id"], table["study_id"], table["dicom_id"])
    except (OSError, ValueError, KeyError, EOFError):
        return None
    listed: dict[str, str | None] = {name: None for name in LEGACY_TABLES}
    for subject, study, dicom in rows:
        folder_name = f"files/p{subject[:2]}/p{subject}"
        listed[f"{folder_name}/s{study}.txt"] = None
        listed[f"{folder_name}/s{study}/{dicom}.jpg"] = None
        listed[f"{folder_name}/s{study}/{dicom}.regions.json"] = None  # frontal images of phantoms with regions
    return listed


def removal_problem(folder: Path, listed: dict[str, str | None]) -> str | None:
    """Why the phantom in `folder` cannot be deleted file by file: a file under `files/` that
    `listed` does not name, or a listed file whose content changed; None when it can."""
    files_dir = folder / "files"
    if files_dir.exists() and (files_dir.is_symlink() or not files_dir.is_dir()):
        return f"{files_dir} is not the folder the generator wrote"
    for path in sorted(files_dir.rglob("*")) if files_dir.is_dir() else ():
        if path.is_dir() and not path.is_symlink():
            continue
        name = path.relative_to(folder).as_posix()
        if name not in listed or path.is_symlink() or not path.is_file():
            return f"it holds {path}, which the phantom generator did not write; move it away first"
    for name, digest in listed.items():
        path = folder / name
        if digest is not None and path.is_file() and sha256_file(path, error=DataError) != digest:
            return f"{path} changed since the generator wrote it; move it away first"
    return None


def delete_listed(folder: Path, listed: dict[str, str | None]) -> None:
    """Delete the listed files of a phantom, then the folders under files/ left empty."""
    for name in listed:
        (folder / name).unlink(missing_ok=True)
    files_dir = folder / "files"
    if files_dir.is_dir():
        for path in sorted(files_dir.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        if not any(files_dir.iterdir()):
            files_dir.rmdir()


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
