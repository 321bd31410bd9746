"""Checkpoint files: round trip, atomic writes, safe loading, finding the newest one, RNG state."""

from __future__ import annotations

import errno
import os
import random
import time

import numpy as np
import pytest
import torch

from medclip_nb.errors import CheckpointError
from medclip_nb.model import checkpoint as ckpt
from medclip_nb.model.checkpoint import (
    capture_rng_state,
    find_latest,
    load_checkpoint,
    resolve_resume,
    restore_rng_state,
    save_checkpoint,
)


def _small_training_state(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer, dict]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(5, 4)).pow(2).sum().backward()
    optimizer.step()  # gives the optimizer real exp_avg / exp_avg_sq / step tensors
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 7,
             "config": {"lr": 1e-2, "frontal_views": ["PA", "AP"], "image_root": None},
             "tokenizer": '{"kind": "char"}', "best_val_loss": float("inf")}
    return model, optimizer, state


def test_round_trip_restores_model_and_optimizer(tmp_path):
    model, optimizer, state = _small_training_state()
    path = save_checkpoint(state, tmp_path / "last.pth")
    loaded = load_checkpoint(path)

    fresh_model, fresh_optimizer, _ = _small_training_state(seed=1)
    fresh_model.load_state_dict(loaded["model"])
    fresh_optimizer.load_state_dict(loaded["optimizer"])
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh_model.state_dict()[name], tensor), name
    for pid, param_state in optimizer.state_dict()["state"].items():
        for key, value in param_state.items():
            assert torch.equal(fresh_optimizer.state_dict()["state"][pid][key], value), (pid, key)
    assert loaded["step"] == 7 and loaded["config"] == state["config"]
    assert loaded["best_val_loss"] == float("inf")


def test_crash_midway_keeps_previous_checkpoint(tmp_path, monkeypatch):
    _, _, state = _small_training_state()
    target = save_checkpoint(state, tmp_path / "last.pth")

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", disk_full)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint({**state, "step": 8}, target)
    message = str(info.value)
    assert "\n" not in message
    assert str(target) in message and "no space left on device" in message and "intact" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]  # no temp file left
    assert load_checkpoint(target)["step"] == 7


def test_interrupt_midway_cleans_up(tmp_path, monkeypatch):
    def interrupted(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.torch, "save", interrupted)
    with pytest.raises(CheckpointError, match="interrupted; no previous checkpoint existed"):
        save_checkpoint({"step": 1}, tmp_path / "best.pth")
    assert list(tmp_path.iterdir()) == []


class _Payload:
    """Not plain data: weights_only loading must refuse it."""


def test_load_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": _Payload()}, path)
    with pytest.raises(CheckpointError, match="refused to load") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "_Payload" in str(info.value) and "\n" not in str(info.value)


def test_load_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nothing.pth"):
        load_checkpoint(tmp_path / "nothing.pth")
    _, _, state = _small_training_state()
    good = save_checkpoint(state, tmp_path / "good.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        load_checkpoint(truncated)
    assert str(truncated) in str(info.value)
    no_central_directory = tmp_path / "cut.pth"
    no_central_directory.write_bytes(good.read_bytes()[:-30])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(no_central_directory)
    not_a_dict = tmp_path / "tensor.pth"
    torch.save(torch.zeros(2), not_a_dict)
    with pytest.raises(CheckpointError, match="not a medclip-nb checkpoint"):
        load_checkpoint(not_a_dict)


def test_find_latest_uses_stored_step_and_skips_incomplete_files(tmp_path):
    assert find_latest(tmp_path) is None
    assert find_latest(tmp_path / "absent") is None
    save_checkpoint({"step": 40}, tmp_path / "checkpoint_epoch_2.pth")
    save_checkpoint({"step": 20}, tmp_path / "checkpoint_epoch_1.pth")
    time.sleep(0.01)
    save_checkpoint({"step": 30}, tmp_path / "best.pth")  # newest file, but an older step
    (tmp_path / ".last.pth.tmp-999").write_bytes(b"half written")  # a killed save
    (tmp_path / "broken.pth").write_bytes(b"not a zip")
    assert find_latest(tmp_path).name == "checkpoint_epoch_2.pth"

    save_checkpoint({"step": 40}, tmp_path / "last.pth")  # same step: last.pth wins the tie
    assert find_latest(tmp_path).name == "last.pth"


def test_find_latest_falls_back_to_mtime_without_step(tmp_path):
    older, newer = tmp_path / "a.pth", tmp_path / "b.pth"
    save_checkpoint({"model": {}}, newer)
    save_checkpoint({"model": {}}, older)
    os.utime(older, (1_000_000, 1_000_000))
    assert find_latest(tmp_path) == newer


def test_resolve_resume(tmp_path):
    assert resolve_resume(None, tmp_path) is None
    assert resolve_resume("latest", tmp_path) is None  # nothing to resume: start fresh
    path = save_checkpoint({"step": 3}, tmp_path / "last.pth")
    assert resolve_resume("latest", tmp_path) == path
    assert resolve_resume(str(path), "unused") == path
    with pytest.raises(CheckpointError, match="--resume_from: checkpoint not found: .*missing.pth"):
        resolve_resume(str(tmp_path / "missing.pth"), tmp_path)


def test_rng_state_survives_a_safe_round_trip(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    np.random.standard_normal()  # leaves a cached gaussian in the numpy state
    state = capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), np.random.standard_normal(), random.random())

    path = save_checkpoint({"rng": state}, tmp_path / "rng.pth")
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    restore_rng_state(load_checkpoint(path)["rng"])
    again = (torch.rand(3), np.random.rand(3), np.random.standard_normal(), random.random())
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1])
    assert expected[2] == again[2] and expected[3] == again[3]
