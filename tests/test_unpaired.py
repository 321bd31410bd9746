"""Unpaired data (MedCLIP's image-only and text-only items): the loss with extra rows,
`prepare --unpaired-fraction`, dataset validation, the seeded draw and a short training run."""

from __future__ import annotations

import contextlib
import io
import math
import pickle
from pathlib import Path

import pytest
import torch

from medclip_nb.config import from_dict
from medclip_nb.data import load_dataset_file, validate_dataset
from medclip_nb.data.unpaired import UnpairedBatches, UnpairedTexts, build_unpaired, draw_unpaired
from medclip_nb.errors import ConfigError, DataError
from medclip_nb.labels import CHEXPERT_LABELS, NUM_LABELS
from medclip_nb.model import losses
from medclip_nb.model.losses import ContrastiveLoss, medclip_cosine_loss, medclip_loss
from medclip_nb.text.clean import split_sentences
from medclip_nb.text.tokenizers import CharTokenizer

SCALE = 2.0


pytestmark = pytest.mark.usefixtures("one_thread_no_bars")  # tests/conftest.py


def labels_with(*positives: str) -> torch.Tensor:
    """One row per name: that finding positive, everything else negative."""
    rows = torch.zeros(len(positives), NUM_LABELS)
    for row, name in enumerate(positives):
        rows[row, CHEXPERT_LABELS.index(name)] = 1.0
    return rows


def log_softmax_at(logits: list[float], index: int) -> float:
    return logits[index] - math.log(sum(math.exp(v) for v in logits))


def quiet_prepare(*args, **kwargs) -> dict:
    from medclip_nb.data.mimic import prepare_mimic

    with contextlib.redirect_stdout(io.StringIO()):
        return prepare_mimic(*args, num_workers=1, **kwargs)


# ---- the loss with unpaired rows, by hand ---------------------------------------------------------
# Unit vectors in 2-D: image 0 = (1, 0), image 1 = (0, 1), image-only 2 = (0.6, 0.8);
# text 0 = (0.8, 0.6), text 1 = (0, 1).
IMAGES = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
TEXTS = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
SIM = [[0.8, 0.0], [0.6, 1.0], [0.96, 0.8]]  # IMAGES @ TEXTS.T


def test_medclip_cosine_loss_with_an_image_only_row_by_hand():
    # Pairs: (Edema, Edema), (Cardiomegaly, Cardiomegaly); the image-only row is Edema too.
    image_labels = labels_with("Edema", "Cardiomegaly", "Edema")
    text_labels = labels_with("Edema", "Cardiomegaly")
    rows = [[SCALE * v for v in r] for r in SIM]
    # image -> text targets: one-hot on the text with the same finding (the image-only row
    # learns from text 0, which shares its Edema).
    i2t = -(log_softmax_at(rows[0], 0) + log_softmax_at(rows[1], 1) + log_softmax_at(rows[2], 0)) / 3
    # text -> image: text 0 (Edema) matches images 0 and 2 equally, text 1 only image 1.
    cols = [[rows[i][j] for i in range(3)] for j in range(2)]
    t2i = -((0.5 * log_softmax_at(cols[0], 0) + 0.5 * log_softmax_at(cols[0], 2)) + log_softmax_at(cols[1], 1)) / 2
    loss, terms = medclip_cosine_loss(IMAGES, TEXTS, SCALE, image_labels, text_labels, num_pairs=2)
    assert terms["loss_i2t"].item() == pytest.approx(i2t, rel=1e-6)
    assert terms["loss_t2i"].item() == pytest.approx(t2i, rel=1e-6)
    assert loss.item() == pytest.approx((i2t + t2i) / 2, rel=1e-6)


