"""Open-i import (data/iu*.py, prepare-iu) on small synthetic XML files written here, never the real data."""

from __future__ import annotations

import json
import math
import pickle
import tarfile
import zipfile

import pytest
from PIL import Image

from medclip_nb.cli import main
from medclip_nb.data.iu import assign_splits, prepare_iu
from medclip_nb.data.iu_mesh import mesh_labels
from medclip_nb.data.iu_reports import PACKAGED_TGZ, parse_report, read_reports
from medclip_nb.errors import ConfigError, DataError
from medclip_nb.labels import CHEXPERT_LABELS, LABEL_INDEX
from medclip_nb.text import labelled_sentence, read_sentence_labels, sentence_key


def _xml(number: int, sections: dict[str, str | None], major: list[str], images: list[str] = (),
         automatic: list[str] = ()) -> str:
    def section(label):
        text = sections.get(label)
        empty = f'<AbstractText Label="{label}"/>'
        return empty if not text else f'<AbstractText Label="{label}">{text}</AbstractText>'

    mesh = "".join(f"<major>{m}</major>" for m in major) + "".join(f"<automatic>{a}</automatic>" for a in automatic)
    parents = "".join(f'<parentImage id="{i}"><figureId>F1</figureId><caption>x</caption></parentImage>'
                      for i in images)
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<eCitation><meta type="rr"/><uId id="CXR{number}"/>'
            f'<pmcId id="{number}"/><IUXRId id="{number}"/><MedlineCitation><Article><Abstract>'
            + "".join(section(s) for s in ("COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION"))
            + f"</Abstract></Article></MedlineCitation><MeSH>{mesh}</MeSH>{parents}</eCitation>")


NORMAL = _xml(9001, {"COMPARISON": "None.", "INDICATION": "Synthetic test case XXXX.",
                     "FINDINGS": "Heart size is within normal limits. No pleural effusion or pneumothorax. Lungs are "
                                 "clear.", "IMPRESSION": "No acute disease."},
              ["normal"], ["CXR9001_IM-0001-1001", "CXR9001_IM-0001-2001"])
QUALIFIED = _xml(9002, {"COMPARISON": "XXXX prior.", "INDICATION": "Made-up indication, temp &gt; 38.",
                        "FINDINGS": "Small left pleural effusion. Mild bibasilar atelectasis. Calcified granuloma in "
                                    "the right upper lobe. Right-sided catheter tip in the XXXX. No pneumothorax.",
                        "IMPRESSION": "1. Small left effusion. 2. No focal consolidation."},
                 ["Pleural Effusion/left/small", "Pulmonary Atelectasis/base/bilateral/mild",
                  "Calcified Granuloma/lung/upper lobe/right", "Catheters, Indwelling",
                  "Technical Quality of Image Unsatisfactory "],
                 ["CXR9002_IM-0002-1001"], ["pleural effusions", "atelectases"])
NO_IMAGES = _xml(9003, {"FINDINGS": None, "IMPRESSION": "Mild cardiomegaly without edema. Opacity at the left base "
                                                        "may represent pneumonia."},
                 ["Cardiomegaly/mild", "Opacity/lung/base/left"])
UNMAPPED = _xml(9004, {"FINDINGS": "Calcified granuloma. Degenerative changes of the spine.", "IMPRESSION": "Stable."},
                ["Calcified Granuloma", "Thoracic Vertebrae/degenerative"], ["CXR9004_IM-0004-1001"])
NO_TEXT = _xml(9005, {}, ["normal"], ["CXR9005_IM-0005-1001"])


def _label(labels, name):
    return labels[LABEL_INDEX[name]]


def _write(folder, files: dict[str, str]):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture
def xml_folder(tmp_path):
    return _write(tmp_path / "ecgen-radiology", {"9001.xml": NORMAL, "9002.xml": QUALIFIED, "9003.xml": NO_IMAGES,
                                                 "9004.xml": UNMAPPED, "9005.xml": NO_TEXT})


def test_sections_ids_images_and_entities():
    report = parse_report("9002.xml", QUALIFIED.encode())
    assert (report.uid, report.number) == ("CXR9002", 9002)
    assert report.sections["INDICATION"] == "Made-up indication, temp > 38."
    assert report.text.startswith("Small left pleural effusion.") and report.text.endswith("No focal consolidation.")
    assert report.image_ids == ["CXR9002_IM-0002-1001"]
    assert report.automatic == ["pleural effusions", "atelectases"]
    empty = parse_report("9003.xml", NO_IMAGES.encode())
    assert empty.sections["FINDINGS"] == "" and empty.text.startswith("Mild cardiomegaly")
    assert empty.image_ids == []


