"""A training run's state on disk: the output folder, the metrics log, checkpoints and resuming.

Resuming is exact: a checkpoint stores the sampler position (`epoch`, `batch_in_epoch`), the
RNG states and everything the optimizer, schedule and grad scaler need, so on CPU a run killed
after a checkpoint and resumed ends with bitwise the same parameters as one never stopped.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch

from medclip_nb.config import Config
from medclip_nb.errors import CheckpointError, ConfigError, TrainingError, os_error_reason
from medclip_nb.files import process_alive
from medclip_nb.model import (
    RESUME_PARTS,
    capture_rng_state,
    check_checkpoint,
    load_checkpoint,
    remove_stale_temp_files,
    resolve_resume,
    save_checkpoint,
)
from medclip_nb.paths import resolve, shown
from medclip_nb.runtime import World
from medclip_nb.text import tokenizer_from_json, tokenizer_problem

METRICS_FILE = "metrics.jsonl"
# Config keys that may differ on resume without it being worth a note.
_RESUME_QUIET_KEYS = {"resume_from", "force", "allow_complete"}


@dataclass
class TrainResult:
    """What a finished `train()` call produced."""

    output_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    metrics_path: Path
    history: list[dict] = field(default_factory=list)  # the rows of metrics.jsonl
    best_val_loss: float = math.inf
    steps: int = 0
    epochs_completed: int = 0
    bad_images: int = 0
    stopped_early: bool = False
    step_checkpoints: dict[int, Path] = field(default_factory=dict)  # checkpoint_steps: {step: step_<N>.pth}


# ---- metrics log ---------------------------------------------------------------------------------
class MetricsLog:
    """`metrics.jsonl`: one JSON object per line. On resume the rows written after the resume
    step (by the run that was stopped) are dropped first, so no step appears twice. `mirror`
    (for example a TensorBoardLog) receives every row written and is closed with the log."""

    def __init__(self, path: Path, resume_step: int | None, enabled: bool = True, mirror=None):
        self.path = path
        self.rows: list[dict] = []
        self.enabled = enabled
        self.mirror = mirror
        if not enabled:
            return
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            if resume_step is not None and path.is_file():
                self.rows = [r for r in self._read(path) if self._step_of(r) <= resume_step]
            tmp.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
            os.replace(tmp, path)
            self._file = open(path, "a", encoding="utf-8")
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise TrainingError(f"could not write {path}: {os_error_reason(e)}; it was left as it was") from None

    @staticmethod
    def _step_of(row: Any) -> int:
        step = row.get("step") if isinstance(row, dict) else None
        return step if isinstance(step, int) and not isinstance(step, bool) else 0

    @staticmethod
    def _read(path: Path) -> list[dict]:
        rows = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rows.append(json.loads(line))
            except (ValueError, RecursionError):
                continue  # a line cut short when the previous run was killed
        return rows

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        # NaN / inf are not JSON: a loss that could not be computed is written as null.
        row = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}
        self.rows.append(row)
        try:
            self._file.write(json.dumps(row, allow_nan=False) + "\n")
            self._file.flush()
        except OSError as e:
            raise TrainingError(f"could not write {self.path}: {os_error_reason(e)}") from None
        if self.mirror is not None:
            self.mirror.write(row)

    def close(self) -> None:
        if self.enabled:
            try:
                self._file.close()
            except OSError:
                pass  # its write already raised the error that is being reported
        if self.mirror is not None:
            self.mirror.close()


# ---- run state -----------------------------------------------------------------------------------
@dataclass
class Progress:
    """The loop's counters that a checkpoint stores and a resume restores (the non-finite guard
    keeps its own: train/guard.py STATE_KEYS)."""

    epoch: int = 0  # completed epochs = index of the epoch in progress
    step: int = 0  # optimizer steps taken
    batch_in_epoch: int = 0  # batches of the current epoch consumed (sampler position / batch size)
    best_val_loss: float = math.inf
    patience_counter: int = 0
    bad_image_count: int = 0
    epoch_bad_images: int = 0
    train_time: float = 0.0  # seconds of training before this process started

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "step": self.step}

    def count_bad_images(self, n: int) -> None:
        self.bad_image_count += n
        self.epoch_bad_images += n

    @classmethod
    def from_checkpoint(cls, state: dict) -> "Progress":
        return cls(**{f.name: state[f.name] for f in fields(cls) if f.name in state})


@dataclass
class TrainClock:
    """Seconds of training, summed over resumes."""

    before: float  # seconds of training before this process started
    started: float = field(default_factory=time.perf_counter)

    def __call__(self) -> float:
        return self.before + time.perf_counter() - self.started


@dataclass
class Checkpointer:
    """Writes everything a resume needs (on rank 0; the other ranks only return the path)."""

    cfg: Config
    world: World
    step: Any  # train.step.TrainStep: the unwrapped model, optimizer, schedule, scaler and guard
    tokenizer: Any
    progress: Progress
    elapsed: Callable[[], float]

    def save(self, path: Path, rng: dict | None = None, **position) -> Path:
        """`position`/`rng` override the current ones. Weights that are not all finite are never
        saved (a TrainingError: the run stops, naming the first such tensor)."""
        guard_state = self.step.guard.state()  # every rank: it may sync the device
        step = self.step
        weights = step.raw_model.state_dict()  # unwrapped: no 'module.' / '_orig_mod.' prefixes
        floats = {name: t.isfinite().all() for name, t in weights.items() if t.is_floating_point()}
        finite = bool(torch.stack(list(floats.values())).all()) if floats else True  # one device sync
        bad = [] if finite else [name for name, ok in floats.items() if not bool(ok)]
        if bad:  # every rank holds the same weights, so every rank stops here
            raise TrainingError(
                f"step {self.progress.step}: {len(bad)} weight tensor(s) hold NaN or infinite values (first: "
                f"{bad[0]}); {path.name} was not written (lr {self.cfg.lr:g} may be too high; the checkpoints "
                f"saved before stay as they were)")
        if self.world.is_main:
            save_checkpoint({
                "model": weights,
                "optimizer": step.optimizer.state_dict(),
                "scheduler": step.scheduler.state_dict(),
                "scaler": step.scaler.state_dict(),
                "config": self.cfg.to_dict(),
                "tokenizer": self.tokenizer.to_json(),
                "rng": rng if rng is not None else capture_rng_state(),
                "world_size": self.world.world_size,
                **self.progress.as_dict(),
                **guard_state,
                "train_time": self.elapsed(),
                **position,
            }, path)
        return path


# ---- output folder and resume --------------------------------------------------------------------
def output_dir(cfg: Config, world: World, say) -> Path:
    """model_save_path as a folder (created), with the temporary files of killed saves gone."""
    out_dir = resolve(cfg.model_save_path)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"config key 'model_save_path': {out_dir} is a file, not a folder")
    if world.is_main:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"config key 'model_save_path': cannot create {out_dir} ({os_error_reason(e)})") from None
        remove_stale_temp_files(out_dir, log=say)
    return out_dir


LOCK_FILE = ".medclip-nb.lock"


# How long a run waits for a lock whose holder process is gone (its orphaned loader workers exit
# within torch's 5 s status-check interval of noticing).
ORPHAN_WAIT_S = 20.0


def _alive(holder: str) -> bool:
    """Whether the process named in ' (process N)' still exists (True when no number is given)."""
    digits = "".join(ch for ch in holder if ch.isdigit())
    if not digits:
        return True
    return process_alive(int(digits))


class RunLock:
    """An exclusive lock on model_save_path for one whole run: `flock` on LOCK_FILE, which holds
    the owner's process id and is removed when the run ends. A second run into the folder is
    refused with one line naming it; the kernel drops the lock when the run's process dies
    (kill -9 included) and the loader workers it forked exit, so a crashed run never blocks the next
    (a lock whose holder is gone is waited for up to ORPHAN_WAIT_S while those workers exit).
    Under torchrun rank 0 takes it and every rank learns whether it did."""

    def __init__(self, out_dir: Path, world: World):
        self.fd: int | None = None
        self.path = out_dir / LOCK_FILE
        other = self._take() if world.is_main else ""
        deadline = time.monotonic() + ORPHAN_WAIT_S
        while other and not _alive(other) and time.monotonic() < deadline:
            # The holder died (kill -9) but a loader worker it forked still holds the lock's open file:
            # such workers exit within seconds of noticing their parent is gone.
            time.sleep(0.2)
            other = self._take()
        ok = other is None or not world.is_main
        if world.distributed:
            ok = bool(world.all_reduce(torch.tensor([0 if ok else 1])).item() == 0)
        if not ok:
            self.release()
            raise ConfigError(f"config key 'model_save_path': {out_dir} is in use by another run{other or ''}; wait "
                              f"for it to end or choose another folder")

    def _take(self) -> str | None:
        """None when the lock is ours, else ' (process N)' of its holder ('' when unknown)."""
        for _ in range(100):  # a holder may remove the file between our open and our lock: open it again
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError as e:
                raise ConfigError(f"config key 'model_save_path': cannot lock {self.path.parent} "
                                  f"({os_error_reason(e)})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    return f" (process {int(os.pread(fd, 32, 0).split()[0])})"
                except (OSError, ValueError, IndexError):
                    return ""
                finally:
                    os.close(fd)
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self.fd = fd
                return None
            os.close(fd)
        return ""

    def release(self) -> None:
        if self.fd is not None:
            try:
                self.path.unlink(missing_ok=True)  # while still held: no other run has it
            except OSError:
                pass
            os.close(self.fd)  # closing the descriptor drops the lock
            self.fd = None


def open_resume_point(cfg: Config, say) -> tuple[Path | None, dict | None]:
    """The checkpoint `cfg.resume_from` names, loaded and checked, or (None, None). Its tokenizer
    must be the one this config builds: a resumed run keeps its vocabulary and length, so a changed
    max_text_tokens (or text encoder) is refused rather than silently not applied."""
    path = resolve_resume(cfg.resume_from, cfg.model_save_path, force=cfg.force, log=say)
    if path is None:
        if cfg.resume_from:
            say(f"No checkpoint in {shown(resolve(cfg.model_save_path))} to resume from: starting a new run")
        return None, None
    state = check_checkpoint(load_checkpoint(path), path, RESUME_PARTS)
    problem = tokenizer_problem(tokenizer_from_json(state["tokenizer"]), cfg)
    if problem:
        raise CheckpointError(f"{path}: {problem}; a resumed run keeps its tokenizer: resume with the settings it was "
                              f"saved with, or start a new run")
    return path, state


def _config_differences(saved: dict, current: dict) -> list[str]:
    return [
        f"{k} {saved.get(k)!r} -> {current[k]!r}"
        for k in current
        if k not in _RESUME_QUIET_KEYS and k in saved and saved[k] != current[k]
    ]


def _check_resume_position(path: Path, state: dict, cfg: Config, batches_per_epoch: int) -> None:
    """A mid-epoch position past the end of this dataset's epoch cannot be resumed (it was
    saved on a larger dataset); checked before anything (metrics.jsonl included) is touched."""
    if state["batch_in_epoch"] > batches_per_epoch:
        raise CheckpointError(
            f"{path}: resume position batch {state['batch_in_epoch']} of epoch {state['epoch'] + 1} is past the end "
            f"of an epoch of this dataset ({batches_per_epoch} batches of {cfg.batch_size}); resume from an epoch "
            f"checkpoint, or with the dataset it was saved with")


def restore_training_state(path: Path, state: dict, cfg: Config, world: World, batches_per_epoch: int, step,
                           say) -> None:
    """Load weights, optimizer, schedule and scaler states into `step` (a train.step.TrainStep);
    its guard then keeps the restored BatchNorm statistics as the last good ones; this config's
    lr and weight_decay are applied (apply_optimizer_settings). The loop's counters are
    `Progress.from_checkpoint(state)`, the guard's its `state` argument."""
    saved_cfg = state["config"]
    samples_per_step = saved_cfg.get("batch_size"), state.get("world_size", 1)
    if state["batch_in_epoch"] and samples_per_step != (cfg.batch_size, world.world_size):
        raise CheckpointError(
            f"{path}: a mid-epoch checkpoint of a run with batch_size {samples_per_step[0]} on "
            f"{samples_per_step[1]} process(es); resume it with the same, or from an epoch checkpoint"
        )
    try:
        step.raw_model.load_state_dict(state["model"])
        step.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        reason = (str(e).strip() or type(e).__name__).splitlines()[0]
        raise CheckpointError(f"{path}: does not fit the model of this config ({reason})") from None
    step.scheduler.load_state_dict(state["scheduler"])
    if step.scaler.is_enabled() and state.get("scaler"):
        step.scaler.load_state_dict(state["scaler"])
    step.guard.remember_buffers()
    _check_resume_position(path, state, cfg, batches_per_epoch)
    applied = apply_optimizer_settings(step, cfg)
    say(f"Resuming from {shown(path)}: epoch {state['epoch'] + 1}, step {state['step']}, "
        f"batch {state['batch_in_epoch']} of {batches_per_epoch}")
    differences = _config_differences(saved_cfg, cfg.to_dict())
    if differences:
        say("Settings changed since the checkpoint: " + "; ".join(differences))
    if applied:
        say(f"Applied from this step on: {applied} (the optimizer's groups and the schedule's peak; the warmup and "
            f"cosine continue from step {state['step']})")


