"""`train(cfg)`: set the run up, `train_one_epoch` until done, `finish_run`.

Each epoch runs the batches through `TrainStep` (step.py), writes a train row every
`log_every` steps, validates every `eval_steps` (validate.py), saves last.pth every
`save_steps` and ends with its validation, summary lines and checkpoints (state.py).
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
from medclip_nb.model.checkpoint import restore_rng_state
from medclip_nb.model.encoders import build_model, count_parameters
from medclip_nb.paths import resolve
from medclip_nb.progress import progress as progress_display
from medclip_nb.runtime import World, amp_dtype, set_backend_flags, start_distributed, stop_distributed
from medclip_nb.text.tokenizers import tokenizer_from_json
from medclip_nb.train.guard import NonfiniteStreak, make_guard
from medclip_nb.train.loaders import TrainData, prepare_data
from medclip_nb.train.state import (
    METRICS_FILE,
    Checkpointer,
    MetricsLog,
    Progress,
    TrainClock,
    TrainResult,
    open_resume_point,
    output_dir,
    restore_training_state,
)
from medclip_nb.train.step import (
    StepDone,
    TrainStep,
    batch_to_device,
    build_optimizer,
    contrastive_loss,
    grad_scaler,
    warmup_cosine_schedule,
)
from medclip_nb.train.tensorboard_log import TensorBoardLog, require_tensorboard
from medclip_nb.train.validate import validation_loss


def train(cfg: Config, *, log: Callable[[str], Any] = print,
          _sync_free_guard: bool | None = None) -> TrainResult:
    """Train a model as `cfg` says and return a TrainResult; `log` receives the console lines
    (rank 0 only). The files written are listed in the package docstring (medclip_nb.train).

    On CPU, the same config and seed give the same losses to the last digit (deterministic
    algorithms are switched on for the call). Raises DataError / ConfigError / CheckpointError
    for bad input, and TrainingError when the loss stays non-finite for
    cfg.max_nonfinite_steps steps in a row (after writing last_good.pth).

    The non-finite guard is sync-free on CUDA (see guard.py): steps are skipped on
    the device, `step` counts attempted steps, the streak is checked at log rows, validations,
    saves and epoch ends, and last_good.pth holds the last good step's weights (every skipped
    step left them unchanged) with the position and RNG of the point where the streak was
    noticed. `_sync_free_guard` forces that mode on (True) or off (False) for tests; None picks it
    from the device.
    """
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    anomaly_before = torch.is_anomaly_enabled()
    world, finished = World(), False
    try:
        world, device = start_distributed(cfg.gpu_id, log)
        say = log if world.is_main else (lambda *_args, **_kw: None)
        run = setup_run(cfg, world, device, say, _sync_free_guard)
        say("Training...")
        while not run.done():
            train_one_epoch(run)
        result = finish_run(run)
        finished = True
        return result
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
        torch.autograd.set_detect_anomaly(anomaly_before)
        stop_distributed(world, finished=finished)


# ---- the run -------------------------------------------------------------------------------------
@dataclass
class Run:
    """What the epochs of one `train()` call share; built by `setup_run`."""

    cfg: Config
    world: World
    device: torch.device
    say: Callable[[str], Any]
    data: TrainData
    step: TrainStep
    eval_model: nn.Module  # without the DDP wrapper
    progress: Progress
    checkpoints: Checkpointer
    metrics: MetricsLog
    result: TrainResult
    total_steps: int
    channels_last: bool
    resume_rng: dict | None  # restored once the first epoch's iterator exists
    last_val: tuple[int, float] = (-1, math.nan)  # (step, loss) of the latest validation
    shapes_shown: bool = True
    augment_generator: torch.Generator | None = None

    @property
    def batches_per_epoch(self) -> int:
        return len(self.data.train_loader)

    def done(self) -> bool:
        return (self.progress.epoch >= self.cfg.num_epochs or self.progress.step >= self.total_steps
                or self.result.stopped_early)

    def save(self, name: str, **position) -> Path:
        """Write `name` in the output folder (see Checkpointer.save)."""
        return self.checkpoints.save(self.result.output_dir / name, **position)


def _total_steps(cfg: Config, batches_per_epoch: int) -> int:
    total_steps = batches_per_epoch * cfg.num_epochs
    return min(total_steps, cfg.max_steps) if cfg.max_steps is not None else total_steps


def _build_model(cfg: Config, data: TrainData, device: torch.device, channels_last: bool, say) -> nn.Module:
    say("Creating model...")
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    model = build_model(cfg, data.tokenizer).to(device)
    if uses_precomputed_text(cfg):  # the features file is read with the model: check the indices now
        check_clip_index_rows(data.splits, model.text_encoder, resolve(cfg.data_path))
    say(f"Model parameters: {count_parameters(model):,}")
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _wrap(raw_model: nn.Module, cfg: Config, world: World, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """(the model the training forward runs, the one validation runs): compiled (cfg.compile),
    the first under DDP when distributed."""
    model: nn.Module = torch.compile(raw_model) if cfg.compile else raw_model
    eval_model = model  # validation runs without the DDP wrapper: no collectives inside
    if world.distributed:
        if uses_precomputed_text(cfg):
            # Every rank read the same features file: DDP would otherwise broadcast the whole
            # (non-persistent) feature matrix from rank 0 before every forward.
            saved = set(model.state_dict())
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                model, [name for name, _ in model.named_buffers() if name not in saved])
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model, eval_model


def _open_run(cfg: Config, world: World, device: torch.device, say):
    """Backend flags, the output folder, and the checkpoint to resume from: (folder, path, state)
    or (folder, None, None)."""
    set_backend_flags(device, deterministic_cpu=True)  # CPU: the same losses to the last digit
    torch.autograd.set_detect_anomaly(cfg.debug)
    if cfg.tensorboard:
        require_tensorboard()  # before the data and the model, not after
    out_dir = output_dir(cfg, world, say)
    resume_path, resumed = open_resume_point(cfg, say)
    if resumed is None and any(out_dir.glob("*.pth")):
        say(f"Warning: {out_dir} holds checkpoints of an earlier run; this run overwrites them as it "
            f"goes (resume_from: latest continues that run instead)")
    return out_dir, resume_path, resumed


def _open_logs(cfg: Config, world: World, out_dir, progress: Progress, resumed: dict | None):
    """(metrics log, result): metrics.jsonl cut back to the resume step, best.pth kept."""
    resume_step = progress.step if resumed is not None else None
    metrics = MetricsLog(out_dir / METRICS_FILE, resume_step, enabled=world.is_main,
                         mirror=TensorBoardLog(out_dir, resume_step) if cfg.tensorboard and world.is_main else None)
    result = TrainResult(output_dir=out_dir, best_checkpoint=None, last_checkpoint=None,
                         metrics_path=out_dir / METRICS_FILE)
    if resumed is not None and (out_dir / "best.pth").is_file():
        result.best_checkpoint = out_dir / "best.pth"
    result.stopped_early = bool(cfg.early_stopping_patience) and \
        progress.patience_counter >= cfg.early_stopping_patience
    return metrics, result


def setup_run(cfg: Config, world: World, device: torch.device, say, sync_free_guard: bool | None) -> Run:
    """Everything before the first step: data, model, loss, optimizer, schedule, the resumed
    state, the guard, the logs."""
    on_gpu = device.type == "cuda"
    # A CPU .item() costs nothing, so the CPU keeps the guard that reads the flag every step.
    sync_free = on_gpu if sync_free_guard is None else sync_free_guard
    channels_last = on_gpu and cfg.channels_last
    out_dir, resume_path, resumed = _open_run(cfg, world, device, say)
    # A resumed run keeps its vocabulary; a new one learns it from the training reports.
    data = prepare_data(cfg, world, device, tokenizer_from_json(resumed["tokenizer"]) if resumed else None, say)
    raw_model = _build_model(cfg, data, device, channels_last, say)
    optimizer = build_optimizer(raw_model, cfg, fused=on_gpu or sync_free)
    total_steps = _total_steps(cfg, len(data.train_loader))
    scheduler = warmup_cosine_schedule(optimizer, round(cfg.warmup * total_steps), total_steps)
    dtype = amp_dtype(device, cfg.use_amp)
    scaler = grad_scaler(dtype)
    progress = Progress()
    if resumed is not None:
        progress = restore_training_state(resume_path, resumed, cfg, world, len(data.train_loader),
                                          raw_model, optimizer, scheduler, scaler, say)
    model, eval_model = _wrap(raw_model, cfg, world, device)
    # Dropout masks differ between ranks (rank 0 keeps the stream a checkpoint restores).
    if world.rank > 0:
        torch.manual_seed(cfg.seed + 1000 * world.rank + progress.step)
    metrics, result = _open_logs(cfg, world, out_dir, progress, resumed)
    guard = make_guard(sync_free, raw_model, progress, cfg.max_nonfinite_steps, say, device)
    step = TrainStep(model, raw_model, contrastive_loss(cfg), optimizer, scheduler, scaler, guard, amp_dtype=dtype,
                     grad_clip=cfg.grad_clip, world=world, say=say, debug_steps=3 if cfg.debug else 0)
    checkpoints = Checkpointer(cfg, world, raw_model, optimizer, scheduler, scaler, data.tokenizer, progress,
                               elapsed=TrainClock(progress.train_time))
    return Run(cfg, world, device, say, data, step, eval_model=eval_model,
               progress=progress, checkpoints=checkpoints, metrics=metrics, result=result, total_steps=total_steps,
               channels_last=channels_last,
               # The saved RNG states are restored once the first epoch iterator exists, at the
               # exact point of the stopped run's stream.
               resume_rng=resumed["rng"] if resumed is not None and world.is_main else None,
               shapes_shown=not cfg.debug,
               augment_generator=torch.Generator(device) if data.augment is not None else None)


def finish_run(run: Run) -> TrainResult:
    """Close the logs; the TrainResult of the run."""
    run.metrics.close()
    result, progress = run.result, run.progress
    result.history = run.metrics.rows
    result.best_val_loss = progress.best_val_loss
    result.steps = progress.step
    result.epochs_completed = progress.epoch
    result.bad_images = int(run.world.all_reduce(torch.tensor(progress.bad_image_count, device=run.device)).item())
    return result


# ---- an epoch ------------------------------------------------------------------------------------
@dataclass
class Window:
    """The steps since the last train row, whose mean loss the row holds."""

    loss: torch.Tensor  # summed on the device
    start: float
    steps: int = 0
    skipped: int = 0  # of them skipped on the device (sync-free guard)


@dataclass
class Epoch:
    number: int  # 1-based
    batches: Any  # the train loader's iterator
    bar: Any
    loss: torch.Tensor  # summed on the device since the last flush: no host sync per step
    window: Window
    batches_seen: int = 0
    usable_batches: int = 0


def train_one_epoch(run: Run) -> None:
    """One pass over the training batches (the rest of one, on resume; up to max_steps), then
    the epoch's end. A streak of non-finite losses ends the run here, with last_good.pth."""
    epoch = _start_epoch(run)
    try:
        for batch in epoch.batches:
            done = _train_on_batch(run, epoch, batch)
            if done is not None and _after_step(run, epoch, done):
                break
        epoch.bar.close()
        _end_epoch(run, epoch)
    except NonfiniteStreak as streak:
        epoch.bar.close()
        raise _stop_for_nonfinite(run, epoch, streak) from None