def test_mesh_to_labels_with_qualifiers():
    normal = mesh_labels(["normal"])
    assert normal.normal and _label(normal.labels, "No Finding") == 1.0
    assert sum(not math.isnan(v) for v in normal.labels) == 1  # MeSH names what is present: the rest stays blank
    qualified = mesh_labels(parse_report("x", QUALIFIED.encode()).major)
    assert {n for n, v in zip(CHEXPERT_LABELS, qualified.labels) if v == 1.0} == \
        {"Pleural Effusion", "Atelectasis", "Support Devices"}
    assert qualified.unmapped == ["Calcified Granuloma/lung/upper lobe/right"]
    assert qualified.neutral == ["Technical Quality of Image Unsatisfactory"]
    effusion = next(c for c in qualified.mapped if c.label == "Pleural Effusion")
    assert set(effusion.qualifiers) == {"left", "small"}
    # A condition on a qualifier: Density maps only in the lung; Cardiac Shadow only when enlarged.
    assert mesh_labels(["Density/lung/base"]).labels[LABEL_INDEX["Lung Opacity"]] == 1.0
    assert mesh_labels(["Density/thorax"]).blank and mesh_labels(["Cardiac Shadow/borderline"]).blank
    # Heart failure: Edema and uncertain Cardiomegaly; a positive code wins over the uncertain one.
    failure = mesh_labels(["Heart Failure"])
    assert (_label(failure.labels, "Edema"), _label(failure.labels, "Cardiomegaly")) == (1.0, -1.0)
    assert _label(mesh_labels(["Heart Failure", "Cardiomegaly/mild"]).labels, "Cardiomegaly") == 1.0
    # Unmapped-only and neutral-only reports keep blank labels: not normal.
    for codes in (["Calcified Granuloma", "Spine/degenerative"], ["No Indexing"]):
        assert mesh_labels(codes).blank and not mesh_labels(codes).normal
    # Spelling variants in the data: case, double spaces, trailing spaces.
    assert _label(mesh_labels(["Pulmonary  atelectasis /right "]).labels, "Atelectasis") == 1.0


def test_negation_and_hedges_in_sentence_labels():
    assert _label(labelled_sentence("No pleural effusion or pneumothorax."), "Pleural Effusion") == 0.0
    assert _label(labelled_sentence("No pleural effusion or pneumothorax."), "Pneumothorax") == 0.0
    assert _label(labelled_sentence("No pleural effusion or pneumothorax."), "No Finding") == 1.0
    assert _label(labelled_sentence("Small left pleural effusion."), "Pleural Effusion") == 1.0
    assert math.isnan(_label(labelled_sentence("Small left pleural effusion."), "No Finding"))
    mild = labelled_sentence("Mild cardiomegaly without edema.")
    assert (_label(mild, "Cardiomegaly"), _label(mild, "Edema")) == (1.0, 0.0)
    assert _label(labelled_sentence("Opacity at the left base may represent pneumonia."), "Pneumonia") == -1.0
    # An abnormality outside the 14 labels is not normal; its negation is.
    assert all(math.isnan(v) for v in labelled_sentence("Calcified granuloma in the right upper lobe."))
    assert _label(labelled_sentence("No scoliosis."), "No Finding") == 1.0
    # Support devices do not block No Finding.
    assert _label(labelled_sentence("Right-sided catheter tip in the XXXX."), "No Finding") == 1.0


def test_splits_are_seeded_and_patient_disjoint():
    uids = [f"CXR{i}" for i in range(1, 501)]
    a, b = assign_splits(uids, 0), assign_splits(uids, 0)
    assert a == b and assign_splits(uids, 1) != a
    counts = {name: sum(v == name for v in a.values()) for name in ("train", "val", "test")}
    assert counts == {"train": 350, "val": 50, "test": 100}


def test_prepare_phantom_images(xml_folder, tmp_path, capsys):
    out = tmp_path / "iu"
    report = prepare_iu(out, xml_folder, "phantom", size=32, seed=0, workers=1)
    assert report["image_kind"] == "phantom" and "view PA" in report["views"]
    datasets = pickle.loads((out / "datasets.pkl").read_bytes())
    records = [r for name in ("train", "val", "test") for r in datasets[name]]
    # One phantom image per report with text, also for the report without parentImage; no text -> dropped.
    assert sorted(r["study_id"] for r in records) == [9001, 9002, 9003, 9004]
    assert report["dropped"]["no_report_text"] == 1
    for r in records:
        assert r["subject_id"] == r["study_id"] and r["view"] == "PA"
        assert Image.open(out / r["image_path"]).size[1] == 32
    patients = {name: {r["subject_id"] for r in datasets[name]} for name in ("train", "val", "test")}
    assert not (patients["train"] & patients["test"]) and not (patients["train"] & patients["val"])
    by_id = {r["study_id"]: r for r in records}
    assert all(math.isnan(v) for v in by_id[9004]["labels"])  # unmapped codes only: blank, not normal
    assert report["mesh"]["blank"] == 1 and report["mesh"]["normal"] == 2
    assert report["mesh"]["mapped_share"] == pytest.approx(4 / 5)
    assert any(row["mesh_term"] == "pleural effusion" for row in report["mesh_table"])
    printed = capsys.readouterr().out
    assert "phantom images" in printed and "pleural effusion -> Pleural Effusion  [1 reports]" in printed
    table = read_sentence_labels(out / "sentence_labels.csv.gz")
    assert table[sentence_key("no pleural effusion or pneumothorax.")][LABEL_INDEX["Pneumothorax"]] == 0.0
    lines = [json.loads(line) for line in (out / "iu_reports.jsonl").read_text().splitlines()]
    assert {line["id"] for line in lines} == {f"CXR900{i}" for i in range(1, 6)}
    assert next(line for line in lines if line["id"] == "CXR9005")["split"] is None
    # Same arguments, same bytes.
    again = tmp_path / "iu2"
    prepare_iu(again, xml_folder, "phantom", size=32, seed=0, workers=1)
    assert (again / by_id[9002]["image_path"]).read_bytes() == (out / by_id[9002]["image_path"]).read_bytes()


