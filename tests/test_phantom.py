"""The phantom MIMIC-CXR-JPG generator: determinism, layout, tables, labels, reports, images."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medclip_nb.data.mimic import CHEXPERT_TABLE, METADATA_COLUMNS, METADATA_TABLE, SPLIT_TABLE, extract_sections
from medclip_nb.errors import ConfigError, DataError
from medclip_nb.labels import CHEXPERT_LABELS, COMPETITION_TASKS, PROMPT_VOCABULARY
from medclip_nb.phantom import generate_phantom, phantom_is_current
from medclip_nb.phantom.anatomy import sample_anatomy
from medclip_nb.phantom.findings import Finding, sample_findings
from medclip_nb.phantom.render import image_width, render_chest

STUDIES, SIZE = 40, 64


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantom") / "mimic"
    summary = generate_phantom(out, studies=STUDIES, size=SIZE, seed=0)
    return out, summary


@pytest.fixture(scope="module")
def tables(phantom):
    out, _ = phantom
    return (pd.read_csv(out / SPLIT_TABLE), pd.read_csv(out / CHEXPERT_TABLE),
            pd.read_csv(out / METADATA_TABLE, dtype={"ViewPosition": str}))


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _report(out: Path, subject_id: int, study_id: int) -> str:
    return (out / "files" / f"p{str(subject_id)[:2]}" / f"p{subject_id}" / f"s{study_id}.txt").read_text()


# ---- determinism ------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(phantom, tmp_path):
    out, _ = phantom
    generate_phantom(tmp_path / "again", studies=STUDIES, size=SIZE, seed=0)
    first, second = _tree(out), _tree(tmp_path / "again")
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []


def test_bytes_do_not_depend_on_the_number_of_worker_processes(phantom, tmp_path, monkeypatch):
    from medclip_nb.phantom import tree

    monkeypatch.setattr(tree, "_CHUNK_STUDIES", 7)  # 40 studies in 6 chunks over 2 spawned processes
    generate_phantom(tmp_path / "one", studies=STUDIES, size=SIZE, seed=0, workers=1)
    generate_phantom(tmp_path / "two", studies=STUDIES, size=SIZE, seed=0, workers=2)
    reference, one, two = _tree(phantom[0]), _tree(tmp_path / "one"), _tree(tmp_path / "two")
    assert one.keys() == two.keys() == reference.keys()
    assert [k for k in one if not one[k] == two[k] == reference[k]] == []


def test_different_seed_differs(phantom, tmp_path):
    out, _ = phantom
    generate_phantom(tmp_path / "other", studies=STUDIES, size=SIZE, seed=1)
    first, other = _tree(out), _tree(tmp_path / "other")
    assert (out / SPLIT_TABLE).read_bytes() != (tmp_path / "other" / SPLIT_TABLE).read_bytes()
    assert {k for k in first if k.endswith(".jpg")}.isdisjoint(k for k in other if k.endswith(".jpg"))


def test_gzip_headers_carry_no_time_or_name(phantom):
    out, _ = phantom
    for name in (SPLIT_TABLE, CHEXPERT_TABLE, METADATA_TABLE):
        head = (out / name).read_bytes()[:10]
        assert head[:2] == b"\x1f\x8b"
        assert head[3] & 0x08 == 0, f"{name} stores a file name"
        assert head[4:8] == b"\x00\x00\x00\x00", f"{name} stores a modification time"


# ---- layout and tables ------------------------------------------------------------------


def test_layout_ids_and_images(phantom, tables):
    out, summary = phantom
    split, chexpert, meta = tables
    assert len(split) == summary["images"] and len(chexpert) == summary["studies"] == STUDIES
    assert split["subject_id"].astype(str).str.fullmatch(r"1\d{7}").all()
    assert split["study_id"].astype(str).str.fullmatch(r"5\d{7}").all()
    assert split["dicom_id"].str.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{8}){4}").all()
    assert split["dicom_id"].is_unique and chexpert["study_id"].is_unique
    for row in split.itertuples():
        folder = out / "files" / f"p{str(row.subject_id)[:2]}" / f"p{row.subject_id}"
        assert (folder / f"s{row.study_id}" / f"{row.dicom_id}.jpg").is_file()
        assert (folder / f"s{row.study_id}.txt").is_file()
    width = image_width(SIZE)
    assert width == round(SIZE * 2544 / 3056)
    for path in sorted((out / "files").rglob("*.jpg"))[:10]:
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "L" and im.size == (width, SIZE)
    assert (meta["Rows"] == SIZE).all() and (meta["Columns"] == width).all()


def test_table_columns_and_values(tables):
    split, chexpert, meta = tables
    assert list(split.columns) == ["dicom_id", "study_id", "subject_id", "split"]
    assert set(split["split"]) == {"train", "validate", "test"}
    assert list(chexpert.columns) == ["subject_id", "study_id", *CHEXPERT_LABELS]
    values = chexpert[list(CHEXPERT_LABELS)].to_numpy()
    assert np.isin(values[~np.isnan(values)], (1.0, 0.0, -1.0)).all()
    assert (values == 0.0).any() and (values == -1.0).any() and np.isnan(values).any()
    assert list(meta.columns) == list(METADATA_COLUMNS)
    views = meta["ViewPosition"]
    assert set(views.dropna()) <= {"PA", "AP", "LATERAL", "LL"}
    assert views.isna().sum() >= 1, "some images must have a blank ViewPosition"
    assert meta.loc[views.isna(), "ViewCodeSequence_CodeMeaning"].isna().all()
    # one frontal image per study; the lateral ones are extra
    drawn = meta.assign(frontal=meta["ViewPosition"].isin(["PA", "AP"]) | meta["ViewPosition"].isna())
    assert (drawn.groupby("study_id")["frontal"].sum() >= 1).all()
    assert views.isin(["LATERAL", "LL"]).sum() >= 1
    assert meta["StudyDate"].astype(str).str.fullmatch(r"2\d{7}").all()


def test_splits_are_patient_disjoint_with_target_shares(phantom, tables):
    _, summary = phantom
    split, _, _ = tables
    assert (split.groupby("subject_id")["split"].nunique() == 1).all()
    studies = split.drop_duplicates("study_id")["split"].value_counts(normalize=True)
    assert 0.1 <= studies["test"] <= 0.35 and 0.05 <= studies["validate"] <= 0.25 and studies["train"] >= 0.5
    assert summary["subjects"] == split["subject_id"].nunique() == round(STUDIES / 3)
    for name in ("train", "validate", "test"):
        rows = split[split["split"] == name]
        assert summary["splits"][name] == {"subjects": rows["subject_id"].nunique(),
                                           "studies": rows["study_id"].nunique(), "images": len(rows)}


def test_manifest_and_phantom_is_current(phantom, tmp_path):
    out, summary = phantom
    manifest = json.loads((out / "phantom.json").read_text())
    assert manifest["complete"] is True and manifest["summary"] == summary
    assert (manifest["studies"], manifest["size"], manifest["seed"]) == (STUDIES, SIZE, 0)
    assert phantom_is_current(out, STUDIES, SIZE, 0)
    assert not phantom_is_current(out, STUDIES, SIZE + 1, 0)
    assert not phantom_is_current(out, STUDIES + 1, SIZE, 0)
    assert not phantom_is_current(out, STUDIES, SIZE, 1)
    assert not phantom_is_current(tmp_path / "nothing", STUDIES, SIZE, 0)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "phantom.json").write_text(json.dumps({**manifest, "complete": False}))
    assert not phantom_is_current(partial, STUDIES, SIZE, 0)


def test_regenerating_replaces_an_older_phantom_and_refuses_other_folders(tmp_path):
    out = tmp_path / "mimic"
    generate_phantom(out, studies=12, size=32, seed=0)
    (out / "datasets.pkl").write_bytes(b"prepared")  # someone else's file stays
    with pytest.raises(DataError, match=r"holds a phantom of 12 studies.*--force") as info:
        generate_phantom(out, studies=6, size=32, seed=0)  # other parameters: only when forced
    assert "\n" not in str(info.value) and len(list((out / "files").rglob("*.txt"))) == 12
    summary = generate_phantom(out, studies=6, size=32, seed=0, force=True)
    assert len(list((out / "files").rglob("*.jpg"))) == summary["images"]
    assert len(list((out / "files").rglob("*.txt"))) == 6
    assert (out / "datasets.pkl").read_bytes() == b"prepared"
    real = tmp_path / "real"
    (real / "files").mkdir(parents=True)
    with pytest.raises(DataError, match="phantom.json"):
        generate_phantom(real, studies=6, size=32)


@pytest.mark.parametrize("kwargs, key", [({"studies": 0}, "phantom_studies"), ({"size": 8}, "phantom_size"),
                                         ({"seed": -1}, "phantom_seed")])
def test_bad_arguments_name_the_key(tmp_path, kwargs, key):
    with pytest.raises(ConfigError, match=key):
        generate_phantom(tmp_path / "p", **{"studies": 5, "size": 32, "seed": 0, **kwargs})


# ---- labels and reports -----------------------------------------------------------------


def test_finding_mix():
    """Shares over many studies (no rendering): ~15% none, ~58% exactly one competition finding."""
    n = 3000
    comp = set(COMPETITION_TASKS)
    none = single = 0
    per_class = dict.fromkeys(COMPETITION_TASKS, 0)
    uncertain = 0
    for i in range(n):
        findings = sample_findings(np.random.default_rng([7, i]))
        positive = [f.label for f in findings if f.value > 0 and f.label in comp]
        none += not findings
        uncertain += any(f.value < 0 for f in findings)
        if len(positive) == 1 and len([f for f in findings if f.label in comp]) == 1:
            single += 1
            per_class[positive[0]] += 1
    assert 0.12 < none / n < 0.18
    assert 0.55 < single / n < 0.72
    assert all(0.16 < c / single < 0.24 for c in per_class.values()), per_class
    assert 0.03 < uncertain / n < 0.12


def test_label_conventions(phantom, tables):
    _, chexpert, _ = tables
    pathology = [n for n in CHEXPERT_LABELS if n not in ("No Finding", "Support Devices")]
    for row in chexpert.to_dict("records"):
        sick = any(row[n] in (1.0, -1.0) for n in pathology)
        # No Finding is 1.0 or blank, never 0.0
        assert (row["No Finding"] == 1.0) == (not sick)
        assert row["No Finding"] == 1.0 or math.isnan(row["No Finding"])
        # Lung Opacity is its own mention (an opacity word), as the CheXpert labeler reads it
        mentions_opacity = "opacit" in _report(phantom[0], row["subject_id"], row["study_id"]).lower()
        assert (row["Lung Opacity"] == 1.0) == mentions_opacity


_HEDGES = ("possible", "possibly", "cannot exclude", "cannot be excluded", "may reflect")
_KEYWORDS = {"Atelectasis": "atelectasis", "Consolidation": "consolidation", "Edema": "edema",
             "Pleural Effusion": "effusion", "Pneumothorax": "pneumothorax"}


def _sentences(text: str) -> list[str]:
    return [s.lower() for s in re.split(r"(?<=[.;])\s+", " ".join(text.split())) if s]


def test_reports_state_positives_negate_and_hedge(phantom, tables):
    out, _ = phantom
    _, chexpert, _ = tables
    cardio_phrases = [p.lower() for p in PROMPT_VOCABULARY["Cardiomegaly"]["subtype"]]
    negated = hedged = 0
    for row in chexpert.to_dict("records"):
        sentences = _sentences(_report(out, row["subject_id"], row["study_id"]))
        text = " ".join(sentences)
        for label, word in _KEYWORDS.items():
            mentions = [s for s in sentences if word in s]
            if row[label] == 1.0:
                plain = [s for s in mentions if not re.search(r"\bno\b", s) and not any(h in s for h in _HEDGES)]
                assert plain, (label, text)
            elif row[label] == 0.0:
                assert any(re.search(r"\bno\b", s) for s in mentions), (label, text)
                negated += 1
            elif row[label] == -1.0:
                assert any(any(h in s for h in _HEDGES) for s in mentions), (label, text)
                hedged += 1
        if row["Cardiomegaly"] == 1.0:
            assert any(p in text for p in cardio_phrases), text
        elif row["Cardiomegaly"] == 0.0:
            assert any("heart" in s and "normal" in s for s in sentences), text
        if row["No Finding"] == 1.0:
            assert not any(row[n] == 1.0 for n in _KEYWORDS)
    assert negated > 0 and hedged > 0


def test_positive_findings_use_the_prompt_vocabulary(phantom, tables):
    out, _ = phantom
    _, chexpert, _ = tables
    checked = 0
    for row in chexpert.to_dict("records"):
        text = " ".join(_sentences(_report(out, row["subject_id"], row["study_id"])))
        for label in ("Atelectasis", "Consolidation", "Edema"):
            if row[label] == 1.0:
                vocab = PROMPT_VOCABULARY[label]
                assert any(s in text for s in vocab["subtype"]), (label, text)
                if label != "Edema":
                    assert any(loc in text for loc in vocab["location"]), (label, text)
                checked += 1
        if row["Pleural Effusion"] == 1.0:
            assert re.search(r"(left|right|bilateral) (subpulmonic )?pleural effusion", text), text
            checked += 1
    assert checked >= 10


def test_rare_report_styles_exist(phantom, tables):
    out, summary = phantom
    _, chexpert, _ = tables
    kinds = []
    for row in chexpert.itertuples():
        sections = extract_sections(_report(out, row.subject_id, row.study_id))
        kinds.append(("FINDINGS" in sections, "IMPRESSION" in sections))
    assert kinds.count((False, True)) == summary["reports_without_findings"] == 1
    assert kinds.count((False, False)) == summary["reports_without_sections"] == 1
    text = _report(out, int(chexpert.subject_id[0]), int(chexpert.study_id[0]))
    assert text.startswith(" " * 33 + "FINAL REPORT\n")


# ---- images follow the findings ---------------------------------------------------------


def _render(findings, size=128, seed=3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    anatomy = sample_anatomy(rng)
    return np.asarray(render_chest(size, anatomy, findings, "PA", rng), dtype=np.float32)


def _region(img: np.ndarray, x0: float, x1: float, y0: float, y1: float) -> float:
    """Mean intensity of a box given as fractions of the width and height."""
    h, w = img.shape
    return float(img[int(y0 * h):int(y1 * h), int(x0 * w):int(x1 * w)].mean())


def test_large_effusion_brightens_its_lower_zone():
    base = _render([])
    effusion = Finding("Pleural Effusion", 1.0, "large", "pleural effusion", "left", ("left",), "base", 1.0,
                       extent=0.45)
    faint = Finding("Pleural Effusion", -1.0, "large", "pleural effusion", "left", ("left",), "base", 0.5, extent=0.45)
    img, weak = _render([effusion]), _render([faint])
    lower_left = (0.62, 0.88, 0.6, 0.72)  # the patient's left is the image's right
    lower_right = (0.12, 0.38, 0.6, 0.72)
    assert _region(img, *lower_left) > _region(base, *lower_left) + 30
    assert _region(base, *lower_left) + 10 < _region(weak, *lower_left) < _region(img, *lower_left) - 10
    assert abs(_region(img, *lower_right) - _region(base, *lower_right)) < 3


def test_cardiomegaly_widens_the_heart():
    heart_level = (0.6, 0.85, 0.58, 0.68)  # left of a normal heart border
    normal = _render([])
    big = _render([Finding("Cardiomegaly", 1.0, subtype="persistent severe cardiomegaly", extent=0.72)])
    assert _region(big, *heart_level) > _region(normal, *heart_level) + 20


def test_edema_is_bilateral_and_perihilar():
    normal = _render([])
    edema = _render([Finding("Edema", 1.0, "moderate", "pulmonary edema", "", ("right", "left"), "perihilar", 1.0)])
    for box in ((0.22, 0.4, 0.38, 0.58), (0.6, 0.78, 0.38, 0.58)):
        assert _region(edema, *box) > _region(normal, *box) + 20


def test_consolidation_and_atelectasis_appear_on_their_side():
    normal = _render([])
    rul = Finding("Consolidation", 1.0, "", "airspace consolidation", "at the right upper lobe", ("right",), "upper",
                  1.0)
    cons = _render([rul])
    upper_right, upper_left = (0.1, 0.4, 0.15, 0.4), (0.6, 0.9, 0.15, 0.4)
    assert _region(cons, *upper_right) > _region(normal, *upper_right) + 10
    assert abs(_region(cons, *upper_left) - _region(normal, *upper_left)) < 3
    band = Finding("Atelectasis", 1.0, "", "linear atelectasis", "at the left lung base", ("left",), "base", 1.0)
    atel = _render([band])
    lower_left, lower_right = (0.55, 0.95, 0.45, 0.75), (0.05, 0.45, 0.45, 0.75)
    assert _region(atel, *lower_left) > _region(normal, *lower_left) + 5
    assert abs(_region(atel, *lower_right) - _region(normal, *lower_right)) < 3


def test_render_sizes_keep_the_mimic_aspect():
    anatomy = sample_anatomy(np.random.default_rng(0))
    for size in (64, 300, 3056):
        im = render_chest(size, anatomy, [], "PA", 0)
        assert im.mode == "L" and im.size == (round(size * 2544 / 3056), size)
    lateral = render_chest(64, anatomy, [], "LATERAL", 0)
    assert lateral.size == (image_width(64), 64)


def test_test_cohort_gives_a_full_5x200_and_keeps_the_other_studies(tmp_path):
    """The extra test studies (new patients, own random stream) fill each 5x200 class; the
    studies without them keep their bytes."""
    from medclip_nb.data import load_dataset_file
    from medclip_nb.data.mimic import prepare_mimic
    from medclip_nb.evaluate.metrics import build_5x200

    plain = generate_phantom(tmp_path / "plain", studies=20, size=32, seed=0)
    cohort = generate_phantom(tmp_path / "cohort", studies=20, size=32, seed=0, test_studies=150)
    assert cohort["splits"]["test"]["studies"] == plain["splits"]["test"]["studies"] + 150
    assert cohort["splits"]["train"] == plain["splits"]["train"]
    for jpg in (tmp_path / "plain" / "files").rglob("*.jpg"):
        assert jpg.read_bytes() == (tmp_path / "cohort" / jpg.relative_to(tmp_path / "plain")).read_bytes()
    assert phantom_is_current(tmp_path / "cohort", 20, 32, 0, test_studies=150)
    assert not phantom_is_current(tmp_path / "cohort", 20, 32, 0)

    prepare_mimic(tmp_path / "cohort", tmp_path / "prepared", num_workers=0)
    test = load_dataset_file(tmp_path / "prepared" / "datasets.pkl")["test"]
    pairs = build_5x200(test, per_class=10, seed=0)
    counts = np.bincount([c for _, c in pairs], minlength=5)
    assert counts.tolist() == [10] * 5
    subjects = {r["subject_id"] for split in ("train", "val") for r in load_dataset_file(
        tmp_path / "prepared" / "datasets.pkl")[split]}
    assert not subjects & {r["subject_id"] for r in test}  # still patient-disjoint


def test_a_phantom_of_an_older_generator_version_is_rewritten_without_force(tmp_path):
    """Only the user's parameters need --force: the same phantom from an older version is ours to redo."""
    out = tmp_path / "p"
    generate_phantom(out, studies=6, size=32, seed=0)
    manifest = json.loads((out / "phantom.json").read_text())
    manifest["version"] = 1
    manifest.pop("test_studies")  # written before the test cohort existed
    (out / "phantom.json").write_text(json.dumps(manifest))
    assert not phantom_is_current(out, 6, 32, 0)
    generate_phantom(out, studies=6, size=32, seed=0)
    assert phantom_is_current(out, 6, 32, 0)
    with pytest.raises(DataError, match="--force"):
        generate_phantom(out, studies=7, size=32, seed=0)
