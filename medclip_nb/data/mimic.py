"""Import an official MIMIC-CXR-JPG tree (with the MIMIC-CXR reports) into `datasets.pkl`.

Layout read (MIMIC-CXR-JPG v2.x, reports unpacked into the same `files/` tree):

    root/files/p10/p10000032/s50414267/<dicom_id>.jpg
    root/files/p10/p10000032/s50414267.txt
    root/mimic-cxr-2.0.0-split.csv.gz      dicom_id, study_id, subject_id, split
    root/mimic-cxr-2.0.0-chexpert.csv.gz   subject_id, study_id, 14 CheXpert labels
    root/mimic-cxr-2.0.0-metadata.csv.gz   dicom_id, ..., ViewPosition, ...

One record per kept image. Images are kept when their ViewPosition is one of
`frontal_views`; the official split is followed ('validate' becomes 'val'). The report text
is FINDINGS + IMPRESSION; when a report has neither, the last paragraph of the report is
used (the usual fallback), and when that is empty too the study is dropped. Every dropped
image is counted under the first reason that applies, in this order: `blank_view`,
`lateral` (any view not in `frontal_views`), `no_report_text` (also a missing report
file), `missing_image`, `unreadable_image` (zero bytes, or PIL cannot identify it from its
header; truncated image data is caught later, when the image is decoded).

Unpaired training data (MedCLIP's decoupled images and texts; see unpaired.py) goes to two
extra splits, written only when they have records:
- `train_images`: image-only records (`report` ""). Frontal train images of studies dropped
  only for `no_report_text` that have a CheXpert row (labels but no report), and, with
  `unpaired_fraction`, the images of half of the moved studies.
- `train_texts`: text-only records, with `unpaired_fraction`: one per report sentence
  (`text.split_sentences`) of the other half of the moved studies. Each sentence carries
  its whole study's labels, an approximation: "no pneumothorax." is labelled with the
  study's edema too (MIMIC-CXR has no sentence-level labels).
`unpaired_fraction` moves about that fraction of the labelled train studies out of the
paired train split, whole patients at a time (seeded by `unpaired_seed`), so the paired and
the unpaired training data share no patient.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from medclip_nb.data.mimic_reports import extract_sections, read_report, report_text  # noqa: F401 (re-exported)
from medclip_nb.data.provenance import PREPARE_REPORT, phantom_params, phantom_record
from medclip_nb.data.regions import attach_regions
from medclip_nb.errors import ConfigError, DataError
from medclip_nb.files import write_bytes_atomic, write_json_atomic
from medclip_nb.labels import CHEXPERT_LABELS
from medclip_nb.paths import resolve, shown
from medclip_nb.progress import progress
from medclip_nb.text import (
    PREPARED_NAME,
    find_source_table,
    read_sentence_labels,
    split_sentences,
    write_sentence_labels,
)

SPLIT_TABLE = "mimic-cxr-2.0.0-split.csv.gz"
CHEXPERT_TABLE = "mimic-cxr-2.0.0-chexpert.csv.gz"
NEGBIO_TABLE = "mimic-cxr-2.0.0-negbio.csv.gz"  # the same columns; MedCLIP's process_mimic_cxr.py reads it
LABEL_TABLES = {"chexpert": CHEXPERT_TABLE, "negbio": NEGBIO_TABLE}
METADATA_TABLE = "mimic-cxr-2.0.0-metadata.csv.gz"
METADATA_COLUMNS: tuple[str, ...] = (
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning",
)
SPLIT_NAMES = {"train": "train", "validate": "val", "test": "test"}
DROP_REASONS = ("blank_view", "lateral", "no_report_text", "missing_image", "unreadable_image")

# Section header: an upper-case name at the start of a line (indentation allowed), then ':'.
# Jobs smaller than this run in-process when num_workers is left to its default.
_AUTO_PARALLEL_MIN = 2000


def check_image(path: str) -> str:
    """"ok", "missing_image" or "unreadable_image" (zero bytes, or no image header PIL knows)."""
    try:
        if os.path.getsize(path) == 0:
            return "unreadable_image"
    except OSError:
        return "missing_image"
    try:
        with Image.open(path) as im:  # reads the header only
            width, height = im.size
    except (UnidentifiedImageError, OSError, ValueError):
        return "unreadable_image"
    return "ok" if width > 0 and height > 0 else "unreadable_image"


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------


def _read_table(path: Path, required: Sequence[str], dtype: dict, optional: Sequence[str] = ()) -> pd.DataFrame:
    """Read the needed columns of a gzipped MIMIC table; one-line DataError naming the file."""
    wanted = set(required) | set(optional)
    try:
        frame = pd.read_csv(path, usecols=lambda c: c in wanted, dtype=dtype)
    except (OSError, EOFError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot read MIMIC-CXR table {path}: {reason}") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"MIMIC-CXR table {path} lacks column(s): {', '.join(missing)}")
    return frame


def _require_unique(frame: pd.DataFrame, key: str, path: Path) -> None:
    dupes = frame[key][frame[key].duplicated()]
    if len(dupes):
        raise DataError(f"MIMIC-CXR table {path}: {len(dupes)} duplicated {key} value(s), e.g. {dupes.iloc[0]}")


def _check_label_values(labels: pd.DataFrame, path: Path) -> None:
    values = labels[list(CHEXPERT_LABELS)].to_numpy(dtype=np.float64)
    bad = ~(np.isnan(values) | np.isin(values, (1.0, 0.0, -1.0)))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(f"MIMIC-CXR table {path}: column '{CHEXPERT_LABELS[col]}' holds {values[row, col]!r}; "
                        "allowed are 1.0, 0.0, -1.0 or blank")


def _study_paths(base: str, subject: pd.Series, study: pd.Series) -> pd.Series:
    """base/pXX/pSUBJECT/sSTUDY for each row, vectorised (XX = first two digits of the subject)."""
    subject = subject.astype(str)
    return base + "/p" + subject.str[:2] + "/p" + subject + "/s" + study.astype(str)


def parallel_map(func: Callable, items: list, workers: int, desc: str, unit: str) -> list:
    """func over items in order, with a progress display; a process pool when workers > 1."""
    if not items:
        return []
    if workers <= 1 or len(items) < 2:
        return list(progress(map(func, items), total=len(items), desc=desc, unit=unit))
    chunksize = max(1, min(1024, len(items) // (workers * 8)))
    with Pool(workers) as pool:
        return list(progress(pool.imap(func, items, chunksize=chunksize), total=len(items), desc=desc, unit=unit))


def worker_count(num_workers: int | None, jobs: int) -> int:
    if num_workers is not None:
        if num_workers < 0:
            raise ConfigError(f"config key 'num_workers': must be >= 0, got {num_workers}")
        return num_workers
    if jobs < _AUTO_PARALLEL_MIN:
        return 0
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


# --------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------


def _image_records(frame: pd.DataFrame, base: str) -> list[dict]:
    """One datasets.pkl record per image row (report, labels and ids of its study)."""
    paths = (_study_paths(base, frame["subject_id"], frame["study_id"]) + "/" + frame["dicom_id"] + ".jpg").tolist()
    labels = frame[list(CHEXPERT_LABELS)].to_numpy(dtype=np.float64).tolist()
    columns = zip(paths, frame["report"].fillna("").tolist(), labels, frame["study_id"].tolist(),
                  frame["subject_id"].tolist(), frame["dicom_id"].tolist(), frame["view"].tolist())
    return [
        {"image_path": path, "report": text, "labels": label_row, "study_id": int(study_id),
         "subject_id": int(subject_id), "dicom_id": dicom_id, "view": view_position}
        for path, text, label_row, study_id, subject_id, dicom_id, view_position in columns
    ]


def _sentence_records(studies: pd.DataFrame) -> list[dict]:
    """Text-only records: one per report sentence, each with its whole study's labels."""
    labels = studies[list(CHEXPERT_LABELS)].to_numpy(dtype=np.float64).tolist()
    return [
        {"report": sentence, "labels": list(label_row), "study_id": int(study_id), "subject_id": int(subject_id)}
        for text, label_row, study_id, subject_id in zip(studies["report"].tolist(), labels,
                                                         studies["study_id"].tolist(), studies["subject_id"].tolist())
        for sentence in split_sentences(text)
    ]