def test_unpaired_row_without_shared_finding_is_left_out_of_the_mean():
    # The image-only row is a Fracture: no text shares a finding, so it has no target.
    image_labels = labels_with("Edema", "Cardiomegaly", "Fracture")
    text_labels = labels_with("Edema", "Cardiomegaly")
    rows = [[SCALE * v for v in r] for r in SIM]
    i2t = -(log_softmax_at(rows[0], 0) + log_softmax_at(rows[1], 1)) / 2  # two rows, not three
    _, terms = medclip_cosine_loss(IMAGES, TEXTS, SCALE, image_labels, text_labels, num_pairs=2)
    assert terms["loss_i2t"].item() == pytest.approx(i2t, rel=1e-6)
    assert math.isfinite(terms["loss_t2i"].item())


def test_text_only_row_never_pairs_with_an_image_only_row():
    # 1 pair + 1 image-only + 1 text-only. Row 1 of each side has the same index but is no
    # pair: the text-only Fracture shares nothing with the images, so it gets no target
    # (the own-pair fallback applies to the paired rows only).
    image_labels = labels_with("Edema", "Cardiomegaly")
    text_labels = labels_with("Edema", "Fracture")
    images, texts = IMAGES[:2], TEXTS
    targets = losses.soft_targets(losses.label_vectors(text_labels), losses.label_vectors(image_labels), 0, 1)
    torch.testing.assert_close(targets, torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
    _, terms = medclip_cosine_loss(images, texts, SCALE, image_labels, text_labels, num_pairs=1)
    cols = [[SCALE * SIM[i][j] for i in range(2)] for j in range(2)]
    assert terms["loss_t2i"].item() == pytest.approx(-log_softmax_at(cols[0], 0), rel=1e-6)


def test_medclip_loss_needs_num_pairs_when_the_sides_differ():
    with pytest.raises(ValueError, match="num_pairs"):
        medclip_loss(IMAGES, TEXTS, SCALE, labels_with("Edema", "Edema", "Edema"), labels_with("Edema", "Edema"))
    with pytest.raises(ValueError, match="num_pairs 3"):
        medclip_loss(IMAGES, TEXTS, SCALE, labels_with("Edema", "Edema", "Edema"), labels_with("Edema", "Edema"),
                     num_pairs=3)


def test_contrastive_loss_module_passes_unpaired_rows_to_medclip_loss():
    outputs = {"image_embeds": IMAGES, "text_embeds": TEXTS, "logit_scale": torch.tensor(SCALE), "logit_bias": None}
    image_labels = labels_with("Edema", "Cardiomegaly", "Edema")
    text_labels = labels_with("Edema", "Cardiomegaly")
    module_loss, _ = ContrastiveLoss("medclip")(outputs, image_labels, text_labels, 2)
    assert torch.equal(module_loss, medclip_loss(IMAGES, TEXTS, SCALE, image_labels, text_labels, num_pairs=2)[0])
    module_loss, _ = ContrastiveLoss("medclip_cosine")(outputs, image_labels, text_labels, 2)
    assert torch.equal(module_loss,
                       medclip_cosine_loss(IMAGES, TEXTS, SCALE, image_labels, text_labels, num_pairs=2)[0])
    with pytest.raises(ValueError, match="medclip"):
        ContrastiveLoss("clip")(outputs, image_labels, text_labels, 2)


# ---- config ---------------------------------------------------------------------------------------
def test_config_refuses_unpaired_sources_without_the_medclip_loss():
    with pytest.raises(ConfigError, match=r"'unpaired_sources'.*loss 'medclip'.*'clip'"):
        from_dict({"unpaired_sources": ["images"], "loss": "clip"})
    with pytest.raises(ConfigError, match=r"'unpaired_sources': 'reports' is not one of images, texts"):
        from_dict({"unpaired_sources": ["reports"], "loss": "medclip"})
    with pytest.raises(ConfigError, match=r"'unpaired_sources': 'texts' needs a text encoder"):
        from_dict({"unpaired_sources": ["texts"], "loss": "medclip", "text_encoder": "precomputed",
                   "text_features_path": "features.json"})
    # A comma-separated flag value is a list; the default is off.
    assert from_dict({"unpaired_sources": "images, texts", "loss": "medclip"}).unpaired_sources == ["images", "texts"]
    assert from_dict({}).unpaired_sources == []


# ---- prepare --unpaired-fraction ------------------------------------------------------------------
@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory) -> Path:
    from medclip_nb.phantom import generate_phantom

    root = tmp_path_factory.mktemp("unpaired_phantom") / "mimic"
    generate_phantom(root, studies=40, size=64)
    return root


