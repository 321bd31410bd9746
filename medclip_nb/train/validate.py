"""The validation loss: the training loss over the validation batches, with no gathering."""

from __future__ import annotations

import math

import torch
from torch import nn

from medclip_nb.model.losses import ContrastiveLoss
from medclip_nb.runtime import World, autocast
from medclip_nb.train.step import batch_to_device


def validation_loss(model: nn.Module, loader, criterion: ContrastiveLoss, device: torch.device,
                    amp_dtype: torch.dtype | None, world: World, channels_last: bool) -> tuple[float, float, int]:
    """Mean loss over the validation batches (of all ranks), the current logit scale and the
    number of batches scored (0: no batch had the 2 readable pairs a contrastive loss needs).

    `model` is the one without the DDP wrapper (no collectives inside), and each rank scores its
    own batches alone: validation shards need not be the same size on every rank, which the
    gathering training loss requires."""
    model.eval()
    totals = torch.zeros(2, device=device, dtype=torch.float64)
    scale = torch.zeros((), device=device)
    with torch.no_grad():
        for batch in loader:
            if batch["pixel_values"].shape[0] < 2:
                continue
            pixel_values, input_ids, attention_mask, labels = batch_to_device(batch, device, channels_last)
            with autocast(amp_dtype):
                outputs = model(pixel_values, input_ids, attention_mask)
            loss, _ = criterion.compute(outputs, labels, gather=False)
            scale = outputs["logit_scale"].float()
            totals += torch.stack([loss.double(), torch.ones((), device=device, dtype=torch.float64)])
    model.train()
    totals = world.all_reduce(totals)
    mean = (totals[0] / totals[1]).item() if totals[1] > 0 else math.nan
    return mean, float(scale), int(totals[1].item())