def _start_epoch(run: Run) -> Epoch:
    cfg, progress, data = run.cfg, run.progress, run.data
    data.train_sampler.set_epoch(progress.epoch)
    if progress.batch_in_epoch:  # resuming mid-epoch: skip what the stopped run consumed
        data.train_sampler.set_start(progress.batch_in_epoch * cfg.batch_size)
    else:
        progress.epoch_loss_sum, progress.epoch_loss_steps, progress.epoch_bad_images = 0.0, 0, 0
    batches = iter(data.train_loader)
    if run.resume_rng is not None:
        restore_rng_state(run.resume_rng)
        run.resume_rng = None
    run.step.model.train()
    number = progress.epoch + 1
    bar = progress_display(total=run.batches_per_epoch, initial=progress.batch_in_epoch,
                           desc=f"Epoch {number}/{cfg.num_epochs}", disable=not run.world.is_main)
    return Epoch(number, batches, bar, loss=torch.zeros((), device=run.device),
                 window=Window(torch.zeros((), device=run.device), time.perf_counter()))


def _usable(run: Run, size: int, epoch_number: int) -> bool:
    """Whether a batch of `size` readable pairs makes a step (on every rank)."""
    if run.world.distributed:
        # All ranks take or skip a step together, and the loss gathers equal-sized batches.
        sizes = run.world.all_reduce(torch.tensor([size, -size], device=run.device), dist.ReduceOp.MAX).tolist()
        usable = -sizes[1] >= 2 and sizes[0] == -sizes[1]
    else:
        usable = size >= 2
    if not usable:
        run.say(f"Skipping batch {run.progress.batch_in_epoch} of epoch {epoch_number}: "
                f"{size} readable image(s), a contrastive step needs at least 2")
    return usable


