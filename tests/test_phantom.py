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
from medclip_nb.data.mimic_reports import report_text
from medclip_nb.errors import ConfigError, DataError
from medclip_nb.labels import CHEXPERT_LABELS, COMPETITION_TASKS
from medclip_nb.phantom import generate_phantom, phantom_is_current
from medclip_nb.phantom.anatomy import sample_anatomy
from medclip_nb.phantom.findings import Finding, finding_from_words, sample_findings
from medclip_nb.phantom.plan import RNG_STUDY, plan_studies
from medclip_nb.phantom.render import frontal_layers, image_width, render_chest
from medclip_nb.phantom.reports import LABEL_NOISE, write_report
from medclip_nb.text.clean import split_sentences
from medclip_nb.text.language import language_figures
from medclip_nb.text.mentions import find_mentions

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


def test_a_phantom_of_other_generator_code_is_not_current(phantom, monkeypatch):
    import medclip_nb.phantom.tree as tree

    out, _ = phantom
    recorded = json.loads((out / "phantom.json").read_text())["generator_sha256"]
    assert recorded == tree.generator_fingerprint() and len(recorded) == 64
    # An edit to the generator that forgot PHANTOM_VERSION: the same arguments, other code.
    monkeypatch.setattr(tree, "generator_fingerprint", lambda: "0" * 64)
    assert not phantom_is_current(out, STUDIES, SIZE, 0)


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


def test_label_conventions(tables):
    _, chexpert, _ = tables
    pathology = [n for n in CHEXPERT_LABELS if n not in ("No Finding", "Support Devices")]
    for row in chexpert.to_dict("records"):
        sick = any(row[n] in (1.0, -1.0) for n in pathology)
        # No Finding is 1.0 or blank, never 0.0
        assert (row["No Finding"] == 1.0) == (not sick)
        assert row["No Finding"] == 1.0 or math.isnan(row["No Finding"])


# ---- reports and labels, without images (write_report on a plan) --------------------------------


def _reports(studies: int, seed: int = 0):
    """(planned study, PhantomReport) of every study of a plan, drawn as generate_phantom draws them."""
    plan = plan_studies(studies, seed)
    return [(s, write_report(s.findings, [im.view for im in s.images], s.style,
                             np.random.default_rng([seed, RNG_STUDY, s.index, 1]))) for s in plan]


@pytest.fixture(scope="module")
def reports():
    return _reports(1500)


def _read(text: str) -> dict[str, int]:
    """Each label the rule-based labeller (text/mentions.py) finds in `text`, with its strongest status
    (positive over uncertain over negated): 1, -1 or 0."""
    rank = {0: 0, -1: 1, 1: 2}
    found: dict[str, int] = {}
    for m in find_mentions(text):
        if m.label not in found or rank[m.status] > rank[found[m.label]]:
            found[m.label] = m.status
    return found


_POST_NEGATION = re.compile(r"\b(?:is|are) not (?:seen|identified|present|enlarged|widened)\b|\babsent\b")


def test_table_labels_follow_the_findings_except_in_noisy_studies(reports):
    checked = 0
    for s, report in reports:
        labels = report.labels
        if report.label_noise:
            continue
        for f in s.findings:
            assert labels[f.label] == f.value, (f.label, report.text)
            checked += 1
    assert checked > 1000


def test_labeler_like_noise_has_its_documented_kinds_and_share(reports):
    kinds = {}
    for s, report in reports:
        if not report.label_noise:
            continue
        kinds[report.label_noise] = kinds.get(report.label_noise, 0) + 1
        stated = [f for f in s.findings if f.label != "Support Devices"]
        if report.label_noise == "missed_mention":  # a stated finding left blank: the text still says it
            missed = [f for f in stated if f.value > 0 and math.isnan(report.labels[f.label])]
            assert len(missed) == 1, report.text
            assert any(labels[missed[0].label] == 1.0 for _, labels in report.sentence_labels)
        else:  # a hedged finding read as positive
            assert report.label_noise == "uncertain_as_positive"
            hedged = [f for f in s.findings if f.value < 0]
            assert hedged and report.labels[hedged[0].label] == 1.0
    assert set(kinds) == set(LABEL_NOISE)
    share = sum(kinds.values()) / len(reports)
    assert 0.02 < share < 0.09, kinds


def test_phantom_json_records_the_label_noise(phantom):
    out, summary = phantom
    noise = json.loads((out / "phantom.json").read_text())["summary"]["label_noise"]
    assert noise["rates"] == LABEL_NOISE and set(noise["studies"]) == set(LABEL_NOISE)
    assert noise["share_of_studies"] == pytest.approx(sum(noise["studies"].values()) / summary["studies"], abs=1e-4)


