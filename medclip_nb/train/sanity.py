"""A debugging check before a long run: can the model learn one fixed batch?

`overfit_one_batch(cfg)` takes the first `batch_size` training pairs without augmentation, builds
the model and the training step `train()` uses (step.py: the same optimizer, schedule, clipping
and guard) and repeats that one batch. A model, loss and data pipeline that work drive its loss
far below chance (the loss of scoring every pair alike, ln(batch) for the softmax losses) within
a few dozen steps; one that stays near chance has a bug (labels out of order, a detached
encoder, a learning rate that is off). Notebook 02 runs it. No checkpoint or log is written.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch

from medclip_nb.config import Config
from medclip_nb.data import build_datasets, make_collate
from medclip_nb.model import build_model
from medclip_nb.progress import working
from medclip_nb.runtime import pick_device, set_backend_flags
from medclip_nb.text import build_tokenizer
from medclip_nb.train.step import batch_to_device, build_train_step


@dataclass
class OverfitResult:
    """The loss at each step on the same batch, and its chance level (None for siglip)."""

    losses: list[float] = field(default_factory=list)
    chance: float | None = None
    batch_size: int = 0

    def fell_below_chance(self, last: int = 5) -> float | None:
        """Nats by which the mean of the last `last` losses lies below chance (None without chance)."""
        if self.chance is None or not self.losses:
            return None
        return self.chance - float(np.mean(self.losses[-last:]))


def overfit_one_batch(cfg: Config, steps: int = 30, device: str | torch.device | None = None) -> OverfitResult:
    """Train a fresh model of `cfg` for `steps` steps on its first training batch (no augmentation,
    whole reports); seeded by cfg.seed, so a CPU run gives the same losses each time."""
    device = torch.device(device) if device is not None else pick_device(cfg.gpu_id, log=lambda *_: None)
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    set_backend_flags(device, deterministic_cpu=True)
    try:
        with working(f"one batch, repeated {steps} times"):
            return _overfit(cfg, steps, device)
    finally:
        torch.use_deterministic_algorithms(deterministic_before)


def _overfit(cfg: Config, steps: int, device: torch.device) -> OverfitResult:
    plain = cfg.replace(augment="none", report_sampling="full", debug=False, train_fraction=1.0)
    splits, records, _ = build_datasets(plain)
    rows = range(min(cfg.batch_size, len(splits["train"])))
    tokenizer = build_tokenizer(plain, [records["train"][i]["report"] for i in rows])
    batch = make_collate(tokenizer)([splits["train"][i] for i in rows])
    for seed in (torch.manual_seed, np.random.seed, random.seed):
        seed(cfg.seed)
    model = build_model(plain, tokenizer).to(device)
    step = build_train_step(plain, model, device, steps, say=lambda *_: None)
    tensors = batch_to_device(batch, device, channels_last=False)
    result = OverfitResult(batch_size=int(tensors[0].shape[0]))
    for _ in range(steps):
        done = step(*tensors)
        if done is not None:
            result.losses.append(float(done.loss))
            result.chance = done.chance
    return result
