"""The distributed loss equals the single-process loss on the concatenated batch.

Two CPU processes (gloo) each hold half of a fixed batch; a tiny model wrapped in DDP maps
inputs to embeddings. The rank-averaged loss, the DDP-averaged parameter gradients and the
embedding gradients must match one process that holds the whole batch.
"""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from medclip_nb.labels import NUM_LABELS
from medclip_nb.model.losses import LOSS_KINDS, ContrastiveLoss

WORLD_SIZE = 2
BATCH = 8  # whole batch; each rank holds BATCH // WORLD_SIZE rows
NAN = float("nan")


class TinyPair(nn.Module):
    """Linear image and text projections with the model's output contract."""

    def __init__(self, with_bias: bool):
        super().__init__()
        self.image = nn.Linear(6, 4)
        self.text = nn.Linear(5, 4)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.logit_bias = nn.Parameter(torch.tensor(-3.0)) if with_bias else None

    def forward(self, image_inputs, text_inputs):
        return {
            "image_embeds": F.normalize(self.image(image_inputs), dim=-1),
            "text_embeds": F.normalize(self.text(text_inputs), dim=-1),
            "logit_scale": self.logit_scale.exp(),
            "logit_bias": self.logit_bias,
        }


def text_labels_of(labels):
    """Text-row labels that differ from the image rows' (each row takes its neighbour's)."""
    return torch.roll(labels, shifts=1, dims=0)


def fixed_batch():
    generator = torch.Generator().manual_seed(0)
    image_inputs = torch.randn(BATCH, 6, generator=generator)
    text_inputs = torch.randn(BATCH, 5, generator=generator)
    # Shared label vectors across the two halves (rows 0/5, 2/6), uncertain and blank values,
    # so the MedCLIP soft targets have off-diagonal weight that crosses ranks.
    labels = torch.full((BATCH, NUM_LABELS), NAN)
    for row, (column, value) in enumerate([(0, 1), (1, 1), (3, 1), (3, -1), (2, 1), (0, 1), (3, 1), (5, 0)]):
        labels[row, column] = value
    return image_inputs, text_inputs, labels


# Every loss kind, and the label-aware ones with text rows labelled apart from their images
# (sentence labels): "<kind>+text_labels" uses the labels of the next row for each text.
CASES = (*LOSS_KINDS, "medclip+text_labels", "medclip_cosine+text_labels")


def run_step(model, case, image_inputs, text_inputs, labels, text_labels=None):
    """One forward/backward; returns the loss, the parameter gradients, the embedding gradients.
    A '+text_labels' case uses `text_labels`, by default those of the whole batch `labels`."""
    kind, _, with_text_labels = case.partition("+")
    model.zero_grad()
    outputs = model(image_inputs, text_inputs)
    for key in ("image_embeds", "text_embeds"):
        outputs[key].retain_grad()
    extra = {"text_labels": text_labels_of(labels) if text_labels is None else text_labels} if with_text_labels else {}
    loss, _ = ContrastiveLoss(kind)(outputs, labels, **extra)
    loss.backward()
    module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return {
        "loss": loss.detach(),
        "params": {name: p.grad.clone() for name, p in module.named_parameters()},
        "image_embeds": outputs["image_embeds"].grad.clone(),
        "text_embeds": outputs["text_embeds"].grad.clone(),
    }


def _worker(rank: int, port: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        torch.set_num_threads(1)
        image_inputs, text_inputs, labels = fixed_batch()
        rows = slice(rank * BATCH // WORLD_SIZE, (rank + 1) * BATCH // WORLD_SIZE)
        results = {}
        full_text_labels = text_labels_of(labels)
        for case in CASES:
            torch.manual_seed(1)  # same initial weights on every rank and in the reference
            model = nn.parallel.DistributedDataParallel(TinyPair(with_bias=case == "siglip"))
            # This rank's rows of the text labels rolled over the whole batch.
            results[case] = run_step(model, case, image_inputs[rows], text_inputs[rows], labels[rows],
                                     full_text_labels[rows])
        torch.save(results, f"{out_dir}/rank{rank}.pt")
        # Without it one rank may destroy the group while gloo still serves the other, which then
        # aborts ("terminate called without an active exception"), mostly on a loaded machine.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(free_port(), str(out_dir)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD_SIZE)]


@pytest.mark.parametrize("kind", CASES)
def test_distributed_loss_and_gradients_equal_single_process(distributed_results, kind):
    torch.manual_seed(1)
    reference = run_step(TinyPair(with_bias=kind == "siglip"), kind, *fixed_batch())
    ranks = [r[kind] for r in distributed_results]
    tolerance = {"rtol": 1e-5, "atol": 1e-6}

    # DDP trains on the mean of the rank losses.
    mean_loss = sum(r["loss"] for r in ranks) / WORLD_SIZE
    torch.testing.assert_close(mean_loss, reference["loss"], **tolerance)

    # Parameter gradients after DDP's all-reduce average: identical on every rank.
    for name, grad in reference["params"].items():
        for rank in ranks:
            torch.testing.assert_close(rank["params"][name], grad, **tolerance, msg=f"{kind} {name}")

    # Each rank's embedding gradient is of the sum of rank losses; DDP's averaging divides it
    # by the world size, which gives the gradient of those rows in the single-process loss.
    for key in ("image_embeds", "text_embeds"):
        gathered = torch.cat([rank[key] for rank in ranks]) / WORLD_SIZE
        torch.testing.assert_close(gathered, reference[key], **tolerance, msg=f"{kind} {key}")


def test_medclip_targets_cross_ranks(distributed_results):
    """Guard on the fixture: with shared labels across halves the MedCLIP loss differs from CLIP,
    so the comparison above exercises cross-rank soft targets; separate text labels change it again."""
    clip = sum(r["clip"]["loss"] for r in distributed_results)
    medclip = sum(r["medclip"]["loss"] for r in distributed_results)
    assert not torch.allclose(clip, medclip)
    assert not torch.allclose(medclip, sum(r["medclip+text_labels"]["loss"] for r in distributed_results))
