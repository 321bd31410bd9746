"""The one training step, as `train()` takes it and `bench` times it: forward under autocast,
the contrastive loss, backward with the grad scaler, gradient clipping, the non-finite guard,
the AdamW step and the warmup + cosine schedule. `build_train_step` makes it (optimizer,
schedule, scaler, guard) for both; `TrainStep.validation_loss` scores validation batches with
the same loss. Also the batch's tensors on the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from medclip_nb.config import Config
from medclip_nb.data import augment_on_device
from medclip_nb.model import ContrastiveLoss
from medclip_nb.runtime import World, adamw_kernel, amp_dtype, autocast, uses_channels_last
from medclip_nb.train.guard import NonfiniteGuard, make_guard, uses_sync_free_guard


# ---- optimizer and schedule ----------------------------------------------------------------------
def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate multiplier at optimizer step `step`: rises linearly from 0 to 1 over
    `warmup_steps`, then follows a half cosine down to 0 at `total_steps` (0 afterwards)."""
    if step < warmup_steps:
        return step / warmup_steps
    if step >= total_steps:
        return 0.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int,
                           total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    # A lambda, not a function object: LambdaLR then keeps it out of its state dict.
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, warmup_steps, total_steps))


def _no_weight_decay(name: str, param: nn.Parameter) -> bool:
    # Biases, norm weights (all 1-D) and the scalar temperature / SigLIP bias are not decayed:
    # shrinking them towards 0 only fights the normalisation or the learned temperature.
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim < 2 or leaf in ("bias", "logit_scale", "logit_bias")


# MedCLIP's trainer (medclip/trainer.py, Trainer.train): a case-sensitive substring test on the parameter's
# name. It exempts every name holding 'bias' (Swin's relative_position_bias_table too) and BERT's LayerNorms,
# but not norms named otherwise (Swin's layernorm_before, BatchNorm's weights) nor the logit scale.
MEDCLIP_NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight")


def medclip_no_weight_decay(name: str) -> bool:
    return any(part in name for part in MEDCLIP_NO_DECAY)


def param_groups(model: nn.Module, weight_decay: float, rule: str = "ours") -> list[dict[str, Any]]:
    """AdamW parameter groups: [decayed weights (conv, linear, embeddings), everything else
    with weight_decay 0] by `rule` ('ours': 1-D parameters and the scalars; 'medclip': its
    name test). Each group also lists its parameter names under 'names'."""
    if rule not in ("ours", "medclip"):
        raise ValueError(f"no_decay_rule {rule!r} is not one of ours, medclip")
    exempt = (lambda name, p: medclip_no_weight_decay(name)) if rule == "medclip" else _no_weight_decay
    decay: dict[str, nn.Parameter] = {}
    no_decay: dict[str, nn.Parameter] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if exempt(name, param) else decay)[name] = param
    return [
        {"params": list(decay.values()), "weight_decay": weight_decay, "names": list(decay)},
        {"params": list(no_decay.values()), "weight_decay": 0.0, "names": list(no_decay)},
    ]


def build_optimizer(model: nn.Module, cfg: Config, device: torch.device) -> torch.optim.AdamW:
    """AdamW over `param_groups`. Fused on the GPU, and always for the sync-free guard: only the
    fused kernel skips a step on the device (optimizer.found_inf); on the CPU as
    runtime.CPU_CHOICES says (fused: measured fastest)."""
    kernel = adamw_kernel(device, uses_sync_free_guard(device))
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay, cfg.no_decay_rule), lr=cfg.lr, **kernel)


def grad_scaler(amp_dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """The fp16 loss scaler; disabled (a pass-through) for bf16 and fp32."""
    return torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)


def contrastive_loss(cfg: Config) -> ContrastiveLoss:
    return ContrastiveLoss(cfg.loss, cfg.uncertain_label_value, cfg.medclip_cosine_no_finding,
                           cfg.image_uncertain_labels, cfg.text_uncertain_labels)


# ---- batches on the device -----------------------------------------------------------------------
def batch_to_device(batch: dict, device: torch.device, channels_last: bool, augment=None, generator=None):
    """The batch's tensors on `device`; uint8 store images are augmented there by `augment`."""
    if augment is not None:
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


def loss_inputs(batch: dict, device: torch.device) -> dict[str, Any]:
    """What the loss takes beyond the four tensors: the text rows' own labels (sentence labels,
    unpaired rows), how many leading rows are pairs (unpaired rows), MedCLIP's EDA view of the texts."""
    inputs: dict[str, Any] = {}
    if "text_labels" in batch:
        inputs["text_labels"] = batch["text_labels"]
    if "num_pairs" in batch:
        inputs["num_pairs"] = batch["num_pairs"]
    if "aug_input_ids" in batch:
        inputs["aug_text"] = (batch["aug_input_ids"].to(device, non_blocking=True),
                              batch["aug_attention_mask"].to(device, non_blocking=True))
    return inputs


