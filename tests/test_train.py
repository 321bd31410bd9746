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
from typing import Callable

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Subset

from medclip_nb.config import from_dict
from medclip_nb.data import load_dataset_file
from medclip_nb.errors import CheckpointError, TrainingError
from medclip_nb.evaluate import eval_datasets
from medclip_nb.evaluate.evaluation import Evaluation
from medclip_nb.evaluate.metrics import retrieval_metrics, select_5x200
from medclip_nb.model import losses
from medclip_nb.model.checkpoint import load_checkpoint, load_model
from medclip_nb.paths import repo_root
from medclip_nb.train import guard as train_guard
from medclip_nb.train import loop as train_loop
from medclip_nb.train import step as train_step
from medclip_nb.train import train
from medclip_nb.train.guard import step_unless
from medclip_nb.train.state import TrainResult
from medclip_nb.train.step import batch_to_device, param_groups, warmup_cosine
from medclip_nb.train.val_metrics import ValMetrics, describe


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
    from medclip_nb.data.gpu_augment import BatchAugment

    augment = BatchAugment(32, "seed", train=True)
    batch = {"pixel_values": torch.randint(0, 256, (4, 1, 48, 48), dtype=torch.uint8),
             "input_ids": torch.ones(4, 8, dtype=torch.long), "attention_mask": torch.ones(4, 8, dtype=torch.long),
             "labels": torch.zeros(4, 14)}
    first = batch_to_device(batch, torch.device("cpu"), False, augment, torch.Generator().manual_seed(5))
    again = batch_to_device(batch, torch.device("cpu"), False, augment, torch.Generator().manual_seed(5))
    assert first[0].shape == (4, 3, 32, 32) and first[0].dtype == torch.float32
    assert torch.equal(first[0], again[0])
    plain = batch_to_device({**batch, "pixel_values": first[0]}, torch.device("cpu"), False)
    assert plain[0] is first[0]  # float batches pass through untouched


# ---- end to end on a tiny phantom ----------------------------------------------------------------
# One intra-op thread here and in the subprocesses: on a small shared machine, torch's
# default of one thread per core slows these runs several times over, and the killed and the
# resumed run of the resume test must use the same thread count to be bitwise comparable.
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
METRIC_KEYS = {"step", "epoch", "split", "loss", "lr", "temperature", "logit_scale", "pairs_per_s", "time",
               "chance"}
# A validation row also holds the validation subset's zero-shot accuracy and R@K (train/val_metrics.py).
VAL_METRIC_KEYS = METRIC_KEYS | {"retrieval_images", "zero_shot_images", "zero_shot_accuracy",
                                 *(f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10))}


pytestmark = pytest.mark.usefixtures("one_thread_no_bars")  # tests/conftest.py


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
    assert all(set(r) == (VAL_METRIC_KEYS if r["split"] == "val" else METRIC_KEYS) for r in rows)
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


# ---- validation metrics, totals under max_steps, TensorBoard runs ---------------------------------------
def test_validation_rows_hold_the_subset_metrics_and_leave_training_alone(tiny_dataset, tmp_path, resumable_setup):
    overrides, with_metrics = resumable_setup  # val_metrics_samples: 256, more than the split holds
    without = train(tiny_config(tiny_dataset, tmp_path, **overrides, val_metrics_samples=0), log=quiet)
    # The metrics' loader has its own generator: the training RNG streams, hence the losses, are untouched.
    assert [r["loss"] for r in with_metrics.history] == [r["loss"] for r in without.history]
    assert all(set(r) == METRIC_KEYS for r in without.history)
    val_rows = [r for r in with_metrics.history if r["split"] == "val"]
    assert all(set(r) == VAL_METRIC_KEYS for r in val_rows) and val_rows[-1]["step"] == 10
    # The last validation scored the model last.pth holds; scoring it again gives the row's numbers.
    model, tokenizer, cfg = load_model(with_metrics.output_dir / "last.pth")
    splits, _ = eval_datasets(cfg, tokenizer)
    again = ValMetrics.build(cfg, splits["val"], tokenizer)(model, torch.device("cpu"))
    assert again == {k: val_rows[-1][k] for k in again}
    assert again["retrieval_images"] == len(splits["val"])


