"""The export as a model folder others can load (safetensors, tokenizers, AutoTokenizer, the
project's load_pretrained), its model card and preprocessing config; the open_clip-style API
(preprocess, encode_image / encode_text, a callable tokenizer); `predict --multi-label` and
`retrieve`. One tiny model trained here on the tiny phantom (tests/conftest.py)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from torchvision.transforms.v2 import functional as F

from medclip_nb.cli import main
from medclip_nb.config import from_dict
from medclip_nb.data import load_dataset_file, load_grayscale
from medclip_nb.errors import UserError
from medclip_nb.evaluate.metrics import zero_shot_multilabel
from medclip_nb.inference.pretrained import load_pretrained
from medclip_nb.inference.retrieval import load_report_bank, report_bank
from medclip_nb.labels import CHEXPERT_LABELS
from medclip_nb.model.export import EXPORT_FILES, export_model
from medclip_nb.prompts import label_prompt_pairs
from medclip_nb.text import clean_report
from medclip_nb.text.tokenizers import CharTokenizer
from medclip_nb.train import train

pytestmark = pytest.mark.usefixtures("one_thread_no_bars")  # tests/conftest.py


@pytest.fixture(scope="module")
def run_dir(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("model_folder_run") / "run"
    cfg = from_dict(dict(
        data_path=str(tiny_dataset), model_save_path=str(out), image_size=32, resize_size=40,
        model="medclip", vision_backbone="small_cnn", text_layers=1, text_width=32, text_heads=2,
        embed_dim=16, vocab_size=200, max_text_tokens=24, batch_size=4, eval_batch_size=8, max_steps=3,
        num_workers=0, log_every=1, eval_steps=3, save_steps=1000, lr=1e-3, seed=5,
    ))
    train(cfg, log=lambda *_a, **_k: None)
    return out


@pytest.fixture(scope="module")
def metrics_file(run_dir, tiny_dataset, tmp_path_factory):
    """The metrics.json `evaluate` writes for best.pth (its entry: 'run/best')."""
    reports = tmp_path_factory.mktemp("model_folder_reports")
    assert main(["evaluate", "--checkpoint", str(run_dir / "best.pth"), "--out", str(reports),
                 "--data_path", str(tiny_dataset), "--num_workers", "0"]) == 0
    return reports / "metrics.json"


@pytest.fixture(scope="module")
def export_dir(run_dir, metrics_file, tmp_path_factory):
    """The export of best.pth with its metrics.json entry in the card."""
    out = tmp_path_factory.mktemp("model_folder_export") / "export"
    assert main(["export", "--checkpoint", str(run_dir / "best.pth"), "--out", str(out),
                 "--metrics", str(metrics_file)]) == 0  # default key: run/best
    return out


@pytest.fixture(scope="module")
def images(tiny_dataset):
    return [tiny_dataset.parent / r["image_path"] for r in load_dataset_file(tiny_dataset)["test"][:3]]


TEXTS = ["Small left pleural effusion.", "No acute cardiopulmonary process.", "1. Mild ___ edema"]


# ---- the folder --------------------------------------------------------------------------------------
def test_export_holds_the_ecosystem_files_and_loads_without_the_project(export_dir, run_dir):
    from safetensors import safe_open
    from tokenizers import Tokenizer

    assert sorted(p.name for p in export_dir.iterdir()) == sorted([*EXPORT_FILES, "SHA256SUMS"])
    original = load_pretrained(run_dir / "best.pth")
    state = original.model.state_dict()
    with safe_open(str(export_dir / "model.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(state)
        assert all(torch.equal(f.get_tensor(k), state[k]) for k in state)
    expected = original.tokenizer([clean_report(t) for t in TEXTS])["input_ids"]
    tokens = Tokenizer.from_file(str(export_dir / "tokenizer.json")).encode_batch([clean_report(t) for t in TEXTS])
    assert torch.equal(torch.tensor([e.ids for e in tokens]), expected)
    config = json.loads((export_dir / "config.json").read_text())
    assert "model_type" not in config  # not a transformers architecture (see model/export.py)
    arch = config["architecture"]
    assert arch["image_encoder"]["backbone"] == "small_cnn" and arch["embed_dim"] == 16
    assert arch["text_encoder"] == {"type": "transformer", "layers": 1, "width": 32, "heads": 2, "max_tokens": 24,
                                    "vocab_size": original.tokenizer.vocab_size, "pooling": "masked mean"}
    assert arch["logit_scale"] == pytest.approx(original.logit_scale, rel=1e-5)
    assert arch["parameters"] == sum(p.numel() for p in original.model.parameters())
    assert config["training"]["steps"] == 3 and config["training"]["recipe"]["lr"] == 1e-3


def test_auto_tokenizer_reads_the_folder(export_dir, run_dir):
    transformers = pytest.importorskip("transformers")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(export_dir))
    cleaned = [clean_report(t) for t in TEXTS]
    got = tokenizer(cleaned, padding="max_length", truncation=True, return_tensors="pt")
    expected = load_pretrained(run_dir / "best.pth").tokenizer(TEXTS)
    assert torch.equal(got["input_ids"], expected["input_ids"])
    assert torch.equal(got["attention_mask"], expected["attention_mask"])
    assert tokenizer.model_max_length == 24 and tokenizer.pad_token == "[PAD]"


def test_preprocessor_config_rebuilds_the_evaluation_transform(export_dir, images):
    """The steps of preprocessor_config.json, done by hand, give the model's own transform's pixels."""
    pre = json.loads((export_dir / "preprocessor_config.json").read_text())
    pretrained = load_pretrained(export_dir)
    wide = torch.from_numpy(load_grayscale(images[0]))[:, :50].contiguous().unsqueeze(0)  # not square
    height, width = wide.shape[-2:]
    side = max(height, width)
    left, top = (side - width) // 2, (side - height) // 2
    by_hand = F.pad(wide, [left, top, side - width - left, side - height - top], fill=pre["pad"]["fill"])
    by_hand = F.resize(by_hand, [pre["size"]["height"], pre["size"]["width"]], antialias=pre["antialias"])
    by_hand = F.center_crop(by_hand, [pre["crop_size"]["height"], pre["crop_size"]["width"]])
    by_hand = by_hand.float() * pre["rescale_factor"]
    by_hand = ((by_hand - pre["image_mean"][0]) / pre["image_std"][0]).repeat(pre["num_channels"], 1, 1)
    assert torch.allclose(by_hand, pretrained.transform(wide), atol=1e-6)
    assert torch.allclose(by_hand, pretrained.preprocess(wide), atol=1e-6)


def test_model_card_says_what_the_model_is_and_warns_of_the_phantom(export_dir, metrics_file):
    card = (export_dir / "README.md").read_text()
    entry = json.loads(metrics_file.read_text())["run/best"]
    assert "PHANTOM-TRAINED: NOT FOR CLINICAL USE" in card and card.startswith("---\nlicense: mit\n")
    for heading in ("## Training data", "## Training recipe", "## Evaluation", "## Intended use and limits",
                    "## Licence"):
        assert heading in card
    mean = entry["zero_shot_5x200"]["mean"]
    accuracy, (low, high) = mean["accuracy"], mean["accuracy_ci"]
    assert f"| {accuracy:.3f} [{low:.3f}, {high:.3f}] | 0.200" in card  # the entry's number, its interval, chance
    r10 = entry["retrieval"]["test"]["image_to_text"]["R@10"]
    assert f"retrieval image → report R@10 | {r10:.3f} [" in card
    assert "metrics.json: run/best" in card
    assert f"{entry['intervals']['resamples']} resamples of patients" in card  # as the entry drew them
    assert "train 13, val 3, test 7" in card  # pairs per split, from prepare_report.json
    assert "/tmp" not in card and "pytest" not in card  # no path of the exporting machine


def test_export_refuses_a_metrics_entry_of_another_model(run_dir, tmp_path, capsys):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"other/best": {"checkpoint": str(tmp_path / "other" / "best.pth")},
                                   "simple": {"model": "simple"}}))
    for key, reason in (("other/best", "evaluated"), ("simple", "with model 'simple'"), ("missing", "has no entry")):
        assert main(["export", "--checkpoint", str(run_dir / "best.pth"), "--out", str(tmp_path / key),
                     "--metrics", str(metrics), "--metrics-key", key]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: --metrics-key") and reason in err[0]
        assert not (tmp_path / key).exists()


def test_character_tokenizer_exports_as_a_tokenizers_json(tmp_path):
    from tokenizers import Tokenizer

    from medclip_nb.model import build_model

    cfg = from_dict(dict(data_path=str(tmp_path / "none.pkl"), model="simple", embed_dim=8))
    tokenizer = CharTokenizer()
    export_model(build_model(cfg, tokenizer), tokenizer, cfg, tmp_path / "export")
    texts = ["Pleural effusion,\tleft. ü 😀", "", "x" * 70]
    hf = Tokenizer.from_file(str(tmp_path / "export" / "tokenizer.json")).encode_batch(texts)
    ours = tokenizer.encode(texts)
    assert torch.equal(torch.tensor([e.ids for e in hf]), ours["input_ids"])
    assert torch.equal(torch.tensor([e.attention_mask for e in hf]), ours["attention_mask"])
    loaded = load_pretrained(tmp_path / "export")
    assert isinstance(loaded.tokenizer, CharTokenizer) and loaded.tokenizer.max_length == 50
    card = (tmp_path / "export" / "README.md").read_text()
    assert "TRAINING DATA NOT IDENTIFIED" in card and "No evaluation was attached" in card


def test_a_local_bert_tokenizer_exports_for_tokenizers_and_auto_tokenizer(tmp_path):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer

    from medclip_nb.model import build_model
    from medclip_nb.text.tokenizers import HFTokenizerAdapter

    bert = tmp_path / "bert"  # a 2-layer BERT with a small vocabulary, as tests/test_models.py makes one
    bert.mkdir()
    words = "heart size normal small left right pleural effusion edema no acute lung".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *(f"word{i}" for i in range(100 - 5 - len(words)))]
    (bert / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizerFast.from_pretrained(bert).save_pretrained(bert)
    transformers.BertModel(transformers.BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64)).save_pretrained(bert)
    cfg = from_dict(dict(data_path=str(tmp_path / "none.pkl"), text_encoder="bert", bert_path=str(bert),
                         vision_backbone="small_cnn", embed_dim=8, max_text_tokens=16, image_size=32, resize_size=36))
    tokenizer = HFTokenizerAdapter(bert, max_length=16)
    export_model(build_model(cfg, tokenizer), tokenizer, cfg, tmp_path / "export")
    texts = ["heart size normal", "small left pleural effusion and unknownword", "no acute " * 20]
    ours = tokenizer.encode(texts)
    hf = Tokenizer.from_file(str(tmp_path / "export" / "tokenizer.json")).encode_batch(texts)
    assert torch.equal(torch.tensor([e.ids for e in hf]), ours["input_ids"])
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "export"))
    assert torch.equal(auto(texts, padding="max_length", truncation=True, return_tensors="pt")["input_ids"],
                       ours["input_ids"])
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["architecture"]["text_encoder"] == {"type": "bert", "bert_folder": "bert", "max_tokens": 16}
    assert isinstance(load_pretrained(tmp_path / "export").tokenizer, HFTokenizerAdapter)


def test_an_export_without_checksums_is_refused_and_an_export_replaces_it(run_dir, export_dir, tmp_path):
    from medclip_nb.errors import CheckpointError

    old = tmp_path / "v1"  # what version 1 wrote: three files, no SHA256SUMS
    old.mkdir()
    config = json.loads((export_dir / "config.json").read_text())
    (old / "config.json").write_text(json.dumps({"format": "medclip-nb-export", "version": 1,
                                                 "config": config["config"]}))
    (old / "tokenizer.json").write_text((export_dir / "tokenizer.json").read_text())
    (old / "model.safetensors").write_bytes((export_dir / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError, match="no SHA256SUMS .*export it again from its checkpoint"):
        load_pretrained(old)
    assert main(["export", "--checkpoint", str(run_dir / "best.pth"), "--out", str(old)]) == 0  # ours: replaced
    assert (old / "SHA256SUMS").is_file() and load_pretrained(old).config.model == config["config"]["model"]


# ---- the open_clip-style API ----------------------------------------------------------------------------
def test_encode_image_and_text_match_the_embeddings(export_dir, images):
    pretrained = load_pretrained(export_dir)
    pixels = torch.stack([pretrained.preprocess(p) for p in images])
    with torch.no_grad():
        image = pretrained.encode_image(pixels)
        from_tokens = pretrained.encode_text(pretrained.tokenizer(TEXTS))
        from_strings = pretrained.encode_text(TEXTS)
        one = pretrained.model.encode_text(**pretrained.tokenizer("Small left pleural effusion."))
    assert image.shape == (3, 16) and torch.allclose(image.norm(dim=1), torch.ones(3), atol=1e-5)
    assert np.allclose(image.numpy(), pretrained.embed_images(images).embeddings, atol=1e-5)
    assert torch.equal(from_tokens, from_strings) and torch.allclose(one, from_tokens[:1], atol=1e-6)
    assert np.allclose(from_strings.numpy(), pretrained.embed_texts(TEXTS), atol=1e-5)
    # The callable tokenizer cleans as training did: placeholders and list numbers go.
    assert torch.equal(pretrained.tokenizer("1. Mild ___ edema")["input_ids"],
                       pretrained.tokenizer.encode(["mild edema"])["input_ids"])


# ---- predict --multi-label ----------------------------------------------------------------------------
def test_predict_multi_label_scores_each_finding_as_evaluate_does(export_dir, images, tmp_path, capsys):
    csv = tmp_path / "findings.csv"
    assert main(["predict", "--checkpoint", str(export_dir), *map(str, images), "--multi-label", "--csv", str(csv),
                 "--num_workers", "0"]) == 0
    out, err = capsys.readouterr()
    table = pd.read_csv(csv, index_col="image", keep_default_na=False)
    assert list(table.columns) == [*CHEXPERT_LABELS, "positive"] and len(table) == 3
    pretrained = load_pretrained(export_dir)
    positive, negative = label_prompt_pairs(CHEXPERT_LABELS)
    expected = zero_shot_multilabel(pretrained.embed_images(images).embeddings, pretrained.embed_texts(positive),
                                    pretrained.embed_texts(negative), pretrained.logit_scale)
    got = table[list(CHEXPERT_LABELS)].to_numpy()
    assert np.allclose(got, expected, atol=1e-5)
    assert not np.allclose(got.sum(axis=1), 1.0)  # each finding on its own, not one softmax
    assert table["positive"].tolist() == [", ".join(n for n, p in zip(CHEXPERT_LABELS, row) if p > 0.5) or "-"
                                          for row in expected]
    assert "14 findings, each positive vs negative prompt" in err and str(images[0]) in out


def test_predict_multi_label_with_a_prompts_file_and_its_errors(export_dir, images, tmp_path, capsys):
    prompts = tmp_path / "pairs.yaml"
    prompts.write_text("Edema:\n  positive: [pulmonary edema, interstitial edema]\n  negative: no edema\n")
    assert main(["predict", "--checkpoint", str(export_dir), str(images[0]), "--multi-label", "--prompts",
                 str(prompts), "--num_workers", "0", "--csv", str(tmp_path / "p.csv")]) == 0
    pretrained = load_pretrained(export_dir)
    image = pretrained.embed_images(images[:1]).embeddings
    pos = pretrained.embed_texts(["pulmonary edema", "interstitial edema"]).mean(axis=0)
    pos /= np.linalg.norm(pos)
    neg = pretrained.embed_texts(["no edema"])[0]
    logits = torch.tensor([image[0] @ pos, image[0] @ neg]) * pretrained.logit_scale
    expected = logits.softmax(0)[0].item()
    assert pd.read_csv(tmp_path / "p.csv")["Edema"].item() == pytest.approx(expected, abs=1e-5)
    capsys.readouterr()
    prompts.write_text("Edema: [pulmonary edema]\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("Edema:\n  positive: edema\n")
    for argv in (["--prompts", str(prompts)], ["--prompts", str(bad)], ["--classes", "No Finding,no edema"]):
        assert main(["predict", "--checkpoint", str(export_dir), str(images[0]), "--multi-label", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ")


# ---- retrieve ------------------------------------------------------------------------------------------
def test_retrieve_finds_the_most_similar_distinct_reports(export_dir, images, tiny_dataset, tmp_path, capsys):
    csv = tmp_path / "nearest.csv"
    assert main(["retrieve", "--checkpoint", str(export_dir), *map(str, images), "--reports", str(tiny_dataset),
                 "--splits", "train,val", "-k", "4", "--csv", str(csv), "--num_workers", "0"]) == 0
    out, err = capsys.readouterr()
    table = pd.read_csv(csv)
    assert list(table.columns) == ["image", "rank", "similarity", "report", "source", "copies"]
    assert table.groupby("image")["rank"].apply(list).tolist() == [[1, 2, 3, 4]] * 3
    # Against a brute-force ranking of every distinct report of the two splits.
    records = load_dataset_file(tiny_dataset)
    reports = [r["report"] for s in ("train", "val") for r in records[s]]
    bank = load_report_bank(tiny_dataset, ["train", "val"])
    assert len(bank) == len({clean_report(t) for t in reports}) and sum(bank.copies) == len(reports)
    pretrained = load_pretrained(export_dir)
    similarity = pretrained.embed_images(images).embeddings @ pretrained.embed_texts(bank.texts).T
    for i, image in enumerate(images):
        rows = table[table["image"] == str(image)]
        best = np.argsort(-similarity[i], kind="stable")[:4]
        assert rows["report"].tolist() == [bank.texts[j] for j in best]
        assert np.allclose(rows["similarity"], similarity[i][best], atol=1e-5)
        assert str(image) in out
    assert f"The 4 nearest of {len(bank)} distinct reports" in err


def test_retrieve_from_a_text_file_and_the_python_api(export_dir, images, tmp_path):
    lines = tmp_path / "bank.txt"
    lines.write_text("small left pleural effusion\n\nno acute cardiopulmonary process\nSmall  left pleural effusion\n")
    bank = load_report_bank(lines)
    assert bank.texts == ["small left pleural effusion", "no acute cardiopulmonary process"]
    assert bank.sources == ["line 1", "line 3"] and bank.copies == [2, 1]  # equal once cleaned: one entry
    pretrained = load_pretrained(export_dir)
    table = pretrained.retrieve(images[:2], bank, k=5)  # k larger than the bank: every report once
    assert len(table) == 4 and set(table["source"]) == {"line 1", "line 3"}
    assert table.attrs["bank_size"] == 2
    plain = pretrained.retrieve(images[:1], ["mild edema", "heart size is normal"], k=1)
    assert plain["source"].tolist()[0] in ("report 0", "report 1") and len(plain) == 1


def test_retrieve_bad_input_is_one_line_and_exit_2(export_dir, images, tiny_dataset, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    broken = tmp_path / "broken.pkl"
    broken.write_bytes(pickle.dumps(["not", "a", "dataset"]))
    base = ["retrieve", "--checkpoint", str(export_dir), str(images[0])]
    for argv in (["--reports", str(tmp_path / "missing.pkl")], ["--reports", str(empty)],
                 ["--reports", str(tiny_dataset), "--splits", "training"], ["--reports", str(broken)],
                 ["--reports", str(empty), "--splits", "train"]):
        assert main([*base, *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: "), err
    with pytest.raises(SystemExit) as info:  # argparse: usage and one error line
        main([*base, "--reports", str(tiny_dataset), "-k", "0"])
    assert info.value.code == 2 and "-k: '0' is not a whole number" in capsys.readouterr().err
    with pytest.raises(UserError, match="no report text"):
        report_bank(["", "  "])
