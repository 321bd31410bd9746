"""The non-finite-loss guard of a training step, and the counts it owns.

A step whose loss (or, without the fp16 grad scaler, gradient norm) is not finite changes
nothing (weights, optimizer state, BatchNorm statistics); after `max_nonfinite_steps` of them in
a row the guard raises NonfiniteStreak, which the loop turns into last_good.pth and a
TrainingError. The guard also keeps the epoch's loss: the sum of its good steps' losses and
their number, so the epoch mean has its numerator and denominator in one place.

Two variants behind one interface. `SyncingGuard` (the CPU's) reads the flag on the host every
step; a skipped step is not counted as a step. `SyncFreeGuard` (CUDA's) never syncs in a step:
the fused AdamW kernel skips the step on the device, the counts stay on the device and are read
only by `settle()`, which the loop calls where it syncs anyway (log rows, validation, checkpoint
saves, epoch ends). There `step` counts attempted steps (skipped ones included, the schedule
advances over them) and a run of non-finite losses is noticed at the next of those points.

`make_guard` picks the variant from the device. The seam for tests: setting the module attribute
`SYNC_FREE_ON_CPU = True` makes it pick the sync-free guard (and the fused AdamW it needs) on
the CPU too, so CUDA's path runs in CPU tests.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from medclip_nb.errors import TrainingError
from medclip_nb.model import capture_rng_state

# Tests set this to run the CUDA guard (and its fused AdamW) on the CPU; see the module docstring.
SYNC_FREE_ON_CPU = False
# The guard's counters as a checkpoint stores them (top-level keys, beside the loop's Progress).
STATE_KEYS = ("nonfinite_total", "nonfinite_streak", "epoch_loss_sum", "epoch_loss_steps")


class NonfiniteStreak(TrainingError):
    """`max_nonfinite_steps` non-finite losses in a row. `position` (epoch, batch_in_epoch, rng)
    is where the streak began, for last_good.pth; None: the current position."""

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


class NonfiniteGuard:
    """What a training step and the loop see of either guard: `step()` takes the optimizer step
    unless the step is bad, `kept()` follows every step taken and adds its loss to the epoch's,
    `settle()` reads device-side counts where the loop syncs, `row_fields()` adds to a train
    metrics row, `epoch_totals()` / `state()` give the epoch mean's parts and the checkpoint's.

    `position()` tells where the loop is (a dict with epoch, batch_in_epoch and step), for the
    messages and the streak's start. Keeps the persistent buffers (BatchNorm running statistics)
    as of the last good step: a skipped non-finite step puts them back, so it leaves no trace."""

    def __init__(self, model: nn.Module, device: torch.device, max_nonfinite_steps: int, say: Callable[[str], Any],
                 position: Callable[[], dict], state: dict | None = None):
        saved_keys = set(model.state_dict())
        self.buffers = [b for name, b in model.named_buffers() if name in saved_keys]
        self.remember_buffers()
        self.limit, self.say, self.position = max_nonfinite_steps, say, position
        state = state or {}
        self.total = int(state.get("nonfinite_total", 0))
        self.streak = int(state.get("nonfinite_streak", 0))
        self.epoch_loss_sum = float(state.get("epoch_loss_sum", 0.0))  # flushed from the device
        self.epoch_loss_steps = int(state.get("epoch_loss_steps", 0))
        self.epoch_loss = torch.zeros((), device=device)  # summed on the device since the last flush

    def remember_buffers(self) -> None:
        """The buffers as they are now are the last good ones (at the start, and after a resume)."""
        self.good_buffers = [b.detach().clone() for b in self.buffers]

    def step(self, bad: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> bool:
        """The optimizer step unless `bad` (a bool scalar) is set; False when it was skipped here
        and the rest of the step must not run."""
        raise NotImplementedError

    def kept(self, bad: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """After the step's optimizer and schedule step: count it and add its loss to the epoch's;
        returns the step's share of the loss sums (the detached `loss`, or 0 for a step skipped
        on the device)."""
        raise NotImplementedError

    def settle(self) -> int:
        """The steps skipped on the device since the last settle."""
        return 0

    def row_fields(self) -> dict[str, Any]:
        """Keys this guard adds to a train metrics row."""
        return {}

    def start_epoch(self) -> None:
        self.epoch_loss_sum, self.epoch_loss_steps = 0.0, 0
        self.epoch_loss.zero_()

    def flush(self) -> None:
        """The device-side loss sum into the host's (one host sync)."""
        self.epoch_loss_sum += self.epoch_loss.item()
        self.epoch_loss.zero_()

    def epoch_totals(self) -> list[float]:
        """[loss sum, good steps] of the epoch so far (flushed), to be summed over ranks."""
        self.flush()
        return [self.epoch_loss_sum, self.epoch_loss_steps]

    def state(self) -> dict[str, Any]:
        """The counters a checkpoint stores (STATE_KEYS), flushed."""
        self.flush()
        return {"nonfinite_total": self.total, "nonfinite_streak": self.streak,
                "epoch_loss_sum": self.epoch_loss_sum, "epoch_loss_steps": self.epoch_loss_steps}