def test_prepare_real_images_and_missing_ones(xml_folder, tmp_path, capsys):
    pngs = tmp_path / "png"
    pngs.mkdir()
    for name in ("CXR9001_IM-0001-1001", "CXR9002_IM-0002-1001"):
        Image.new("L", (20, 24), 100).save(pngs / f"{name}.png")
    (pngs / "CXR9004_IM-0004-1001.png").write_bytes(b"not a png")
    report = prepare_iu(tmp_path / "iu", xml_folder, pngs)
    datasets = pickle.loads((tmp_path / "iu" / "datasets.pkl").read_bytes())
    records = [r for recs in datasets.values() for r in recs]
    assert sorted(r["dicom_id"] for r in records) == ["CXR9001_IM-0001-1001", "CXR9002_IM-0002-1001"]
    assert all(r["view"] == "" for r in records) and report["image_kind"] == "real"
    assert report["dropped"] == {"no_report_text": 1, "no_image": 1, "missing_image": 1, "unreadable_image": 1}
    assert "real images" in capsys.readouterr().out
    # A folder with none of the PNGs: one line naming it and an example file name.
    with pytest.raises(DataError, match=r"none of the 4 PNGs .* e\.g\. CXR9001_IM-0001-1001\.png"):
        prepare_iu(tmp_path / "iu3", xml_folder, tmp_path)
    with pytest.raises(ConfigError, match="--images"):
        prepare_iu(tmp_path / "iu4", xml_folder, None)


@pytest.mark.parametrize("text, message", [
    ('<?xml version="1.0"?>\n<eCitation>\n   <uId id="CXR9006"/>\n   <MeSH>\n      <major>normal</major>\n',
     "not well-formed XML"),
    ('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><eCitation>&a;&a;</eCitation>', "DOCTYPE or entity"),
    ('<?xml version="1.0"?><eCitation><uId id="nope"/></eCitation>', "no report id"),
])
def test_corrupt_xml_is_one_line_naming_the_file(xml_folder, tmp_path, capsys, text, message):
    (xml_folder / "9006.xml").write_text(text)
    with pytest.raises(DataError, match=message) as info:
        read_reports(xml_folder)
    assert "9006.xml" in str(info.value) and "\n" not in str(info.value)
    code = main(["prepare-iu", "--out", str(tmp_path / "o"), "--reports", str(xml_folder), "--images", "phantom"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: Open-i report") and "9006.xml" in err and len(err.splitlines()) == 1


def test_archives_and_missing_source(xml_folder, tmp_path, capsys):
    tgz = tmp_path / "NLMCXR_reports.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(xml_folder, arcname="ecgen-radiology")
    assert [r.uid for r in read_reports(tgz)] == [f"CXR900{i}" for i in range(1, 6)]
    wheel = tmp_path / "torchxrayvision-0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(PACKAGED_TGZ, tgz.read_bytes())
    assert len(read_reports(wheel)) == 5
    with zipfile.ZipFile(tmp_path / "other.whl", "w") as zf:
        zf.writestr("x.txt", "x")
    with pytest.raises(DataError, match="no torchxrayvision/data/NLMCXR_reports.tgz inside"):
        read_reports(tmp_path / "other.whl")
    (tmp_path / "bad.tgz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DataError, match="bad.tgz"):
        read_reports(tmp_path / "bad.tgz")
    code = main(["prepare-iu", "--out", str(tmp_path / "o"), "--reports", str(tmp_path / "absent"),
                 "--images", "phantom"])
    err = capsys.readouterr().err
    assert code == 2 and "absent" in err and "pip install -e '.[iu]'" in err


def test_data_command_prepares_open_i_from_the_config(xml_folder, tmp_path, capsys):
    data_path = tmp_path / "iu" / "datasets.pkl"
    args = ["data", "--data_path", str(data_path), "--iu_reports", str(xml_folder), "--phantom_size", "32"]
    assert main(args) == 2 and "iu_images" in capsys.readouterr().err
    assert main([*args, "--iu_images", "phantom"]) == 0
    first = data_path.stat().st_mtime_ns
    assert main([*args, "--iu_images", "phantom"]) == 0  # the same import: used as it is
    assert data_path.stat().st_mtime_ns == first and "prepared with these values" in capsys.readouterr().out
