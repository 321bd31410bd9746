"""MedCLIP's decoupling on the same data (`unpaired_pool: train_fraction_rest`, data/decoupled.py): the
training patients a train_fraction leaves out give image-only items (their images, study labels) and
text-only items (their report sentences, each with the sentence-label table's labels); the batches hold
exactly those items with those labels, the same whatever the resume point."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from medclip_nb.config import from_dict
from medclip_nb.data.build import build_datasets
from medclip_nb.data.decoupled import decoupled_pool, image_only, text_only
from medclip_nb.data.mimic import prepare_mimic
from medclip_nb.data.train_fraction import keep_train_fraction, split_train_fraction
from medclip_nb.data.unpaired import UnpairedBatches
from medclip_nb.errors import ConfigError, DataError
from medclip_nb.labels import NUM_LABELS
from medclip_nb.model.checkpoint import load_checkpoint
from medclip_nb.text import read_sentence_labels, sentence_key, split_sentences
from medclip_nb.text.sentence_labels import PREPARED_NAME, unlisted_sentence_labels
from medclip_nb.train import train

pytestmark = pytest.mark.usefixtures("one_thread_no_bars")  # tests/conftest.py


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A 40-study phantom prepared with its sentence-label table (32 px images, fast to train on)."""
    from medclip_nb.phantom import generate_phantom

    root = tmp_path_factory.mktemp("decoupled")
    generate_phantom(root / "mimic", studies=40, size=48)
    prepare_mimic(root / "mimic", root / "prepared", num_workers=1)
    return root / "prepared" / "datasets.pkl"


def config(dataset, out, **overrides):
    values = dict(data_path=str(dataset), model_save_path=str(out), image_size=32, resize_size=40, model="medclip",
                  vision_backbone="small_cnn", text_layers=1, text_width=32, text_heads=2, embed_dim=16,
                  vocab_size=200, max_text_tokens=32, batch_size=4, eval_batch_size=8, max_steps=6, num_epochs=6,
                  num_workers=0, log_every=1, eval_steps=1000, save_steps=1000, lr=1e-3, seed=5, loss="medclip",
                  train_fraction=0.4, unpaired_sources=["images", "texts"], unpaired_pool="train_fraction_rest",
                  sentence_labels="auto", unpaired_per_batch=3)
    values.update(overrides)
    return from_dict(values)