def _with_unpaired(run: Run, batch: dict) -> tuple[dict, dict]:
    """(the batch, the loss's extra arguments): the text rows' own labels (sentence labels) and
    image-only / text-only items (data/unpaired.py)."""
    loss_args = {"text_labels": batch["text_labels"]} if "text_labels" in batch else {}
    if run.data.unpaired is not None:
        progress = run.progress
        batch = run.data.unpaired.extend(batch, progress.epoch, progress.batch_in_epoch - 1)
        progress.epoch_bad_images += batch["n_unpaired_skipped"]
        progress.bad_image_count += batch["n_unpaired_skipped"]
        loss_args = {"text_labels": batch["text_labels"], "num_pairs": batch["num_pairs"]}
    return batch, loss_args


def _train_on_batch(run: Run, epoch: Epoch, batch: dict) -> StepDone | None:
    """Count the batch and take its step; None when it made none (too few pairs, or skipped)."""
    cfg, progress = run.cfg, run.progress
    epoch.batches_seen += 1
    progress.batch_in_epoch += 1
    epoch.bar.update(1)
    progress.epoch_bad_images += batch["n_skipped"]
    progress.bad_image_count += batch["n_skipped"]
    if not run.shapes_shown:
        run.say(f"Batch shapes: images={tuple(batch['pixel_values'].shape)}, "
                f"text={tuple(batch['input_ids'].shape)}")
        run.shapes_shown = True
    if not _usable(run, batch["pixel_values"].shape[0], epoch.number):
        return None
    epoch.usable_batches += 1
    batch, loss_args = _with_unpaired(run, batch)
    if run.data.augment is not None:
        # Seeded by the batch's position: the same draws after a resume, no state to save.
        position = (cfg.seed, run.world.rank, progress.epoch, progress.batch_in_epoch)
        run.augment_generator.manual_seed(hash(position) % 2**63)  # int tuples hash the same in every process
    tensors = batch_to_device(batch, run.device, run.channels_last, run.data.augment, run.augment_generator)
    done = run.step(*tensors, **loss_args)
    if done is not None:
        progress.step += 1
        epoch.loss += done.loss
        epoch.window.loss += done.loss
        epoch.window.steps += 1
    return done


