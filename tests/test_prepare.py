"""The MIMIC-CXR-JPG importer, run on the phantom, and its report-section parser."""

from __future__ import annotations

import gzip
import json
import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medclip_nb.data.mimic import (
    CHEXPERT_TABLE,
    DROP_REASONS,
    METADATA_TABLE,
    SPLIT_TABLE,
    extract_sections,
    prepare_mimic,
    report_text,
)
from medclip_nb.errors import DataError
from medclip_nb.labels import CHEXPERT_LABELS
from medclip_nb.phantom import generate_phantom

STUDIES, SIZE = 40, 64


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    root = tmp_path_factory.mktemp("mimic") / "mimic"
    generate_phantom(root, studies=STUDIES, size=SIZE, seed=0)
    return root


@pytest.fixture(scope="module")
def prepared(phantom, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    report = prepare_mimic(phantom, out, num_workers=0)
    with open(out / "datasets.pkl", "rb") as f:
        datasets = pickle.load(f)
    return out, report, datasets


def _copy(phantom: Path, dest: Path) -> Path:
    shutil.copytree(phantom, dest)
    return dest


def _study_file(root: Path, subject_id: int, study_id: int) -> Path:
    return root / "files" / f"p{str(subject_id)[:2]}" / f"p{subject_id}" / f"s{study_id}.txt"


def _write_gz_csv(path: Path, frame: pd.DataFrame) -> None:
    with gzip.open(path, "wt") as f:
        frame.to_csv(f, index=False)


# ---- the import -------------------------------------------------------------------------


def test_counts_match_report_pickle_and_tables(phantom, prepared):
    out, report, datasets = prepared
    split = pd.read_csv(phantom / SPLIT_TABLE)
    assert set(datasets) == {"train", "val", "test"}
    assert report["kept"] == {name: len(rows) for name, rows in datasets.items()}
    assert report["kept_total"] + sum(report["dropped"].values()) == len(split) == report["images_in_split_table"]
    assert set(report["dropped"]) == set(DROP_REASONS)
    assert json.loads((out / "prepare_report.json").read_text()) == report
    # no temp files left; the phantom's sentence-label table is carried through (sentence_labels.py)
    assert sorted(p.name for p in out.iterdir()) == ["datasets.pkl", "prepare_report.json", "sentence_labels.csv.gz"]


def test_laterals_and_blank_views_are_dropped(phantom, prepared):
    _, report, datasets = prepared
    meta = pd.read_csv(phantom / METADATA_TABLE, dtype={"ViewPosition": str})
    assert report["dropped"]["lateral"] == meta["ViewPosition"].isin(["LATERAL", "LL"]).sum() > 0
    assert report["dropped"]["blank_view"] == meta["ViewPosition"].isna().sum() > 0
    records = [r for rows in datasets.values() for r in rows]
    assert {r["view"] for r in records} <= {"PA", "AP"}
    kept_ids = {r["dicom_id"] for r in records}
    frontal = meta[meta["ViewPosition"].isin(["PA", "AP"])]
    assert kept_ids == set(frontal["dicom_id"])


def test_official_split_is_followed(phantom, prepared):
    _, _, datasets = prepared
    split = pd.read_csv(phantom / SPLIT_TABLE).set_index("dicom_id")
    official = split["split"].map({"train": "train", "validate": "val", "test": "test"})
    subjects = {}
    for name, rows in datasets.items():
        assert rows, f"split {name} is empty"
        for r in rows:
            assert official[r["dicom_id"]] == name
            assert split.loc[r["dicom_id"], "subject_id"] == r["subject_id"]
            subjects.setdefault(r["subject_id"], set()).add(name)
    assert all(len(names) == 1 for names in subjects.values())


def test_records_carry_labels_reports_and_relative_paths(phantom, prepared):
    out, _, datasets = prepared
    chexpert = pd.read_csv(phantom / CHEXPERT_TABLE).set_index("study_id")
    for r in (r for rows in datasets.values() for r in rows):
        assert set(r) - {"regions", "boxes"} == {"image_path", "report", "labels", "study_id", "subject_id",
                                                 "dicom_id", "view"}
        if "regions" in r:  # the phantom's finding regions beside a frontal image, carried as optional fields
            assert r["view"] in ("PA", "AP") and (out / r["regions"]).is_file()
            assert r["regions"] == r["image_path"][: -len(".jpg")] + ".regions.json"
            assert isinstance(r["boxes"], dict)  # {} for an image without findings
            assert all(len(box) == 4 and box[2] > 0 and box[3] > 0 for box in r["boxes"].values())
        assert isinstance(r["study_id"], int) and isinstance(r["subject_id"], int)
        assert not Path(r["image_path"]).is_absolute() and (out / r["image_path"]).is_file()
        assert r["image_path"].endswith(f"p{r['subject_id']}/s{r['study_id']}/{r['dicom_id']}.jpg")
        expected = chexpert.loc[r["study_id"], list(CHEXPERT_LABELS)].to_numpy(dtype=float)
        assert len(r["labels"]) == 14 and all(isinstance(v, float) for v in r["labels"])
        np.testing.assert_array_equal(np.array(r["labels"]), expected)  # NaN == NaN here
        text = _study_file(phantom, r["subject_id"], r["study_id"]).read_text()
        assert r["report"] == report_text(text) != ""
        assert "FINAL REPORT" not in r["report"] and "INDICATION" not in r["report"]


def test_prepare_carries_the_phantoms_finding_regions(prepared):
    _, report, datasets = prepared
    counted = {name: sum(bool(r.get("boxes")) for r in rows) for name, rows in datasets.items()}
    assert report["images_with_finding_regions"] == counted
    assert counted["train"] > 0 and counted["test"] > 0  # the phantom draws findings on most frontal images


def test_report_without_sections_uses_its_last_paragraph(phantom, prepared):
    _, report, datasets = prepared
    assert report["studies_with_last_paragraph_text"] == 1
    fallback = []
    for r in (r for rows in datasets.values() for r in rows):
        text = _study_file(phantom, r["subject_id"], r["study_id"]).read_text()
        sections = extract_sections(text)
        if "FINDINGS" not in sections and "IMPRESSION" not in sections:
            last = [p for p in text.split("\n\n") if p.strip()][-1]
            assert r["report"] == " ".join(last.split())
            fallback.append(r)
    assert len(fallback) == 1


def test_damaged_tree_counts_each_reason(phantom, prepared, tmp_path):
    _, baseline, datasets = prepared
    root = _copy(phantom, tmp_path / "mimic")
    train = datasets["train"]
    by_study: dict[int, list] = {}
    for r in train:
        by_study.setdefault(r["study_id"], []).append(r)
    picks = [rows[0] for rows in by_study.values()][:5]  # five different studies

    def files(r: dict) -> Path:
        return root / "files" / f"p{str(r['subject_id'])[:2]}" / f"p{r['subject_id']}" / f"s{r['study_id']}"

    (files(picks[0]) / f"{picks[0]['dicom_id']}.jpg").write_bytes(b"")  # zero bytes
    (files(picks[1]) / f"{picks[1]['dicom_id']}.jpg").write_bytes(b"not a jpeg at all" * 10)  # corrupt
    (files(picks[2]) / f"{picks[2]['dicom_id']}.jpg").unlink()  # missing
    _study_file(root, picks[3]["subject_id"], picks[3]["study_id"]).unlink()  # report missing
    _study_file(root, picks[4]["subject_id"], picks[4]["study_id"]).write_text("   \n\n  \n")  # report empty
    no_text = len(by_study[picks[3]["study_id"]]) + len(by_study[picks[4]["study_id"]])
    # a study absent from the CheXpert table keeps its images, with blank labels
    chexpert = pd.read_csv(root / CHEXPERT_TABLE)
    unlabeled = train[-1]
    _write_gz_csv(root / CHEXPERT_TABLE, chexpert[chexpert["study_id"] != unlabeled["study_id"]])

    out = tmp_path / "out"
    report = prepare_mimic(root, out, num_workers=2)  # exercises the process pool
    dropped = report["dropped"]
    assert dropped["unreadable_image"] == 2 and dropped["missing_image"] == 1 and dropped["no_report_text"] == no_text
    assert dropped["lateral"] == baseline["dropped"]["lateral"]
    assert report["kept_total"] == baseline["kept_total"] - 3 - no_text
    assert report["studies_without_chexpert_labels"] == 1
    with open(out / "datasets.pkl", "rb") as f:
        records = {r["dicom_id"]: r for rows in pickle.load(f).values() for r in rows}
    assert all(math.isnan(v) for v in records[unlabeled["dicom_id"]]["labels"])
    assert not {p["dicom_id"] for p in picks[:3]} & set(records)


def test_store_is_built_when_asked(phantom, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("medclip_nb.data.store_build.build_store", lambda *args, **kwargs: calls.append((args, kwargs)))
    out = tmp_path / "out"
    report = prepare_mimic(phantom, out, store_size=32, num_workers=0)
    assert calls == [((out / "datasets.pkl", None), {"size": 32, "num_workers": 0})]
    assert report["store_size"] == 32


# ---- bad input ---------------------------------------------------------------------------


def test_missing_root_and_images_folder(tmp_path):
    with pytest.raises(DataError, match="root folder not found: .*nowhere"):
        prepare_mimic(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty[/\\]files"):
        prepare_mimic(tmp_path / "empty", tmp_path / "out")


@pytest.mark.parametrize("table", [SPLIT_TABLE, METADATA_TABLE, CHEXPERT_TABLE])
def test_missing_table_is_named(phantom, tmp_path, table):
    root = tmp_path / "mimic"
    (root / "files").mkdir(parents=True)
    for name in (SPLIT_TABLE, METADATA_TABLE, CHEXPERT_TABLE):
        if name != table:
            shutil.copy(phantom / name, root / name)
    with pytest.raises(DataError, match=table.replace(".", r"\.")) as info:
        prepare_mimic(root, tmp_path / "out")
    assert "\n" not in str(info.value)


def test_bad_tables_are_named(phantom, tmp_path):
    root = tmp_path / "mimic"
    (root / "files").mkdir(parents=True)
    for name in (SPLIT_TABLE, METADATA_TABLE, CHEXPERT_TABLE):
        shutil.copy(phantom / name, root / name)
    chexpert = pd.read_csv(phantom / CHEXPERT_TABLE)
    _write_gz_csv(root / CHEXPERT_TABLE, chexpert.assign(Edema=2.0))
    with pytest.raises(DataError, match=f"{CHEXPERT_TABLE}.*'Edema'"):
        prepare_mimic(root, tmp_path / "out")
    shutil.copy(phantom / CHEXPERT_TABLE, root / CHEXPERT_TABLE)
    _write_gz_csv(root / SPLIT_TABLE, pd.read_csv(phantom / SPLIT_TABLE).drop(columns="split"))
    with pytest.raises(DataError, match=f"{SPLIT_TABLE}.*split"):
        prepare_mimic(root, tmp_path / "out")
    (root / SPLIT_TABLE).write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match=SPLIT_TABLE):
        prepare_mimic(root, tmp_path / "out")


def test_no_usable_image_is_an_error(phantom, tmp_path):
    with pytest.raises(DataError, match="no usable images"):
        prepare_mimic(phantom, tmp_path / "out", frontal_views=("XX",), num_workers=0)
    assert not (tmp_path / "out" / "datasets.pkl").exists()


# ---- report sections ---------------------------------------------------------------------

FULL = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough  // eval for pneumonia

 COMPARISON:  ___.

 FINDINGS:

 Small left pleural effusion.  The heart size is
 normal.  No pneumothorax.

 IMPRESSION:

 1. Small left pleural effusion.
 2. No focal consolidation.
"""

IMPRESSION_ONLY = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PORTABLE AP)
 INDICATION:  ___ with hypoxia
IMPRESSION:  Moderate pulmonary edema.
   Mild bibasilar atelectasis at the lung bases.
"""

NO_SECTIONS = """                                 FINAL REPORT
 PA AND LATERAL CHEST RADIOGRAPH

 HISTORY:  ___-year-old with fever.

 The lungs are clear.  There is no pleural effusion
 or pneumothorax.  Normal chest radiograph.
"""


def test_extract_sections_of_a_full_report():
    sections = extract_sections(FULL)
    assert list(sections) == ["EXAMINATION", "INDICATION", "COMPARISON", "FINDINGS", "IMPRESSION"]
    assert sections["FINDINGS"] == "Small left pleural effusion. The heart size is normal. No pneumothorax."
    assert sections["IMPRESSION"] == "1. Small left pleural effusion. 2. No focal consolidation."
    assert sections["INDICATION"] == "___F with cough // eval for pneumonia"
    assert report_text(FULL) == sections["FINDINGS"] + " " + sections["IMPRESSION"]


def test_report_text_without_findings_uses_the_impression():
    assert "FINDINGS" not in extract_sections(IMPRESSION_ONLY)
    assert report_text(IMPRESSION_ONLY) == "Moderate pulmonary edema. Mild bibasilar atelectasis at the lung bases."


def test_report_text_without_sections_falls_back_to_the_last_paragraph():
    assert set(extract_sections(NO_SECTIONS)) == {"HISTORY"}
    assert report_text(NO_SECTIONS) == ("The lungs are clear. There is no pleural effusion or pneumothorax. "
                                        "Normal chest radiograph.")


def test_section_parser_edge_cases():
    # a header that is not upper case, or not at the start of a line, opens no section
    text = "FINDINGS: The PICC: tip in the SVC.\nImpression: stable.\n"
    assert extract_sections(text) == {"FINDINGS": "The PICC: tip in the SVC. Impression: stable."}
    # a combined header still counts; a repeated header is joined
    assert report_text("FINDINGS AND IMPRESSION:  No acute process.") == "No acute process."
    assert extract_sections("IMPRESSION: One.\nNOTE: x\nIMPRESSION: Two.")["IMPRESSION"] == "One. Two."
    # the last paragraph loses a leading header; nothing at all gives ""
    assert report_text("FINAL REPORT\n\n COMPARISON:  None.\n\n NOTE:  Lungs are clear.") == "Lungs are clear."
    assert report_text("   \n\n ") == ""
    assert report_text("") == ""