def with_aug_texts(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   aug_text: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The texts and their EDA views as one batch of text rows (one forward, so DDP sees one):
    padded to the longer of the two lengths."""
    aug_ids, aug_mask = aug_text
    length = max(input_ids.shape[1], aug_ids.shape[1])
    pad = lambda t, value: nn.functional.pad(t, (0, length - t.shape[1]), value=value)
    return (torch.cat([pad(input_ids, 0), pad(aug_ids, 0)]),  # padding is masked: any valid id
            torch.cat([pad(attention_mask, 0), pad(aug_mask, 0)]))


# ---- the step ------------------------------------------------------------------------------------
@dataclass
class StepDone:
    """A step that was taken (or, with the sync-free guard, attempted)."""

    loss: torch.Tensor  # its share of the loss sums, on the device (0 for a step skipped there)
    lr: float  # the learning rate it used
    logit_scale: torch.Tensor  # the model's logit scale in its forward, detached
    chance: float | None = None  # the loss of scoring every pair alike at this step's sizes (losses.chance)


class TrainStep:
    """One optimizer step: `step(pixel_values, input_ids, attention_mask, labels, **loss_args)`
    returns a StepDone, or None when the guard skipped a non-finite step on the host. No host
    sync but the syncing guard's one read of its flag.

    `model` is what the forward runs (compiled, DDP-wrapped), `raw_model` the module underneath,
    `eval_model` the one validation runs (compiled, never DDP-wrapped: no collectives inside).
    The first `debug_steps` steps `say` their batch shapes (the first) and loss terms."""

    def __init__(self, model: nn.Module, raw_model: nn.Module, criterion: ContrastiveLoss, optimizer, scheduler,
                 scaler: torch.amp.GradScaler, guard: NonfiniteGuard, *, amp_dtype: torch.dtype | None,
                 grad_clip: float, world: World | None = None, say: Callable[[str], Any] = print,
                 debug_steps: int = 0, channels_last: bool = False, eval_model: nn.Module | None = None):
        self.model, self.raw_model, self.criterion = model, raw_model, criterion
        self.eval_model = eval_model if eval_model is not None else model
        self.optimizer, self.scheduler, self.scaler, self.guard = optimizer, scheduler, scaler, guard
        self.amp_dtype, self.grad_clip, self.world = amp_dtype, grad_clip, world or World()
        self.say, self.debug_steps_left, self.shapes_shown = say, debug_steps, not debug_steps
        self.channels_last = channels_last
        self.params = [p for p in raw_model.parameters() if p.requires_grad]

    def __call__(self, pixel_values, input_ids, attention_mask, labels, aug_text=None, **loss_args) -> StepDone | None:
        lr = self.optimizer.param_groups[0]["lr"]
        texts = input_ids.shape[0]
        if aug_text is not None:  # MedCLIP's EDA view rides along as more text rows
            input_ids, attention_mask = with_aug_texts(input_ids, attention_mask, aug_text)
        with autocast(self.amp_dtype):
            outputs = self.model(pixel_values, input_ids, attention_mask)
        loss, terms = self.loss(outputs, labels, texts, aug_text is not None, **loss_args)
        if self.debug_steps_left:
            values = {"loss": loss.detach(), **terms}
            self.say("Loss terms: " + ", ".join(f"{k}={float(v):.4f}" for k, v in values.items()))
            self.debug_steps_left -= 1
        bad = self._backward(loss)
        if not self.guard.step(bad, self.optimizer, self.scaler):
            return None
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        # Sync-free: the schedule also advances over skipped steps (progress.step counts them).
        self.scheduler.step()
        self.raw_model.clamp_logit_scale_()
        ranks = self.world.world_size  # the losses score local rows against every rank's columns
        chance = self.criterion.chance(outputs["image_embeds"].shape[0] * ranks,
                                       outputs["text_embeds"].shape[0] * ranks)
        return StepDone(self.guard.kept(bad, loss.detach()), lr, outputs["logit_scale"].detach(), chance)

    def loss(self, outputs: dict, labels, texts: int, aug: bool, **loss_args):
        """The criterion's loss; with MedCLIP's EDA view (text rows `texts:` of the output), its own
        term with the same label targets: (loss(text) + loss(augmented text)) / 2, as MedCLIP's loss."""
        if not aug:
            return self.criterion(outputs, labels, **loss_args)
        embeds = outputs["text_embeds"]
        loss, terms = self.criterion({**outputs, "text_embeds": embeds[:texts]}, labels, **loss_args)
        aug_loss, _ = self.criterion({**outputs, "text_embeds": embeds[texts:]}, labels, **loss_args)
        return (loss + aug_loss) / 2, {**terms, "loss_text": loss.detach(), "loss_eda_view": aug_loss.detach()}

    def _backward(self, loss: torch.Tensor) -> torch.Tensor:
        """Backward and gradient clipping; returns the bool scalar 'this step is not finite', on
        the device (the same on every rank)."""
        self.scaler.scale(loss).backward()
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
        # No host sync: a non-finite norm is flagged below, not raised; foreach kernels on CUDA.
        grad_norm = (nn.utils.clip_grad_norm_(self.params, self.grad_clip, error_if_nonfinite=False)
                     if self.grad_clip > 0 else None)
        bad = ~torch.isfinite(loss.detach())
        if grad_norm is not None and not self.scaler.is_enabled():
            bad |= ~torch.isfinite(grad_norm)  # with fp16 the scaler skips inf gradients itself
        if self.world.distributed:  # all ranks skip together (an async collective: no host sync)
            bad = self.world.all_reduce(bad.int(), dist.ReduceOp.MAX).bool()
        return bad

    def show_shapes(self, batch: dict) -> None:
        """--debug: the first batch's shapes, once."""
        if not self.shapes_shown:
            self.say(f"Batch shapes: images={tuple(batch['pixel_values'].shape)}, "
                     f"text={tuple(batch['input_ids'].shape)}")
            self.shapes_shown = True

    def validation_loss(self, loader, device: torch.device) -> tuple[float, float, int, float | None]:
        """Mean training loss over the validation batches (of all ranks), the current logit scale,
        the number of batches scored (0: no batch had the 2 readable pairs a contrastive loss
        needs) and the chance level of that mean (losses.chance per batch, averaged alike; None
        for siglip). Each rank scores its own batches alone, without feature gathering: validation
        shards need not be the same size on every rank, which the gathering training loss requires."""
        model = self.eval_model
        model.eval()
        totals = torch.zeros(3, device=device, dtype=torch.float64)  # loss sum, batches, chance sum
        scale = torch.zeros((), device=device)
        with torch.no_grad():
            for batch in loader:
                if batch["pixel_values"].shape[0] < 2:
                    continue
                pixel_values, input_ids, attention_mask, labels = batch_to_device(batch, device, self.channels_last)
                with autocast(self.amp_dtype):
                    outputs = model(pixel_values, input_ids, attention_mask)
                loss, _ = self.criterion.compute(outputs, labels, gather=False)
                scale = outputs["logit_scale"].float()
                chance = self.criterion.chance(batch["pixel_values"].shape[0], batch["input_ids"].shape[0])
                totals += torch.tensor([0.0, 1.0, chance or 0.0], device=device, dtype=torch.float64)
                totals[0] += loss.double()
        model.train()
        totals = self.world.all_reduce(totals)
        mean = (totals[0] / totals[1]).item() if totals[1] > 0 else math.nan
        chance = (totals[2] / totals[1]).item() if totals[1] > 0 and self.criterion.kind != "siglip" else None
        return mean, float(scale), int(totals[1].item()), chance


def build_train_step(cfg: Config, raw_model: nn.Module, device: torch.device, total_steps: int, *,
                     world: World | None = None, say: Callable[[str], Any] = print,
                     position: Callable[[], dict] = lambda: {"epoch": 0, "batch_in_epoch": 0, "step": 0},
                     guard_state: dict | None = None,
                     wrap: Callable[[nn.Module], nn.Module] | None = None) -> TrainStep:
    """The step `train()` takes and `bench` times, for `raw_model` (on `device`) as `cfg` says:
    AdamW (fused on the GPU and for the sync-free guard), warmup + cosine over `total_steps`, the
    fp16 scaler where it applies, the device's non-finite guard (its counters from `guard_state`),
    torch.compile when cfg.compile, and `wrap` (DDP) around the compiled model for the forward."""
    world = world or World()
    optimizer = build_optimizer(raw_model, cfg, device)
    scheduler = warmup_cosine_schedule(optimizer, round(cfg.warmup * total_steps), total_steps)
    dtype = amp_dtype(device, cfg.use_amp)
    guard = make_guard(raw_model, device, cfg.max_nonfinite_steps, say, position, guard_state)
    compiled = torch.compile(raw_model, backend=cfg.compile_backend) if cfg.compile else raw_model
    return TrainStep(wrap(compiled) if wrap else compiled, raw_model, contrastive_loss(cfg), optimizer, scheduler,
                     grad_scaler(dtype), guard, amp_dtype=dtype, grad_clip=cfg.grad_clip, world=world, say=say,
                     debug_steps=3 if cfg.debug else 0, channels_last=uses_channels_last(device, cfg.channels_last),
                     eval_model=compiled)