def test_validation_metrics_are_evaluates_on_a_fixed_subset(tiny_dataset, resumable_setup):
    """Five of the seven test images: R@K as evaluate's retrieval_metrics and the zero-shot
    accuracy as its 5x200 ('ours', prompt mean) compute them on the same images."""
    _overrides, run = resumable_setup
    model, tokenizer, cfg = load_model(run.output_dir / "last.pth")
    splits, _ = eval_datasets(cfg, tokenizer)
    cfg = cfg.replace(val_metrics_samples=5)
    metrics = ValMetrics.build(cfg, splits["test"], tokenizer)
    assert metrics.loader.dataset.indices == ValMetrics.build(cfg, splits["test"], tokenizer).loader.dataset.indices
    got = metrics(model, torch.device("cpu"))
    rows = sorted(np.random.default_rng(cfg.seed).choice(len(splits["test"]), size=5, replace=False).tolist())
    assert metrics.loader.dataset.indices == rows
    evaluation = Evaluation(model, tokenizer, cfg, torch.device("cpu"), log=quiet)
    emb = evaluation.embed(Subset(splits["test"], rows), "subset")
    expected = retrieval_metrics(emb["image"], emb["text"], pair_ids=emb["text_group"])
    for direction in ("image_to_text", "text_to_image"):
        assert {k: got[f"{direction}_{k}"] for k in ("R@1", "R@5", "R@10")} == expected[direction]
    five, classes = select_5x200(emb["labels"], per_class=200)
    assert got["zero_shot_images"] == len(five)
    if len(five):
        assert got["zero_shot_accuracy"] == evaluation.five_x_200(emb["image"], five, classes)["mean"]["accuracy"]
    assert "zero-shot accuracy" in describe(got) or not len(five)
    assert "image->report R@1/5/10" in describe(got) and "(5 images)" in describe(got)


