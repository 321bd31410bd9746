"""`make bench` (`python -m medclip_nb bench-step`): our training step against open_clip's, and
against the fastest this machine multiplies fp32 matrices, in one run.

Rows (each a training step on one synthetic batch already in memory, as `train()` takes it:
`train.build_train_step`, deterministic CPU kernels, the runtime.CPU_CHOICES of this checkout):

    fp32 GEMM          torch.mm of two n x n fp32 matrices: the machine's limit, 1 thread and all
    ours / open_clip   the same network (a ResNet-50 image tower and a transformer text tower of the
                       config's size) in each project's own code and step, one thread: ours (also
                       with the CPU choices of before issue 29, EARLIER_CHOICES), and
                       open_clip's `open_clip_train.train.train_one_epoch` on timm's resnet50 and
                       its TextTransformer, with the AdamW groups of its main.py (an optional
                       dependency: pip install -e .[bench]); nothing is downloaded
    ours, all cores    the same step of ours on every core
    study model        params/debug.yaml's model (what `make study` trains), all cores and one
                       thread, and at one thread with each earlier choice put back: the NaN fill
                       of deterministic mode, the for-loop AdamW, NCHW images; and dropout off,
                       which is a modelling choice kept (its cost is shown, not saved)

FLOPs per step are counted once per network with torch's FlopCounterMode (matrix products,
convolutions and attention, forward and backward); a row's GEMM fraction is its FLOP rate over
the GEMM rate at the same thread count. All rows run in `rounds` interleaved blocks, so load
from other processes falls on each alike; ratios are medians of per-round ratios with their
range, and at one thread also of the CPU seconds each step used (time.process_time), which other
processes on the machine hardly move.
"""

from __future__ import annotations

import statistics
import time
from argparse import Namespace
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from medclip_nb.config import Config
from medclip_nb.model import build_model
from medclip_nb.runtime import available_cores, cpu_choices, set_backend_flags, uses_channels_last
from medclip_nb.train import build_train_step

GEMM_SIDE = 2048
# runtime.CPU_CHOICES as they were before issue 29 (bench-train's 'old' setting has the same).
EARLIER_CHOICES = {"nan_fill": True, "adamw": "for-loop", "channels_last": False}


@dataclass
class Row:
    """One measurement: `run(n)` does n steps (or products) and returns the pairs it trained on."""

    name: str
    threads: int
    run: Callable[[int], int]
    flops_per_step: float = 0.0
    deterministic: bool = True  # train()'s CPU setting; open_clip's trainer leaves it off
    nan_fill: bool = False
    wall: list[float] = field(default_factory=list)  # seconds per step, one per round
    cpu: list[float] = field(default_factory=list)
    pairs_per_step: int = 0

    def block(self, steps: int, timed: bool = True) -> None:
        torch.set_num_threads(self.threads)
        torch.use_deterministic_algorithms(self.deterministic)
        torch.utils.deterministic.fill_uninitialized_memory = self.nan_fill
        wall, cpu = time.perf_counter(), time.process_time()
        pairs = self.run(steps)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if timed:
            self.wall.append(wall / steps)
            self.cpu.append(cpu / steps)
            self.pairs_per_step = pairs // steps

    def rate(self) -> float:
        """FLOP/s at the median round."""
        return self.flops_per_step / statistics.median(self.wall)


# ---- the rows ----------------------------------------------------------------------------------
def gemm_row(threads: int, side: int = GEMM_SIDE) -> Row:
    a, b = torch.randn(side, side), torch.randn(side, side)
    out = torch.empty(side, side)

    def run(n: int) -> int:
        for _ in range(n):
            torch.mm(a, b, out=out)
        return 0

    return Row(f"fp32 GEMM {side}^3", threads, run, flops_per_step=2.0 * side**3, deterministic=False)


class SizesOnly:
    """What build_model reads of a tokenizer (the batch is synthetic: no tokenizer is learned)."""

    def __init__(self, cfg: Config):
        self.vocab_size, self.pad_id, self.max_length = cfg.vocab_size, 0, cfg.max_text_tokens


def synthetic_batch(cfg: Config, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Images, token ids and mask of cfg's sizes: rows of 16 to max_text_tokens real tokens with
    one full row, as in params/debug.yaml's batches of reports (the longest fills the cap)."""
    g = torch.Generator().manual_seed(seed)
    batch, length = cfg.batch_size, cfg.max_text_tokens
    lengths = torch.randint(min(16, length), length + 1, (batch,), generator=g)
    lengths[0] = length
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    ids = torch.randint(4, cfg.vocab_size, (batch, length), generator=g) * mask
    return torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=g), ids, mask, torch.zeros(batch, 14)


