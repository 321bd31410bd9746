"""Training loop: schedule, parameter groups, and short end-to-end runs on a tiny phantom."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from medclip_nb import losses
from medclip_nb import train as train_module
from medclip_nb.checkpoint import load_checkpoint, load_model
from medclip_nb.config import from_dict
from medclip_nb.data import load_dataset_file
from medclip_nb.errors import CheckpointError, TrainingError
from medclip_nb.paths import repo_root
from medclip_nb.train import TrainResult, param_groups, train, warmup_cosine


# ---- schedule ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.0),  # warmup starts from 0
        (5, 0.5),  # halfway up the 10 warmup steps
        (10, 1.0),  # peak
        (35, 0.5 * (1 + math.cos(math.pi * 0.25))),  # a quarter of the 100 cosine steps
        (60, 0.5),  # halfway down: cos(pi / 2) = 0
        (110, 0.0),  # the end
        (150, 0.0),  # past the end stays at 0
    ],
)
def test_warmup_cosine_by_hand(step, expected):
    assert warmup_cosine(step, warmup_steps=10, total_steps=110) == pytest.approx(expected, abs=1e-12)


def test_warmup_cosine_without_warmup_starts_at_peak():
    assert warmup_cosine(0, 0, 4) == 1.0
    assert warmup_cosine(2, 0, 4) == pytest.approx(0.5)
    assert warmup_cosine(1, 0, 1) == 0.0


# ---- parameter groups ----------------------------------------------------------------------------
class _TinyDualEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.embedding = nn.Embedding(10, 4)
        self.norm = nn.LayerNorm(4)
        self.proj = nn.Linear(4, 2)
        self.logit_scale = nn.Parameter(torch.tensor(2.6))
        self.logit_bias = nn.Parameter(torch.tensor([-10.0]))
        self.frozen = nn.Parameter(torch.ones(2, 2), requires_grad=False)


def test_param_groups_split_decay_from_no_decay():
    model = _TinyDualEncoder()
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert set(decay["names"]) == {"conv.weight", "embedding.weight", "proj.weight"}
    assert set(no_decay["names"]) == {
        "conv.bias", "bn.weight", "bn.bias", "norm.weight", "norm.bias", "proj.bias", "logit_scale", "logit_bias",
    }
    named = dict(model.named_parameters())
    assert [id(p) for p in decay["params"]] == [id(named[n]) for n in decay["names"]]
    assert [id(p) for p in no_decay["params"]] == [id(named[n]) for n in no_decay["names"]]
    # The groups go straight into AdamW.
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]


# ---- batches on the device ------------------------------------------------------------------------
def test_store_batches_are_augmented_on_the_device_reproducibly():
    from medclip_nb.gpu_augment import BatchAugment

    augment = BatchAugment(32, "seed", train=True)
    batch = {"pixel_values": torch.randint(0, 256, (4, 1, 48, 48), dtype=torch.uint8),
             "input_ids": torch.ones(4, 8, dtype=torch.long), "attention_mask": torch.ones(4, 8, dtype=torch.long),
             "labels": torch.zeros(4, 14)}
    first = train_module._to_device(batch, torch.device("cpu"), False, augment, torch.Generator().manual_seed(5))
    again = train_module._to_device(batch, torch.device("cpu"), False, augment, torch.Generator().manual_seed(5))
    assert first[0].shape == (4, 3, 32, 32) and first[0].dtype == torch.float32
    assert torch.equal(first[0], again[0])
    plain = train_module._to_device({**batch, "pixel_values": first[0]}, torch.device("cpu"), False)
    assert plain[0] is first[0]  # float batches pass through untouched


# ---- end to end on a tiny phantom ----------------------------------------------------------------
# One intra-op thread here and in the subprocesses: on a small shared machine, torch's
# default of one thread per core slows these runs several times over, and the killed and the
# resumed run of the resume test must use the same thread count to be bitwise comparable.
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
METRIC_KEYS = {"step", "epoch", "split", "loss", "lr", "temperature", "logit_scale", "pairs_per_s", "time"}


pytestmark = pytest.mark.usefixtures("one_thread_no_bars")  # tests/conftest.py


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    """datasets.pkl of a 24-study phantom at 64 px (about 4 training batches of 4)."""
    from medclip_nb.mimic import prepare_mimic
    from medclip_nb.phantom import generate_phantom

    root = tmp_path_factory.mktemp("tiny_phantom")
    generate_phantom(root / "mimic", studies=24, size=64)
    prepare_mimic(root / "mimic", root / "prepared", num_workers=1)
    return root / "prepared" / "datasets.pkl"


def tiny_config(dataset: Path, out: Path, **overrides):
    """A config that trains in about a second on the CPU."""
    values = dict(
        data_path=str(dataset), model_save_path=str(out), image_size=32, resize_size=48,
        model="simple", vision_backbone="resnet18", text_layers=1, text_width=32, text_heads=2,
        embed_dim=32, vocab_size=200, max_text_tokens=32, batch_size=4, eval_batch_size=8,
        num_epochs=2, max_steps=6, num_workers=0, log_every=1, eval_steps=1000, save_steps=1000,
        lr=1e-4, seed=7,
    )
    values.update(overrides)
    return from_dict(values)


def quiet(*_args, **_kwargs) -> None:
    pass


def train_rows(result_or_path) -> list[dict]:
    if isinstance(result_or_path, TrainResult):
        rows = result_or_path.history
    else:
        rows = [json.loads(line) for line in Path(result_or_path).read_text().splitlines()]
    return [r for r in rows if r["split"] == "train"]


@pytest.mark.parametrize("model", ["simple", "medclip"])
def test_short_run_writes_checkpoints_and_metrics(tiny_dataset, tmp_path, model):
    batches_per_epoch = len(load_dataset_file(tiny_dataset)["train"]) // 4
    assert batches_per_epoch >= 3
    steps = batches_per_epoch + 2  # all of epoch 1, then stopped inside epoch 2 by max_steps
    cfg = tiny_config(tiny_dataset, tmp_path / "run", model=model, eval_steps=2, max_steps=steps)
    result = train(cfg, log=quiet)
    out = tmp_path / "run"
    for name in ("checkpoint_epoch_1.pth", "last.pth", "best.pth", "metrics.jsonl"):
        assert (out / name).is_file(), name
    assert not (out / "checkpoint_epoch_2.pth").exists()  # epoch 2 was cut short by max_steps
    assert (result.steps, result.epochs_completed, result.stopped_early) == (steps, 1, False)
    assert result.last_checkpoint == out / "last.pth" and result.best_checkpoint == out / "best.pth"

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == result.history
    assert all(set(r) == METRIC_KEYS for r in rows)
    assert [r["step"] for r in train_rows(result)] == list(range(1, steps + 1))
    val_steps = [r["step"] for r in rows if r["split"] == "val"]
    # Every eval_steps, at the end of epoch 1 and at the end of the run; never twice at one step.
    assert val_steps == sorted({*range(2, steps + 1, 2), batches_per_epoch, steps})
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert all(r["temperature"] == pytest.approx(1 / r["logit_scale"]) for r in rows)
    assert result.best_val_loss == min(r["loss"] for r in rows if r["split"] == "val")

    last = load_checkpoint(out / "last.pth")
    assert (last["step"], last["epoch"], last["batch_in_epoch"]) == (steps, 1, 2)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in last["model"])
    assert [g["weight_decay"] for g in last["optimizer"]["param_groups"]] == [cfg.weight_decay, 0.0]
    assert last["config"] == cfg.to_dict() and last["bad_image_count"] == 0

    model_, tokenizer, loaded_cfg = load_model(out / "best.pth")
    assert not model_.training and loaded_cfg == cfg
    batch = tokenizer.encode(["no acute cardiopulmonary process", "small left pleural effusion"])
    with torch.no_grad():
        text = model_.encode_text(batch["input_ids"], batch["attention_mask"])
    assert text.shape == (2, cfg.embed_dim)


@pytest.fixture(scope="module")
def resumable_setup(tiny_dataset, tmp_path_factory):
    """An uninterrupted run of the MedCLIP model (transformer text encoder with dropout, so the
    RNG state matters) with mid-epoch checkpoints every 2 steps."""
    out = tmp_path_factory.mktemp("uninterrupted")
    overrides = dict(model="medclip", vision_backbone="mobilenet_v3_small", num_epochs=4, max_steps=10,
                     save_steps=2, eval_steps=3, lr=1e-3)
    return overrides, train(tiny_config(tiny_dataset, out, **overrides), log=quiet)


def test_same_seed_same_losses(tiny_dataset, tmp_path, resumable_setup):
    overrides, first = resumable_setup
    second = train(tiny_config(tiny_dataset, tmp_path, **overrides), log=quiet)
    assert [r["loss"] for r in first.history] == [r["loss"] for r in second.history]  # exactly
    assert len(train_rows(first)) == 10


def _cli_args(cfg) -> list[str]:
    args = [sys.executable, "-m", "medclip_nb", "train"]
    for key, value in cfg.to_dict().items():
        if value is None or isinstance(value, list):
            continue
        if isinstance(value, bool):
            args.append(f"--{key}" if value else f"--no-{key}")
        else:
            args.append(f"--{key}={value}")
    return args


def test_resume_after_sigkill_is_bitwise_identical(tiny_dataset, tmp_path, resumable_setup):
    overrides, uninterrupted = resumable_setup
    out = tmp_path / "killed"
    cfg = tiny_config(tiny_dataset, out, **overrides)
    process = subprocess.Popen(_cli_args(cfg), cwd=repo_root(), env=SUBPROCESS_ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = out / "last.pth"
    deadline = time.monotonic() + 120
    while process.poll() is None and not last.exists() and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert process.returncode == -signal.SIGKILL, stderr.decode()[-2000:]
    killed_at = load_checkpoint(last, mmap=True)["step"]
    assert 2 <= killed_at < 10

    resumed = train(cfg.replace(resume_from="latest"), log=quiet)
    assert resumed.steps == 10
    expected = load_checkpoint(uninterrupted.last_checkpoint)
    actual = load_checkpoint(resumed.last_checkpoint)
    for name, tensor in expected["model"].items():
        assert torch.equal(actual["model"][name], tensor), name
    for index, state in expected["optimizer"]["state"].items():
        for key, tensor in state.items():
            assert torch.equal(actual["optimizer"]["state"][index][key], tensor), (index, key)
    # The log holds each step once, with the losses of the uninterrupted run.
    assert [(r["step"], r["split"]) for r in resumed.history] == \
        [(r["step"], r["split"]) for r in uninterrupted.history]
    assert [r["loss"] for r in train_rows(out / "metrics.jsonl")] == \
        [r["loss"] for r in train_rows(uninterrupted)]


def test_resume_mid_epoch_with_another_batch_size_is_refused(tiny_dataset, tmp_path, resumable_setup):
    overrides, uninterrupted = resumable_setup
    mid_epoch = [p for p in uninterrupted.output_dir.glob("*.pth")
                 if load_checkpoint(p, mmap=True)["batch_in_epoch"] > 0]
    assert mid_epoch
    cfg = tiny_config(tiny_dataset, tmp_path, **overrides, batch_size=2, resume_from=str(mid_epoch[0]))
    with pytest.raises(CheckpointError, match="batch_size 4"):
        train(cfg, log=quiet)


def test_non_finite_losses_stop_with_last_good_state(tiny_dataset, tmp_path, monkeypatch):
    real_forward = losses.ContrastiveLoss.forward
    calls = []

    def nan_from_third_step(self, outputs, labels=None):
        calls.append(1)
        loss, terms = real_forward(self, outputs, labels)
        return (loss * math.nan if len(calls) > 2 else loss), terms

    monkeypatch.setattr(losses.ContrastiveLoss, "forward", nan_from_third_step)
    messages: list[str] = []
    cfg = tiny_config(tiny_dataset, tmp_path, max_nonfinite_steps=3, save_steps=2, max_steps=20)
    with pytest.raises(TrainingError) as info:
        train(cfg, log=messages.append)
    assert "\n" not in str(info.value) and "last_good.pth" in str(info.value)
    assert sum("Non-finite loss" in m for m in messages) == 3

    good = load_checkpoint(tmp_path / "last_good.pth")
    after_step_2 = load_checkpoint(tmp_path / "last.pth")  # written by the last good step
    assert good["step"] == after_step_2["step"] == 2 and good["batch_in_epoch"] == 2
    for name, tensor in after_step_2["model"].items():
        assert torch.equal(good["model"][name], tensor), name
    assert all(math.isfinite(r["loss"]) for r in (json.loads(x) for x in (tmp_path / "metrics.jsonl").open()))


def test_early_stopping_after_patience_validations(tiny_dataset, tmp_path, monkeypatch):
    val_losses = iter([1.0, 1.5, 0.9, 1.2, 1.3, 1.4])
    monkeypatch.setattr(train_module, "_validation_loss", lambda *args, **kw: (next(val_losses), 14.0))
    cfg = tiny_config(tiny_dataset, tmp_path, eval_steps=1, early_stopping_patience=2, max_steps=None,
                      num_epochs=10)
    result = train(cfg, log=quiet)
    assert result.stopped_early and result.steps == 5  # best at step 3, then 2 worse validations
    assert result.best_val_loss == 0.9
    assert load_checkpoint(tmp_path / "best.pth", mmap=True)["step"] == 3


def test_cli_debug_run_prints_the_seed_console_output(tiny_dataset, tmp_path):
    args = [sys.executable, "-m", "medclip_nb", "train", "--data_path", str(tiny_dataset),
            "--batch_size", "4", "--num_epochs", "1", "--lr", "1e-4", "--debug",
            "--model", "simple", "--image_size", "32", "--resize_size", "48", "--num_workers", "0",
            "--model_save_path", str(tmp_path)]
    run = subprocess.run(args, cwd=repo_root(), env=SUBPROCESS_ENV,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    for expected in (f"Loading dataset: {tiny_dataset}", "Dataset loaded:", "Data loaders:", "  train batches: ",
                     "Creating model...", "Model parameters: ", "Training...", "Batch shapes: images=(4, 3, 32, 32)",
                     "Loss terms: loss=", "loss_i2t=", "Average loss: ", "Skipped 0 unreadable images",
                     f"Saved checkpoint: {tmp_path / 'checkpoint_epoch_1.pth'}"):
        assert expected in out, expected
    for split in ("train", "val", "test"):
        assert f"  {split}: " in out and " samples" in out
    assert (tmp_path / "checkpoint_epoch_1.pth").is_file()