@pytest.fixture(scope="module")
def prepared(phantom_root) -> dict:
    """The phantom prepared without and with unpaired_fraction 0.4."""
    out = phantom_root.parent
    quiet_prepare(phantom_root, out / "plain")
    report = quiet_prepare(phantom_root, out / "unpaired", unpaired_fraction=0.4, unpaired_seed=3)
    load = lambda name: pickle.loads((out / name / "datasets.pkl").read_bytes())
    return {"plain": load("plain"), "unpaired": load("unpaired"), "report": report,
            "path": out / "unpaired" / "datasets.pkl"}


def test_unpaired_fraction_moves_whole_train_studies_and_counts_add_up(prepared):
    plain, data, report = prepared["plain"], prepared["unpaired"], prepared["report"]
    assert "train_images" not in plain and "train_texts" not in plain  # off by default
    studies = lambda records: {r["study_id"] for r in records}
    subjects = lambda records: {r["subject_id"] for r in records}
    image_studies, text_studies = studies(data["train_images"]), studies(data["train_texts"])
    moved = image_studies | text_studies
    # Every train study is either still paired or moved, never both; the rest is untouched.
    assert studies(data["train"]) | moved == studies(plain["train"])
    assert not studies(data["train"]) & moved and not image_studies & text_studies
    assert repr((data["val"], data["test"])) == repr((plain["val"], plain["test"]))  # repr: NaN labels compare equal
    # Whole patients move: no patient is in both the paired and the unpaired training data.
    assert not subjects(data["train"]) & (subjects(data["train_images"]) | subjects(data["train_texts"]))
    # About 0.4 of the train studies, half of them (rounded up) image-only.
    n_train = len(studies(plain["train"]))
    assert len(moved) >= round(0.4 * n_train) and len(studies(data["train"])) >= 1
    assert len(image_studies) == (len(moved) + 1) // 2
    # Image-only: every image of those studies, without its report; text-only: one record per
    # sentence of each study's report, with the study's labels.
    by_study = {}
    for record in plain["train"]:
        by_study.setdefault(record["study_id"], []).append(record)
    assert sorted(r["image_path"] for r in data["train_images"]) == \
        sorted(r["image_path"] for s in image_studies for r in by_study[s])
    assert all(r["report"] == "" for r in data["train_images"])
    expected_texts = [(s, sentence) for s in sorted(text_studies)
                      for sentence in split_sentences(by_study[s][0]["report"])]
    assert sorted((r["study_id"], r["report"]) for r in data["train_texts"]) == sorted(expected_texts)
    for record in data["train_texts"]:
        assert "image_path" not in record
        assert record["labels"] == pytest.approx(by_study[record["study_id"]][0]["labels"], nan_ok=True)
    assert len(data["train"]) + sum(len(by_study[s]) for s in moved) == len(plain["train"])
    assert report["kept"]["train"] == len(data["train"])
    assert report["unpaired"]["train_images"] == len(data["train_images"])
    assert report["unpaired"]["train_texts"] == len(data["train_texts"])
    assert report["unpaired"]["moved_studies"] == {"train_images": len(image_studies), "train_texts": len(text_studies)}
    # The file passes validation without warnings about the extra splits.
    assert validate_dataset(load_dataset_file(prepared["path"]), prepared["path"]) == []


def test_unpaired_fraction_is_seeded(phantom_root, prepared, tmp_path):
    quiet_prepare(phantom_root, tmp_path / "again", unpaired_fraction=0.4, unpaired_seed=3)
    again = pickle.loads((tmp_path / "again" / "datasets.pkl").read_bytes())
    for split in ("train", "train_images", "train_texts"):
        assert [(r["study_id"], r.get("dicom_id", r["report"])) for r in again[split]] == \
            [(r["study_id"], r.get("dicom_id", r["report"])) for r in prepared["unpaired"][split]]


