"""`train(cfg)`: the one training loop, used by the CLI, the notebooks and torchrun.

A plain loop in the style of nanoGPT: data -> model -> AdamW with a warmup + cosine schedule
-> steps with AMP on GPU, gradient clipping, a non-finite-loss guard, periodic validation,
early stopping, atomic checkpoints and a JSON Lines metrics log.

Resuming is exact: a checkpoint stores the sampler position (`epoch`, `batch_in_epoch`), the
RNG states and everything the optimizer, schedule and grad scaler need, so on CPU a run killed
after a checkpoint and resumed ends with bitwise the same parameters as one never stopped.

Non-finite losses: a step whose loss (or, without the fp16 grad scaler, gradient norm) is not
finite changes nothing (weights, optimizer state, BatchNorm statistics); after
`max_nonfinite_steps` of them in a row the run stops with a TrainingError. On the CPU the guard
reads the flag on the host every step. On CUDA it is sync-free: the fused AdamW kernel skips
the step on the device, the counts stay on the device and are read only where the loop syncs
anyway (log rows, validation, checkpoint saves, epoch ends), so there `step` counts attempted
steps (skipped ones included, the schedule advances over them) and a run of non-finite losses is
noticed at the next of those points.

Distributed data parallel runs start under torchrun (`WORLD_SIZE` > 1): one process per GPU,
each with its share of every epoch; only rank 0 prints, logs and writes checkpoints.

Files in `model_save_path`:
    checkpoint_epoch_N.pth  after each complete epoch (the seed script's name)
    last.pth                after each epoch, every `save_steps` steps and at the end (resumable)
    best.pth                at each new lowest validation loss
    last_good.pth           only when too many non-finite losses in a row stopped the run: the
                            weights of the last good step; position and RNG at the first
                            skipped step (CPU guard) or where the streak was noticed (CUDA)
    metrics.jsonl           one JSON object per line: step, epoch, split ('train' rows every
                            `log_every` steps, averaged over them; 'val' rows at each validation),
                            loss, lr, temperature (1 / logit_scale), logit_scale, pairs_per_s,
                            time (seconds of training, summed over resumes); with the sync-free
                            guard (CUDA) train rows also hold nonfinite_skipped, the steps of
                            the row's window that were skipped
    tensorboard/            with `tensorboard: true`: the same rows as TensorBoard scalars
                            (medclip_nb/tensorboard_log.py); metrics.jsonl stays the record
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, NoReturn

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from medclip_nb.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    remove_stale_temp_files,
    resolve_resume,
    restore_rng_state,
    save_checkpoint,
)
from medclip_nb.checkpoint_check import RESUME_PARTS, check_checkpoint
from medclip_nb.config import Config, ConfigError
from medclip_nb.errors import CheckpointError, DataError, TrainingError, os_error_reason
from medclip_nb.paths import resolve
from medclip_nb.progress import progress as progress_display
from medclip_nb.runtime import World, set_backend_flags, start_distributed, stop_distributed
from medclip_nb.runtime import amp_dtype as choose_amp_dtype
from medclip_nb.runtime import autocast as autocast_context
from medclip_nb.train.tensorboard_log import TensorBoardLog, require_tensorboard

METRICS_FILE = "metrics.jsonl"
# Config keys that may differ on resume without it being worth a note.
_RESUME_QUIET_KEYS = {"resume_from", "force"}


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


# ---- pure pieces ---------------------------------------------------------------------------------
def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate multiplier at optimizer step `step`: rises linearly from 0 to 1 over
    `warmup_steps`, then follows a half cosine down to 0 at `total_steps` (0 afterwards)."""
    if step < warmup_steps:
        return step / warmup_steps
    if step >= total_steps:
        return 0.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _no_weight_decay(name: str, param: nn.Parameter) -> bool:
    # Biases, norm weights (all 1-D) and the scalar temperature / SigLIP bias are not decayed:
    # shrinking them towards 0 only fights the normalisation or the learned temperature.
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim < 2 or leaf in ("bias", "logit_scale", "logit_bias")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: [decayed weights (conv, linear, embeddings), everything else
    with weight_decay 0]. Each group also lists its parameter names under 'names'."""
    decay: dict[str, nn.Parameter] = {}
    no_decay: dict[str, nn.Parameter] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if _no_weight_decay(name, param) else decay)[name] = param
    return [
        {"params": list(decay.values()), "weight_decay": weight_decay, "names": list(decay)},
        {"params": list(no_decay.values()), "weight_decay": 0.0, "names": list(no_decay)},
    ]


# ---- sync-free non-finite guard (CUDA) -----------------------------------------------------------
def _step_unless(bad: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """`scaler.step(optimizer)`, skipped on the device when the bool scalar `bad` is set, without a
    host sync. Needs a fused optimizer: given `found_inf` = 1 its kernel leaves parameters and
    moments as they are and rolls the step counter back. With the scaler enabled, `unscale_`
    must have been called for this step."""
    flag = bad.float()
    if scaler.is_enabled():
        # scaler.step hands a fused optimizer its own found_inf (inf/NaN gradients) and would
        # overwrite ours: fold the flag into the scaler's, so update() also backs the scale off.
        # A max, not a sum: the kernel rolls the step counter back by found_inf itself.
        for found_inf in scaler._found_inf_per_device(optimizer).values():
            found_inf.copy_(torch.maximum(found_inf, flag.to(found_inf.device)))
        scaler.step(optimizer)
        return
    optimizer.found_inf = flag
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf


class _DeviceNonfiniteCounts:
    """The sync-free guard's counters, kept on the device; `settle()` reads them with one host
    sync, where the loop syncs anyway."""

    def __init__(self, device: torch.device, streak: int = 0):
        self.streak = torch.tensor(streak, device=device, dtype=torch.int64)  # skipped steps in a row
        self.unsettled = torch.zeros(2, device=device, dtype=torch.int64)  # [skipped, good] steps

    def record(self, bad: torch.Tensor) -> None:
        """Count one attempted step; `bad` (a bool scalar) says whether it was skipped."""
        self.streak.add_(1).mul_(bad)  # one more on a skipped step, back to 0 on a good one
        self.unsettled.add_(torch.stack([bad, ~bad]))

    def settle(self) -> tuple[int, int, int]:
        """(streak, skipped, good): the current streak and the steps recorded since the last
        settle, which start again from 0."""
        streak, skipped, good = torch.cat([self.streak.view(1), self.unsettled]).tolist()
        self.unsettled.zero_()
        return streak, skipped, good


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
class _Progress:
    """Counters that a checkpoint stores and a resume restores."""

    epoch: int = 0  # completed epochs = index of the epoch in progress
    step: int = 0  # optimizer steps taken
    batch_in_epoch: int = 0  # batches of the current epoch consumed (sampler position / batch size)
    best_val_loss: float = math.inf
    patience_counter: int = 0
    bad_image_count: int = 0
    nonfinite_total: int = 0
    nonfinite_streak: int = 0
    epoch_loss_sum: float = 0.0  # this epoch's steps so far, for its "Average loss"
    epoch_loss_steps: int = 0
    epoch_bad_images: int = 0
    train_time: float = 0.0  # seconds of training before this process started

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_checkpoint(cls, state: dict) -> "_Progress":
        return cls(**{f.name: state[f.name] for f in fields(cls) if f.name in state})


def _config_differences(saved: dict, current: dict) -> list[str]:
    return [
        f"{k} {saved.get(k)!r} -> {current[k]!r}"
        for k in current
        if k not in _RESUME_QUIET_KEYS and k in saved and saved[k] != current[k]
    ]


def _validation_loss(model, loader, criterion, device, autocast, world: World, channels_last: bool):
    """Mean loss over the validation batches (of all ranks), the current logit scale and the
    number of batches scored (0: no batch had the 2 readable pairs a contrastive loss needs)."""
    from medclip_nb.losses import LABEL_LOSS_KINDS, clip_loss, siglip_loss

    model.eval()
    totals = torch.zeros(2, device=device, dtype=torch.float64)
    scale = torch.zeros((), device=device)
    with torch.no_grad():
        for batch in loader:
            if batch["pixel_values"].shape[0] < 2:
                continue
            pixel_values, input_ids, attention_mask, labels = _to_device(batch, device, channels_last)
            with autocast():
                outputs = model(pixel_values, input_ids, attention_mask)
            # Each rank scores its own batches alone: validation shards need not be the same
            # size on every rank, which the gathering training loss requires.
            image, text = outputs["image_embeds"].float(), outputs["text_embeds"].float()
            scale = outputs["logit_scale"].float()
            if criterion.kind == "siglip":
                loss, _ = siglip_loss(image, text, scale, outputs["logit_bias"].float())
            elif criterion.kind in LABEL_LOSS_KINDS:
                loss, _ = criterion.label_loss(image, text, scale, labels, labels)
            else:
                loss, _ = clip_loss(image, text, scale)
            totals += torch.stack([loss.double(), torch.ones((), device=device, dtype=torch.float64)])
    model.train()
    totals = world.all_reduce(totals)
    mean = (totals[0] / totals[1]).item() if totals[1] > 0 else math.nan
    return mean, float(scale), int(totals[1].item())


def _to_device(batch: dict, device: torch.device, channels_last: bool, augment=None, generator=None):
    """The batch's tensors on `device`; uint8 store images are augmented there by `augment`."""
    if augment is not None:
        from medclip_nb.data.gpu_augment import augment_on_device

        pixel_values = augment_on_device(batch, augment, device, generator)
    else:
        pixel_values = batch["pixel_values"].to(device, non_blocking=True)
    if channels_last and pixel_values.ndim == 4:
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
    return (
        pixel_values,
        batch["input_ids"].to(device, non_blocking=True),
        batch["attention_mask"].to(device, non_blocking=True),
        batch["labels"].to(device, non_blocking=True),
    )


