"""Throughput benchmark: is the model or the data pipeline the bottleneck?

`run_bench(cfg)` measures, in one run, on the SAME model, batch size and precision:

    model only        training steps on a synthetic batch already on the device
    store, end to end DataLoader (cfg.num_workers) of uint8 rows from the image store,
                      moved to the device and augmented there (BatchAugment), then the step
    JPEG, end to end  DataLoader decoding the JPEGs with the CPU transforms, then the step
    loader only       the same two loaders without the model (images/s), since on a CPU
                      the model step can hide how much faster the store is
    device augment    BatchAugment alone on a uint8 batch already on the device (images/s)

plus peak memory (CUDA: allocated by tensors; CPU: the main process's peak RSS) and the
ratios end-to-end / model-only and store / JPEG. Warm-up steps are excluded; CUDA work is
synchronised before each clock read. Each timed block is a fresh loader epoch (indices
drawn with replacement), and the blocks of all measurements are interleaved round-robin so
that load from other processes falls on all of them alike. Results are printed as a table
and written to `benchmarks/results-<device>-<date>.json`.

`phantom=N` benchmarks a phantom of N studies at full MIMIC-CXR size (3056 px tall,
2544 wide): generated once into `data/bench_phantom_<N>/`, imported with
`mimic.prepare_mimic` and stored at `cfg.resize_size`; reused while current.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import os
import platform
import re
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import Sampler

from medclip_nb.config import Config
from medclip_nb.data import (
    BatchAugment,
    build_datasets,
    build_store,
    find_store,
    make_collate,
    make_loader,
    prepare_mimic,
)
from medclip_nb.errors import DataError
from medclip_nb.model import build_model
from medclip_nb.paths import repo_root, resolve
from medclip_nb.phantom import generate_phantom, phantom_is_current
from medclip_nb.runtime import pick_device, precision_name, set_backend_flags, set_cpu_threads, uses_channels_last
from medclip_nb.text import build_tokenizer
from medclip_nb.train import build_train_step

FULL_MIMIC_HEIGHT = 3056  # phantom.generate_phantom's `size` is the image height
WARMUP_STEPS = 3
# Data-only blocks take this many times more batches: without the model a block of the store
# path lasts a fraction of a second, too short to time on a busy machine.
DATA_ONLY_STEPS_FACTOR = 4


# ---- the benchmark phantom -------------------------------------------------------------------------
def prepare_bench_phantom(cfg: Config, studies: int, size: int = FULL_MIMIC_HEIGHT) -> Config:
    """Make (or reuse) a phantom of `studies` studies with images `size` px tall (default: full
    MIMIC-CXR size), its datasets.pkl and its image store at cfg.resize_size; return cfg
    pointing at them."""
    folder = resolve(f"data/bench_phantom_{studies}" + ("" if size == FULL_MIMIC_HEIGHT else f"_{size}px"))
    tree, prepared = folder / "mimic", folder / "prepared"
    data_path = prepared / "datasets.pkl"
    if phantom_is_current(tree, studies, size, cfg.phantom_seed):
        print(f"bench phantom: reusing {tree}")
    else:
        print(f"bench phantom: writing {studies} studies, {size} px tall, to {tree}")
        generate_phantom(tree, studies=studies, size=size, seed=cfg.phantom_seed)
    # Re-import when the tree is newer than the dataset file (the phantom was regenerated).
    if not data_path.is_file() or data_path.stat().st_mtime < (tree / "phantom.json").stat().st_mtime:
        prepare_mimic(tree, prepared, frontal_views=tuple(cfg.frontal_views))
    store = build_store(data_path, size=cfg.resize_size)  # resumes / returns at once when complete
    return cfg.replace(data_path=str(data_path), image_store=str(store), image_root=None)


# ---- measuring -------------------------------------------------------------------------------------
def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    # Linux: writing 5 to clear_refs resets the process's peak RSS (VmHWM).
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


class _ResampledEpochs(Sampler):
    """Dataset indices drawn with replacement, `length` per pass (set before each pass): every
    timed block is one fresh loader epoch, so no batch was prefetched before its clock starts
    and a small phantom never hits an epoch boundary mid-block."""

    def __init__(self, size: int, seed: int):
        self.size, self.length = size, 0
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        return iter(torch.randint(self.size, (self.length,), generator=self.generator).tolist())


class _Measurement:
    """One measurement: `batches(n)` gives n batches (a fresh loader epoch, or the synthetic
    batch n times), `work(batch)` processes one and returns its pairs. Accumulates pairs,
    seconds and peak memory over the timed blocks."""

    def __init__(self, batches: Callable[[int], Iterator], work: Callable[[Any], int], steps_factor: int = 1):
        self.batches, self.work, self.steps_factor = batches, work, steps_factor
        self.pairs, self.steps, self.seconds, self.peak_gib = 0, 0, 0.0, 0.0

    def run(self, steps: int, device: torch.device, timed: bool = True) -> None:
        steps *= self.steps_factor
        _synchronize(device)
        _reset_peak_memory(device)
        start = time.perf_counter()
        pairs = sum(self.work(b) for b in self.batches(steps))
        _synchronize(device)
        if timed:
            self.seconds += time.perf_counter() - start
            self.pairs, self.steps = self.pairs + pairs, self.steps + steps
            self.peak_gib = max(self.peak_gib, _peak_memory_gib(device))

    def as_dict(self) -> dict:
        return {"steps": self.steps, "pairs": self.pairs, "seconds": round(self.seconds, 4),
                "pairs_per_s": round(self.pairs / self.seconds, 2) if self.seconds else None,
                "peak_memory_gib": round(self.peak_gib, 3)}


def _interleaved(measurements: dict[str, _Measurement], steps: int, rounds: int, device: torch.device) -> None:
    """Warm every measurement up (untimed), then run `steps` timed steps of each in `rounds`
    round-robin blocks, so that a change in machine load (a shared CPU) falls on all alike."""
    for name, m in measurements.items():
        print(f"bench: warming up: {name}")
        m.run(WARMUP_STEPS, device, timed=False)
    blocks = [steps // rounds + (1 if r < steps % rounds else 0) for r in range(rounds)]
    for r, block in enumerate(blocks):
        print(f"bench: round {r + 1}/{rounds}: {block} timed steps each")
        for m in measurements.values():
            m.run(block, device)


class _PairsStep:
    """`train.build_train_step`'s step, the one train() takes, on a fresh model as train() builds it
    (fused AdamW and the sync-free guard on a GPU, channels_last, torch.compile), at the peak
    learning rate (no warmup, a schedule far longer than the benchmark); a call returns the pairs
    it trained on (0: fewer than 2, no step)."""

    def __init__(self, cfg: Config, tokenizer, device: torch.device):
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, tokenizer).to(device)
        self.channels_last = uses_channels_last(device, cfg.channels_last)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.step = build_train_step(cfg.replace(warmup=0.0, debug=False), model, device, total_steps=10**9)
        self.precision = precision_name(self.step.amp_dtype)

    def __call__(self, pixel_values, input_ids, attention_mask, labels) -> int:
        if pixel_values.shape[0] < 2:  # a contrastive step needs pairs to contrast
            return 0
        if self.channels_last:
            pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        self.step(pixel_values, input_ids, attention_mask, labels)
        return pixel_values.shape[0]


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def _device_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def _source_image_shape(dataset) -> list[int] | None:
    from PIL import Image

    with contextlib.suppress(OSError, IndexError):
        with Image.open(dataset.image_file(0)) as img:
            return [img.height, img.width]
    return None


# ---- the benchmark ---------------------------------------------------------------------------------
MEASUREMENTS = ("model_only", "store_end_to_end", "store_data_only", "jpeg_end_to_end", "jpeg_data_only",
                "device_augment_only")


@dataclass
class BenchOptions:
    """`bench`'s flags beyond the config: `phantom` studies (None: the config's data) of
    `phantom_size` px, `steps` timed steps per measurement in `rounds` blocks, measurements to
    `skip`, where the JSON goes (`json_path`; default benchmarks/results-<device>-<date>[-compiled].json)
    and `prepare_only` (build the phantom, its dataset and store, then stop)."""

    phantom: int | None = None
    phantom_size: int = FULL_MIMIC_HEIGHT
    steps: int = 20
    rounds: int = 4
    skip: tuple[str, ...] = ()
    json_path: str | None = None
    prepare_only: bool = False


def run_bench(cfg: Config, options: BenchOptions | None = None) -> dict[str, Any]:
    """Measure model-only, store and JPEG throughput as the module docstring says; print a
    table, write the JSON and return the results. The `steps` timed steps of each measurement
    run in `rounds` interleaved blocks. On a CPU the main process uses (cores - cfg.num_workers)
    threads, at least one, while it runs (runtime.set_cpu_threads)."""
    options = options or BenchOptions()
    if options.steps < 1:
        raise DataError(f"bench --steps must be at least 1, got {options.steps}")
    unknown = sorted(set(options.skip) - set(MEASUREMENTS))
    if unknown:
        raise DataError(f"bench --skip: {unknown[0]!r} is not one of {', '.join(MEASUREMENTS)}")
    options.rounds = max(1, min(options.rounds, options.steps))
    if options.phantom is not None:
        if options.phantom < 1:
            raise DataError(f"bench --phantom must be a positive number of studies, got {options.phantom}")
        cfg = prepare_bench_phantom(cfg, options.phantom, options.phantom_size)
    if options.prepare_only:
        print(f"bench: data ready: {cfg.data_path} (store {cfg.image_store})")
        return {"data_path": cfg.data_path, "image_store": cfg.image_store}
    device = pick_device(cfg.gpu_id)
    threads_before = torch.get_num_threads()
    set_backend_flags(device)
    set_cpu_threads(device, cfg.cpu_threads, cfg.num_workers)
    try:
        return _run_bench(cfg, device, options)
    finally:
        torch.set_num_threads(threads_before)


@dataclass
class _Inputs:
    """What every measurement shares: the step, the device augmentation and the training data."""

    cfg: Config
    device: torch.device
    step: _PairsStep
    augment: BatchAugment
    generator: torch.Generator
    tokenizer: Any
    collate: Callable
    jpeg_train: Any  # the train split decoding JPEGs
    store: Any  # the image store, or None

    def to_device(self, b: dict):
        return (b["input_ids"].to(self.device, non_blocking=True),
                b["attention_mask"].to(self.device, non_blocking=True), b["labels"].to(self.device, non_blocking=True))

    def jpeg_step(self, b: dict) -> int:
        return self.step(b["pixel_values"].to(self.device, non_blocking=True), *self.to_device(b))

    def store_step(self, b: dict) -> int:
        pixels = self.augment(b["pixel_values"].to(self.device, non_blocking=True), generator=self.generator)
        return self.step(pixels, *self.to_device(b))

    def data_only(self, b: dict) -> int:
        # Loader only: the batch as the step would receive it on the device, no model and (for
        # the store) no augmentation, which is timed on its own as "device augmentation".
        b["pixel_values"].to(self.device, non_blocking=True)
        return b["pixel_values"].shape[0]

    def augment_only(self, pixels: torch.Tensor) -> int:
        return self.augment(pixels, generator=self.generator).shape[0]


def _inputs(cfg: Config, device: torch.device) -> _Inputs:
    store = find_store(cfg)
    jpeg_sets, records, _ = build_datasets(cfg)
    tokenizer = build_tokenizer(cfg, [r["report"] for r in records["train"]])
    collate = make_collate(tokenizer, cfg)
    step = _PairsStep(cfg, tokenizer, device)
    augment = BatchAugment(cfg.image_size, cfg.augment, train=True).to(device)
    generator = torch.Generator(device).manual_seed(cfg.seed)
    if len(jpeg_sets["train"]) < cfg.batch_size:
        raise DataError(f"{cfg.data_path}: the train split has {len(jpeg_sets['train'])} samples, "
                        f"fewer than one batch of {cfg.batch_size}")
    return _Inputs(cfg, device, step, augment, generator, tokenizer, collate, jpeg_sets["train"], store)


def _synthetic_batch(inputs: _Inputs) -> tuple[torch.Tensor, ...]:
    """Model only: one synthetic batch, already on the device, used for every step."""
    cfg, device = inputs.cfg, inputs.device
    batch, length = cfg.batch_size, inputs.tokenizer.max_length
    return (
        torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=device),
        torch.randint(3, inputs.tokenizer.vocab_size, (batch, length), device=device),
        torch.ones(batch, length, dtype=torch.int64, device=device),
        torch.zeros(batch, 14, device=device),
    )


def _loader_epochs(dataset, inputs: _Inputs) -> Callable[[int], Iterator[dict]]:
    """`epochs(n)`: a fresh loader epoch of n batches drawn with replacement from `dataset`."""
    sampler = _ResampledEpochs(len(dataset), inputs.cfg.seed)
    loader = make_loader(dataset, inputs.cfg, train=True, sampler=sampler, collate_fn=inputs.collate)

    def epoch(n: int) -> Iterator[dict]:
        sampler.length = n * inputs.cfg.batch_size
        return iter(loader)

    return epoch


def _measurements(inputs: _Inputs) -> dict[str, _Measurement]:
    synthetic = _synthetic_batch(inputs)
    measurements = {"model_only": _Measurement(lambda n: itertools.repeat(synthetic, n), lambda b: inputs.step(*b))}
    datasets = {"jpeg": inputs.jpeg_train}
    if inputs.store is None:
        print("bench: no image store for this config (set image_store, or build one with "
              "`python -m medclip_nb cache`): the store rows are skipped")
    else:
        store_train = build_datasets(inputs.cfg, store=inputs.store, raw_uint8=True)[0]["train"]
        datasets["store"] = store_train
        rows = torch.stack([store_train[i % len(store_train)]["pixel_values"] for i in range(inputs.cfg.batch_size)])
        device_rows = rows.to(inputs.device)
        measurements["device_augment_only"] = _Measurement(
            lambda n: itertools.repeat(device_rows, n), inputs.augment_only, DATA_ONLY_STEPS_FACTOR)
    work = {"store": inputs.store_step, "jpeg": inputs.jpeg_step}
    for name in ("store", "jpeg"):
        if name in datasets:
            epochs = _loader_epochs(datasets[name], inputs)
            measurements[f"{name}_end_to_end"] = _Measurement(epochs, work[name])
            measurements[f"{name}_data_only"] = _Measurement(epochs, inputs.data_only, DATA_ONLY_STEPS_FACTOR)
    return measurements


def _ratios(results: dict) -> dict[str, float | None]:
    def ratio(a: str, b: str) -> float | None:
        if a in results and b in results:
            return round(results[a]["pairs_per_s"] / results[b]["pairs_per_s"], 3)
        return None

    return {
        "store_end_to_end_over_model_only": ratio("store_end_to_end", "model_only"),
        "jpeg_end_to_end_over_model_only": ratio("jpeg_end_to_end", "model_only"),
        "store_over_jpeg_end_to_end": ratio("store_end_to_end", "jpeg_end_to_end"),
        "store_over_jpeg_data_only": ratio("store_data_only", "jpeg_data_only"),
    }


def _report(inputs: _Inputs, results: dict, phantom: int | None, steps: int, rounds: int) -> dict[str, Any]:
    cfg = inputs.cfg
    return {
        "date": dt.datetime.now().date().isoformat(),
        "device": _device_name(inputs.device),
        "torch": torch.__version__,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "config": {k: getattr(cfg, k) for k in (
            "data_path", "image_store", "model", "vision_backbone", "text_layers", "text_width", "max_text_tokens",
            "image_size", "resize_size", "augment", "batch_size", "num_workers", "use_amp", "channels_last",
            "compile", "loss")},
        "precision": inputs.step.precision,
        "steps": steps,
        "rounds": rounds,
        "warmup_steps": WARMUP_STEPS,
        "data_only_steps_factor": DATA_ONLY_STEPS_FACTOR,
        "phantom_studies": phantom,
        "train_images": len(inputs.jpeg_train),
        "source_image_hw": _source_image_shape(inputs.jpeg_train),
        "results": results,
        "ratios": _ratios(results),
    }


def _run_bench(cfg: Config, device: torch.device, options: BenchOptions) -> dict[str, Any]:
    steps, rounds = options.steps, options.rounds
    inputs = _inputs(cfg, device)
    measurements = {k: m for k, m in _measurements(inputs).items() if k not in options.skip}
    print(f"bench: {steps} timed steps of {cfg.batch_size} pairs ({inputs.step.precision}) per measurement, "
          f"in {rounds} rounds" + (f"; left out: {', '.join(options.skip)}" if options.skip else ""))
    _interleaved(measurements, steps, rounds, device)
    results = {name: m.as_dict() for name, m in measurements.items()}
    measurements.clear()  # ends the loader workers
    report = _report(inputs, results, options.phantom, steps, rounds)
    print(format_table(report))
    compiled = "-compiled" if cfg.compile else ""
    out = (Path(options.json_path) if options.json_path else
           repo_root() / "benchmarks" / f"results-{_device_slug(device)}-{report['date']}{compiled}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"bench: results written to {out}")
    report["results_file"] = str(out)
    return report


def format_table(report: dict) -> str:
    """The benchmark as a plain-text table."""
    memory = "peak GPU GiB" if "CPU" not in report["device"] else "peak RSS GiB"
    config = report["config"]
    lines = [
        f"device: {report['device']} | {config['model']}/{config['vision_backbone']} at {config['image_size']} px "
        f"(stored {config['resize_size']} px), batch {config['batch_size']}, {report['precision']}, "
        f"{config['num_workers']} loader workers, {report['steps']} timed steps"
        + (f" | source images {report['source_image_hw'][0]}x{report['source_image_hw'][1]}"
           if report.get("source_image_hw") else ""),
        f"{'measurement (pairs or images)':<30} {'per s':>10} {'seconds':>9} {memory:>13}",
    ]
    labels = {"model_only": "model only", "store_end_to_end": "store, end to end",
              "jpeg_end_to_end": "JPEG, end to end", "store_data_only": "store, loader only",
              "jpeg_data_only": "JPEG, loader only", "device_augment_only": "device augmentation"}
    for key, label in labels.items():
        row = report["results"].get(key)
        if row is not None:
            lines.append(f"{label:<30} {row['pairs_per_s']:>10.1f} {row['seconds']:>9.2f} "
                         f"{row['peak_memory_gib']:>13.2f}")
    names = {"store_end_to_end_over_model_only": "store end-to-end / model only",
             "jpeg_end_to_end_over_model_only": "JPEG end-to-end / model only",
             "store_over_jpeg_end_to_end": "store / JPEG, end to end",
             "store_over_jpeg_data_only": "store / JPEG, loader only"}
    for key, label in names.items():
        value = report["ratios"].get(key)
        if value is not None:
            lines.append(f"{label:<32} {value:>7.2f}x")
    return "\n".join(lines)
