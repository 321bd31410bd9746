"""``build_datasets(cfg)``: the dataset file of a config, loaded, validated and made into one
``CXRDataset`` per split (image root, train fraction, debug subset, sentence labels).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from medclip_nb.data.dataset import CXRDataset
from medclip_nb.data.decoupled import decoupled_pool
from medclip_nb.data.images import build_transforms
from medclip_nb.data.loading import REQUIRED_SPLITS, load_dataset_file
from medclip_nb.data.provenance import check_not_stale
from medclip_nb.data.train_fraction import split_train_fraction
from medclip_nb.data.validation import uses_precomputed_text, validate_clip_indices, validate_dataset
from medclip_nb.errors import DataError
from medclip_nb.paths import resolve
from medclip_nb.text import (
    PREPARED_NAME,
    clean_report,
    label_tensor_table,
    read_sentence_labels,
    resolve_sentence_labels,
    sentence_hits,
)

if TYPE_CHECKING:
    from medclip_nb.config import Config

def truncation_warning(tokenizer, reports: Sequence[str], max_reports: int = 2000) -> str | None:
    """How many training texts the tokenizer cuts short (first ``max_reports`` looked at)."""
    if not hasattr(tokenizer, "token_lengths") or not reports:
        return None
    sample = [clean_report(r) for r in reports[:max_reports]]
    lengths = tokenizer.token_lengths(sample)
    cut = sum(length > tokenizer.max_length for length in lengths)
    if not cut:
        return None
    return (
        f"{cut} of the first {len(sample)} training reports are longer than {tokenizer.max_length} "
        f"tokens and are truncated (median length {int(np.median(lengths))})"
    )


def _sentence_label_table(cfg: "Config", data_path: Path, train: list[dict], warnings_out: list[str]):
    """(the training sentences' label table of `cfg.sentence_labels` (sentence_labels.py), or None;
    the line that says how many of the sentences training can sample it holds). Misses are warned
    about, and refused with sentence_label_miss 'error'."""
    if not cfg.sentence_labels:
        return None, None
    path = resolve_sentence_labels(cfg)
    if path is None:
        warnings_out.append(f"sentence_labels 'auto': no {PREPARED_NAME} beside {data_path}; "
                            "each sentence has its study's labels")
        return None, None
    table = read_sentence_labels(path)
    hits, total, first_miss = sentence_hits((r["report"] for r in train), table, cfg.short_sentence_tokens)
    line = (f"Sentence labels: {hits:,} of the {total:,} training sentences ({hits / max(total, 1):.1%}) found in "
            f"{path} (MedCLIP's normal form)")
    if hits < total:
        if cfg.sentence_label_miss == "error":
            raise DataError(f"sentence_labels: {path} has no entry for {total - hits:,} training sentence(s), e.g. "
                            f"{first_miss!r} (sentence_label_miss: error)")
        gets = "No Finding = 1" if cfg.sentence_label_miss == "no_finding" else "their study's labels"
        warnings_out.append(f"{total - hits:,} training sentence(s) are missing from {path}, e.g. {first_miss!r}; "
                            f"they get {gets} (sentence_label_miss)")
    return label_tensor_table(table), line


def _rest_as_unpaired(cfg: "Config", data_path: Path, rest: list[dict], warnings_out: list[str]) -> dict:
    """The unpaired splits of `unpaired_pool: train_fraction_rest` (data/decoupled.py), made of the training
    records train_fraction left out; they replace any the dataset file holds."""
    table = None
    if "texts" in cfg.unpaired_sources:
        path = resolve_sentence_labels(cfg)
        if path is None:
            raise DataError(f"config key 'unpaired_pool': 'train_fraction_rest' labels each text-only sentence from "
                            f"a sentence-label table, and sentence_labels 'auto' finds no {PREPARED_NAME} beside "
                            f"{data_path}")
        table = read_sentence_labels(path)
    pool = decoupled_pool(rest, cfg.unpaired_sources, table, cfg.sentence_label_miss)
    if pool.misses:
        got = {"study_labels": "their study's labels", "no_finding": "No Finding = 1"}[cfg.sentence_label_miss]
        warnings_out.append(f"{pool.misses} text-only sentence(s) of the left-out patients are missing from the "
                            f"sentence-label table: they get {got} (sentence_label_miss)")
    return pool.splits


def build_datasets(
    cfg: "Config", tokenizer=None, *, store: Any = None, raw_uint8: bool = False
) -> tuple[dict[str, CXRDataset], dict[str, list[dict]], list[str]]:
    """Load and validate ``cfg.data_path`` and build one ``CXRDataset`` per split.

    Relative image paths are taken from ``cfg.image_root`` or else the dataset file's
    folder; ``cfg.train_fraction`` < 1 keeps a seeded share of the training patients
    (train_fraction.py); with ``cfg.debug`` each split keeps its first ``cfg.debug_subset`` records. The
    train split uses the training transform and ``cfg.report_sampling``; val/test use the
    evaluation transform and whole reports. ``store`` (an image store) serves images when it
    has them; ``raw_uint8`` makes the train split yield uint8 images for GPU augmentation.
    With a ``tokenizer``, a warning says how many training reports it truncates. With
    ``text_encoder: precomputed`` every record must have ``clip_indices`` (``validate_clip_indices``).
    Returns ``(datasets, records, warnings)``.
    """
    data_path = resolve(cfg.data_path)
    records = load_dataset_file(data_path)
    check_not_stale(data_path)  # prepared from a phantom that was replaced since
    root = resolve(cfg.image_root) if cfg.image_root else data_path.parent
    warnings_out = validate_dataset(records, data_path, root)
    if uses_precomputed_text(cfg):
        validate_clip_indices(records, data_path)
    full_sizes = {split: len(items) for split, items in records.items()}
    if cfg.train_fraction < 1:
        kept, rest = split_train_fraction(records["train"], cfg.train_fraction, cfg.train_fraction_seed)
        records = {**records, "train": kept}
        if cfg.unpaired_pool == "train_fraction_rest":  # the left-out patients as unpaired items (decoupled.py)
            records.update(_rest_as_unpaired(cfg, data_path, rest, warnings_out))
    if cfg.debug:
        records = {split: items[: cfg.debug_subset] for split, items in records.items()}
    if tokenizer is not None:
        message = truncation_warning(tokenizer, [r["report"] for r in records["train"]])
        if message:
            warnings_out.append(message)
    sentence_labels, hit_line = _sentence_label_table(cfg, data_path, records["train"], warnings_out)
    datasets: dict[str, CXRDataset] = {}
    for split in REQUIRED_SPLITS:
        train = split == "train"
        datasets[split] = CXRDataset(
            records[split],
            root=root,
            transform=build_transforms(cfg, train=train),
            on_bad_image=cfg.on_bad_image,
            report_sampling=cfg.report_sampling if train else "full",
            store=store,
            raw_uint8=raw_uint8 and train,
            resize_size=cfg.resize_size,
            short_sentence_tokens=cfg.short_sentence_tokens if train else 0,
            text_eda=cfg.text_eda if train else 0.0,
            sentence_labels=sentence_labels if train else None,
            sentence_label_miss=cfg.sentence_label_miss,
            text_eda_view=cfg.text_eda_view and train,
        )
        datasets[split].full_size = full_sizes[split]
    datasets["train"].sentence_label_line = hit_line  # printed at the start of training
    return datasets, records, warnings_out