# ---- the training function -----------------------------------------------------------------------
def train(cfg: Config, *, log: Callable[[str], Any] = print,
          _sync_free_guard: bool | None = None) -> TrainResult:
    """Train a model as `cfg` says and return a TrainResult; `log` receives the console lines
    (rank 0 only). The files written are listed in the module docstring.

    On CPU, the same config and seed give the same losses to the last digit (deterministic
    algorithms are switched on for the call). Raises DataError / ConfigError / CheckpointError
    for bad input, and TrainingError when the loss stays non-finite for
    cfg.max_nonfinite_steps steps in a row (after writing last_good.pth).

    The non-finite guard is sync-free on CUDA (see the module docstring): steps are skipped on
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
        result = _train(cfg, world, device, say, _sync_free_guard)
        finished = True
        return result
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
        torch.autograd.set_detect_anomaly(anomaly_before)
        stop_distributed(world, finished=finished)


@dataclass
class _Data:
    tokenizer: Any
    splits: dict
    train_sampler: Any
    train_loader: Any
    val_loader: Any  # None without a validation split
    augment: Any  # gpu_augment.BatchAugment when training batches hold uint8 store images
    unpaired: Any = None  # unpaired.UnpairedBatches when cfg.unpaired_sources is set


def _split_size_line(dataset, why: str = "debug subset") -> str:
    """'64 samples', or '64 of 90 samples (debug subset)' when --debug (or train_fraction, `why`)
    keeps only some of them."""
    full = getattr(dataset, "full_size", len(dataset))
    if full == len(dataset):
        return f"{len(dataset)} samples"
    return f"{len(dataset)} of {full} samples ({why})"


def _prepare_data(cfg: Config, world: World, device: torch.device, tokenizer, say) -> _Data:
    """Datasets, tokenizer (learned from the training reports unless given) and loaders;
    prints the dataset and loader sizes. With an image store on a GPU (and cfg.gpu_augment)
    the loaders only gather uint8 rows and the training augmentation runs on the GPU."""
    from medclip_nb.data import build_datasets, EpochSampler, make_collate, make_loader
    from medclip_nb.data.build import _truncation_warning as truncation_warning
    from medclip_nb.data.store import find_store
    from medclip_nb.tokenizers import build_tokenizer

    say(f"Loading dataset: {resolve(cfg.data_path)}")
    store = find_store(cfg)
    augment = None
    if store is not None and device.type == "cuda" and cfg.gpu_augment:
        from medclip_nb.data.gpu_augment import BatchAugment

        augment = BatchAugment(cfg.image_size, cfg.augment, train=True)
    splits, records, warnings = build_datasets(cfg, tokenizer, store=store, raw_uint8=augment is not None)
    if tokenizer is None:
        train_reports = [r["report"] for r in records["train"]]
        tokenizer = build_tokenizer(cfg, train_reports)
        warnings.append(truncation_warning(tokenizer, train_reports))
    for warning in filter(None, warnings):
        say(f"Warning: {warning}")
    say("Dataset loaded:")
    for name in ("train", "val", "test"):
        fraction = name == "train" and cfg.train_fraction < 1
        why = ("train_fraction " + format(cfg.train_fraction, "g") + (", debug subset" if cfg.debug else "")
               if fraction else "debug subset")
        say(f"  {name}: {_split_size_line(splits[name], why)}")
    if store is not None:
        say(f"Images from the store {store.folder} where it has them"
            + (", augmented on the GPU" if augment is not None else ""))

    collate = make_collate(tokenizer)
    train_set, val_set = splits["train"], splits["val"]
    train_sampler = EpochSampler(len(train_set), seed=cfg.seed, shuffle=True,
                                 rank=world.rank, world_size=world.world_size, drop_last=True)
    train_loader = make_loader(train_set, cfg, train=True, sampler=train_sampler, collate_fn=collate)
    val_loader = None
    if len(val_set) > 0:
        # Under DDP each rank validates its own share.
        val_sampler = (EpochSampler(len(val_set), seed=cfg.seed, shuffle=False, rank=world.rank,
                                    world_size=world.world_size) if world.distributed else None)
        val_loader = make_loader(val_set, cfg, train=False, sampler=val_sampler,
                                 batch_size=cfg.eval_batch_size, collate_fn=collate)
    say("Data loaders:")
    say(f"  train batches: {len(train_loader)}")
    say(f"  val batches: {len(val_loader) if val_loader is not None else 0}")
    say(f"  test batches: {math.ceil(len(splits['test']) / cfg.eval_batch_size)}")
    if len(train_loader) == 0:
        raise DataError(
            f"{resolve(cfg.data_path)}: the train split has {len(train_set)} samples, fewer than one batch "
            f"of batch_size {cfg.batch_size} per process"
        )
    # ---- unpaired data (unpaired.py): image-only / text-only items appended to each step ----
    from medclip_nb.data.unpaired import build_unpaired

    unpaired = build_unpaired(cfg, records, tokenizer, data_path=resolve(cfg.data_path), store=store,
                              raw_uint8=augment is not None, world_size=world.world_size)
    if unpaired is not None:
        sizes = ", ".join(f"{name} {len(source)}" for name, source in unpaired.sources.items())
        say(f"  unpaired: {sizes}; {cfg.unpaired_per_batch} of each per step")
    return _Data(tokenizer, splits, train_sampler, train_loader, val_loader, augment, unpaired)


def _open_resume_point(cfg: Config, say) -> tuple[Path | None, dict | None]:
    """The checkpoint `cfg.resume_from` names, loaded and checked, or (None, None)."""
    path = resolve_resume(cfg.resume_from, cfg.model_save_path, force=cfg.force, log=say)
    if path is None:
        if cfg.resume_from:
            say(f"No checkpoint in {resolve(cfg.model_save_path)} to resume from: starting a new run")
        return None, None
    return path, check_checkpoint(load_checkpoint(path), path, RESUME_PARTS)


def _output_dir(cfg: Config, world: World, say) -> Path:
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


def _check_resume_position(path: Path, state: dict, cfg: Config, batches_per_epoch: int) -> None:
    """A mid-epoch position past the end of this dataset's epoch cannot be resumed (it was
    saved on a larger dataset); checked before anything (metrics.jsonl included) is touched."""
    if state["batch_in_epoch"] > batches_per_epoch:
        raise CheckpointError(
            f"{path}: resume position batch {state['batch_in_epoch']} of epoch {state['epoch'] + 1} is past the end "
            f"of an epoch of this dataset ({batches_per_epoch} batches of {cfg.batch_size}); resume from an epoch "
            f"checkpoint, or with the dataset it was saved with")


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


def _restore(path: Path, state: dict, cfg: Config, world: World, batches_per_epoch: int,
             model: nn.Module, optimizer, scheduler, scaler, say) -> _Progress:
    """Load weights, optimizer, schedule and scaler states; returns the saved progress."""
    saved_cfg = state["config"]
    samples_per_step = saved_cfg.get("batch_size"), state.get("world_size", 1)
    if state["batch_in_epoch"] and samples_per_step != (cfg.batch_size, world.world_size):
        raise CheckpointError(
            f"{path}: a mid-epoch checkpoint of a run with batch_size {samples_per_step[0]} on "
            f"{samples_per_step[1]} process(es); resume it with the same, or from an epoch checkpoint"
        )
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        reason = (str(e).strip() or type(e).__name__).splitlines()[0]
        raise CheckpointError(f"{path}: does not fit the model of this config ({reason})") from None
    scheduler.load_state_dict(state["scheduler"])
    if scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    _check_resume_position(path, state, cfg, batches_per_epoch)
    progress = _Progress.from_checkpoint(state)
    say(f"Resuming from {path}: epoch {progress.epoch + 1}, step {progress.step}, "
        f"batch {progress.batch_in_epoch} of {batches_per_epoch}")
    differences = _config_differences(saved_cfg, cfg.to_dict())
    if differences:
        say("Settings changed since the checkpoint: " + "; ".join(differences))
    return progress


def _train(cfg: Config, world: World, device: torch.device, say, sync_free_guard: bool | None) -> TrainResult:
    from medclip_nb.data import check_clip_index_rows, uses_precomputed_text
    from medclip_nb.losses import ContrastiveLoss
    from medclip_nb.models import build_model, count_parameters
    from medclip_nb.tokenizers import tokenizer_from_json

    on_gpu = device.type == "cuda"
    # A CPU .item() costs nothing, so the CPU keeps the guard that reads the flag every step.
    sync_free = on_gpu if sync_free_guard is None else sync_free_guard
    channels_last = on_gpu and cfg.channels_last
    set_backend_flags(device, deterministic_cpu=True)  # CPU: the same losses to the last digit
    torch.autograd.set_detect_anomaly(cfg.debug)
    if cfg.tensorboard:
        require_tensorboard()  # before the data and the model, not after
    out_dir = _output_dir(cfg, world, say)
    resume_path, resumed = _open_resume_point(cfg, say)
    if resumed is None and any(out_dir.glob("*.pth")):
        say(f"Warning: {out_dir} holds checkpoints of an earlier run; this run overwrites them as it "
            f"goes (resume_from: latest continues that run instead)")
    # A resumed run keeps its vocabulary; a new one learns it from the training reports.
    data = _prepare_data(cfg, world, device, tokenizer_from_json(resumed["tokenizer"]) if resumed else None, say)
    tokenizer, batches_per_epoch = data.tokenizer, len(data.train_loader)

    # ---- model, loss, optimizer, schedule ----
    say("Creating model...")
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    raw_model = build_model(cfg, tokenizer).to(device)
    if uses_precomputed_text(cfg):  # the features file is read with the model: check the indices now
        check_clip_index_rows(data.splits, raw_model.text_encoder, resolve(cfg.data_path))
    say(f"Model parameters: {count_parameters(raw_model):,}")
    if channels_last:
        raw_model = raw_model.to(memory_format=torch.channels_last)
    criterion = ContrastiveLoss(cfg.loss, cfg.uncertain_label_value, cfg.medclip_cosine_no_finding)
    # Fused on the GPU, and always for the sync-free guard: only the fused kernel skips a step on
    # the device (optimizer.found_inf).
    optimizer = torch.optim.AdamW(param_groups(raw_model, cfg.weight_decay), lr=cfg.lr,
                                  **({"fused": True} if on_gpu or sync_free else {}))
    total_steps = batches_per_epoch * cfg.num_epochs
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    warmup_steps = round(cfg.warmup * total_steps)
    # A lambda, not a function object: LambdaLR then keeps it out of its state dict.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup_steps, total_steps))
    amp_dtype = choose_amp_dtype(device, cfg.use_amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    def autocast():
        return autocast_context(amp_dtype)

    progress = _Progress()
    if resumed is not None:
        progress = _restore(resume_path, resumed, cfg, world, batches_per_epoch,
                            raw_model, optimizer, scheduler, scaler, say)

    model: nn.Module = torch.compile(raw_model) if cfg.compile else raw_model
    eval_model = model  # validation runs without the DDP wrapper: no collectives inside
    if world.distributed:
        if uses_precomputed_text(cfg):
            # Every rank read the same features file: DDP would otherwise broadcast the whole
            # (non-persistent) feature matrix from rank 0 before every forward.
            saved = set(model.state_dict())
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                model, [name for name, _ in model.named_buffers() if name not in saved])
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if on_gpu else None)
    # Dropout masks differ between ranks (rank 0 keeps the stream a checkpoint restores).
    if world.rank > 0:
        torch.manual_seed(cfg.seed + 1000 * world.rank + progress.step)

    resume_step = progress.step if resumed is not None else None
    metrics = MetricsLog(out_dir / METRICS_FILE, resume_step, enabled=world.is_main,
                         mirror=TensorBoardLog(out_dir, resume_step) if cfg.tensorboard and world.is_main else None)
    result = TrainResult(output_dir=out_dir, best_checkpoint=None, last_checkpoint=None,
                         metrics_path=out_dir / METRICS_FILE)
    best_path, last_path = out_dir / "best.pth", out_dir / "last.pth"
    if resumed is not None and best_path.is_file():
        result.best_checkpoint = best_path
    params = [p for p in raw_model.parameters() if p.requires_grad]
    # Persistent buffers (BatchNorm running statistics) as of the last good step: a skipped
    # non-finite step puts them back, so it leaves no trace in the model.
    saved_keys = set(raw_model.state_dict())
    buffers = [b for name, b in raw_model.named_buffers() if name in saved_keys]
    good_buffers = [b.detach().clone() for b in buffers]
    start_time = time.perf_counter()

    def elapsed() -> float:
        return progress.train_time + time.perf_counter() - start_time

    def save(path: Path, rng: dict | None = None, **position) -> Path:
        """Write everything a resume needs; `position`/`rng` override the current ones."""
        if world.is_main:
            save_checkpoint({
                "model": raw_model.state_dict(),  # unwrapped: no 'module.' / '_orig_mod.' prefixes
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "config": cfg.to_dict(),
                "tokenizer": tokenizer.to_json(),
                "rng": rng if rng is not None else capture_rng_state(),
                "world_size": world.world_size,
                **progress.as_dict(),
                "train_time": elapsed(),
                **position,
            }, path)
        return path

    last_val = (-1, math.nan)  # (step, loss) of the latest validation

    def validate(epoch_number: int) -> None:
        """Validation loss now: a metrics row, best.pth on a new best, the patience counter."""
        nonlocal last_val
        if data.val_loader is None:
            return
        started = time.perf_counter()
        val_loss, scale, scored = _validation_loss(eval_model, data.val_loader, criterion, device, autocast, world,
                                                   channels_last)
        if not scored:
            say(f"Warning: validation at step {progress.step} had no usable batch (each needs 2 readable pairs; "
                f"eval_batch_size {cfg.eval_batch_size}); its loss is not a number and best.pth is not updated")
        seconds = max(time.perf_counter() - started, 1e-9)
        last_val = (progress.step, val_loss)
        metrics.write({"step": progress.step, "epoch": epoch_number, "split": "val", "loss": val_loss,
                       "lr": optimizer.param_groups[0]["lr"], "temperature": 1 / scale if scale else None,
                       "logit_scale": scale, "pairs_per_s": len(data.splits["val"]) / seconds, "time": elapsed()})
        if val_loss < progress.best_val_loss:
            progress.best_val_loss = val_loss
            progress.patience_counter = 0
            result.best_checkpoint = save(best_path)
        else:
            progress.patience_counter += 1
        if cfg.early_stopping_patience and progress.patience_counter >= cfg.early_stopping_patience:
            result.stopped_early = True

    # The saved RNG states are restored once the first epoch iterator exists, at the exact
    # point of the stopped run's stream.
    resume_rng = resumed["rng"] if resumed is not None and world.is_main else None
    resumed = None  # frees the checkpoint's tensors
    result.stopped_early = bool(cfg.early_stopping_patience) and \
        progress.patience_counter >= cfg.early_stopping_patience
    stop = progress.step >= total_steps or result.stopped_early
    debug_steps_left = 3 if cfg.debug else 0
    shapes_shown = not cfg.debug
    streak_start: dict | None = None  # position and RNG where a run of non-finite losses began
    # Sync-free guard: device-side counts; skipped steps of the metrics window (for its mean loss)
    # and since the last train row (its nonfinite_skipped: a window ends early at an epoch end).
    nonfinite_counts = _DeviceNonfiniteCounts(device, progress.nonfinite_streak) if sync_free else None
    window_skipped = skipped_since_row = 0
    settled_step = progress.step
    augment_generator = torch.Generator(device) if data.augment is not None else None
    pairs_per_step = cfg.batch_size * world.world_size

    def stop_for_nonfinite(bar, at_step: int, note: str = "", **position) -> NoReturn:
        """Write last_good.pth (`position` overrides the current position and RNG) and raise."""
        bar.close()
        metrics.close()
        good_path = save(out_dir / "last_good.pth", **position)
        raise TrainingError(
            f"{progress.nonfinite_streak} non-finite losses in a row at step {at_step} "
            f"(max_nonfinite_steps {cfg.max_nonfinite_steps}); the last good state is in "
            f"{good_path} ({note}try a lower lr or check the data)"
        )

    def settle_nonfinite(bar) -> None:
        """Sync-free guard: bring the device-side counts into `progress` with one host sync, say
        how many steps were skipped, and stop once the streak reached cfg.max_nonfinite_steps."""
        nonlocal window_skipped, skipped_since_row, settled_step
        if nonfinite_counts is None:
            return
        streak, skipped, good = nonfinite_counts.settle()
        progress.nonfinite_streak = streak
        progress.nonfinite_total += skipped
        progress.epoch_loss_steps += good
        window_skipped += skipped
        skipped_since_row += skipped
        if skipped:
            say(f"Non-finite loss in {skipped} of steps {settled_step + 1}-{progress.step}: "
                f"skipped ({streak} in a row now)")
        settled_step = progress.step
        if streak >= cfg.max_nonfinite_steps:
            progress.epoch_loss_sum += epoch_loss.item()  # good steps only: skipped ones added 0
            epoch_loss.zero_()
            # Every skipped step left weights, optimizer and buffers unchanged: they are those of
            # the last good step. The position and RNG are the current ones, after the skipped steps.
            stop_for_nonfinite(bar, progress.step, f"weights of step {progress.step - streak}, data "
                                                   f"position and RNG of step {progress.step}; ")

    say("Training...")

    while progress.epoch < cfg.num_epochs and not stop:
        epoch_number = progress.epoch + 1
        data.train_sampler.set_epoch(progress.epoch)
        if progress.batch_in_epoch:  # resuming mid-epoch: skip what the stopped run consumed
            data.train_sampler.set_start(progress.batch_in_epoch * cfg.batch_size)
        else:
            progress.epoch_loss_sum, progress.epoch_loss_steps, progress.epoch_bad_images = 0.0, 0, 0
        batches = iter(data.train_loader)
        if resume_rng is not None:
            restore_rng_state(resume_rng)
            resume_rng = None
        model.train()
        bar = progress_display(total=batches_per_epoch, initial=progress.batch_in_epoch,
                               desc=f"Epoch {epoch_number}/{cfg.num_epochs}", disable=not world.is_main)
        epoch_loss = torch.zeros((), device=device)  # summed on the device: no host sync per step
        window_loss, window_steps, window_start = torch.zeros((), device=device), 0, time.perf_counter()
        window_skipped = 0
        batches_seen = usable_batches = 0

        for batch in batches:
            batches_seen += 1
            progress.batch_in_epoch += 1
            bar.update(1)
            progress.epoch_bad_images += batch["n_skipped"]
            progress.bad_image_count += batch["n_skipped"]
            size = batch["pixel_values"].shape[0]
            if not shapes_shown:
                say(f"Batch shapes: images={tuple(batch['pixel_values'].shape)}, "
                    f"text={tuple(batch['input_ids'].shape)}")
                shapes_shown = True
            if world.distributed:
                # All ranks take or skip a step together, and the loss gathers equal-sized batches.
                sizes = world.all_reduce(torch.tensor([size, -size], device=device), dist.ReduceOp.MAX).tolist()
                usable = -sizes[1] >= 2 and sizes[0] == -sizes[1]
            else:
                usable = size >= 2
            if not usable:
                say(f"Skipping batch {progress.batch_in_epoch} of epoch {epoch_number}: "
                    f"{size} readable image(s), a contrastive step needs at least 2")
                continue
            usable_batches += 1
            # The text rows' own labels (sentence labels) and image-only / text-only items (unpaired.py).
            unpaired_args = {"text_labels": batch["text_labels"]} if "text_labels" in batch else {}
            if data.unpaired is not None:
                batch = data.unpaired.extend(batch, progress.epoch, progress.batch_in_epoch - 1)
                progress.epoch_bad_images += batch["n_unpaired_skipped"]
                progress.bad_image_count += batch["n_unpaired_skipped"]
                unpaired_args = {"text_labels": batch["text_labels"], "num_pairs": batch["num_pairs"]}

            if data.augment is not None:
                # Seeded by the batch's position: the same draws after a resume, no state to save.
                position = (cfg.seed, world.rank, progress.epoch, progress.batch_in_epoch)
                augment_generator.manual_seed(hash(position) % 2**63)  # int tuples hash the same in every process
            pixel_values, input_ids, attention_mask, labels = _to_device(
                batch, device, channels_last, data.augment, augment_generator)
            with autocast():
                outputs = model(pixel_values, input_ids, attention_mask)
            loss, terms = criterion(outputs, labels, **unpaired_args)
            if debug_steps_left:
                values = {"loss": loss.detach(), **terms}
                say("Loss terms: " + ", ".join(f"{k}={float(v):.4f}" for k, v in values.items()))
                debug_steps_left -= 1
            scaler.scale(loss).backward()
            if scaler.is_enabled():
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            # No host sync: a non-finite norm is flagged below, not raised; foreach kernels on CUDA.
            grad_norm = (nn.utils.clip_grad_norm_(params, cfg.grad_clip, error_if_nonfinite=False)
                         if cfg.grad_clip > 0 else None)

            bad = ~torch.isfinite(loss.detach())
            if grad_norm is not None and not scaler.is_enabled():
                bad |= ~torch.isfinite(grad_norm)  # with fp16 the scaler skips inf gradients itself
            if world.distributed:  # all ranks skip together (an async collective: no host sync)
                bad = world.all_reduce(bad.int(), dist.ReduceOp.MAX).bool()
            # The synchronous guard: its one host sync of a step keeps a non-finite loss (or
            # gradient) from the weights; skipped steps are not counted as steps.
            if not sync_free and bad.item():
                optimizer.zero_grad(set_to_none=True)
                if buffers:
                    torch._foreach_copy_(buffers, good_buffers)
                if scaler.is_enabled():
                    scaler.update()  # lowers the scale; the step itself is skipped here
                if progress.nonfinite_streak == 0 or streak_start is None:
                    streak_start = {"epoch": progress.epoch, "batch_in_epoch": progress.batch_in_epoch - 1,
                                    "rng": capture_rng_state()}
                progress.nonfinite_streak += 1
                progress.nonfinite_total += 1
                say(f"Non-finite loss at step {progress.step + 1} (epoch {epoch_number}, batch "
                    f"{progress.batch_in_epoch}): step skipped ({progress.nonfinite_streak} in a row)")
                if progress.nonfinite_streak >= cfg.max_nonfinite_steps:
                    # Skipped steps left weights and buffers as the last good step made them.
                    stop_for_nonfinite(bar, progress.step + 1, **streak_start)
                continue

            lr = optimizer.param_groups[0]["lr"]
            if sync_free:
                _step_unless(bad, optimizer, scaler)  # the fused kernel skips a bad step on the device
            else:
                scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            # Sync-free: the schedule also advances over skipped steps (progress.step counts them).
            scheduler.step()
            raw_model.clamp_logit_scale_()
            if buffers:
                if sync_free:  # a skipped step puts the BatchNorm statistics back, on the device
                    torch._foreach_copy_(buffers, [torch.where(bad, good, now)
                                                   for good, now in zip(good_buffers, buffers)])
                torch._foreach_copy_(good_buffers, buffers)
            progress.step += 1
            if sync_free:
                nonfinite_counts.record(bad)
                step_loss = torch.where(bad, 0.0, loss.detach())  # skipped steps add nothing
            else:
                progress.nonfinite_streak = 0
                progress.epoch_loss_steps += 1
                step_loss = loss.detach()
            epoch_loss += step_loss
            window_loss += step_loss
            window_steps += 1

            # The sync-free guard's counts are read (and its streak checked) where the loop syncs
            # anyway: log rows, validation and saves.
            if any(progress.step % every == 0 for every in (cfg.log_every, cfg.eval_steps, cfg.save_steps)):
                settle_nonfinite(bar)
            if progress.step % cfg.log_every == 0:
                now = time.perf_counter()
                good_steps = window_steps - window_skipped  # the loss is averaged over good steps
                window_total = world.all_reduce(window_loss).item()
                mean_loss = window_total / (good_steps * world.world_size) if good_steps else math.nan
                scale = float(outputs["logit_scale"].detach())
                pairs_per_s = window_steps * pairs_per_step / max(now - window_start, 1e-9)
                row = {"step": progress.step, "epoch": epoch_number, "split": "train", "loss": mean_loss,
                       "lr": lr, "temperature": 1 / scale, "logit_scale": scale,
                       "pairs_per_s": pairs_per_s, "time": elapsed()}
                if sync_free:
                    row["nonfinite_skipped"] = skipped_since_row
                    skipped_since_row = 0
                metrics.write(row)
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", pairs_s=f"{pairs_per_s:.0f}", refresh=False)
                window_loss.zero_()
                window_steps, window_skipped, window_start = 0, 0, now
            if progress.step % cfg.eval_steps == 0:
                validate(epoch_number)
            if progress.step % cfg.save_steps == 0:
                progress.epoch_loss_sum += epoch_loss.item()
                epoch_loss.zero_()
                result.last_checkpoint = save(last_path)
            if result.stopped_early or progress.step >= total_steps:
                stop = True
                break
        bar.close()

        # ---- end of the epoch (or of the run, mid-epoch) ----
        if batches_seen and not usable_batches:
            metrics.close()
            raise _no_step_error(cfg, epoch_number, batches_seen, progress.epoch_bad_images)
        settle_nonfinite(bar)
        progress.epoch_loss_sum += epoch_loss.item()
        if last_val[0] != progress.step:
            validate(epoch_number)
            stop = stop or result.stopped_early
        totals = world.all_reduce(torch.tensor([progress.epoch_loss_sum, progress.epoch_loss_steps,
                                                progress.epoch_bad_images], device=device, dtype=torch.float64))
        summary = f"Average loss: {totals[0].item() / max(totals[1].item(), 1):.4f}"
        if last_val[0] == progress.step and not math.isnan(last_val[1]):
            summary += f" | val loss: {last_val[1]:.4f}"
        say(summary)
        say(f"Skipped {int(totals[2].item())} unreadable images")
        if progress.batch_in_epoch >= batches_per_epoch:
            progress.epoch += 1
            progress.batch_in_epoch = 0
            say(f"Saved checkpoint: {save(out_dir / f'checkpoint_epoch_{epoch_number}.pth')}")
        result.last_checkpoint = save(last_path)
        if progress.batch_in_epoch:  # stopped mid-epoch (max_steps): say where the state went
            say(f"Saved checkpoint: {result.last_checkpoint}")
        if result.stopped_early:
            say(f"Early stopping: no lower val loss in {progress.patience_counter} validations")

    metrics.close()
    result.history = metrics.rows
    result.best_val_loss = progress.best_val_loss
    result.steps = progress.step
    result.epochs_completed = progress.epoch
    result.bad_images = int(world.all_reduce(torch.tensor(progress.bad_image_count, device=device)).item())
    return result