def test_unpaired_fraction_out_of_range_is_refused(phantom_root, tmp_path):
    with pytest.raises(ConfigError, match=r"--unpaired-fraction"):
        quiet_prepare(phantom_root, tmp_path / "bad", unpaired_fraction=1.0)


def test_train_studies_without_report_text_become_image_only(phantom_root, prepared, tmp_path):
    import shutil

    root = tmp_path / "mimic"
    shutil.copytree(phantom_root, root)
    study = prepared["plain"]["train"][0]
    subject = str(study["subject_id"])
    (root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study['study_id']}.txt").write_text("\n")
    report = quiet_prepare(root, tmp_path / "out")
    data = pickle.loads((tmp_path / "out" / "datasets.pkl").read_bytes())
    lost = [r for r in prepared["plain"]["train"] if r["study_id"] == study["study_id"]]
    assert sorted(r["dicom_id"] for r in data["train_images"]) == sorted(r["dicom_id"] for r in lost)
    assert all(r["report"] == "" and r["labels"] == pytest.approx(study["labels"], nan_ok=True)
               for r in data["train_images"])
    assert study["study_id"] not in {r["study_id"] for r in data["train"]}
    assert report["dropped"]["no_report_text"] == len(lost)
    assert report["unpaired"]["images_without_report_text"] == len(lost)


# ---- validation of the unpaired splits ------------------------------------------------------------
def _dataset(**extra) -> dict:
    pair = {"image_path": "a.jpg", "report": "Normal.", "labels": [0.0] * NUM_LABELS}
    return {"train": [dict(pair)], "val": [dict(pair, image_path="b.jpg")], "test": [], **extra}


def test_validation_of_unpaired_splits():
    data = _dataset(train_images=[{"image_path": "c.jpg", "labels": [None] * NUM_LABELS}],
                    train_texts=[{"report": "Small effusion.", "labels": [1.0] + [0.0] * 13}])
    warnings = validate_dataset(data, "d.pkl")
    assert not any("ignoring" in w for w in warnings)
    assert data["train_images"][0]["report"] == "" and math.isnan(data["train_images"][0]["labels"][0])
    with pytest.raises(DataError, match=r"d.pkl: train_texts\[0\]: key 'report' must be a non-empty string"):
        validate_dataset(_dataset(train_texts=[{"report": " ", "labels": [0.0] * NUM_LABELS}]), "d.pkl")
    with pytest.raises(DataError, match=r"d.pkl: train_images\[0\]: key 'labels'\[2\]: 2.0"):
        validate_dataset(_dataset(train_images=[{"image_path": "c.jpg", "labels": [0.0, 0.0, 2.0] + [0.0] * 11}]),
                         "d.pkl")
    with pytest.raises(DataError, match=r"d.pkl: train_images\[0\]: key 'image_path' is missing"):
        validate_dataset(_dataset(train_images=[{"report": "", "labels": [0.0] * NUM_LABELS}]), "d.pkl")
    leak = validate_dataset(_dataset(train_images=[{"image_path": "b.jpg", "labels": [0.0] * NUM_LABELS}]), "d.pkl")
    assert any("leakage" in w and "b.jpg" in w for w in leak)


# ---- the seeded draw ------------------------------------------------------------------------------
def test_draw_is_a_pure_function_of_seed_source_epoch_and_step():
    draw = lambda **kw: draw_unpaired(10, 3, **{"seed": 1, "source": "images", "epoch": 0, "step": 0, **kw})
    assert draw() == draw() == draw_unpaired(10, 3, seed=1, source="images", epoch=0, step=0, _permutations={})
    assert draw(step=1) != draw() and draw(epoch=1) != draw() and draw(seed=2) != draw()
    assert [i for i, _ in draw(source="texts")] != [i for i, _ in draw()]
    # Consecutive steps walk through the pool without repeats until it runs out.
    first_pass = [i for step in range(3) for i, _ in draw(step=step)]
    assert len(set(first_pass)) == 9 and all(0 <= i < 10 for i in first_pass)
    # Sample seeds differ per position (each item its own augmentation).
    assert len({s for step in range(4) for _, s in draw(step=step)}) == 12