def count_flops(step: Callable[[], Any]) -> float:
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def our_row(name: str, cfg: Config, threads: int, *, dropout: bool = True, **choices) -> Row:
    """Our step (`build_train_step`, as train() takes it) for cfg's model on a synthetic batch;
    `choices` are runtime.CPU_CHOICES fields for this row (an earlier choice put back)."""
    device = torch.device("cpu")
    with cpu_choices(**choices) as chosen:
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, SizesOnly(cfg))
        if not dropout:
            for module in model.modules():
                if isinstance(module, nn.Dropout):
                    module.p = 0.0
                elif isinstance(module, nn.MultiheadAttention):
                    module.dropout = 0.0
        channels_last = uses_channels_last(device, cfg.channels_last)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        step = build_train_step(cfg.replace(warmup=0.0, debug=False), model, device, total_steps=10**9)
        nan_fill = chosen.nan_fill
    images, ids, mask, labels = synthetic_batch(cfg)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)

    def run(n: int) -> int:
        for _ in range(n):
            step(images, ids, mask, labels)
        return n * images.shape[0]

    row = Row(name, threads, run, nan_fill=nan_fill)
    row.flops_per_step = count_flops(lambda: run(1))
    return row


def open_clip_row(cfg: Config, threads: int) -> Row | None:
    """open_clip's own step on the same network: timm's resnet50 (torchvision's architecture)
    with average pooling and a linear projection, its TextTransformer of cfg's width, layers and
    heads at cfg.max_text_tokens, and `open_clip_train.train.train_one_epoch` over the same
    synthetic batch, fp32, with its main.py's AdamW groups and no gradient clipping (its
    defaults). None when open_clip is not installed."""
    try:
        from open_clip.loss import ClipLoss
        from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
        from open_clip_train.train import train_one_epoch
    except ImportError:
        return None
    torch.manual_seed(cfg.seed)
    model = CLIP(cfg.embed_dim, CLIPVisionCfg(timm_model_name=cfg.vision_backbone, timm_model_pretrained=False,
                                              timm_pool="avg", timm_proj="linear", image_size=cfg.image_size),
                 CLIPTextCfg(context_length=cfg.max_text_tokens, vocab_size=cfg.vocab_size, width=cfg.text_width,
                             heads=cfg.text_heads, layers=cfg.text_layers), output_dict=True)
    exclude = [p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n
               for n, p in model.named_parameters()]
    params = list(model.parameters())
    optimizer = torch.optim.AdamW([
        {"params": [p for p, e in zip(params, exclude) if e], "weight_decay": 0.0},
        {"params": [p for p, e in zip(params, exclude) if not e], "weight_decay": cfg.weight_decay}], lr=cfg.lr)
    images, ids, _mask, _labels = synthetic_batch(cfg)
    args = Namespace(device="cpu", precision="fp32", distill=False, accum_freq=1, skip_scheduler=True,
                     horovod=False, grad_clip_norm=None, log_every_n_steps=10**9, world_size=1, rank=0,
                     local_rank=0, batch_size=cfg.batch_size, wandb=False)

    class Loader:  # what train_one_epoch reads of open_clip_train's DataInfo
        def __init__(self):
            self.steps = 0
            self.num_batches = self.num_samples = 0

        def __iter__(self):
            return iter([(images, ids)] * self.steps)

    loader = Loader()
    data = {"train": Namespace(dataloader=loader, set_epoch=lambda epoch: None)}
    loss = ClipLoss()

    def run(n: int) -> int:
        loader.steps, loader.num_batches, loader.num_samples = n, n, n * cfg.batch_size
        train_one_epoch(model, data, loss, 0, optimizer, None, None, None, args)
        return n * cfg.batch_size

    row = Row("open_clip (same network)", threads, run, deterministic=False)
    row.flops_per_step = count_flops(lambda: run(1))
    return row


# ---- the run -----------------------------------------------------------------------------------
def build_rows(cfg: Config, study_cfg: Config, levers: bool = True) -> list[Row]:
    cores = available_cores()
    rows = [gemm_row(1), gemm_row(cores), our_row("ours", cfg, 1)]
    theirs = open_clip_row(cfg, 1)
    if theirs is None:
        print("bench-step: open_clip is not installed (pip install -e .[bench]): its row is left out")
    else:
        rows += [theirs, our_row("ours before issue 29", cfg, 1, **EARLIER_CHOICES)]
    rows += [our_row("ours", cfg, cores), our_row("study model", study_cfg, cores),
             our_row("study model", study_cfg, 1)]
    if levers:
        rows += [our_row("  with the NaN fill", study_cfg, 1, nan_fill=True),
                 our_row("  with for-loop AdamW", study_cfg, 1, adamw="for-loop"),
                 our_row("  with NCHW images", study_cfg, 1, channels_last=False),
                 our_row("  with dropout off", study_cfg, 1, dropout=False)]
    return rows


