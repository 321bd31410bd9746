"""A phantom CheXpert-v1.0-small tree, for machines without CheXpert: the same studies, findings,
labels and radiographs as the phantom MIMIC-CXR-JPG tree draws (plan.py, findings.py, render.py,
reports.py), written in CheXpert's layout:

    out/CheXpert-v1.0-small/train.csv    Path, Sex, Age, Frontal/Lateral, AP/PA, 14 findings
    out/CheXpert-v1.0-small/valid.csv    the plan's validation studies, labels 0 / 1 (blank and -1 -> 0)
    out/CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg (view2_lateral.jpg)
    out/chexpert_phantom.json            generator arguments and version

Labels are what the phantom's labeler reads from the study's report (the report itself is not
written: CheXpert ships none). Same arguments, same bytes. `data.prepare_chexpert` imports it.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from medclip_nb.errors import DataError
from medclip_nb.labels import CHEXPERT_LABELS
from medclip_nb.paths import resolve
from medclip_nb.phantom.anatomy import sample_anatomy, study_anatomy
from medclip_nb.phantom.plan import RNG_STUDY, RNG_SUBJECT, PlannedStudy, plan_studies
from medclip_nb.phantom.render import render_chest
from medclip_nb.phantom.reports import write_report
from medclip_nb.phantom.tree import JPEG_QUALITY
from medclip_nb.progress import progress

FOLDER = "CheXpert-v1.0-small"
MANIFEST = "chexpert_phantom.json"
VERSION = 1
# CheXpert's own column order (Lung Opacity before Lung Lesion).
TABLE_LABELS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                "Fracture", "Support Devices")
_RNG_PATIENT_TRAITS = 7  # sex and age, a stream of their own


def _manifest(studies: int, size: int, seed: int) -> dict:
    return {"generator": "medclip_nb.phantom.chexpert_tree", "version": VERSION, "studies": int(studies),
            "size": int(size), "seed": int(seed)}


def _recorded(out: Path) -> dict:
    """The manifest `out` holds ({} when there is none or it cannot be read)."""
    try:
        recorded = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def chexpert_phantom_is_current(out, studies: int, size: int, seed: int) -> bool:
    """True when `out` holds a complete CheXpert phantom of these arguments."""
    out = resolve(out)
    recorded = _recorded(out)
    return (recorded.get("complete") is True
            and all(recorded.get(k) == v for k, v in _manifest(studies, size, seed).items())
            and (out / FOLDER / "train.csv").is_file())


_OUR_FILE = re.compile(r"(train|valid)\.csv|(train|valid)/patient\d{5}/study\d+/view\d+_(frontal|lateral)\.jpg")


def _clear(out: Path, manifest: dict, force: bool) -> None:
    """Remove an earlier CheXpert phantom before writing one. Refused: a CheXpert tree without our
    manifest (not a phantom), a tree holding any file the generator does not write (a user's file
    is never deleted), and a complete phantom of other arguments unless `force`."""
    tree = out / FOLDER
    if tree.exists() and not (out / MANIFEST).is_file():
        raise DataError(f"refusing to overwrite {tree}: it holds no {MANIFEST} (not a phantom CheXpert tree)")
    if tree.exists():
        recorded = _recorded(out)
        changed = [f"{k} {recorded.get(k)} -> {v}" for k, v in manifest.items() if recorded.get(k) != v]
        if recorded.get("complete") is True and changed and not force:
            raise DataError(f"{out / MANIFEST}: {tree} holds a CheXpert phantom of other arguments "
                            f"({', '.join(changed)}); pass --force to replace it")
        foreign = [p for p in sorted(tree.rglob("*"))
                   if p.is_symlink() or not (p.is_dir() or _OUR_FILE.fullmatch(p.relative_to(tree).as_posix()))]
        if foreign:
            raise DataError(f"refusing to replace {tree}: {foreign[0]} was not written by the phantom "
                            f"({len(foreign)} such file(s)); move them out first")
        shutil.rmtree(tree)
    (out / MANIFEST).unlink(missing_ok=True)


def _study_rows(out: Path, s: PlannedStudy, number: int, patient, traits: tuple[str, int], size: int,
                seed: int) -> list[dict]:
    """Write the study's JPEGs; return its table rows (the labels its report would give)."""
    rng = np.random.default_rng([seed, RNG_STUDY, s.index, 1])
    labels = write_report(s.findings, [im.view for im in s.images], s.style, rng).labels
    frontal = next(im.view for im in s.images if im.view in ("PA", "AP"))
    split = "valid" if s.split == "validate" else "train"
    folder = out / FOLDER / split / f"patient{s.subject_index + 1:05d}" / f"study{number}"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for position, im in enumerate(sorted(s.images, key=lambda im: im.view in ("LATERAL", "LL")), start=1):
        lateral = im.view in ("LATERAL", "LL")
        image = render_chest(size, study_anatomy(patient, rng, im.view), s.findings, im.view, rng)
        name = f"view{position}_{'lateral' if lateral else 'frontal'}.jpg"
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        (folder / name).write_bytes(buffer.getvalue())
        rows.append({"split": split, "Path": f"{FOLDER}/{split}/{folder.parent.name}/{folder.name}/{name}",
                     "Sex": traits[0], "Age": traits[1], "Frontal/Lateral": "Lateral" if lateral else "Frontal",
                     "AP/PA": "" if lateral else frontal, **{k: labels[k] for k in CHEXPERT_LABELS}})
    return rows