def test_the_split_is_the_kept_patients_and_the_rest():
    records = [{"subject_id": s // 3, "study_id": s, "image_path": f"{s}.jpg"} for s in range(30)]
    kept, rest = split_train_fraction(records, 0.3, seed=2)
    assert kept == keep_train_fraction(records, 0.3, seed=2)
    assert sorted(r["study_id"] for r in kept + rest) == list(range(30))
    assert not {r["subject_id"] for r in kept} & {r["subject_id"] for r in rest}  # whole patients
    assert split_train_fraction(records, 1.0) == (records, [])


def test_pool_items_by_hand():
    table = {sentence_key("No effusion."): [0.0] * NUM_LABELS, sentence_key("Mild edema."): [1.0] * NUM_LABELS}
    rest = [{"image_path": "a.jpg", "report": "No effusion. Mild edema. Unlisted words here.", "labels": [0.5] * 14,
             "study_id": 7, "subject_id": 1, "view": "PA"},
            {"image_path": "b.jpg", "report": "No effusion. Mild edema. Unlisted words here.", "labels": [0.5] * 14,
             "study_id": 7, "subject_id": 1, "view": "AP"}]  # a second image of the same study
    pool = decoupled_pool(rest, ["images", "texts"], table)
    assert pool.splits["train_images"] == [image_only(r) for r in rest]
    assert all(item["report"] == "" and item["labels"] == [0.5] * 14 for item in pool.splits["train_images"])
    texts = pool.splits["train_texts"]
    assert [t["report"] for t in texts] == ["no effusion.", "mild edema.", "unlisted words here."]  # once per study
    assert [t["labels"] for t in texts] == [[0.0] * 14, [1.0] * 14, [0.5] * 14]  # a miss: its study's labels
    assert (pool.patients, pool.studies, pool.misses) == (1, 1, 1)
    assert "1 training patient(s)" in pool.line() and "1 sentence(s) missing" in pool.line()
    assert list(decoupled_pool(rest, ["images"], None).splits) == ["train_images"]
    with pytest.raises(ValueError, match="sentence-label table"):
        decoupled_pool(rest, ["texts"], None)
    assert text_only(rest, {})[2] == 3  # every sentence a miss against an empty table


def test_a_missing_sentence_gets_what_sentence_label_miss_says():
    rest = [{"image_path": "a.jpg", "report": "Unlisted words here.", "labels": [0.5] * 14, "study_id": 7}]
    assert text_only(rest, {}, "study_labels")[0][0]["labels"] == [0.5] * 14
    assert text_only(rest, {}, "no_finding")[0][0]["labels"] == unlisted_sentence_labels()  # MedCLIP's reader
    assert "(no_finding)" in decoupled_pool(rest, ["texts"], {}, "no_finding").line()
    with pytest.raises(DataError, match="sentence_label_miss: error"):
        text_only(rest, {}, "error")


def test_build_datasets_makes_the_rest_into_unpaired_items(dataset, tmp_path):
    cfg = config(dataset, tmp_path)
    _, records, _ = build_datasets(cfg)
    train_all = pickle.loads(dataset.read_bytes())["train"]
    kept, rest = split_train_fraction(train_all, 0.4, cfg.train_fraction_seed)
    assert [r["image_path"] for r in records["train"]] == [r["image_path"] for r in kept]  # the plain arm's pairs
    assert [r["image_path"] for r in records["train_images"]] == [r["image_path"] for r in rest]
    assert same([r["labels"] for r in records["train_images"]], [r["labels"] for r in rest])
    table = read_sentence_labels(dataset.parent / PREPARED_NAME)
    expected = [(s, table[sentence_key(s)]) for r in rest for s in split_sentences(r["report"])]
    assert [t["report"] for t in records["train_texts"]] == [sentence for sentence, _ in expected]
    assert same([t["labels"] for t in records["train_texts"]], [labels for _, labels in expected])
    assert len(expected) > len(rest)  # several sentences a report, each its own labels
    assert not all(same(t["labels"], next(r["labels"] for r in rest if r["study_id"] == t["study_id"]))
                   for t in records["train_texts"])  # sentence labels, not the study's
    assert not {r["subject_id"] for r in kept} & {t["subject_id"] for t in records["train_texts"]}


def same(a, b) -> bool:
    return np.array_equal(np.asarray(a, dtype=float), np.asarray(b, dtype=float), equal_nan=True)


def record_batches(monkeypatch) -> list[tuple]:
    """(epoch, step, image-only labels, text-only sentences' labels, num_pairs) of every extended batch."""
    seen, extend = [], UnpairedBatches.extend

    def recording(self, batch, epoch, step):
        out = extend(self, batch, epoch, step)
        pairs = out["num_pairs"]
        seen.append((epoch, step, self.draw("images", epoch, step), self.draw("texts", epoch, step),
                     out["labels"][pairs:].clone(), out["text_labels"][pairs:].clone(), pairs))
        return out

    monkeypatch.setattr(UnpairedBatches, "extend", recording)
    return seen


def test_batches_hold_the_expected_items_with_their_own_labels(dataset, tmp_path, monkeypatch):
    seen = record_batches(monkeypatch)
    cfg = config(dataset, tmp_path / "run")
    result = train(cfg, log=lambda *a, **k: None)
    _, records, _ = build_datasets(cfg)
    assert result.steps == 6 and len(seen) == 6
    for _epoch, _step, images, texts, image_labels, text_labels, pairs in seen:
        assert pairs == cfg.batch_size and image_labels.shape == text_labels.shape == (3, NUM_LABELS)
        want_images = torch.tensor([records["train_images"][i]["labels"] for i, _ in images], dtype=torch.float32)
        want_texts = torch.tensor([records["train_texts"][i]["labels"] for i, _ in texts], dtype=torch.float32)
        assert torch.equal(image_labels.nan_to_num(-9), want_images.nan_to_num(-9))
        assert torch.equal(text_labels.nan_to_num(-9), want_texts.nan_to_num(-9))


def test_decoupled_batches_are_reproducible_under_resume(dataset, tmp_path, monkeypatch):
    seen = record_batches(monkeypatch)
    cfg = config(dataset, tmp_path / "straight", checkpoint_steps=[2])
    straight = train(cfg, log=lambda *a, **k: None)
    assert sorted(straight.step_checkpoints) == [2]
    uninterrupted = list(seen)
    seen.clear()
    resumed = train(cfg.replace(model_save_path=str(tmp_path / "resumed"),
                                resume_from=str(straight.step_checkpoints[2])), log=lambda *a, **k: None)
    assert resumed.steps == 6
    assert [s[:4] for s in seen] == [s[:4] for s in uninterrupted[2:]]  # the same items at steps 3..6
    assert all(torch.equal(a[4].nan_to_num(-9), b[4].nan_to_num(-9)) for a, b in zip(seen, uninterrupted[2:]))
    expected, actual = load_checkpoint(straight.last_checkpoint), load_checkpoint(resumed.last_checkpoint)
    for name, tensor in expected["model"].items():
        assert torch.equal(actual["model"][name], tensor), name


def test_on_all_the_pairs_there_is_nothing_to_decouple(dataset, tmp_path, monkeypatch):
    seen, lines = record_batches(monkeypatch), []
    result = train(config(dataset, tmp_path / "full", train_fraction=1.0, max_steps=2), log=lines.append)
    assert result.steps == 2 and seen == []
    assert any("train_fraction 1 leaves no training patient out" in line for line in lines)


def test_config_checks(dataset, tmp_path):
    with pytest.raises(ConfigError, match="'unpaired_pool': 'train_fraction_rest' needs unpaired_sources"):
        config(dataset, tmp_path, unpaired_sources=[], sentence_labels=None)
    with pytest.raises(ConfigError, match="'unpaired_pool'.*needs sentence_labels"):
        config(dataset, tmp_path, sentence_labels=None)
    assert config(dataset, tmp_path, unpaired_sources=["images"], sentence_labels=None).report_sampling == "full"
    with pytest.raises(ConfigError, match="'sentence_labels'"):  # still refused where nothing reads it
        config(dataset, tmp_path, unpaired_pool="splits", unpaired_sources=[])
    missing = tmp_path / "elsewhere" / "datasets.pkl"
    missing.parent.mkdir()
    missing.write_bytes(dataset.read_bytes())
    with pytest.raises(DataError, match="finds no sentence_labels.csv.gz"):
        build_datasets(config(missing, tmp_path, image_root=str(dataset.parent)))