def _pick_unpaired_studies(kept: pd.DataFrame, labelled: pd.Series, fraction: float,
                           seed: int) -> tuple[set[int], set[int]]:
    """(study ids for train_images, study ids for train_texts): about `fraction` of the
    labelled train studies, taken whole patients at a time in a seeded order until the count
    is reached; the first half (rounded up) of them in that order give images, the rest texts."""
    train = kept[(kept["split"] == "train") & kept["study_id"].isin(labelled)]
    studies = train.drop_duplicates("study_id")
    target = round(fraction * len(studies))
    if target == 0:
        return set(), set()
    subjects = np.sort(studies["subject_id"].unique())
    order = np.random.default_rng(seed).permutation(subjects)
    by_subject = studies.groupby("subject_id")["study_id"].apply(sorted)
    moved: list[int] = []
    for subject in order:
        if len(moved) >= target:
            break
        moved.extend(by_subject[subject])
    half = (len(moved) + 1) // 2
    return set(moved[:half]), set(moved[half:])


# --------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------


def _carry_sentence_labels(root: Path, out: Path) -> dict | None:
    """A sentence-label table in the MIMIC root (MedCLIP's `sentence-label.csv[.gz]`; the phantom
    writes one), checked and written with its sentences in matching form beside datasets.pkl
    (sentence_labels.py); None when the root has none."""

    source = find_source_table(root)
    if source is None:
        # One written by an earlier import into this folder no longer matches its datasets.pkl.
        (out / PREPARED_NAME).unlink(missing_ok=True)
        return None
    table = read_sentence_labels(source)
    write_sentence_labels(out / PREPARED_NAME, table)
    return {"source": str(source), "path": str(out / PREPARED_NAME), "sentences": len(table)}


