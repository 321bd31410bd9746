"""`train(cfg)`: set the run up, `train_one_epoch` until done, close the logs.

`train_one_epoch` reads top to bottom: fetch a batch, move it to the device, take the step
(step.py: forward, loss, backward, clip, guard, AdamW, schedule), let the guard settle where
the loop syncs anyway, write the train row, validate, save. The guard (guard.py) owns the
non-finite counters and the epoch's loss; state.py holds the metrics log, the checkpoints and
resuming.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from medclip_nb.config import Config
from medclip_nb.data import check_clip_index_rows, uses_precomputed_text
from medclip_nb.errors import TrainingError
from medclip_nb.model import build_model, count_parameters, restore_rng_state
from medclip_nb.paths import resolve, shown
from medclip_nb.progress import duration, working
from medclip_nb.progress import progress as progress_display
from medclip_nb.runtime import (
    GlobalFlags,
    World,
    place_model,
    set_backend_flags,
    set_cpu_threads,
    start_distributed,
    stop_distributed,
)
from medclip_nb.text import tokenizer_from_json
from medclip_nb.train.guard import NonfiniteStreak
from medclip_nb.train.loaders import TrainData, prepare_data
from medclip_nb.train.state import (
    METRICS_FILE,
    Checkpointer,
    MetricsLog,
    Progress,
    RunLock,
    TrainClock,
    TrainResult,
    open_resume_point,
    output_dir,
    restore_training_state,
)
from medclip_nb.train.step import TrainStep, batch_to_device, build_train_step, loss_inputs
from medclip_nb.train.tensorboard_log import TensorBoardLog, require_tensorboard
from medclip_nb.train.val_metrics import ValMetrics, describe


def train(cfg: Config, *, log: Callable[[str], Any] = print) -> TrainResult:
    """Train a model as `cfg` says and return a TrainResult; `log` receives the console lines
    (rank 0 only). The files written are listed in the package docstring (medclip_nb.train).

    On CPU, the same config and seed give the same losses to the last digit (deterministic
    algorithms are switched on for the call), and the process uses cores - num_workers threads
    (runtime.set_cpu_threads; config key cpu_threads); both are put back afterwards. Raises
    DataError / ConfigError / CheckpointError for bad input, and TrainingError when the loss
    stays non-finite for cfg.max_nonfinite_steps steps in a row (after writing last_good.pth);
    guard.py says how the non-finite guard works on CUDA (sync-free) and on the CPU.
    """
    flags_before = GlobalFlags.save()  # threads, deterministic mode and its NaN fill, anomaly detection
    world, finished, lock = World(), False, None
    try:
        world, device = start_distributed(cfg.gpu_id, log, cfg.dist_backend)
        say = log if world.is_main else (lambda *_args, **_kw: None)
        if cfg.tensorboard:
            require_tensorboard()  # before the output folder, the data and the model
        out_dir = output_dir(cfg, world, say)
        lock = RunLock(out_dir, world)  # one run per folder, for the whole run
        run = setup_run(cfg, world, device, say, out_dir)
        if run.resumed_from is not None and run.done():
            already_complete(run)
        else:
            say(f"Training... ({run.total_steps} steps: {run.planned_epochs(1)} epoch(s) of up to "
                f"{run.batches_per_epoch} batches" + (f"; {run.threads})" if run.threads else ")"))
        while not run.done():
            train_one_epoch(run)
        run.metrics.close()
        result = run.result
        result.history, result.best_val_loss = run.metrics.rows, run.progress.best_val_loss
        result.steps, result.epochs_completed = run.progress.step, run.progress.epoch
        bad_images = torch.tensor(run.progress.bad_image_count, device=device)
        result.bad_images = int(world.all_reduce(bad_images).item())
        finished = True
        return result
    finally:
        if lock is not None:
            lock.release()
        flags_before.restore()
        stop_distributed(world, finished=finished)


def already_complete(run: "Run") -> None:
    """A resumed checkpoint at or past the run's end: nothing to train. An error (exit 2) unless
    the config key allow_complete accepts it, so a run that trains nothing never looks like one
    that trained."""
    progress, cfg = run.progress, run.cfg
    why = "early stopping ended it" if run.result.stopped_early else \
        f"step {progress.step} of {run.total_steps}, epoch {progress.epoch} of {cfg.num_epochs}"
    message = f"{run.resumed_from}: the run is already complete ({why}); nothing to train"
    if not cfg.allow_complete:
        run.metrics.close()
        raise TrainingError(f"{message}: raise num_epochs or max_steps to train further, or pass --allow_complete")
    run.say(f"{message} (allow_complete)")


# ---- the run -------------------------------------------------------------------------------------
@dataclass
class Run:
    """What the epochs of one `train()` call share; built by `setup_run`."""

    cfg: Config
    world: World
    device: torch.device
    say: Callable[[str], Any]
    data: TrainData
    step: TrainStep  # with its optimizer, schedule, scaler and non-finite guard
    progress: Progress
    checkpoints: Checkpointer
    metrics: MetricsLog
    result: TrainResult
    total_steps: int
    resume_rng: dict | None  # restored once the first epoch's iterator exists
    threads: str = ""  # the CPU thread count and why, for the line that starts training ("" on a GPU)
    resumed_from: Path | None = None  # the checkpoint this run continues
    last_val: tuple[int, float] = (-1, math.nan)  # (step, loss) of the latest validation
    val_metrics: ValMetrics | None = None  # zero-shot and R@K at each validation (main process)
    batches_per_epoch: int = 0  # the loader's length over a whole epoch (a resumed one yields fewer)

    def done(self) -> bool:
        return (self.progress.epoch >= self.cfg.num_epochs or self.progress.step >= self.total_steps
                or self.result.stopped_early)

    def batches_this_epoch(self) -> int:
        """The batches this epoch runs: all of them, or up to the step where max_steps ends the run."""
        left = self.total_steps - self.progress.step
        return min(self.batches_per_epoch, self.progress.batch_in_epoch + left)

    def planned_epochs(self, number: int) -> int:
        """The epochs this run takes: num_epochs, or fewer when max_steps ends it first (never
        below the epoch in progress, `number`: skipped batches can push the end one epoch on)."""
        return max(number, min(self.cfg.num_epochs, math.ceil(self.total_steps / self.batches_per_epoch)))

    def save(self, name: str, **position) -> Path:
        """Write `name` in the output folder (see Checkpointer.save)."""
        return self.checkpoints.save(self.result.output_dir / name, **position)


def train_one_epoch(run: Run) -> None:
    """One pass over the training batches (the rest of one, on resume; up to max_steps), then
    the epoch's end: its validation, summary lines and checkpoints. A streak of non-finite
    losses ends the run here, with last_good.pth."""
    cfg, world, progress, data, guard = run.cfg, run.world, run.progress, run.data, run.step.guard
    number = progress.epoch + 1
    data.train_sampler.set_epoch(progress.epoch)
    if progress.batch_in_epoch:  # resuming mid-epoch: skip what the stopped run consumed
        data.train_sampler.set_start(progress.batch_in_epoch * cfg.batch_size)
    else:
        guard.start_epoch()
        progress.epoch_bad_images = 0
    batches = iter(data.train_loader)
    if run.resume_rng is not None:  # the stopped run's RNG streams, at the same point
        restore_rng_state(run.resume_rng)
        run.resume_rng = None
    run.step.model.train()
    bar = epoch_bar(run, number)  # closed in the finally below
    window_loss, window_steps, window_skipped, window_chance = torch.zeros((), device=run.device), 0, 0, 0.0
    window_start, batches_seen, usable_batches = time.perf_counter(), 0, 0
    try:
        for batch in batches:  # ---- fetch
            batches_seen += 1
            progress.batch_in_epoch += 1
            bar.update(1)
            progress.count_bad_images(batch["n_skipped"])
            run.step.show_shapes(batch)
            if not usable(run, batch["pixel_values"].shape[0], number):
                continue
            usable_batches += 1
            if data.unpaired is not None:  # image-only / text-only items join the step (data/unpaired.py)
                batch = data.unpaired.extend(batch, progress.epoch, progress.batch_in_epoch - 1)
                progress.count_bad_images(batch["n_unpaired_skipped"])
            if data.augment is not None:  # ---- move (device augmentation seeded by the batch's position)
                position = (cfg.seed, world.rank, progress.epoch, progress.batch_in_epoch)
                data.augment_generator.manual_seed(hash(position) % 2**63)  # int tuples hash alike everywhere
            tensors = batch_to_device(batch, run.device, run.step.channels_last, data.augment, data.augment_generator)
            done = run.step(*tensors, **loss_inputs(batch, run.device))  # ---- step: None when the guard skipped it
            if done is None:
                continue
            step = progress.step = progress.step + 1
            window_loss += done.loss
            window_steps, window_chance = window_steps + 1, window_chance + (done.chance or 0.0)
            if any(step % every == 0 for every in (cfg.log_every, cfg.eval_steps, cfg.save_steps)):
                window_skipped += guard.settle()  # ---- guard: device counts read where the loop syncs anyway
            if step % cfg.log_every == 0:  # ---- log: the mean loss of the window's good steps
                now = time.perf_counter()
                good_steps = window_steps - window_skipped
                mean_loss = world.all_reduce(window_loss).item() / (good_steps * world.world_size) \
                    if good_steps else math.nan
                scale = float(done.logit_scale)
                pairs_per_s = window_steps * cfg.batch_size * world.world_size / max(now - window_start, 1e-9)
                run.metrics.write({"step": step, "epoch": number, "split": "train", "loss": mean_loss, "lr": done.lr,
                                   "temperature": 1 / scale, "logit_scale": scale, "pairs_per_s": pairs_per_s,
                                   "time": run.checkpoints.elapsed(), **guard.row_fields(),
                                   "chance": window_chance / window_steps if done.chance is not None else None})
                eta = duration((run.total_steps - step) * run.checkpoints.elapsed() / step)
                bar.set_postfix(step=f"{step}/{run.total_steps}", loss=f"{mean_loss:.4f}", lr=f"{done.lr:.2e}",
                                pairs_s=f"{pairs_per_s:.0f}", run_eta=eta, refresh=False)
                window_loss.zero_()
                window_steps, window_skipped, window_start, window_chance = 0, 0, now, 0.0
            if step % cfg.eval_steps == 0:  # ---- validate (best.pth on a new best)
                validate(run, number)
            if step % cfg.save_steps == 0:  # ---- save
                run.result.last_checkpoint = run.save("last.pth")
            if step in cfg.checkpoint_steps:  # learning-curve points (evaluated after training)
                run.result.step_checkpoints[step] = run.save(f"step_{step}.pth")
            if run.result.stopped_early or step >= run.total_steps:
                break
        guard.settle()
    except NonfiniteStreak as streak:
        run.metrics.close()
        good_path = run.save("last_good.pth", **(streak.position or {}))
        raise TrainingError(f"{streak}; the last good state is in {good_path} ({streak.note}try a lower lr or "
                            f"check the data)") from None
    finally:
        bar.close()
    end_epoch(run, number, batches_seen, usable_batches)


def epoch_bar(run: Run, number: int):
    """The epoch's progress display. In a log it prints a line per interval even while one batch is
    slow (a heartbeat thread), so the caller must close it."""
    return progress_display(total=run.batches_this_epoch(), initial=run.progress.batch_in_epoch,
                            desc=f"Epoch {number}/{run.planned_epochs(number)}", unit="batch",
                            disable=not run.world.is_main, heartbeat=True)


def usable(run: Run, size: int, epoch_number: int) -> bool:
    """Whether a batch of `size` readable pairs makes a step (on every rank)."""
    if run.world.distributed:
        # All ranks take or skip a step together, and the loss gathers equal-sized batches.
        sizes = run.world.all_reduce(torch.tensor([size, -size], device=run.device), dist.ReduceOp.MAX).tolist()
        ok = -sizes[1] >= 2 and sizes[0] == -sizes[1]
    else:
        ok = size >= 2
    if not ok:
        run.say(f"Skipping batch {run.progress.batch_in_epoch} of epoch {epoch_number}: "
                f"{size} readable image(s), a contrastive step needs at least 2")
    return ok


def validate(run: Run, epoch_number: int) -> None:
    """Validation loss now: a metrics row, best.pth on a new best, the patience counter."""
    cfg, progress, data = run.cfg, run.progress, run.data
    if data.val_loader is None:
        return
    started = time.perf_counter()
    with working(f"validation at step {progress.step}", disable=not run.world.is_main):  # logs: a line per interval
        val_loss, scale, scored, chance = run.step.validation_loss(data.val_loader, run.device)
        seconds = max(time.perf_counter() - started, 1e-9)
        extra = run.val_metrics(run.step.raw_model, run.device) if run.val_metrics is not None else {}
    if not scored:
        run.say(f"Warning: validation at step {progress.step} had no usable batch (each needs 2 readable pairs; "
                f"eval_batch_size {cfg.eval_batch_size}); its loss is not a number and best.pth is not updated")
    run.last_val = (progress.step, val_loss)
    if extra:
        run.say(f"Validation at step {progress.step}: loss {val_loss:.4f} | {describe(extra)}")
    run.metrics.write({"step": progress.step, "epoch": epoch_number, "split": "val", "loss": val_loss,
                       "lr": run.step.optimizer.param_groups[0]["lr"], "temperature": 1 / scale if scale else None,
                       "logit_scale": scale, "pairs_per_s": len(data.splits["val"]) / seconds,
                       "time": run.checkpoints.elapsed(), "chance": chance, **extra})
    if val_loss < progress.best_val_loss:
        progress.best_val_loss = val_loss
        progress.patience_counter = 0
        run.result.best_checkpoint = run.save("best.pth")
    else:
        progress.patience_counter += 1
    if cfg.early_stopping_patience and progress.patience_counter >= cfg.early_stopping_patience:
        run.result.stopped_early = True


def end_epoch(run: Run, number: int, batches_seen: int, usable_batches: int) -> None:
    """The epoch's (or, stopped mid-epoch, the run's) end: its validation unless one just ran,
    the summary lines, checkpoint_epoch_N.pth when the epoch is complete, last.pth. An epoch
    that saw batches but none it could train on stops the run."""
    progress = run.progress
    if batches_seen and not usable_batches:
        run.metrics.close()
        raise no_step_error(run.cfg, number, batches_seen, progress.epoch_bad_images)
    if run.last_val[0] != progress.step and (run.cfg.epoch_validation or run_ends(run)):
        validate(run, number)
    totals = run.world.all_reduce(torch.tensor([*run.step.guard.epoch_totals(), progress.epoch_bad_images],
                                               device=run.device, dtype=torch.float64))
    summary = f"Average loss: {totals[0].item() / max(totals[1].item(), 1):.4f}"
    if run.last_val[0] == progress.step and not math.isnan(run.last_val[1]):
        summary += f" | val loss: {run.last_val[1]:.4f}"
    run.say(summary)
    run.say(f"Skipped {int(totals[2].item())} unreadable images")
    if progress.batch_in_epoch >= len(run.data.train_loader):
        progress.epoch += 1
        progress.batch_in_epoch = 0
        if run.cfg.epoch_checkpoints:
            run.say(f"Saved checkpoint: {shown(run.save(f'checkpoint_epoch_{number}.pth'))}")
    run.result.last_checkpoint = run.save("last.pth")
    if progress.batch_in_epoch:  # stopped mid-epoch (max_steps): say where the state went
        run.say(f"Saved checkpoint: {shown(run.result.last_checkpoint)}")
    if run.result.stopped_early:
        run.say(f"Early stopping: no lower val loss in {progress.patience_counter} validations")


def run_ends(run: Run) -> bool:
    """Whether this epoch end is the run's last (its budget spent or its epochs done)."""
    epoch_done = run.progress.batch_in_epoch >= len(run.data.train_loader)
    return run.progress.step >= run.total_steps or (epoch_done and run.progress.epoch + 1 >= run.cfg.num_epochs)