def run_step_bench(cfg: Config, study_cfg: Config, steps: int = 3, rounds: int = 4,
                   levers: bool = True) -> dict[str, Any]:
    """Measure every row (module docstring): one untimed step each, then `rounds` rounds of
    `steps` steps of every row in turn. Prints the table and returns it as data."""
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.utils.deterministic.fill_uninitialized_memory)
    set_backend_flags(torch.device("cpu"))
    try:
        rows = build_rows(cfg, study_cfg, levers)
        for row in rows:
            row.block(1, timed=False)
        for number in range(rounds):
            print(f"bench-step: round {number + 1}/{rounds}", flush=True)
            for row in rows:
                row.block(steps)
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1])
        torch.utils.deterministic.fill_uninitialized_memory = saved[2]
    report = summarize(rows, cfg, study_cfg, steps, rounds)
    print(format_report(report))
    return report


def paired_ratio(a: list[float], b: list[float]) -> dict[str, float]:
    """b / a per round (with seconds per step: a's speed over b's, b's time over a's): median, min, max."""
    ratios = [y / x for x, y in zip(a, b)]
    return {"median": round(statistics.median(ratios), 3), "min": round(min(ratios), 3),
            "max": round(max(ratios), 3)}


def summarize(rows: list[Row], cfg: Config, study_cfg: Config, steps: int, rounds: int) -> dict[str, Any]:
    gemm = {row.threads: row for row in rows if row.name.startswith("fp32 GEMM")}
    table = []
    for row in rows:
        entry = {"name": row.name, "threads": row.threads, "seconds_per_step": round(statistics.median(row.wall), 4),
                 "cpu_seconds_per_step": round(statistics.median(row.cpu), 4),
                 "gflop_per_step": round(row.flops_per_step / 1e9, 3), "gflop_per_s": round(row.rate() / 1e9, 2)}
        if row.pairs_per_step:
            entry["pairs_per_s"] = round(row.pairs_per_step / statistics.median(row.wall), 2)
            entry["gemm_fraction"] = round(row.rate() / gemm[row.threads].rate(), 3)
        table.append(entry)
    by_name = {(row.name, row.threads): row for row in rows}
    ratios = {}
    ours, theirs = by_name[("ours", 1)], by_name.get(("open_clip (same network)", 1))
    if theirs is not None:
        before = by_name[("ours before issue 29", 1)]
        ratios["ours_over_open_clip_1_thread"] = {"wall": paired_ratio(ours.wall, theirs.wall),
                                                  "cpu": paired_ratio(ours.cpu, theirs.cpu)}
        ratios["ours_before_issue_29_over_open_clip_1_thread"] = {"wall": paired_ratio(before.wall, theirs.wall),
                                                                  "cpu": paired_ratio(before.cpu, theirs.cpu)}
    base = by_name[("study model", 1)]
    for row in rows:
        if row.name.startswith("  with"):
            ratios[f"study model{row.name.strip().removeprefix('with')}"] = {
                "wall": paired_ratio(base.wall, row.wall), "cpu": paired_ratio(base.cpu, row.cpu)}
    return {"cores": available_cores(), "torch": torch.__version__, "steps": steps, "rounds": rounds,
            "network": network_words(cfg), "study_network": network_words(study_cfg), "rows": table,
            "ratios": ratios}


def network_words(cfg: Config) -> str:
    return (f"{cfg.vision_backbone} at {cfg.image_size} px + text {cfg.text_layers} x {cfg.text_width} "
            f"({cfg.max_text_tokens} tokens), batch {cfg.batch_size}")


def format_report(report: dict[str, Any]) -> str:
    lines = [f"bench-step: {report['cores']} cores, torch {report['torch']}, medians of {report['rounds']} "
             f"interleaved rounds of {report['steps']} steps",
             f"  bench network: {report['network']}; study model (params/debug.yaml): {report['study_network']}",
             f"{'row':<28} {'threads':>7} {'pairs/s':>8} {'CPU s/step':>10} {'GFLOP/step':>10} {'GFLOP/s':>8} "
             f"{'of GEMM':>7}"]
    for r in report["rows"]:
        pairs = f"{r['pairs_per_s']:>8.1f}" if "pairs_per_s" in r else f"{'':>8}"
        fraction = f"{r['gemm_fraction']:>7.2f}" if "gemm_fraction" in r else f"{'':>7}"
        lines.append(f"{r['name']:<28} {r['threads']:>7} {pairs} {r['cpu_seconds_per_step']:>10.3f} "
                     f"{r['gflop_per_step']:>10.2f} {r['gflop_per_s']:>8.1f} {fraction}")
    for name, ratio in report["ratios"].items():
        wall, cpu = ratio["wall"], ratio["cpu"]
        label = {"ours_over_open_clip_1_thread": "ours / open_clip, pairs/s",
                 "ours_before_issue_29_over_open_clip_1_thread": "ours before issue 29 / open_clip"}.get(
            name, f"{name}: time / ours")
        lines.append(f"{label:<40} {wall['median']:.3f} [{wall['min']:.3f}-{wall['max']:.3f}] by wall time, "
                     f"{cpu['median']:.3f} [{cpu['min']:.3f}-{cpu['max']:.3f}] by CPU time")
    return "\n".join(lines)
