"""Sentence-label tables: written by the phantom, carried by prepare, read by the dataset, used by the loss."""

from __future__ import annotations

import contextlib
import io
import json
import math
import pickle
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from medclip_nb.config import Config, from_dict
from medclip_nb.errors import ConfigError, DataError
from medclip_nb.labels import CHEXPERT_LABELS, LABEL_INDEX, NUM_LABELS
from medclip_nb.model.losses import ContrastiveLoss, medclip_loss
from medclip_nb.text.clean import clean_report, split_sentences
from medclip_nb.text.sentence_labels import PREPARED_NAME, read_sentence_labels, sentence_key

pytestmark = pytest.mark.usefixtures("one_thread_no_bars")  # tests/conftest.py


@pytest.fixture
def prepared(phantom30) -> Path:
    """tests/conftest.py's prepared 30-study phantom at 64 px, its sentence labels carried by prepare."""
    report = json.loads((phantom30.parent / "prepare_report.json").read_text())
    assert report["sentence_labels"]["sentences"] > 0
    return phantom30


def test_phantom_labels_each_sentence_by_what_it_says(prepared):
    table = read_sentence_labels(prepared.parent.parent / "mimic" / "sentence-label.csv.gz")
    hearts = [labels for text, labels in table.items()
              if text in {sentence_key(t) for t in ("heart size is normal.", "the heart is normal in size.",
                                                        "normal heart size.")}]
    assert hearts
    for heart in hearts:  # a normal statement: the finding it names is absent, nothing else is said
        assert heart[LABEL_INDEX["Cardiomegaly"]] == 0.0 and heart[LABEL_INDEX["No Finding"]] == 1.0
        assert sum(not math.isnan(v) for v in heart) == 2
    hedge = re.compile(r"\b(?:possible|questionable|cannot be excluded|cannot exclude|may (?:reflect|represent))\b")
    hedged = [labels for text, labels in table.items() if hedge.search(text)]
    assert hedged and all(-1.0 in labels for labels in hedged)  # a hedged statement is uncertain about something
    # Every sentence a training step can sample is in the table prepare carried through.
    carried = read_sentence_labels(prepared.parent / PREPARED_NAME)
    blank_as_9 = lambda t: {k: [9.0 if math.isnan(v) else v for v in vals] for k, vals in t.items()}
    assert blank_as_9(carried) == blank_as_9(table)
    records = pickle.loads(prepared.read_bytes())["train"]
    sentences = {sentence_key(s) for r in records for s in split_sentences(clean_report(r["report"]))}
    assert sentences and sentences <= set(carried)


def test_dataset_hands_out_the_sentences_own_labels(prepared):
    from medclip_nb.data import build_datasets, make_collate
    from medclip_nb.text.tokenizers import CharTokenizer

    cfg = Config(data_path=str(prepared), report_sampling="sentence", loss="medclip", sentence_labels="auto",
                 image_size=32, resize_size=32, num_workers=0)
    splits, _, warnings = build_datasets(cfg)
    table = read_sentence_labels(prepared.parent / PREPARED_NAME)
    samples = [splits["train"][(i, 7)] for i in range(8)]
    for sample in samples:
        expected = torch.tensor(table[sentence_key(sample["report"])])
        assert torch.equal(torch.nan_to_num(sample["text_labels"], 9.0), torch.nan_to_num(expected, 9.0))
    batch = make_collate(CharTokenizer())(samples)
    assert batch["text_labels"].shape == (8, NUM_LABELS)
    assert "text_labels" not in splits["val"][0]  # evaluation reads whole reports
    unlisted = splits["train"]
    unlisted.sentence_labels = {}
    study = unlisted[(0, 7)]  # a miss gets its study's labels by default (sentence_label_miss), not No Finding
    assert torch.equal(torch.nan_to_num(study["text_labels"], 9.0), torch.nan_to_num(study["labels"], 9.0))
    unlisted.sentence_label_miss = "no_finding"  # MedCLIP's dataset code
    missing = unlisted[(0, 7)]["text_labels"]
    assert missing[LABEL_INDEX["No Finding"]] == 1.0 and missing.sum() == 1.0
    unlisted.sentence_label_miss = "error"
    with pytest.raises(DataError, match="sentence_label_miss: error"):
        unlisted[(0, 7)]