def generate_chexpert_phantom(out, studies: int = 300, size: int = 64, seed: int = 0, *, force: bool = False,
                              log=print) -> dict:
    """Write the phantom CheXpert tree (module docstring) to `out`; returns a summary (images per
    table). An earlier CheXpert phantom in `out` is replaced (one of other arguments only with
    `force`); a CheXpert tree without our manifest, or holding files we did not write, is refused.
    Relative paths are taken from the repository root."""
    out = resolve(out)
    manifest = _manifest(studies, size, seed)
    _clear(out, manifest, force)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).write_text(json.dumps({**manifest, "complete": False}, indent=2) + "\n")
    plan = sorted(plan_studies(studies, seed), key=lambda s: (s.subject_index, s.date, s.index))
    patients, traits, numbers, rows = {}, {}, {}, []
    for s in progress(plan, total=len(plan), desc="CheXpert phantom", unit="study"):
        if s.subject_index not in patients:
            patients[s.subject_index] = sample_anatomy(np.random.default_rng([seed, RNG_SUBJECT, s.subject_index]))
            trait_rng = np.random.default_rng([seed, _RNG_PATIENT_TRAITS, s.subject_index])
            traits[s.subject_index] = (str(trait_rng.choice(["Female", "Male"])), int(trait_rng.integers(18, 91)))
        numbers[s.subject_index] = numbers.get(s.subject_index, 0) + 1
        rows += _study_rows(out, s, numbers[s.subject_index], patients[s.subject_index], traits[s.subject_index],
                            size, seed)
    table = pd.DataFrame(rows)
    columns = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *TABLE_LABELS]
    train, valid = table[table["split"] == "train"], table[table["split"] == "valid"].copy()
    valid[list(TABLE_LABELS)] = valid[list(TABLE_LABELS)].fillna(0).replace({-1.0: 0.0})  # CheXpert's valid: 0 / 1
    train[columns].to_csv(out / FOLDER / "train.csv", index=False, lineterminator="\n")
    valid[columns].to_csv(out / FOLDER / "valid.csv", index=False, lineterminator="\n")
    summary = {"train_images": len(train), "valid_images": len(valid), "studies": len(plan)}
    (out / MANIFEST).write_text(json.dumps({**manifest, "complete": True, "summary": summary}, indent=2) + "\n")
    log(f"phantom CheXpert written to {out / FOLDER}: {len(train)} train images, {len(valid)} valid images")
    return summary
