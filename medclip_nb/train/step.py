"""The one training step, as `train()` takes it and `bench` times it: forward under autocast,
the contrastive loss, backward with the grad scaler, gradient clipping, the non-finite guard,
the AdamW step and the warmup + cosine schedule. Also the optimizer, schedule and scaler it
steps, and the batch's tensors on the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from medclip_nb.config import Config
from medclip_nb.data.gpu_augment import augment_on_device
from medclip_nb.model.losses import ContrastiveLoss
from medclip_nb.runtime import World, autocast
from medclip_nb.train.guard import NonfiniteGuard


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


def build_optimizer(model: nn.Module, cfg: Config, fused: bool) -> torch.optim.AdamW:
    """AdamW over `param_groups`. Fused on the GPU, and always for the sync-free guard: only the
    fused kernel skips a step on the device (optimizer.found_inf)."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, **({"fused": True} if fused else {}))


def grad_scaler(amp_dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """The fp16 loss scaler; disabled (a pass-through) for bf16 and fp32."""
    return torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)


def contrastive_loss(cfg: Config) -> ContrastiveLoss:
    return ContrastiveLoss(cfg.loss, cfg.uncertain_label_value, cfg.medclip_cosine_no_finding)


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


# ---- the step ------------------------------------------------------------------------------------
@dataclass
class StepDone:
    """A step that was taken (or, with the sync-free guard, attempted)."""

    loss: torch.Tensor  # its share of the loss sums, on the device (0 for a step skipped there)
    lr: float  # the learning rate it used
    logit_scale: torch.Tensor  # the model's logit scale in its forward, detached


class TrainStep:
    """One optimizer step: `step(pixel_values, input_ids, attention_mask, labels, **loss_args)`
    returns a StepDone, or None when the guard skipped a non-finite step on the host. No host
    sync but the syncing guard's one read of its flag.

    `model` is what the forward runs (compiled, DDP-wrapped), `raw_model` the module underneath;
    the first `debug_steps` steps `say` their loss terms."""

    def __init__(self, model: nn.Module, raw_model: nn.Module, criterion: ContrastiveLoss, optimizer, scheduler,
                 scaler: torch.amp.GradScaler, guard: NonfiniteGuard, *, amp_dtype: torch.dtype | None,
                 grad_clip: float, world: World | None = None, say: Callable[[str], Any] = print,
                 debug_steps: int = 0):
        self.model, self.raw_model, self.criterion = model, raw_model, criterion
        self.optimizer, self.scheduler, self.scaler, self.guard = optimizer, scheduler, scaler, guard
        self.amp_dtype, self.grad_clip, self.world = amp_dtype, grad_clip, world or World()
        self.say, self.debug_steps_left = say, debug_steps
        self.params = [p for p in raw_model.parameters() if p.requires_grad]

    def __call__(self, pixel_values, input_ids, attention_mask, labels, **loss_args) -> StepDone | None:
        lr = self.optimizer.param_groups[0]["lr"]
        with autocast(self.amp_dtype):
            outputs = self.model(pixel_values, input_ids, attention_mask)
        loss, terms = self.criterion(outputs, labels, **loss_args)
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
        return StepDone(self.guard.kept(bad, loss.detach()), lr, outputs["logit_scale"].detach())

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