def prepare_mimic(mimic_root, out, frontal_views: Iterable[str] = ("PA", "AP"), store_size: int | None = None,
                  num_workers: int | None = None, reports_root=None, unpaired_fraction: float = 0.0,
                  unpaired_seed: int = 0, labels: str = "chexpert") -> dict:
    """Import a MIMIC-CXR-JPG tree into `out/datasets.pkl` and return the import report.

    `datasets.pkl` = {"train", "val", "test"}: lists of dicts with `image_path` (relative
    to `out` when possible, else absolute), `report` (FINDINGS + IMPRESSION), `labels` (14
    floats in CHEXPERT_LABELS order, NaN = blank; all NaN for a study absent from the
    CheXpert table), `study_id`, `subject_id` (ints), `dicom_id` and `view`; from a phantom tree also
    `regions` and `boxes` where the image has finding regions (data/regions.py). The report
    (kept counts per split, dropped counts per reason) is printed and written to
    `out/prepare_report.json`. Report files and image headers are read on `num_workers`
    processes (default: all cores for large trees). `reports_root` is where the reports'
    `files/` tree lies when it is not `mimic_root`. With `store_size`, the uint8 image store
    is built too (`medclip_nb.data.store.build_store`). Relative paths are taken from the
    repository root. A sentence-label table in the root is carried to
    `out/sentence_labels.csv.gz` (`_carry_sentence_labels`). The unpaired splits `train_images` /
    `train_texts` and `unpaired_fraction` / `unpaired_seed` are described in the module docstring;
    the report's `unpaired` entry counts them. `labels` picks the label table: 'chexpert' (the
    CheXpert labeler's) or 'negbio' (NegBio's, as MedCLIP's process_mimic_cxr.py reads it).
    """
    if labels not in LABEL_TABLES:
        raise ConfigError(f"config key 'mimic_labels': {labels!r} is not one of {', '.join(LABEL_TABLES)}")
    source = _checked_source(mimic_root, out, frontal_views, reports_root, unpaired_fraction, LABEL_TABLES[labels])
    table, chexpert = _read_tables(source.root, LABEL_TABLES[labels])
    reason, absolute = _drop_reasons(table, source, num_workers)
    kept = table[reason == ""]
    if kept.empty:
        counts = ", ".join(f"{r} {int((reason == r).sum())}" for r in DROP_REASONS)
        raise DataError(f"no usable images in {source.root} (views kept: {', '.join(source.views)}; "
                        f"dropped: {counts})")
    kept = kept.merge(chexpert[["study_id", *CHEXPERT_LABELS]], on="study_id", how="left", sort=False)
    split = _split_off_unpaired(table, reason, absolute, kept, chexpert, unpaired_fraction, unpaired_seed,
                                num_workers)
    datasets, path_style = _write_datasets(source, split)
    extra = {"label_table": labels, "store_size": store_size,
             "sentence_labels": _carry_sentence_labels(source.root, source.out),
             "unpaired_fraction": unpaired_fraction, "unpaired_seed": unpaired_seed}
    report = _import_report(source, table, reason, chexpert, split, datasets, path_style, extra)
    write_json_atomic(source.out / "prepare_report.json", report, error=DataError)
    _print_report(report, source, split)
    if store_size is not None:
        from medclip_nb.data.store_build import build_store  # torch: the import itself runs without it

        build_store(source.out / "datasets.pkl", None, size=store_size, num_workers=num_workers)
    return report


