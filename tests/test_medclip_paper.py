"""params/medclip_paper.yaml (MedCLIP's recipe) runs on CPU with stand-in weights in the real formats:
a tiny random BERT folder (BertConfig + save_pretrained, with a vocab) and a random torchvision state_dict
at the torch hub path the backbone's ImageNet weights would have. Missing weights: one line, exit 2."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from medclip_nb.config_load import load_config
from medclip_nb.paths import repo_root

PARAMS = repo_root() / "params" / "medclip_paper.yaml"
pytestmark = pytest.mark.usefixtures("one_thread_no_bars")  # tests/conftest.py


@pytest.fixture
def prepared(phantom30) -> Path:
    return phantom30  # tests/conftest.py: a prepared 30-study phantom at 64 px


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tiny_bert")
    words = ("the heart size is normal no acute cardiopulmonary process small left right pleural effusion "
             "mild pulmonary edema atelectasis consolidation cardiomegaly lung bases there stable").split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(words), ".", ","]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    transformers.BertTokenizerFast.from_pretrained(folder).save_pretrained(folder)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=80)
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(folder)
    return folder


def paper_config(dataset: Path, out: Path, bert: Path):
    """The yaml as it is, with the sizes and paths of a CPU test."""
    return load_config(PARAMS, {
        "data_path": str(dataset), "image_store": None, "model_save_path": str(out / "run"),
        "reports_dir": str(out / "reports"), "bert_path": str(bert), "image_size": 32, "resize_size": 40,
        "batch_size": 4, "eval_batch_size": 8, "max_steps": 2, "num_workers": 0, "log_every": 1, "embed_dim": 16,
    })


def test_the_yaml_is_medclips_recipe():
    cfg = load_config(PARAMS)
    assert (cfg.vision_backbone, cfg.vision_pretrained, cfg.text_encoder) == ("swin_t", True, "bert")
    assert (cfg.loss, cfg.report_sampling, cfg.batch_size, cfg.use_amp) == ("medclip", "sentence", 100, True)
    assert (cfg.lr, cfg.weight_decay, cfg.warmup) == (2e-5, 1e-4, 0.1)
    assert (cfg.image_uncertain_labels, cfg.text_uncertain_labels, cfg.mimic_labels) == ("zero", "keep", "negbio")
    assert (cfg.text_eda_view, cfg.no_decay_rule, cfg.sentence_label_miss) == (True, "medclip", "no_finding")
    assert cfg.zeroshot_protocols == ["ours", "gloria", "medclip"]


def test_medclip_paper_recipe_trains_two_steps_with_stand_in_weights(prepared, tiny_bert, tmp_path, monkeypatch):
    import torchvision

    from medclip_nb.model.encoders import pretrained_weights_file
    from medclip_nb.train import train

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    weights = pretrained_weights_file("swin_t")
    weights.parent.mkdir(parents=True)
    torch.manual_seed(1)
    stand_in = torchvision.models.swin_t().state_dict()
    torch.save(stand_in, weights)
    cfg = paper_config(prepared, tmp_path, tiny_bert)
    result = train(cfg, log=lambda *a, **k: None)
    assert result.steps == 2
    rows = [r for r in result.history if r["split"] == "train"]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) for r in rows)
    saved = torch.load(tmp_path / "run" / "last.pth", map_location="cpu", weights_only=False)
    assert saved["config"]["loss"] == "medclip" and saved["config"]["vision_backbone"] == "swin_t"
    # The backbone started from the weights file: the one layer that AdamW at lr 2e-5 barely moves.
    key = "features.0.0.weight"
    start = stand_in[key]
    trained = saved["model"][f"vision.{key}"]
    assert (trained - start).abs().max() < 1e-3 < start.abs().max()


def _cli_error(argv, capsys) -> str:
    from medclip_nb.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    # transformers may draw its own "Loading weights" bar on stderr before; the error is one line.
    errors = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err
    return errors[0]


def test_missing_weights_give_one_line_and_exit_2(prepared, tiny_bert, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    base = ["train", "--config", str(PARAMS), "--data_path", str(prepared), "--image_store", "",
            "--model_save_path", str(tmp_path / "run"), "--num_workers", "0", "--max_steps", "1",
            "--batch_size", "4", "--image_size", "32", "--resize_size", "40"]
    err = _cli_error(base + ["--bert_path", str(tmp_path / "no_bert")], capsys)
    assert "no_bert" in err and "save_pretrained" in err
    err = _cli_error(base + ["--bert_path", str(tiny_bert)], capsys)
    assert "swin_t-704ceda3.pth" in err and "not found" in err
    assert not (tmp_path / "run" / "last.pth").exists()