class SyncingGuard(NonfiniteGuard):
    """Reads the flag on the host each step (its one host sync of a step) and keeps a non-finite
    loss (or gradient) from the weights; skipped steps are not counted as steps."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
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
        where = self.position()
        if self.streak == 0 or self.streak_start is None:
            self.streak_start = {"epoch": where["epoch"], "batch_in_epoch": where["batch_in_epoch"] - 1,
                                 "rng": capture_rng_state()}
        self.streak += 1
        self.total += 1
        self.say(f"Non-finite loss at step {where['step'] + 1} (epoch {where['epoch'] + 1}, batch "
                 f"{where['batch_in_epoch']}): step skipped ({self.streak} in a row)")
        if self.streak >= self.limit:
            # Skipped steps left weights and buffers as the last good step made them.
            raise NonfiniteStreak(self.streak, where["step"] + 1, self.limit, position=self.streak_start)

    def kept(self, bad, loss) -> torch.Tensor:
        if self.buffers:
            torch._foreach_copy_(self.good_buffers, self.buffers)
        self.streak = 0
        self.epoch_loss_steps += 1
        self.epoch_loss += loss
        return loss


class SyncFreeGuard(NonfiniteGuard):
    """Skips a bad step on the device (fused AdamW) and counts on the device; `settle()` reads
    the counts, says how many steps were skipped and stops once the streak reached the limit."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        device = self.epoch_loss.device
        self.device_streak = torch.tensor(self.streak, device=device, dtype=torch.int64)  # skipped in a row
        self.unsettled = torch.zeros(2, device=device, dtype=torch.int64)  # [skipped, good] since the last settle
        self.settled_step = self.position()["step"]
        self.skipped_since_row = 0  # the next train row's nonfinite_skipped (a window may end early)

    def step(self, bad, optimizer, scaler) -> bool:
        step_unless(bad, optimizer, scaler)  # the fused kernel skips a bad step on the device
        return True

    def kept(self, bad, loss) -> torch.Tensor:
        if self.buffers:  # a skipped step puts the BatchNorm statistics back, on the device
            torch._foreach_copy_(self.buffers, [torch.where(bad, good, now)
                                                for good, now in zip(self.good_buffers, self.buffers)])
            torch._foreach_copy_(self.good_buffers, self.buffers)
        self.device_streak.add_(1).mul_(bad)  # one more on a skipped step, back to 0 on a good one
        self.unsettled.add_(torch.stack([bad, ~bad]))
        share = torch.where(bad, 0.0, loss)  # skipped steps add nothing
        self.epoch_loss += share
        return share

    def settle(self) -> int:
        streak, skipped, good = torch.cat([self.device_streak.view(1), self.unsettled]).tolist()
        self.unsettled.zero_()
        step = self.position()["step"]
        self.streak = streak
        self.total += skipped
        self.epoch_loss_steps += good
        self.skipped_since_row += skipped
        if skipped:
            self.say(f"Non-finite loss in {skipped} of steps {self.settled_step + 1}-{step}: "
                     f"skipped ({streak} in a row now)")
        self.settled_step = step
        if streak >= self.limit:
            # Every skipped step left weights, optimizer and buffers unchanged: they are those of
            # the last good step. The position and RNG are the current ones, after the skipped steps.
            raise NonfiniteStreak(streak, step, self.limit, note=(
                f"weights of step {step - streak}, data position and RNG of step {step}; "))
        return skipped

    def row_fields(self) -> dict[str, Any]:
        fields, self.skipped_since_row = {"nonfinite_skipped": self.skipped_since_row}, 0
        return fields


def uses_sync_free_guard(device: torch.device) -> bool:
    """CUDA's guard on CUDA (a CPU .item() costs nothing, so the CPU keeps the syncing one)."""
    return device.type == "cuda" or SYNC_FREE_ON_CPU


def make_guard(model: nn.Module, device: torch.device, max_nonfinite_steps: int, say: Callable[[str], Any],
               position: Callable[[], dict], state: dict | None = None) -> NonfiniteGuard:
    """The guard for `model` (unwrapped) on `device`, its counters from a checkpoint's `state`."""
    kind = SyncFreeGuard if uses_sync_free_guard(device) else SyncingGuard
    return kind(model, device, max_nonfinite_steps, say, position, state)
