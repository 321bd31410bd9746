"""Import CheXpert (the official CheXpert-v1.0 layout, full size or `-small`) as MedCLIP uses it:
image-only records with labels, and MedCLIP's CheXpert-5x200 drawn from `train.csv` by its own rule.

Layout read (`chexpert_root` is the folder holding train.csv):

    chexpert_root/train.csv   Path, Sex, Age, Frontal/Lateral, AP/PA, 14 findings (1 / 0 / -1 / blank)
    chexpert_root/valid.csv   the same columns (optional)
    chexpert_root/train/patient00001/study1/view1_frontal.jpg   (Path = CheXpert-v1.0-small/train/...)

`Path` starts with the dataset folder's own name, so the image of a row is chexpert_root / the
rest of its Path. What `out/datasets.pkl` holds (a dataset file of unpaired splits, named by
config key `unpaired_data_path`):

- `train_images`: every row of train.csv but MedCLIP's 5x200, in table order: the unpaired image
  source (`unpaired_sources: [images]`). MedCLIP removes only the 1,000 test images from
  pretraining, by image path; so does this (the other half of its draw, the "finetune" rows, and
  other views or studies of the same patients stay, as in MedCLIP).
- `chexpert_5x200`: MedCLIP's CheXpert-5x200 (data/five_by_200.py, `medclip_5x200`), in its order,
  each record with its `class`.
- `chexpert_valid`: valid.csv's rows, when the file is there.

Records: `image_path` (relative to `out`), `report` "", `labels` (14 values in CHEXPERT_LABELS order
as the table has them: 1 / 0 / -1 / NaN; the encoding per side is the loss's, config keys
`image_uncertain_labels` / `text_uncertain_labels`), `chexpert_path` (the table's Path, verbatim:
MedCLIP's sets name images by it), `view` (AP / PA for frontal images, LATERAL), `sex`, `age`,
`row` (the row number in its table), `subject_id` (the patient number), `study_id`.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd

from medclip_nb.data.five_by_200 import MEDCLIP_SEED, medclip_5x200
from medclip_nb.data.mimic import check_image, parallel_map, worker_count
from medclip_nb.data.provenance import PREPARE_REPORT, prepare_record
from medclip_nb.errors import ConfigError, DataError
from medclip_nb.files import read_limited, write_bytes_atomic, write_json_atomic
from medclip_nb.labels import CHEXPERT_LABELS, COMPETITION_TASKS
from medclip_nb.paths import resolve

TABLE_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
MAX_TABLE_BYTES = 1 << 30  # CheXpert-v1.0's train.csv is about 30 MB
REPORT_KIND = "chexpert"  # prepare_report.json's "kind": what wrote the datasets.pkl beside it
# The first rows of MedCLIP's shipped local_data/chexpert-5x200-val-meta.csv (repository commit 0c33a61): the row
# number in train.csv and the Path under its train/ folder. A draw that starts with them is MedCLIP's published set.
MEDCLIP_SHIPPED_SAMPLE = (
    (205469, "patient52284/study5/view2_lateral.jpg"), (133942, "patient32146/study3/view1_frontal.jpg"),
    (14551, "patient03615/study1/view2_lateral.jpg"), (28058, "patient06853/study1/view1_frontal.jpg"),
    (21701, "patient05285/study1/view1_frontal.jpg"), (192691, "patient46560/study1/view1_frontal.jpg"),
    (203179, "patient51010/study3/view1_frontal.jpg"), (71946, "patient17251/study3/view1_frontal.jpg"),
    (170810, "patient39826/study6/view1_frontal.jpg"),
)


def read_chexpert_table(path: Path) -> pd.DataFrame:
    """A CheXpert label table, checked: the columns and the label values (one DataError line naming
    the file, the column and the row otherwise). Labels as float64, NaN = blank. The file is read
    once, in bounded memory; `frame.attrs["sha256"]` is the hash of its bytes (prepare_report.json)."""
    data = read_limited(path, MAX_TABLE_BYTES, error=DataError)
    try:
        frame = pd.read_csv(io.BytesIO(data), dtype={c: str for c in ("Path", "Sex", "Frontal/Lateral", "AP/PA")},
                            keep_default_na=True)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot read CheXpert table {path}: {reason}") from None
    missing = [c for c in (*TABLE_COLUMNS, *CHEXPERT_LABELS) if c not in frame.columns]
    if missing:
        raise DataError(f"CheXpert table {path} lacks column '{missing[0]}' (CheXpert-v1.0's train.csv columns: "
                        f"{', '.join(TABLE_COLUMNS)} and the 14 findings)")
    values = frame[list(CHEXPERT_LABELS)].apply(pd.to_numeric, errors="coerce")
    raw = frame[list(CHEXPERT_LABELS)].to_numpy()
    bad = (values.notna().to_numpy() & ~np.isin(values.to_numpy(), (1.0, 0.0, -1.0))) | \
        (values.isna().to_numpy() & pd.notna(raw))
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(f"CheXpert table {path} row {row + 2} column '{CHEXPERT_LABELS[col]}' holds {raw[row, col]!r}; "
                        "allowed are 1, 0, -1 or blank")
    paths = frame["Path"].fillna("")
    bad_path = ~paths.str.contains("/") | paths.str.startswith("/") | paths.str.contains(r"(?:^|/)\.\.(?:/|$)")
    if bad_path.any():
        row = int(np.flatnonzero(bad_path.to_numpy())[0])
        raise DataError(f"CheXpert table {path} row {row + 2} column 'Path' holds {paths.iloc[row]!r}; expected a "
                        "relative path such as CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg")
    frame[list(CHEXPERT_LABELS)] = values.astype(np.float64)
    frame.attrs["sha256"] = hashlib.sha256(data).hexdigest()
    return frame


def _records(frame: pd.DataFrame, root: Path, out: Path) -> list[dict]:
    """One image-only record per table row (module docstring)."""
    inside = frame["Path"].str.split("/", n=1).str[1]  # Path without the dataset folder's name
    base = os.path.relpath(root, out).replace(os.sep, "/")
    parts = inside.str.extract(r"patient(\d+)/study(\d+)/", expand=True).fillna(-1).astype(np.int64)
    lateral = frame["Frontal/Lateral"].fillna("").str.strip().str.lower() == "lateral"
    view = np.where(lateral, "LATERAL", frame["AP/PA"].fillna("").str.strip())
    labels = frame[list(CHEXPERT_LABELS)].to_numpy(dtype=np.float64).tolist()
    age = pd.to_numeric(frame["Age"], errors="coerce").fillna(-1).astype(np.int64).tolist()
    columns = zip(inside.tolist(), frame["Path"].tolist(), labels, view.tolist(), frame["Sex"].fillna("").tolist(),
                  age, parts[0].tolist(), parts[1].tolist(), frame.index.tolist())
    return [{"image_path": f"{base}/{rel}", "report": "", "labels": lab, "chexpert_path": path, "view": v,
             "sex": sex, "age": a, "row": int(row), "subject_id": int(patient),
             "study_id": int(patient) * 1000 + int(study)}
            for rel, path, lab, v, sex, a, patient, study, row in columns]


def _checked_root(chexpert_root, out) -> tuple[Path, Path]:
    if chexpert_root is None:
        raise DataError("CheXpert root not given: --chexpert-root (the folder holding train.csv)")
    root, out = resolve(chexpert_root), resolve(out)
    if not (root / "train.csv").is_file():
        raise DataError(f"CheXpert table not found: {root / 'train.csv'} (--chexpert-root is the folder holding "
                        "train.csv, e.g. CheXpert-v1.0-small)")
    if (out / "datasets.pkl").exists():
        record = prepare_record(out / "datasets.pkl")
        if record is None or record.get("kind") != REPORT_KIND:
            raise DataError(f"refusing to overwrite {out / 'datasets.pkl'}: it was not written by prepare-chexpert "
                            f"(no {PREPARE_REPORT} of kind '{REPORT_KIND}' beside it); choose another --out")
    return root, out


def _keep_readable(records: list[dict], out: Path, num_workers: int | None) -> tuple[list[dict], dict[str, int]]:
    """The records whose image file exists and has an image header; drop counts by reason."""
    paths = [os.path.normpath(out / r["image_path"]) for r in records]
    status = parallel_map(check_image, paths, worker_count(num_workers, len(paths)), "prepare-chexpert: checking "
                          "images", "img")
    kept = [r for r, s in zip(records, status) if s == "ok"]
    dropped = {reason: sum(s == reason for s in status) for reason in ("missing_image", "unreadable_image")}
    return kept, dropped


def prepare_chexpert(chexpert_root, out, *, per_class: int = 200, seed: int = MEDCLIP_SEED,
                     num_workers: int | None = None, log=print) -> dict:
    """Import a CheXpert tree into `out/datasets.pkl` (module docstring) and return the import report,
    also written to `out/prepare_report.json`. `per_class` / `seed` are MedCLIP's 200 and 42: its draw
    of 2 x per_class per class, then half. Image headers are read on `num_workers` processes."""
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise ConfigError(f"prepare-chexpert --per-class: must be a whole number of at least 1, got {per_class!r}")
    root, out = _checked_root(chexpert_root, out)
    train = read_chexpert_table(root / "train.csv")
    draw = medclip_5x200(train[list(CHEXPERT_LABELS)].to_numpy(dtype=np.float64), per_class, seed)
    records = _records(train, root, out)
    test_rows = set(draw.rows.tolist())
    five = [{**records[r], "class": COMPETITION_TASKS[c]} for r, c in zip(draw.rows.tolist(), draw.classes.tolist())]
    train_images = [r for i, r in enumerate(records) if i not in test_rows]
    splits = {"train_images": train_images, "chexpert_5x200": five}
    if (root / "valid.csv").is_file():
        valid = read_chexpert_table(root / "valid.csv")
        splits["chexpert_valid"] = _records(valid, root, out)
    dropped = {}
    for name in list(splits):
        splits[name], dropped[name] = _keep_readable(splits[name], out, num_workers)
    if not splits["train_images"]:
        raise DataError(f"no readable image of {root / 'train.csv'} under {root} (dropped: "
                        f"{', '.join(f'{k} {v}' for k, v in dropped['train_images'].items())})")
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / "datasets.pkl", pickle.dumps(splits, protocol=4), error=DataError)
    report = _report(root, out, train, draw, splits, dropped, per_class, seed)
    write_json_atomic(out / PREPARE_REPORT, report, error=DataError)
    _print_report(report, log)
    return report


def _report(root: Path, out: Path, train: pd.DataFrame, draw, splits, dropped, per_class: int, seed: int) -> dict:
    first = [(int(r), str(train.loc[r, "Path"]).split("/train/", 1)[-1])
             for r in draw.rows[:len(MEDCLIP_SHIPPED_SAMPLE)]]
    five = splits["chexpert_5x200"]
    return {
        "kind": REPORT_KIND,
        "chexpert_root": str(root),
        "datasets": str(out / "datasets.pkl"),
        "train_csv_rows": int(len(train)),
        "train_csv_sha256": train.attrs["sha256"],
        "rule": {"name": "medclip", "per_class": per_class, "draw_per_class": 2 * per_class, "seed": seed},
        # True: the draw starts with the 9 rows MedCLIP ships (its published set comes from this table).
        "medclip_published_sample_matches": first == list(MEDCLIP_SHIPPED_SAMPLE),
        "pool_sizes": draw.pool_sizes,
        "short_pools": draw.short_pools,
        "chexpert_5x200": {
            "n": len(five), "drawn": int(len(draw.rows)),
            "per_class": {t: sum(r["class"] == t for r in five) for t in COMPETITION_TASKS},
            "laterals": sum(r["view"] == "LATERAL" for r in five),
            "with_uncertain_label": sum(any(v == -1.0 for v in r["labels"]) for r in five),
        },
        "kept": {name: len(records) for name, records in splits.items()},
        "dropped": dropped,
    }


def _print_report(report: dict, log) -> None:
    five = report["chexpert_5x200"]
    log(f"prepared CheXpert from {report['chexpert_root']} -> {report['datasets']}")
    log("  kept: " + ", ".join(f"{k} {v}" for k, v in report["kept"].items()))
    log(f"  chexpert_5x200 (MedCLIP's rule, seed {report['rule']['seed']}): {five['n']} images, "
        + ", ".join(f"{t} {n}" for t, n in five["per_class"].items())
        + f"; {five['laterals']} laterals, {five['with_uncertain_label']} with a -1 label")
    if report["short_pools"]:
        log(f"  pools smaller than the {report['rule']['draw_per_class']}-image draw, taken whole: "
            + ", ".join(report["short_pools"]))
    if report["medclip_published_sample_matches"]:
        log("  the draw starts with the rows MedCLIP ships: this is its published CheXpert-5x200")
    for name, counts in report["dropped"].items():
        if any(counts.values()):
            log(f"  dropped from {name}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