def test_progress_totals_and_epoch_count_follow_max_steps(tiny_dataset, tmp_path, monkeypatch):
    bars, real = [], train_loop.progress_display

    def recording(*args, **kwargs):
        bars.append((kwargs["desc"], kwargs["total"], kwargs["initial"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(train_loop, "progress_display", recording)
    batches = len(load_dataset_file(tiny_dataset)["train"]) // 4
    lines: list[str] = []
    cfg = tiny_config(tiny_dataset, tmp_path, num_epochs=10, max_steps=batches + 1, val_metrics_samples=0)
    train(cfg, log=lines.append)
    # Ten epochs asked for, max_steps ends the run one batch into the second: 2 epochs, the last of 1 batch.
    assert bars == [("Epoch 1/2", batches, 0), ("Epoch 2/2", 1, 0)]
    # ... and the CPU threads it uses (OMP_NUM_THREADS=1 here, one_thread_no_bars)
    assert f"Training... ({batches + 1} steps: 2 epoch(s) of up to {batches} batches; 1 CPU thread(s), " \
           f"OMP_NUM_THREADS=1)" in lines
    bars.clear()
    train(cfg.replace(max_steps=batches + 2, resume_from="latest"), log=quiet)
    assert bars == [("Epoch 2/2", 2, 1)]  # resumed after its first batch, one more to go


def test_tensorboard_runs_are_named_by_their_folder(tiny_dataset, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    for name, steps in (("clip_s0", 4), ("clip_s0", 2), ("clip_s1", 3)):  # clip_s0 trained again, afresh
        train(tiny_config(tiny_dataset, tmp_path / "ablation" / name, max_steps=steps, tensorboard=True,
                          val_metrics_samples=0), log=quiet)
    runs = EventMultiplexer().AddRunsFromDirectory(str(tmp_path))  # `tensorboard --logdir checkpoints/`
    runs.Reload()
    assert set(runs.Runs()) == {"ablation/clip_s0", "ablation/clip_s1"}
    # The second clip_s0 run started afresh: the first one's events are dropped, as its metrics.jsonl rows are.
    assert [e.step for e in runs.Scalars("ablation/clip_s0", "train/loss")] == [1, 2]
    assert [e.step for e in runs.Scalars("ablation/clip_s1", "train/loss")] == [1, 2, 3]


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
    monkeypatch.setattr(train_step.TrainStep, "validation_loss", lambda *args, **kw: (next(val_losses), 14.0, 1, 2.0))
    cfg = tiny_config(tiny_dataset, tmp_path, eval_steps=1, early_stopping_patience=2, max_steps=None,
                      num_epochs=10)
    result = train(cfg, log=quiet)
    assert result.stopped_early and result.steps == 5  # best at step 3, then 2 worse validations
    assert result.best_val_loss == 0.9
    assert load_checkpoint(tmp_path / "best.pth", mmap=True)["step"] == 3


def test_cli_debug_run_prints_the_seed_console_output(tiny_dataset, tmp_path):
    args = [sys.executable, "-m", "medclip_nb", "train", "--data_path", str(tiny_dataset),
            "--batch_size", "4", "--num_epochs", "1", "--lr", "1e-4", "--debug", "--debug_subset", "8",
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
    # Each split's full size is shown beside the debug subset in use.
    for split, records in load_dataset_file(tiny_dataset).items():
        if split in ("train", "val", "test"):
            shown = min(8, len(records))
            line = (f"  {split}: {shown} of {len(records)} samples (debug subset)" if shown < len(records)
                    else f"  {split}: {shown} samples")
            assert line + "\n" in out, (line, out)
    assert (tmp_path / "checkpoint_epoch_1.pth").is_file()


# ---- the sync-free non-finite guard (CUDA's; forced on here on the CPU) ---------------------------
SYNC_FREE = dict(vision_backbone="mobilenet_v3_small", lr=1e-3)  # has BatchNorm statistics to guard


def nan_on_steps(monkeypatch, bad_steps: set[int] | Callable) -> list[float]:
    """Makes the training loss NaN on the given (1-based) steps; returns the list the real losses
    of all steps are appended to."""
    real_forward = losses.ContrastiveLoss.forward
    seen: list[float] = []

    def forward(self, outputs, labels=None, **kwargs):
        loss, terms = real_forward(self, outputs, labels, **kwargs)
        seen.append(loss.item())
        step = len(seen)
        is_bad = bad_steps(step) if callable(bad_steps) else step in bad_steps
        return (loss * math.nan if is_bad else loss), terms

    monkeypatch.setattr(losses.ContrastiveLoss, "forward", forward)
    return seen


def watch_steps(monkeypatch):
    """Calls `on_step(step, model, optimizer)` after every attempted step of the sync-free guard
    (after the skipped step's BatchNorm statistics were put back)."""
    model_and_optimizer: dict = {}
    real_build = train_loop.build_model
    real_step, real_kept = train_guard.SyncFreeGuard.step, train_guard.SyncFreeGuard.kept
    calls: list = []

    def build_model(*args, **kwargs):
        model_and_optimizer["model"] = real_build(*args, **kwargs)
        return model_and_optimizer["model"]

    def step(self, bad, optimizer, scaler):
        model_and_optimizer["optimizer"] = optimizer
        return real_step(self, bad, optimizer, scaler)

    def kept(self, bad, loss):
        step_loss = real_kept(self, bad, loss)
        for on_step in calls:
            on_step(**model_and_optimizer)
        return step_loss

    monkeypatch.setattr(train_loop, "build_model", build_model)
    monkeypatch.setattr(train_guard.SyncFreeGuard, "step", step)
    monkeypatch.setattr(train_guard.SyncFreeGuard, "kept", kept)
    return calls


def snapshot(model: nn.Module, optimizer) -> dict[str, torch.Tensor]:
    """Clones of every parameter, buffer (BatchNorm statistics) and optimizer state tensor."""
    tensors = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    for index, state in optimizer.state_dict()["state"].items():
        tensors.update({f"optimizer.{index}.{k}": v.clone() for k, v in state.items()})
    return tensors


@pytest.fixture
def sync_free_on_cpu(monkeypatch):
    """CUDA's sync-free guard (and its fused AdamW) on the CPU: guard.py's documented seam."""
    monkeypatch.setattr(train_guard, "SYNC_FREE_ON_CPU", True)


def test_sync_free_guard_trains_like_a_normal_run(tiny_dataset, tmp_path, sync_free_on_cpu):
    cfg = tiny_config(tiny_dataset, tmp_path, **SYNC_FREE, eval_steps=3, save_steps=2)
    result = train(cfg, log=quiet)
    assert result.steps == 6
    rows = train_rows(result)
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(set(r) == METRIC_KEYS | {"nonfinite_skipped"} and r["nonfinite_skipped"] == 0 for r in rows)
    assert all(math.isfinite(r["loss"]) for r in result.history)
    batches_per_epoch = len(load_dataset_file(tiny_dataset)["train"]) // 4
    steps_in_last_epoch = 6 - batches_per_epoch * ((6 - 1) // batches_per_epoch)
    last = load_checkpoint(tmp_path / "last.pth")
    assert (last["step"], last["nonfinite_total"], last["nonfinite_streak"]) == (6, 0, 0)
    assert last["epoch_loss_steps"] == steps_in_last_epoch  # good steps, counted on the device
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())
    assert last["optimizer"]["param_groups"][0]["fused"] is True
    assert (tmp_path / "best.pth").is_file() and not (tmp_path / "last_good.pth").exists()


def test_sync_free_guard_skips_nan_steps_without_a_trace(tiny_dataset, tmp_path, monkeypatch, sync_free_on_cpu):
    real_losses = nan_on_steps(monkeypatch, {3, 5})
    on_step = watch_steps(monkeypatch)
    before: dict = {}
    checked: list[int] = []

    def compare(model, optimizer):
        step = len(real_losses)
        now = snapshot(model, optimizer)
        if step in (3, 5):  # a NaN step: every tensor as the good step before it left it
            assert before.keys() == now.keys()
            for name, tensor in before.items():
                assert torch.equal(now[name], tensor), (step, name)
            checked.append(step)
        elif step == 4:  # a good step after a skipped one does move the weights
            assert any(not torch.equal(now[k], before[k]) for k in now if k.startswith("model."))
        before.clear()
        before.update(now)

    on_step.append(compare)
    messages: list[str] = []
    cfg = tiny_config(tiny_dataset, tmp_path, **SYNC_FREE, log_every=2, max_nonfinite_steps=2)
    result = train(cfg, log=messages.append)

    assert checked == [3, 5] and result.steps == 6  # skipped steps count as attempted steps
    rows = train_rows(result)
    assert [(r["step"], r["nonfinite_skipped"]) for r in rows] == [(2, 0), (4, 1), (6, 1)]
    # Window means over the good steps only (float32 sums on the device).
    expected = [(real_losses[0] + real_losses[1]) / 2, real_losses[3], real_losses[5]]
    assert [r["loss"] for r in rows] == pytest.approx(expected, rel=1e-5)
    # Said where the counts are read (log rows, epoch ends): one line per skipped step here.
    said = [m for m in messages if m.startswith("Non-finite")]
    assert len(said) == 2 and all(m.startswith("Non-finite loss in 1 of steps ") for m in said)
    assert ("3-" in said[0] or "-3:" in said[0]) and ("5-" in said[1] or "-5:" in said[1])
    last = load_checkpoint(tmp_path / "last.pth")
    assert (last["nonfinite_total"], last["nonfinite_streak"]) == (2, 0)


def test_sync_free_guard_stops_a_nan_streak_with_the_last_good_weights(tiny_dataset, tmp_path, monkeypatch,
                                                                       sync_free_on_cpu):
    batches_per_epoch = len(load_dataset_file(tiny_dataset)["train"]) // 4
    nan_on_steps(monkeypatch, lambda step: step > 2)
    on_step = watch_steps(monkeypatch)
    after_step_2: dict = {}
    steps_seen: list[int] = []

    def keep_step_2(model, optimizer):
        steps_seen.append(1)
        if len(steps_seen) == 2:
            after_step_2.update(snapshot(model, optimizer))

    on_step.append(keep_step_2)
    log_every, limit = 4, 3
    cfg = tiny_config(tiny_dataset, tmp_path, **SYNC_FREE, log_every=log_every, max_nonfinite_steps=limit,
                      num_epochs=10, max_steps=None)
    with pytest.raises(TrainingError) as info:
        train(cfg, log=quiet)

    # Noticed at the first log row or epoch end once the streak (from step 3) reaches the limit.
    noticed = next(s for s in range(2 + limit, 100) if s % log_every == 0 or s % batches_per_epoch == 0)
    message = str(info.value)
    assert "\n" not in message and "last_good.pth" in message
    assert message.startswith(f"{noticed - 2} non-finite losses in a row at step {noticed} "
                              f"(max_nonfinite_steps {limit})")
    assert f"weights of step 2, data position and RNG of step {noticed}" in message
    assert len(steps_seen) == noticed

    good = load_checkpoint(tmp_path / "last_good.pth")
    assert (good["step"], good["nonfinite_streak"], good["nonfinite_total"]) == (noticed, noticed - 2, noticed - 2)
    saved = {f"model.{k}": v for k, v in good["model"].items()}
    for index, state in good["optimizer"]["state"].items():
        saved.update({f"optimizer.{index}.{k}": v for k, v in state.items()})
    assert saved.keys() == after_step_2.keys()
    for name, tensor in after_step_2.items():
        assert torch.equal(saved[name], tensor), name


def _reads_between_training_steps(monkeypatch, tiny_dataset, tmp_path, sync_free: bool) -> tuple[list[str], int]:
    """(the files that read a tensor's value on the host, one entry per read; steps) between the
    first and the last training loss of a one-epoch run whose log rows, validations and saves
    all fall after its last step. Reads made while the DataLoader fetches a batch are left
    out: on a GPU those are CPU tensors."""
    events: list[str | None] = []  # None marks a training loss
    real_forward = losses.ContrastiveLoss.forward

    def forward(self, *args, **kwargs):
        events.append(None)
        return real_forward(self, *args, **kwargs)

    def counting(name):
        real = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):
            caller = frame = sys._getframe(1)
            while frame is not None:
                if f"torch{os.sep}utils{os.sep}data{os.sep}" in frame.f_code.co_filename:
                    break
                frame = frame.f_back
            else:
                events.append(caller.f_code.co_filename)
            return real(self, *args, **kwargs)

        return read

    cfg = tiny_config(tiny_dataset, tmp_path, **SYNC_FREE, num_epochs=1, max_steps=None,
                      log_every=1000, eval_steps=1000, save_steps=1000)
    monkeypatch.setattr(losses.ContrastiveLoss, "forward", forward)
    with monkeypatch.context() as patch:
        for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
            patch.setattr(torch.Tensor, name, counting(name))
        patch.setattr(train_guard, "SYNC_FREE_ON_CPU", sync_free)
        train(cfg, log=quiet)
    steps = [i for i, e in enumerate(events) if e is None]
    return [e for e in events[steps[0]:steps[-1]] if e is not None], len(steps)


def test_sync_free_guard_reads_nothing_from_the_device_between_log_steps(tiny_dataset, tmp_path, monkeypatch):
    reads, steps = _reads_between_training_steps(monkeypatch, tiny_dataset, tmp_path / "free", True)
    assert steps >= 3 and reads == []
    # The same probe sees the synchronous guard's one read per step (and the CPU-only unfused
    # AdamW's reads of its step counters): it does detect reads.
    reads, steps = _reads_between_training_steps(monkeypatch, tiny_dataset, tmp_path / "sync", False)
    assert sum(Path(f) == Path(train_guard.__file__) for f in reads) == steps - 1


def test_step_unless_folds_the_bad_flag_into_the_grad_scaler():
    # The fp16 path of CUDA runs, on the CPU: the scaler hands the fused AdamW its own found_inf,
    # so a non-finite loss with finite gradients must reach it through the scaler.
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(layer.parameters(), lr=1e-2, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for bad, moved, scale_after in [(False, True, 1024.0), (True, False, 512.0), (False, True, 512.0)]:
        before = layer.weight.detach().clone()
        scaler.scale(layer(torch.randn(2, 4)).sum()).backward()  # finite gradients every time
        scaler.unscale_(optimizer)
        step_unless(torch.tensor(bad), optimizer, scaler)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        assert (not torch.equal(before, layer.weight)) == moved
        assert scaler.get_scale() == scale_after  # a skipped step backs the scale off (0.5)
    assert optimizer.state[layer.weight]["step"].item() == 2  # rolled back by exactly 1, not more