def no_step_error(cfg: Config, epoch_number: int, batches: int, bad_images: int) -> TrainingError:
    """An epoch that consumed batches but took no optimizer step: stop rather than save
    untrained weights as if they were a result."""
    root = resolve(cfg.image_root) if cfg.image_root else f"{resolve(cfg.data_path).parent} (the dataset file's folder)"
    if bad_images:
        why = (f"{bad_images} images were unreadable, leaving no batch with 2 readable pairs; check image_root "
               f"{root}")
    else:
        why = f"no batch had the 2 readable pairs a contrastive step needs (batch_size {cfg.batch_size})"
    return TrainingError(f"epoch {epoch_number} made no optimizer step in {batches} batches: {why}")


# ---- setting the run up --------------------------------------------------------------------------
def setup_run(cfg: Config, world: World, device: torch.device, say, out_dir: Path) -> Run:
    """Everything before the first step in the (locked) output folder: the checkpoint to resume
    from, data, model, the step (optimizer, schedule, scaler, guard), the resumed state, the logs."""
    set_backend_flags(device, deterministic_cpu=True)  # CPU: the same losses to the last digit
    threads = set_cpu_threads(device, cfg.cpu_threads, cfg.num_workers)  # cores - loader workers
    torch.autograd.set_detect_anomaly(cfg.debug)
    resume_path, resumed = open_resume_point(cfg, say)
    if resumed is None and any(out_dir.glob("*.pth")):
        say(f"Warning: {shown(out_dir)} holds checkpoints of an earlier run; this run overwrites them as it "
            f"goes (resume_from: latest continues that run instead)")
    # A resumed run keeps its vocabulary; a new one learns it from the training reports.
    data = prepare_data(cfg, world, device, tokenizer_from_json(resumed["tokenizer"]) if resumed else None, say)
    say("Creating model...")
    for seed in (torch.manual_seed, np.random.seed, random.seed):
        seed(cfg.seed)
    raw_model = place_model(build_model(cfg, data.tokenizer), device, cfg.channels_last)
    if uses_precomputed_text(cfg):  # the features file is read with the model: check the indices now
        check_clip_index_rows(data.splits, raw_model.text_encoder, resolve(cfg.data_path))
    say(f"Model parameters: {count_parameters(raw_model):,}")
    batches_per_epoch = len(data.train_loader)
    total_steps = batches_per_epoch * cfg.num_epochs
    total_steps = min(total_steps, cfg.max_steps) if cfg.max_steps is not None else total_steps
    progress = Progress.from_checkpoint(resumed) if resumed is not None else Progress()
    step = build_train_step(cfg, raw_model, device, total_steps, world=world, say=say, position=progress.position,
                            guard_state=resumed, wrap=lambda model: ddp_wrap(model, cfg, world, device))
    if resumed is not None:
        restore_training_state(resume_path, resumed, cfg, world, batches_per_epoch, step, say)
    if world.rank > 0:  # dropout masks differ between ranks (rank 0 keeps the stream a checkpoint restores)
        torch.manual_seed(cfg.seed + 1000 * world.rank + progress.step)
    resume_step = progress.step if resumed is not None else None
    metrics = MetricsLog(out_dir / METRICS_FILE, resume_step, enabled=world.is_main,
                         mirror=TensorBoardLog(out_dir, resume_step) if cfg.tensorboard and world.is_main else None)
    result = TrainResult(output_dir=out_dir, best_checkpoint=out_dir / "best.pth" if resumed is not None and
                         (out_dir / "best.pth").is_file() else None, last_checkpoint=None,
                         metrics_path=out_dir / METRICS_FILE,
                         stopped_early=bool(cfg.early_stopping_patience) and
                         progress.patience_counter >= cfg.early_stopping_patience,
                         step_checkpoints={s: out_dir / f"step_{s}.pth" for s in sorted(cfg.checkpoint_steps)
                                           if resumed is not None and s <= progress.step
                                           and (out_dir / f"step_{s}.pth").is_file()})
    checkpoints = Checkpointer(cfg, world, step, data.tokenizer, progress, elapsed=TrainClock(progress.train_time))
    # The saved RNG states are restored once the first epoch's iterator exists.
    resume_rng = resumed["rng"] if resumed is not None and world.is_main else None
    val_metrics = ValMetrics.build(cfg, data.splits["val"], data.tokenizer) if world.is_main else None
    return Run(cfg, world, device, say, data, step, progress, checkpoints, metrics, result, total_steps, resume_rng,
               threads, val_metrics=val_metrics, batches_per_epoch=batches_per_epoch, resumed_from=resume_path)


def ddp_wrap(model: nn.Module, cfg: Config, world: World, device: torch.device) -> nn.Module:
    """The model under DistributedDataParallel when the run is distributed, else itself."""
    if not world.distributed:
        return model
    if uses_precomputed_text(cfg):
        # Every rank read the same features file: DDP would otherwise broadcast the whole
        # (non-persistent) feature matrix from rank 0 before every forward.
        saved = set(model.state_dict())
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            model, [name for name, _ in model.named_buffers() if name not in saved])
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