def _after_step(run: Run, epoch: Epoch, done: StepDone) -> bool:
    """The train row, validation and last.pth that fall on this step; True: the run is done."""
    cfg, step = run.cfg, run.progress.step
    # The sync-free guard's counts are read (and its streak checked) where the loop syncs
    # anyway: log rows, validation and saves.
    if any(step % every == 0 for every in (cfg.log_every, cfg.eval_steps, cfg.save_steps)):
        epoch.window.skipped += run.step.guard.settle()
    if step % cfg.log_every == 0:
        _write_train_row(run, epoch, done)
    if step % cfg.eval_steps == 0:
        validate(run, epoch.number)
    if step % cfg.save_steps == 0:
        _flush_epoch_loss(run, epoch)
        run.result.last_checkpoint = run.save("last.pth")
    return run.result.stopped_early or step >= run.total_steps


def _flush_epoch_loss(run: Run, epoch: Epoch) -> None:
    """The device-side loss sum into progress (one host sync), for a checkpoint or the summary."""
    run.progress.epoch_loss_sum += epoch.loss.item()
    epoch.loss.zero_()


def _write_train_row(run: Run, epoch: Epoch, done: StepDone) -> None:
    """The train row of the window since the last one: the mean loss of its good steps."""
    world, window = run.world, epoch.window
    now = time.perf_counter()
    good_steps = window.steps - window.skipped
    window_total = world.all_reduce(window.loss).item()
    mean_loss = window_total / (good_steps * world.world_size) if good_steps else math.nan
    scale = float(done.logit_scale)
    pairs_per_s = window.steps * (run.cfg.batch_size * world.world_size) / max(now - window.start, 1e-9)
    row = {"step": run.progress.step, "epoch": epoch.number, "split": "train", "loss": mean_loss, "lr": done.lr,
           "temperature": 1 / scale, "logit_scale": scale, "pairs_per_s": pairs_per_s,
           "time": run.checkpoints.elapsed()}
    run.metrics.write({**row, **run.step.guard.row_fields()})
    epoch.bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{done.lr:.2e}", pairs_s=f"{pairs_per_s:.0f}", refresh=False)
    window.loss.zero_()
    window.steps, window.skipped, window.start = 0, 0, now