def test_extend_appends_unpaired_rows_reproducibly():
    texts = UnpairedTexts([{"report": f"Finding {k}. Second sentence {k}.", "labels": [float(k % 2)] + [0.0] * 13}
                           for k in range(5)], report_sampling="sentence")
    tokenizer = CharTokenizer(50)
    batch = {"pixel_values": torch.zeros(2, 3, 4, 4), "labels": torch.zeros(2, NUM_LABELS),
             **tokenizer.encode(["a", "b"]), "n_skipped": 0, "skipped_paths": []}
    unpaired = UnpairedBatches(None, texts, tokenizer, per_batch=3, seed=5)
    extended = unpaired.extend(batch, epoch=0, step=1)
    assert extended["pixel_values"].shape[0] == 2 and extended["input_ids"].shape[0] == 5
    assert extended["num_pairs"] == 2 and extended["text_labels"].shape == (5, NUM_LABELS)
    drawn = [i for i, _ in unpaired.draw("texts", 0, 1)]
    assert extended["text_labels"][2:, 0].tolist() == [float(i % 2) for i in drawn]
    again = unpaired.extend(batch, epoch=0, step=1)
    assert torch.equal(again["input_ids"], extended["input_ids"])


# ---- training ------------------------------------------------------------------------------------
def tiny_config(dataset: Path, out: Path, **overrides):
    values = dict(
        data_path=str(dataset), model_save_path=str(out), image_size=32, resize_size=48, model="simple",
        embed_dim=32, batch_size=4, eval_batch_size=8, num_epochs=2, max_steps=4, num_workers=0, log_every=1,
        eval_steps=1000, save_steps=1000, lr=1e-4, seed=7, loss="medclip",
        unpaired_sources=["images", "texts"], unpaired_per_batch=3,
    )
    values.update(overrides)
    return from_dict(values)


def test_short_training_run_with_unpaired_images_and_texts(prepared, tmp_path, monkeypatch):
    from medclip_nb.train import train

    seen = []
    forward = ContrastiveLoss.forward

    def recording_forward(self, outputs, labels=None, *, text_labels=None, num_pairs=None):
        seen.append((outputs["image_embeds"].shape[0], outputs["text_embeds"].shape[0], num_pairs))
        return forward(self, outputs, labels, text_labels=text_labels, num_pairs=num_pairs)

    monkeypatch.setattr(ContrastiveLoss, "forward", recording_forward)
    result = train(tiny_config(prepared["path"], tmp_path / "run"), log=lambda *a, **k: None)
    assert result.steps == 4
    assert seen == [(4 + 3, 4 + 3, 4)] * 4  # 4 pairs + 3 image-only, 4 pairs + 3 text-only
    rows = [r for r in result.history if r["split"] == "train"]
    assert len(rows) == 4 and all(math.isfinite(r["loss"]) for r in rows)
    assert (tmp_path / "run" / "last.pth").is_file() and (tmp_path / "run" / "best.pth").is_file()


def test_training_needs_the_unpaired_split_it_asks_for(tmp_path):
    dataset = tmp_path / "d.pkl"
    data = _dataset()
    data["train"].append(dict(data["train"][0], image_path="a2.jpg"))  # one batch of the smallest size, 2
    dataset.write_bytes(pickle.dumps(data))
    from medclip_nb.train import train

    with pytest.raises(DataError, match=r"split 'train_images' is missing or empty.*'unpaired_sources'"):
        train(tiny_config(dataset, tmp_path / "run", unpaired_sources=["images"], batch_size=2),
              log=lambda *a, **k: None)


def test_unpaired_sources_are_single_process_for_now(prepared):
    cfg = tiny_config(prepared["path"], Path("unused"))
    records = load_dataset_file(prepared["path"])
    with pytest.raises(ConfigError, match="'unpaired_sources': single-process for now"):
        build_unpaired(cfg, records, CharTokenizer(50), data_path=prepared["path"], world_size=2)