@dataclass(frozen=True)
class _Source:
    root: Path  # the MIMIC-CXR-JPG root (tables, images)
    out: Path  # where datasets.pkl goes
    files_dir: Path  # root/files: the images
    report_files: Path  # the reports' files/ tree
    views: list[str]  # ViewPosition values kept


def _checked_source(mimic_root, out, frontal_views, reports_root, unpaired_fraction, label_table) -> _Source:
    """Every input checked before any table is read: one-line errors naming the folder, file or key."""
    if isinstance(unpaired_fraction, bool) or not isinstance(unpaired_fraction, (int, float)) \
            or not 0 <= unpaired_fraction < 1:
        raise ConfigError(f"prepare --unpaired-fraction: must be a number in [0, 1), got {unpaired_fraction!r}")
    if mimic_root is None:
        raise DataError("MIMIC-CXR root not given: set mimic_root (--mimic-root)")
    root = resolve(mimic_root)
    out = resolve(out)
    if not root.is_dir():
        raise DataError(f"MIMIC-CXR root folder not found: {root}")
    files_dir = root / "files"
    if not files_dir.is_dir():
        raise DataError(f"MIMIC-CXR images folder not found: {files_dir}")
    report_files = (resolve(reports_root) if reports_root is not None else root) / "files"
    if not report_files.is_dir():
        raise DataError(f"MIMIC-CXR reports folder not found: {report_files}")
    for name in (SPLIT_TABLE, METADATA_TABLE, label_table):
        if not (root / name).is_file():
            raise DataError(f"MIMIC-CXR table not found: {root / name}")
    if (out / "datasets.pkl").exists() and not (out / PREPARE_REPORT).is_file():
        raise DataError(f"refusing to overwrite {out / 'datasets.pkl'}: it was not written by prepare (no "
                        f"{PREPARE_REPORT} beside it); move it away or choose another output folder")
    views = [v for v in (frontal_views or ()) if isinstance(v, str) and v.strip()]
    if not views:
        raise ConfigError(f"config key 'frontal_views': needs at least one ViewPosition, got {frontal_views!r}")
    return _Source(root, out, files_dir, report_files, [v.strip() for v in views])