def test_loss_uses_the_text_rows_labels():
    generator = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(4, 8, generator=generator), dim=1)
    text = torch.nn.functional.normalize(torch.randn(4, 8, generator=generator), dim=1)
    image_labels = torch.zeros(4, NUM_LABELS)
    image_labels[:, LABEL_INDEX["Edema"]] = 1.0
    text_labels = torch.eye(4, NUM_LABELS)
    outputs = {"image_embeds": image, "text_embeds": text, "logit_scale": torch.tensor(5.0), "logit_bias": None}
    for kind, targets in (("medclip", "published"), ("medclip_cosine", "cosine")):
        module, _ = ContrastiveLoss(kind)(outputs, image_labels, text_labels=text_labels)
        uncertain = 0.5 if targets == "cosine" else None
        direct, _ = medclip_loss(image, text, 5.0, image_labels, text_labels, uncertain, targets=targets)
        torch.testing.assert_close(module, direct)
        assert not torch.allclose(module, ContrastiveLoss(kind)(outputs, image_labels)[0])


def test_bad_tables_are_one_line_naming_file_and_column(tmp_path):
    good = {"Reports": ["No effusion."], **{name: [""] for name in CHEXPERT_LABELS}}
    path = tmp_path / "s.csv"
    pd.DataFrame({k: v for k, v in good.items() if k != "Edema"}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"s\.csv lacks the label column 'Edema'"):
        read_sentence_labels(path)
    pd.DataFrame({**good, "Edema": ["2"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"s\.csv row 2 column 'Edema' holds"):
        read_sentence_labels(path)
    pd.DataFrame({**good, "Edema": ["0"]}).to_csv(path, index=False)
    assert read_sentence_labels(path)[sentence_key("No effusion.")][LABEL_INDEX["Edema"]] == 0.0


def test_sentence_labels_key_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="'sentence_labels'.*report_sampling 'sentence'"):
        from_dict({"sentence_labels": "auto", "loss": "medclip"})
    with pytest.raises(ConfigError, match="'sentence_labels'"):
        from_dict({"sentence_labels": "auto", "report_sampling": "sentence", "loss": "clip"})
    cfg = Config(data_path=str(tmp_path / "d.pkl"), sentence_labels=str(tmp_path / "none.csv"),
                 report_sampling="sentence", loss="medclip")
    from medclip_nb.text.sentence_labels import resolve_sentence_labels

    with pytest.raises(DataError, match="none.csv not found"):
        resolve_sentence_labels(cfg)


def test_short_training_run_with_sentence_labels(prepared, tmp_path, monkeypatch):
    from medclip_nb.train import train

    seen = []
    forward = ContrastiveLoss.forward

    def recording_forward(self, outputs, labels=None, text_labels=None, num_pairs=None):
        seen.append(text_labels is not None and not torch.equal(torch.nan_to_num(text_labels),
                                                                torch.nan_to_num(labels)))
        return forward(self, outputs, labels, text_labels, num_pairs)

    monkeypatch.setattr(ContrastiveLoss, "forward", recording_forward)
    cfg = from_dict(dict(data_path=str(prepared), model_save_path=str(tmp_path / "run"), image_size=32,
                         resize_size=32, model="simple", embed_dim=16, batch_size=4, eval_batch_size=8, max_steps=2,
                         num_workers=0, log_every=1, eval_steps=1000, save_steps=1000, loss="medclip",
                         report_sampling="sentence", sentence_labels="auto", short_sentence_tokens=4))
    result = train(cfg, log=lambda *a, **k: None)
    assert result.steps == 2 and len(seen) >= 2 and any(seen)


# ---- MedCLIP's normal form ---------------------------------------------------------------------------------
def medclip_segments(report: str) -> list[str]:
    """MedCLIP's _split_report_into_segment as the paper was trained with it (commit f8599d2), restated:
    'digits.' removed, split on every period, word tokens of the lower-case text, ascii, more than 4 tokens."""
    import re

    segments = []
    for point in re.compile(r"[0-9]+\.").split(report.replace("\n", " ")):
        for sent in point.split("."):
            if not sent:
                continue
            tokens = re.findall(r"\w+", sent.replace("\ufffd\ufffd", " ").lower())
            if len(tokens) <= 1:
                continue
            tokens = [t.encode("ascii", "ignore").decode("ascii") for t in tokens]
            tokens = [t for t in tokens if t]
            if len(tokens) > 4:
                segments.append(" ".join(tokens))
    return segments


def test_sentence_key_is_medclips_normal_form():
    report = ("1. The heart size is normal. 2. No pleural effusion or pneumothorax.\nLungs are clear, without "
              "consolidation. ET tube tip 4.5 cm above the carina. Mild cardiomegaly.  Stable small left-sided "
              "effusion.")
    assert medclip_segments(report) == ["the heart size is normal", "no pleural effusion or pneumothorax",
                                        "lungs are clear without consolidation", "5 cm above the carina",
                                        "stable small left sided effusion"]
    for sentence in ("The heart size is normal.", "Lungs are clear, without consolidation.",
                     "Stable small left-sided effusion.", "No pleural effusion or pneumothorax"):
        assert [sentence_key(sentence)] == medclip_segments(sentence)
    assert sentence_key("2.0 cm above the carina") == "0 cm above the carina"  # as MedCLIP's own table has it
    assert sentence_key("  HEART   size is NORMAL . ") == sentence_key("heart size is normal")


def test_a_medclip_form_table_finds_99_percent_of_the_phantoms_sentences(tmp_path):
    """The phantom's sentence table rewritten in MedCLIP's form (its _preprocess_sentence_label: rows that give
    exactly one segment, keyed by it): every sentence training can sample from the phantom's reports (the
    sentences of more than 4 words, as params/medclip_paper.yaml samples them) is looked up in it. A phantom of
    400 studies (about 1,200 such sentences). The misses are sentences none of whose segments has more than 4
    tokens ("... measuring approximately 1.3 cm."): MedCLIP's own sampling never draws them."""
    from medclip_nb.data.mimic import prepare_mimic
    from medclip_nb.phantom import generate_phantom
    from medclip_nb.text.sentence_labels import sentence_hits

    generate_phantom(tmp_path / "mimic", studies=400, size=16, workers=1)
    with contextlib.redirect_stdout(io.StringIO()):
        prepare_mimic(tmp_path / "mimic", tmp_path / "prepared", num_workers=0)
    table = read_sentence_labels(tmp_path / "mimic" / "sentence-label.csv.gz")
    source = pd.read_csv(tmp_path / "mimic" / "sentence-label.csv.gz")
    medclip_form = {}
    for text, labels in zip(source["Reports"], source[list(CHEXPERT_LABELS)].to_numpy().tolist()):
        segments = medclip_segments(text)
        if len(segments) == 1:
            medclip_form[segments[0]] = labels
    path = tmp_path / "medclip-form.csv"
    pd.DataFrame([{"Reports": k, **dict(zip(CHEXPERT_LABELS, v))} for k, v in medclip_form.items()]).to_csv(
        path, index=False)
    reports = [r["report"] for r in pickle.loads((tmp_path / "prepared" / "datasets.pkl").read_bytes())["train"]]
    hits, total, first_miss = sentence_hits(reports, read_sentence_labels(path), short_sentence_tokens=4)
    assert total > 1000 and hits / total >= 0.99, (hits, total, first_miss)
    own = sentence_hits(reports, table, 4)[0]  # the phantom's own table (its writer and our splitter can differ on
    assert own >= hits and own / total >= 0.995  # a sentence such as "... communicated to dr. ___ .")


def test_misses_are_counted_warned_about_or_refused_before_training(prepared, tmp_path):
    from medclip_nb.data import build_datasets

    table = read_sentence_labels(prepared.parent / PREPARED_NAME)
    half = dict(list(table.items())[: len(table) // 2])
    path = tmp_path / "half.csv"
    pd.DataFrame([{"Reports": k, **dict(zip(CHEXPERT_LABELS, v))} for k, v in half.items()]).to_csv(path, index=False)
    cfg = Config(data_path=str(prepared), report_sampling="sentence", loss="medclip", sentence_labels=str(path),
                 image_size=32, resize_size=32, num_workers=0)
    splits, _, warnings = build_datasets(cfg)
    line = splits["train"].sentence_label_line
    assert line.startswith("Sentence labels: ") and "training sentences" in line and "100.0%" not in line
    assert any("missing from" in w and "their study's labels (sentence_label_miss)" in w for w in warnings)
    with pytest.raises(DataError, match="has no entry for .* training sentence.*sentence_label_miss: error"):
        build_datasets(cfg.replace(sentence_label_miss="error"))
    assert "100.0%" in build_datasets(cfg.replace(sentence_labels="auto"))[0]["train"].sentence_label_line