def test_statements_read_as_their_labels_say(reports):
    """A labeller reads no normal statement as a finding, no finding's sentence as another competition
    finding (text and image agree) and no finding's sentence as negating its own finding; hedged
    findings read as uncertain where named; Lung Opacity in the table is what the finding sentences name."""
    competition = set(COMPETITION_TASKS)
    unnamed = named = 0
    for s, report in reports:
        own = {f.label for f in s.findings}
        for text, labels in report.sentence_labels:
            read = _read(text)
            finding = [f for f in s.findings if labels[f.label] in (1.0, -1.0)]
            if not finding:  # a normal statement: whatever it names, it names as absent
                # (text/mentions.py reads negation cues before a mention only: "X is not seen" and "X ... are
                # absent" are negations it reads as mentions; the phantom's tables read them as negations)
                assert all(v == 0 for v in read.values()) or _POST_NEGATION.search(text.lower()), text
                continue
            assert set(read) & competition <= own, text
            for f in finding:
                if f.label in read:
                    named += 1
                    assert read[f.label] != 0, text  # never read as negating its own finding
                    if f.value < 0:
                        assert read[f.label] == -1, text  # a hedged finding reads as uncertain
                else:
                    unnamed += 1
        opacity = any(labels["Lung Opacity"] == 1.0 for _, labels in report.sentence_labels)
        assert (report.labels["Lung Opacity"] == 1.0) == opacity, report.text
    assert named > 1000 and unnamed > 0.05 * (named + unnamed), (named, unnamed)  # findings without their label word


def test_negative_labels_come_from_normal_statements(reports):
    for _, report in reports:
        for name in CHEXPERT_LABELS:
            if report.labels[name] == 0.0:
                assert any(labels[name] == 0.0 for _, labels in report.sentence_labels), (name, report.text)


def test_report_language_is_open(reports):
    """Few reports hold a 5x200 prompt verbatim; sentence templates in the thousands grow with the corpus."""
    texts = [report_text(r.text) for _, r in reports]
    figures = language_figures(texts)
    small = language_figures(texts[:500])
    assert figures["prompt_verbatim_share"] < 0.2
    assert figures["sentence_templates"] > 1500 and figures["sentence_templates"] > 1.8 * small["sentence_templates"]
    assert figures["word_types"] > 350
    assert 0.3 < figures["negated_finding_share"] < 0.8


def test_reports_are_reproducible_from_their_stream():
    first, again = _reports(60, seed=3), _reports(60, seed=3)
    assert [r.text for _, r in first] == [r.text for _, r in again]
    assert [str(r.labels) for _, r in first] == [str(r.labels) for _, r in again]  # NaN != NaN: compare as text
    assert [r.text for _, r in first] != [r.text for _, r in _reports(60, seed=4)]


def test_sentence_table_covers_the_reports_in_medclips_normal_form(phantom):
    """MedCLIP's lookup key: lower case, single spaces, no final period."""
    out, _ = phantom
    normal = lambda text: " ".join(text.lower().split()).rstrip(".").strip()  # noqa: E731
    table = {normal(k) for k in pd.read_csv(out / "sentence-label.csv.gz")["Reports"].astype(str)}
    sentences = [normal(x) for path in (out / "files").rglob("*.txt")
                 for x in split_sentences(report_text(path.read_text()))]
    assert sentences and sum(x in table for x in sentences) / len(sentences) >= 0.99


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


def test_each_drawn_finding_is_its_own_delta_map():
    """frontal_layers: the chest plus each drawn finding's delta; a finding's mask is where its delta is
    non-zero, on the side and in the zone it was drawn; render_chest draws the same sum."""
    rng = np.random.default_rng(5)
    anatomy = sample_anatomy(rng)
    findings = [finding_from_words("Pleural Effusion", "large", ("left",)),
                finding_from_words("Consolidation", "moderate", ("right",), "upper"),
                finding_from_words("Cardiomegaly", "severe")]
    layers = frontal_layers(128, image_width(128), anatomy, findings, np.random.default_rng(9))
    assert [f.label for f, _ in layers.deltas] == ["Pleural Effusion", "Consolidation"]  # the heart is anatomy
    w = image_width(128)
    for f, delta in layers.deltas:
        mask = delta > 0.02 * delta.max()
        ys, xs = np.nonzero(mask)
        assert mask.mean() < 0.25
        if f.label == "Pleural Effusion":  # the patient's left is the image's right, at the base
            assert xs.mean() > w / 2 and ys.mean() > 0.55 * 128
        else:
            assert xs.mean() < w / 2 and ys.mean() < 0.5 * 128
    total = layers.base + sum(d for _, d in layers.deltas)
    assert np.allclose(layers.attenuation(), total * layers.body + 0.02 * (1 - layers.body))
    a = np.asarray(render_chest(128, anatomy, findings, "PA", np.random.default_rng(9)))
    b = np.asarray(render_chest(128, anatomy, findings, "PA", np.random.default_rng(9)))
    assert np.array_equal(a, b)


def test_grades_range_from_near_the_noise_to_strong():
    """A subtle finding changes the film far less than a severe one: contrast and size follow the grade."""
    rng = np.random.default_rng(0)
    anatomy = sample_anatomy(rng)
    for label, side, zone in (("Consolidation", "right", "lower"), ("Atelectasis", "left", "base"),
                              ("Pleural Effusion", "right", "base"), ("Edema", "right", "perihilar")):
        peak = {}
        for grade in ("subtle", "severe"):
            f = finding_from_words(label, {"subtle": "minimal", "severe": "severe"}[grade], (side,) if label != "Edema"
                                   else ("right", "left"), zone)
            (_, delta), = frontal_layers(128, image_width(128), anatomy, [f], np.random.default_rng(1)).deltas
            peak[grade] = float(delta.sum())
        assert peak["subtle"] < 0.5 * peak["severe"], (label, peak)
