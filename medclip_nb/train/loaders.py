"""A training run's data: datasets, tokenizer, loaders and the unpaired items, with the size
lines `train()` prints."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from medclip_nb.config import Config
from medclip_nb.data import (
    BatchAugment,
    EpochSampler,
    build_datasets,
    build_unpaired,
    find_store,
    make_collate,
    make_loader,
    truncation_warning,
)
from medclip_nb.errors import DataError
from medclip_nb.paths import resolve, shown
from medclip_nb.runtime import World
from medclip_nb.text import build_tokenizer


@dataclass
class TrainData:
    tokenizer: Any
    splits: dict
    train_sampler: Any
    train_loader: Any
    val_loader: Any  # None without a validation split
    augment: Any  # data.BatchAugment when training batches hold uint8 store images
    unpaired: Any = None  # data.UnpairedBatches when cfg.unpaired_sources is set
    augment_generator: torch.Generator | None = None  # seeded per batch by the loop, with `augment`


def split_size_line(dataset, why: str = "debug subset") -> str:
    """'64 samples', or '64 of 90 samples (debug subset)' when --debug (or train_fraction, `why`)
    keeps only some of them."""
    full = getattr(dataset, "full_size", len(dataset))
    if full == len(dataset):
        return f"{len(dataset)} samples"
    return f"{len(dataset)} of {full} samples ({why})"


def _say_split_sizes(cfg: Config, splits: dict, say) -> None:
    say("Dataset loaded:")
    for name in ("train", "val", "test"):
        fraction = name == "train" and cfg.train_fraction < 1
        why = ("train_fraction " + format(cfg.train_fraction, "g") + (", debug subset" if cfg.debug else "")
               if fraction else "debug subset")
        say(f"  {name}: {split_size_line(splits[name], why)}")


def _loaders(cfg: Config, world: World, splits: dict, collate, say) -> tuple[Any, Any, Any]:
    """(train sampler, train loader, val loader or None); prints the loader sizes."""
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
    return train_sampler, train_loader, val_loader


def prepare_data(cfg: Config, world: World, device: torch.device, tokenizer, say) -> TrainData:
    """Datasets, tokenizer (learned from the training reports unless given) and loaders;
    prints the dataset and loader sizes. With an image store on a GPU (and cfg.gpu_augment)
    the loaders only gather uint8 rows and the training augmentation runs on the GPU."""
    say(f"Loading dataset: {shown(resolve(cfg.data_path))}")
    store = find_store(cfg)
    augment = None
    if store is not None and device.type == "cuda" and cfg.gpu_augment:
        augment = BatchAugment(cfg.image_size, cfg.augment, train=True)
    splits, records, warnings = build_datasets(cfg, tokenizer, store=store, raw_uint8=augment is not None)
    if tokenizer is None:
        train_reports = [r["report"] for r in records["train"]]
        tokenizer = build_tokenizer(cfg, train_reports)
        warnings.append(truncation_warning(tokenizer, train_reports))
    if getattr(splits["train"], "sentence_label_line", None):
        say(splits["train"].sentence_label_line)
    for warning in filter(None, warnings):
        say(f"Warning: {warning}")
    _say_split_sizes(cfg, splits, say)
    if store is not None:
        say(f"Images from the store {shown(store.folder)} where it has them"
            + (", augmented on the GPU" if augment is not None else ""))

    train_sampler, train_loader, val_loader = _loaders(cfg, world, splits, make_collate(tokenizer, cfg), say)
    # ---- unpaired data (data/unpaired.py): image-only / text-only items appended to each step ----
    rest_pool = cfg.unpaired_pool == "train_fraction_rest"
    if rest_pool and cfg.train_fraction == 1:
        unpaired = None
        say("  unpaired: none (unpaired_pool train_fraction_rest, and train_fraction 1 leaves no training patient "
            "out: a plain paired run)")
    else:
        unpaired = build_unpaired(cfg, records, tokenizer, data_path=resolve(cfg.data_path), store=store,
                                  raw_uint8=augment is not None, world_size=world.world_size)
    if unpaired is not None:
        sizes = ", ".join(f"{name} {len(source)}" for name, source in unpaired.sources.items())
        where = " from the training patients train_fraction leaves out" if rest_pool else ""
        say(f"  unpaired: {sizes}{where}; {cfg.unpaired_per_batch} of each per step")
    return TrainData(tokenizer, splits, train_sampler, train_loader, val_loader, augment, unpaired,
                     torch.Generator(device) if augment is not None else None)