def apply_optimizer_settings(step, cfg: Config) -> str:
    """Put this config's lr and weight_decay into a restored optimizer and schedule (the
    checkpoint's states would otherwise keep the stopped run's): the schedule's base rate of
    every group becomes cfg.lr and each group's rate follows it at the restored position; the
    decayed group gets cfg.weight_decay (the other keeps 0). Returns what changed, '' if nothing."""
    changes = []
    scheduler, groups = step.scheduler, step.optimizer.param_groups
    if any(base != cfg.lr for base in scheduler.base_lrs):
        changes.append(f"lr {scheduler.base_lrs[0]:g} -> {cfg.lr:g}")
        scheduler.base_lrs = [cfg.lr] * len(groups)
        for group, factor in zip(groups, (fn(scheduler.last_epoch) for fn in scheduler.lr_lambdas)):
            group["initial_lr"] = cfg.lr
            group["lr"] = cfg.lr * factor
        scheduler._last_lr = [group["lr"] for group in groups]
    if groups[0]["weight_decay"] != cfg.weight_decay:  # the decayed group (train.step.param_groups: first)
        changes.append(f"weight_decay {groups[0]['weight_decay']:g} -> {cfg.weight_decay:g}")
        groups[0]["weight_decay"] = cfg.weight_decay
    return ", ".join(changes)
