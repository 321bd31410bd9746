"""The non-finite-loss guard of a training step, in two variants behind one interface.

A step whose loss (or, without the fp16 grad scaler, gradient norm) is not finite changes
nothing (weights, optimizer state, BatchNorm statistics); after `max_nonfinite_steps` of them in
a row the guard raises NonfiniteStreak, which the loop turns into last_good.pth and a
TrainingError.

`SyncingGuard` (the CPU's) reads the flag on the host every step; a skipped step is not counted
as a step. `SyncFreeGuard` (CUDA's) never syncs in a step: the fused AdamW kernel skips the step
on the device, the counts stay on the device and are read only by `settle()`, which the loop
calls where it syncs anyway (log rows, validation, checkpoint saves, epoch ends). There `step`
counts attempted steps (skipped ones included, the schedule advances over them) and a run of
non-finite losses is noticed at the next of those points.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from medclip_nb.errors import TrainingError
from medclip_nb.model.checkpoint import capture_rng_state
from medclip_nb.train.state import Progress


class NonfiniteStreak(TrainingError):
    """`max_nonfinite_steps` non-finite losses in a row. `position` (epoch, batch_in_epoch, rng)
    is where the streak began, for last_good.pth; None: the current position (and loss sums)."""

    def __init__(self, streak: int, at_step: int, limit: int, note: str = "", position: dict | None = None):
        super().__init__(f"{streak} non-finite losses in a row at step {at_step} (max_nonfinite_steps {limit})")
        self.note, self.position = note, position


def step_unless(bad: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
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


class DeviceNonfiniteCounts:
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


class NonfiniteGuard:
    """What a training step and the loop see of either guard: `step()` takes the optimizer step
    unless the step is bad, `kept()` follows every step taken, `settle()` brings the counts into
    `progress` where the loop syncs, `row_fields()` adds to a train metrics row.

    Keeps the persistent buffers (BatchNorm running statistics) as of the last good step: a
    skipped non-finite step puts them back, so it leaves no trace in the model."""

    def __init__(self, model: nn.Module, progress: Progress, max_nonfinite_steps: int, say: Callable[[str], Any]):
        saved_keys = set(model.state_dict())
        self.buffers = [b for name, b in model.named_buffers() if name in saved_keys]
        self.good_buffers = [b.detach().clone() for b in self.buffers]
        self.progress, self.limit, self.say = progress, max_nonfinite_steps, say

    def step(self, bad: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> bool:
        """The optimizer step unless `bad` (a bool scalar) is set; False when it was skipped here
        and the rest of the step must not run."""
        raise NotImplementedError

    def kept(self, bad: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """After the step's optimizer and schedule step: count it; returns the step's share of
        the loss sums (the detached `loss`, or 0 for a step skipped on the device)."""
        raise NotImplementedError

    def settle(self) -> int:
        """The steps skipped on the device since the last settle (counted into `progress`)."""
        return 0

    def row_fields(self) -> dict[str, Any]:
        """Keys this guard adds to a train metrics row."""
        return {}


class SyncingGuard(NonfiniteGuard):
    """Reads the flag on the host each step (its one host sync of a step) and keeps a non-finite
    loss (or gradient) from the weights; skipped steps are not counted as steps."""

    def __init__(self, model: nn.Module, progress: Progress, max_nonfinite_steps: int, say: Callable[[str], Any]):
        super().__init__(model, progress, max_nonfinite_steps, say)
        self.streak_start: dict | None = None  # position and RNG where a run of non-finite losses began

    def step(self, bad, optimizer, scaler) -> bool:
        if bad.item():
            self._skip(optimizer, scaler)
            return False
        scaler.step(optimizer)
        return True

    def _skip(self, optimizer, scaler) -> None:
        optimizer.zero_grad(set_to_none=True)
        if self.buffers:
            torch._foreach_copy_(self.buffers, self.good_buffers)
        if scaler.is_enabled():
            scaler.update()  # lowers the scale; the step itself is skipped here
        progress = self.progress
        if progress.nonfinite_streak == 0 or self.streak_start is None:
            self.streak_start = {"epoch": progress.epoch, "batch_in_epoch": progress.batch_in_epoch - 1,
                                 "rng": capture_rng_state()}
        progress.nonfinite_streak += 1
        progress.nonfinite_total += 1
        self.say(f"Non-finite loss at step {progress.step + 1} (epoch {progress.epoch + 1}, batch "
                 f"{progress.batch_in_epoch}): step skipped ({progress.nonfinite_streak} in a row)")
        if progress.nonfinite_streak >= self.limit:
            # Skipped steps left weights and buffers as the last good step made them.
            raise NonfiniteStreak(progress.nonfinite_streak, progress.step + 1, self.limit, position=self.streak_start)

    def kept(self, bad, loss) -> torch.Tensor:
        if self.buffers:
            torch._foreach_copy_(self.good_buffers, self.buffers)
        self.progress.nonfinite_streak = 0
        self.progress.epoch_loss_steps += 1
        return loss


class SyncFreeGuard(NonfiniteGuard):
    """Skips a bad step on the device (fused AdamW) and counts on the device; `settle()` reads
    the counts, says how many steps were skipped and stops once the streak reached the limit."""

    def __init__(self, model: nn.Module, progress: Progress, max_nonfinite_steps: int, say: Callable[[str], Any],
                 device: torch.device):
        super().__init__(model, progress, max_nonfinite_steps, say)
        self.counts = DeviceNonfiniteCounts(device, progress.nonfinite_streak)
        self.settled_step = progress.step
        self.skipped_since_row = 0  # the next train row's nonfinite_skipped (a window may end early)

    def step(self, bad, optimizer, scaler) -> bool:
        step_unless(bad, optimizer, scaler)  # the fused kernel skips a bad step on the device
        return True

    def kept(self, bad, loss) -> torch.Tensor:
        if self.buffers:  # a skipped step puts the BatchNorm statistics back, on the device
            torch._foreach_copy_(self.buffers, [torch.where(bad, good, now)
                                                for good, now in zip(self.good_buffers, self.buffers)])
            torch._foreach_copy_(self.good_buffers, self.buffers)
        self.counts.record(bad)
        return torch.where(bad, 0.0, loss)  # skipped steps add nothing

    def settle(self) -> int:
        progress = self.progress
        streak, skipped, good = self.counts.settle()
        progress.nonfinite_streak = streak
        progress.nonfinite_total += skipped
        progress.epoch_loss_steps += good
        self.skipped_since_row += skipped
        if skipped:
            self.say(f"Non-finite loss in {skipped} of steps {self.settled_step + 1}-{progress.step}: "
                     f"skipped ({streak} in a row now)")
        self.settled_step = progress.step
        if streak >= self.limit:
            # Every skipped step left weights, optimizer and buffers unchanged: they are those of
            # the last good step. The position and RNG are the current ones, after the skipped steps.
            raise NonfiniteStreak(streak, progress.step, self.limit, note=(
                f"weights of step {progress.step - streak}, data position and RNG of step {progress.step}; "))
        return skipped

    def row_fields(self) -> dict[str, Any]:
        fields, self.skipped_since_row = {"nonfinite_skipped": self.skipped_since_row}, 0
        return fields


def make_guard(sync_free: bool, model: nn.Module, progress: Progress, max_nonfinite_steps: int,
               say: Callable[[str], Any], device: torch.device) -> NonfiniteGuard:
    """The guard for `model` (unwrapped): sync-free (needs a fused optimizer) or syncing."""
    if sync_free:
        return SyncFreeGuard(model, progress, max_nonfinite_steps, say, device)
    return SyncingGuard(model, progress, max_nonfinite_steps, say)