def _read_tables(root: Path, label_table: str = CHEXPERT_TABLE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per image: split table + view, the label table), checked."""
    split_path, meta_path, chexpert_path = root / SPLIT_TABLE, root / METADATA_TABLE, root / label_table
    ids = {"subject_id": "int64", "study_id": "int64"}
    tables = progress(total=3, desc="prepare: reading tables", unit="table")
    table = _read_table(split_path, ("dicom_id", "study_id", "subject_id", "split"),
                        {"dicom_id": str, "split": str, **ids})
    tables.update()
    meta = _read_table(meta_path, ("dicom_id", "ViewPosition"), {"dicom_id": str, "ViewPosition": str})
    tables.update()
    chexpert = _read_table(chexpert_path, ("study_id", *CHEXPERT_LABELS),
                           {"study_id": "int64", **{c: "float64" for c in CHEXPERT_LABELS}})
    tables.update()
    tables.close()
    _require_unique(table, "dicom_id", split_path)
    _require_unique(meta, "dicom_id", meta_path)
    _require_unique(chexpert, "study_id", chexpert_path)
    _check_label_values(chexpert, chexpert_path)

    split_name = table["split"].map(SPLIT_NAMES)
    if split_name.isna().any():
        bad = sorted(set(table["split"][split_name.isna()].astype(str)))
        raise DataError(f"MIMIC-CXR table {split_path}: unknown split value(s) {', '.join(bad)}; "
                        f"expected {', '.join(SPLIT_NAMES)}")
    table = table.assign(split=split_name)
    # An image absent from the metadata has no known view: it counts as a blank view.
    table = table.merge(meta[["dicom_id", "ViewPosition"]], on="dicom_id", how="left", sort=False)
    table["view"] = table["ViewPosition"].fillna("").astype(str).str.strip()
    return table, chexpert


def _drop_reasons(table: pd.DataFrame, source: _Source, num_workers: int | None) -> tuple[pd.Series, pd.Series]:
    """(the first drop reason of each image, "" = kept; each image's absolute path). Adds the
    study's report text to `table` (columns report, report_source)."""
    view = table["view"]
    reason = pd.Series("", index=table.index, dtype=object)
    reason[view == ""] = "blank_view"
    reason[(reason == "") & ~view.isin(source.views)] = "lateral"

    # Report text, once per study of the images still in.
    alive = reason == ""
    studies = table.loc[alive, ["subject_id", "study_id"]].drop_duplicates("study_id")
    report_paths = (_study_paths(str(source.report_files), studies["subject_id"], studies["study_id"])
                    + ".txt").tolist()
    workers = worker_count(num_workers, len(report_paths))
    texts = parallel_map(read_report, report_paths, workers, "prepare: reading reports", "report")
    study_text = pd.DataFrame(texts, columns=["report", "report_source"], index=studies["study_id"].to_numpy())
    table[["report", "report_source"]] = table.join(study_text, on="study_id")[["report", "report_source"]]
    reason[alive & (table["report"].fillna("") == "")] = "no_report_text"

    # Image files: present and with a header PIL recognises.
    study_dirs = _study_paths(str(source.files_dir), table["subject_id"], table["study_id"])
    absolute = study_dirs + "/" + table["dicom_id"] + ".jpg"
    alive = reason == ""
    image_paths = absolute[alive].tolist()
    workers = worker_count(num_workers, len(image_paths))
    status = pd.Series(parallel_map(check_image, image_paths, workers, "prepare: checking images", "img"),
                       index=absolute[alive].index, dtype=object)
    reason[status.index[status != "ok"]] = status[status != "ok"]
    return reason, absolute


@dataclass
class _Split:
    """The kept images, after the unpaired studies have been moved out (module docstring)."""

    kept: pd.DataFrame
    unpaired_images: pd.DataFrame
    unpaired_texts: pd.DataFrame
    no_text_images: pd.DataFrame
    to_images: set[int]
    to_texts: set[int]
    moved_subjects: int


def _split_off_unpaired(table, reason, absolute, kept, chexpert, fraction, seed, num_workers) -> _Split:
    # Train images dropped only for their missing report text: image-only if they have labels.
    no_text = (reason == "no_report_text") & (table["split"] == "train")
    no_text_status = pd.Series(parallel_map(check_image, absolute[no_text].tolist(),
                                             worker_count(num_workers, int(no_text.sum())),
                                             "prepare: checking images without report text", "img"),
                               index=absolute[no_text].index, dtype=object)
    no_text_images = table.loc[no_text_status.index[no_text_status == "ok"]]
    no_text_images = no_text_images.merge(chexpert[["study_id", *CHEXPERT_LABELS]], on="study_id", sort=False)
    to_images, to_texts = _pick_unpaired_studies(kept, chexpert["study_id"], fraction, seed)
    moved = kept["study_id"].isin(to_images | to_texts)
    if moved.any() and not (kept.loc[~moved, "split"] == "train").any():
        raise DataError(f"prepare --unpaired-fraction {fraction}: no paired training study would be left")
    return _Split(
        kept=kept[~moved],
        unpaired_images=pd.concat([no_text_images, kept[kept["study_id"].isin(to_images)]], ignore_index=True),
        unpaired_texts=kept[kept["study_id"].isin(to_texts)].drop_duplicates("study_id"),
        no_text_images=no_text_images, to_images=to_images, to_texts=to_texts,
        moved_subjects=int(kept.loc[moved, "subject_id"].nunique()),
    )


def _write_datasets(source: _Source, split: _Split) -> tuple[dict[str, list[dict]], str]:
    """Write out/datasets.pkl (atomically); return its splits and how image paths are written."""
    source.out.mkdir(parents=True, exist_ok=True)
    try:  # paths relative to `out` keep the dataset movable together with the images
        base = os.path.relpath(source.files_dir, source.out).replace(os.sep, "/")
        path_style = "relative to out"
    except ValueError:  # another drive on Windows
        base, path_style = str(source.files_dir), "absolute"
    datasets: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for record, name in zip(_image_records(split.kept, base), split.kept["split"].tolist()):
        datasets[name].append(record)
    unpaired = {
        "train_images": [{**r, "report": ""} for r in _image_records(split.unpaired_images, base)],
        "train_texts": _sentence_records(split.unpaired_texts),
    }
    datasets.update({name: records for name, records in unpaired.items() if records})
    if phantom_record(source.root) is not None:  # the phantom writes each frontal image's finding regions
        for records in datasets.values():
            attach_regions(records, source.out)
    write_bytes_atomic(source.out / "datasets.pkl", pickle.dumps(datasets, protocol=4), error=DataError)
    return datasets, path_style


def _import_report(source: _Source, table, reason, chexpert, split: _Split, datasets, path_style,
                   extra: dict) -> dict:
    kept = split.kept
    unlabeled = ~kept["study_id"].isin(chexpert["study_id"])
    by_split = kept.groupby("split", sort=False)
    return {
        "mimic_root": str(source.root),
        "label_table": extra["label_table"],
        # The phantom parameters read (None for real MIMIC-CXR): a dataset of a replaced phantom is stale.
        "source_phantom": phantom_params(phantom_record(source.root)),
        "datasets": str(source.out / "datasets.pkl"),
        "image_paths": path_style,
        "frontal_views": source.views,
        "images_in_split_table": int(len(table)),
        "kept": {name: len(datasets[name]) for name in ("train", "val", "test")},
        "kept_total": int(len(kept)),
        "kept_studies": {name: int(by_split["study_id"].nunique().get(name, 0)) for name in datasets},
        "kept_subjects": {name: int(by_split["subject_id"].nunique().get(name, 0)) for name in datasets},
        "dropped": {r: int((reason == r).sum()) for r in DROP_REASONS},
        "studies_with_last_paragraph_text":
            int(kept.loc[kept["report_source"] == "last_paragraph", "study_id"].nunique()),
        "studies_without_chexpert_labels": int(kept.loc[unlabeled, "study_id"].nunique()),
        "images_with_finding_regions": {name: sum(bool(r.get("boxes")) for r in records)
                                        for name, records in datasets.items()},
        "store_size": extra["store_size"],
        "sentence_labels": extra["sentence_labels"],
        "unpaired": {
            "unpaired_fraction": extra["unpaired_fraction"],
            "unpaired_seed": extra["unpaired_seed"],
            "train_images": len(datasets.get("train_images", [])),
            "train_texts": len(datasets.get("train_texts", [])),
            "images_without_report_text": int(len(split.no_text_images)),
            "moved_studies": {"train_images": len(split.to_images), "train_texts": len(split.to_texts)},
            "moved_subjects": split.moved_subjects,
        },
    }


def _print_report(report: dict, source: _Source, split: _Split) -> None:
    kept_line = ", ".join(f"{k} {v}" for k, v in report["kept"].items())
    dropped_line = ", ".join(f"{k} {v}" for k, v in report["dropped"].items())
    print(f"prepared {report['kept_total']} images from {shown(source.root)} -> {shown(source.out / 'datasets.pkl')}")
    print(f"  kept: {kept_line}")
    print(f"  dropped: {dropped_line}")
    unpaired = report["unpaired"]
    if unpaired["train_images"] or unpaired["train_texts"]:
        print(f"  unpaired: train_images {unpaired['train_images']}, train_texts {unpaired['train_texts']} "
              f"(sentences of {len(split.to_texts)} studies)")
    sentence_labels = report["sentence_labels"]
    if sentence_labels:
        print(f"  sentence labels: {sentence_labels['sentences']} sentences -> {shown(sentence_labels['path'])}")
    if report["studies_with_last_paragraph_text"]:
        print(f"  studies without FINDINGS/IMPRESSION, text from their last paragraph: "
              f"{report['studies_with_last_paragraph_text']}")