def validate(run: Run, epoch_number: int) -> None:
    """Validation loss now: a metrics row, best.pth on a new best, the patience counter."""
    cfg, progress, data = run.cfg, run.progress, run.data
    if data.val_loader is None:
        return
    started = time.perf_counter()
    val_loss, scale, scored = validation_loss(run.eval_model, data.val_loader, run.step.criterion, run.device,
                                              run.step.amp_dtype, run.world, run.channels_last)
    if not scored:
        run.say(f"Warning: validation at step {progress.step} had no usable batch (each needs 2 readable pairs; "
                f"eval_batch_size {cfg.eval_batch_size}); its loss is not a number and best.pth is not updated")
    seconds = max(time.perf_counter() - started, 1e-9)
    run.last_val = (progress.step, val_loss)
    run.metrics.write({"step": progress.step, "epoch": epoch_number, "split": "val", "loss": val_loss,
                       "lr": run.step.optimizer.param_groups[0]["lr"], "temperature": 1 / scale if scale else None,
                       "logit_scale": scale, "pairs_per_s": len(data.splits["val"]) / seconds,
                       "time": run.checkpoints.elapsed()})
    if val_loss < progress.best_val_loss:
        progress.best_val_loss = val_loss
        progress.patience_counter = 0
        run.result.best_checkpoint = run.save("best.pth")
    else:
        progress.patience_counter += 1
    if cfg.early_stopping_patience and progress.patience_counter >= cfg.early_stopping_patience:
        run.result.stopped_early = True


# ---- the end of an epoch -------------------------------------------------------------------------
def _end_epoch(run: Run, epoch: Epoch) -> None:
    """The epoch's (or, stopped mid-epoch, the run's) end: its validation unless one just ran,
    the summary lines, checkpoint_epoch_N.pth when the epoch is complete, last.pth."""
    progress = run.progress
    if epoch.batches_seen and not epoch.usable_batches:
        run.metrics.close()
        raise _no_step_error(run.cfg, epoch.number, epoch.batches_seen, progress.epoch_bad_images)
    epoch.window.skipped += run.step.guard.settle()
    _flush_epoch_loss(run, epoch)
    if run.last_val[0] != progress.step:
        validate(run, epoch.number)
    _say_epoch_summary(run)
    if progress.batch_in_epoch >= run.batches_per_epoch:
        progress.epoch += 1
        progress.batch_in_epoch = 0
        run.say(f"Saved checkpoint: {run.save(f'checkpoint_epoch_{epoch.number}.pth')}")
    run.result.last_checkpoint = run.save("last.pth")
    if progress.batch_in_epoch:  # stopped mid-epoch (max_steps): say where the state went
        run.say(f"Saved checkpoint: {run.result.last_checkpoint}")
    if run.result.stopped_early:
        run.say(f"Early stopping: no lower val loss in {progress.patience_counter} validations")


def _say_epoch_summary(run: Run) -> None:
    progress = run.progress
    totals = run.world.all_reduce(torch.tensor([progress.epoch_loss_sum, progress.epoch_loss_steps,
                                                progress.epoch_bad_images], device=run.device, dtype=torch.float64))
    summary = f"Average loss: {totals[0].item() / max(totals[1].item(), 1):.4f}"
    if run.last_val[0] == progress.step and not math.isnan(run.last_val[1]):
        summary += f" | val loss: {run.last_val[1]:.4f}"
    run.say(summary)
    run.say(f"Skipped {int(totals[2].item())} unreadable images")


def _no_step_error(cfg: Config, epoch_number: int, batches: int, bad_images: int) -> TrainingError:
    """An epoch that consumed batches but took no optimizer step: stop rather than save
    untrained weights as if they were a result."""
    root = resolve(cfg.image_root) if cfg.image_root else f"{resolve(cfg.data_path).parent} (the dataset file's folder)"
    if bad_images:
        why = (f"{bad_images} images were unreadable, leaving no batch with 2 readable pairs; check image_root "
               f"{root}")
    else:
        why = f"no batch had the 2 readable pairs a contrastive step needs (batch_size {cfg.batch_size})"
    return TrainingError(f"epoch {epoch_number} made no optimizer step in {batches} batches: {why}")


def _stop_for_nonfinite(run: Run, epoch: Epoch, streak: NonfiniteStreak) -> TrainingError:
    """Write last_good.pth (at the streak's start position, or the current one) and say why."""
    if streak.position is None:  # the current state: the sync-free guard stops after the skipped steps
        _flush_epoch_loss(run, epoch)
    run.metrics.close()
    good_path = run.save("last_good.pth", **(streak.position or {}))
    return TrainingError(f"{streak}; the last good state is in {good_path} ({streak.note}try a lower lr or "
                         f"check the data)")
