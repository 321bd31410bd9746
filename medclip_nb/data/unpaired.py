"""Unpaired training data, as MedCLIP does: images with labels but no report, and report
sentences with labels but no image, mixed into the training batches.

The MedCLIP loss needs no image-report pairs to build its targets: a row's soft targets are
the label similarity to every column of the other side (losses.published_soft_targets, or
losses.soft_targets for medclip_cosine). So each
training step can append `unpaired_per_batch` image-only items to the image side and/or as
many text-only items to the text side; the loss is then

    medclip_loss(image_embeds [B + Bi], text_embeds [B + Bt], scale,
                 image_labels [B + Bi], text_labels [B + Bt], num_pairs=B)

with the B pairs first. The items come from the optional dataset splits `train_images`
(image_path + labels) and `train_texts` (report + labels; see mimic.prepare_mimic), as
config key `unpaired_sources` says.

Determinism: the items of a step are a pure function of (config seed, source, epoch, batch
index in the epoch). Each source is read in a seeded permutation per epoch, consecutive
steps taking consecutive chunks (a new permutation when the pool runs out), so an epoch sees
as much of the pool as it can without repeats, and a resumed run draws exactly what the
stopped run would have. Each item's augmentation or sentence choice depends on its own
sample seed, as for the paired samples (data.CXRDataset), so the global RNG is not touched.

The extras are loaded in the training process (not by the DataLoader workers): a few items
per step. Single-process runs only; torchrun with unpaired_sources is refused.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from medclip_nb.data.dataset import CXRDataset, pads_to_longest
from medclip_nb.data.images import SkippedSample, build_transforms
from medclip_nb.data.loading import load_dataset_file
from medclip_nb.data.sampling import UINT64_MASK, splitmix64
from medclip_nb.data.validation import validate_splits
from medclip_nb.errors import ConfigError, DataError
from medclip_nb.paths import resolve
from medclip_nb.text import (
    PromptSentences,
    clean_report,
    medclip_eda,
    pad_text,
    read_sentence_labels,
    resolve_sentence_labels,
    split_sentences,
    trim_padding,
)

if TYPE_CHECKING:
    from medclip_nb.config import Config

# Dataset split of each unpaired source (config key unpaired_sources).
SOURCE_SPLITS = {"images": "train_images", "texts": "train_texts"}
# Stream numbers keep the draws of the two sources (and of their sample seeds) independent.
_STREAM = {"images": 1, "texts": 2}
_SAMPLE_SEED_STREAM = 16
_EDA_SEED = 0x5EDA  # the EDA view of an unpaired text draws from its own stream of the item's seed


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (SplitMix64 chained), the same in every process."""
    state = np.zeros(1, dtype=np.uint64)
    for part in parts:
        state = splitmix64(state ^ np.uint64(int(part) & UINT64_MASK))
    return int(state[0] >> np.uint64(1))


def draw_unpaired(n: int, count: int, *, seed: int, source: str, epoch: int, step: int,
                  _permutations: dict | None = None) -> list[tuple[int, int]]:
    """`(index, sample_seed)` of the `count` items of pool size `n` that training batch `step`
    (0-based within `epoch`) gets from `source` ('images' or 'texts').

    Position p = step * count + j (j < count) takes item p mod n of the permutation of
    (seed, source, epoch, cycle p // n). A pure function of its arguments; `_permutations`
    is an optional cache {(epoch, cycle): permutation} owned by the caller.
    """
    if n <= 0:
        raise ValueError(f"the unpaired pool of '{source}' is empty")
    if count < 0 or step < 0 or epoch < 0:
        raise ValueError(f"count, step and epoch must be >= 0, got {count}, {step}, {epoch}")
    stream = _STREAM[source]
    drawn = []
    for position in range(step * count, (step + 1) * count):
        cycle, offset = divmod(position, n)
        key = (epoch, cycle)
        permutation = None if _permutations is None else _permutations.get(key)
        if permutation is None:
            generator = torch.Generator().manual_seed(_mix(seed, stream, epoch, cycle))
            permutation = torch.randperm(n, generator=generator).tolist()
            if _permutations is not None:
                _permutations.clear()  # steps move forward: only the current cycle is needed
                _permutations[key] = permutation
        drawn.append((permutation[offset], _mix(seed, stream + _SAMPLE_SEED_STREAM, epoch, position)))
    return drawn


class UnpairedTexts(Dataset):
    """Text-only records (`report` + `labels`). `dataset[(i, sample_seed)]` returns
    {'report', 'labels' float32 [14], 'index'}; with report_sampling 'sentence' a record of
    several sentences gives one, chosen by `sample_seed`."""

    def __init__(self, records: Sequence[dict], report_sampling: str = "full"):
        if report_sampling not in ("full", "sentence"):
            raise ValueError(f"report_sampling must be 'full' or 'sentence', got {report_sampling!r}")
        self.records = records
        self.report_sampling = report_sampling

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, sample_seed = key if isinstance(key, (tuple, list)) else (key, None)
        record = self.records[int(index)]
        report = clean_report(record["report"])
        if self.report_sampling == "sentence":
            sentences = split_sentences(report)
            if sentences:
                rng = random if sample_seed is None else random.Random(int(sample_seed))
                report = rng.choice(sentences)
        labels = torch.tensor([math.nan if v is None else float(v) for v in record["labels"]], dtype=torch.float32)
        return {"report": report, "labels": labels, "index": int(index)}


class UnpairedBatches:
    """Appends the unpaired items of a training step to its batch (`extend`)."""

    def __init__(self, images: Dataset | None, texts: Dataset | None, tokenizer, per_batch: int, seed: int,
                 prompts: PromptSentences | None = None, zero_uncertain: bool = False, pad_to_longest: bool = True):
        if images is None and texts is None:
            raise ValueError("UnpairedBatches needs an image-only or a text-only source")
        self.sources = {name: ds for name, ds in (("images", images), ("texts", texts)) if ds is not None}
        for name, dataset in self.sources.items():
            if len(dataset) == 0:
                raise ValueError(f"the unpaired '{name}' source is empty")
        self.tokenizer = tokenizer
        self.pad_to_longest = pad_to_longest  # as the batch's collate (config key text_padding)
        self.per_batch = int(per_batch)
        self.seed = int(seed)
        # image_only_text prompt_sentence: each image-only item becomes a pair with a prompt sentence, sampled
        # from its labels as the image side reads them (zero_uncertain: -1 -> 0, image_uncertain_labels zero)
        self.prompts, self.zero_uncertain = prompts, zero_uncertain
        self._permutations: dict[str, dict] = {name: {} for name in self.sources}

    def draw(self, source: str, epoch: int, step: int) -> list[tuple[int, int]]:
        """`(index, sample_seed)` of `source`'s items for batch `step` of `epoch` (0-based)."""
        return draw_unpaired(len(self.sources[source]), self.per_batch, seed=self.seed, source=source,
                             epoch=epoch, step=step, _permutations=self._permutations[source])

    def extend(self, batch: dict[str, Any], epoch: int, step: int) -> dict[str, Any]:
        """A copy of the collated `batch` (B pairs) with the image-only items appended to
        `pixel_values` / `labels` and the text-only items to `input_ids` / `attention_mask`,
        plus `text_labels` (labels of the text rows), `num_pairs` (B) and
        `n_unpaired_skipped` (image-only items dropped as unreadable, also added to
        `n_skipped` / `skipped_paths`). With prompt sentences (image_only_text) each image-only
        item's sentence follows the B texts and the items count as pairs (num_pairs B + items);
        text-only rows always come last. MedCLIP's EDA view, when the batch has one, gets a row
        for every text appended."""
        num_pairs = batch["pixel_values"].shape[0]
        paired_text_labels = batch.get("text_labels", batch["labels"])  # a sentence's own labels when given
        out = dict(batch, num_pairs=num_pairs, text_labels=paired_text_labels, n_unpaired_skipped=0)
        if "images" in self.sources:
            keys = self.draw("images", epoch, step)
            samples = [self.sources["images"][key] for key in keys]
            kept = [s for s in samples if isinstance(s, dict)]
            skipped = [s for s in samples if not isinstance(s, dict)]
            if kept:
                out["pixel_values"] = torch.cat([batch["pixel_values"], torch.stack([s["pixel_values"] for s in kept])])
                out["labels"] = torch.cat([batch["labels"], torch.stack([s["labels"] for s in kept])])
            if kept and self.prompts is not None:  # the image-only items become pairs, before any text-only row
                seeds = [seed for (_, seed), s in zip(keys, samples) if isinstance(s, dict)]
                self.add_prompt_sentences(out, kept, seeds)
            out["n_unpaired_skipped"] = len(skipped)
            out["n_skipped"] = batch["n_skipped"] + len(skipped)
            out["skipped_paths"] = list(batch["skipped_paths"]) + [s.path for s in skipped if isinstance(s,
                                                                                                         SkippedSample)]
        if "texts" in self.sources:
            keys = self.draw("texts", epoch, step)
            samples = [self.sources["texts"][key] for key in keys]
            self.append_texts(out, [s["report"] for s in samples], [seed for _, seed in keys])
            out["text_labels"] = torch.cat([out["text_labels"], torch.stack([s["labels"] for s in samples])])
        return out

    def append_texts(self, out: dict[str, Any], texts: list[str], seeds: list[int]) -> None:
        """Tokenise `texts` onto the text side; with MedCLIP's EDA view in the batch, their EDA views
        (seeded by each item's sample seed) onto the augmented side, in the same row order."""
        self.append_encoded(out, "", self.tokenizer.encode(texts))
        if "aug_input_ids" in out:
            views = [medclip_eda(t, random.Random(int(s) ^ _EDA_SEED)) for t, s in zip(texts, seeds)]
            self.append_encoded(out, "aug_", self.tokenizer.encode(views))

    def append_encoded(self, out: dict[str, Any], prefix: str, text: dict[str, torch.Tensor]) -> None:
        """Append tokenised rows to `out`'s `<prefix>input_ids` / `<prefix>attention_mask`: the new
        rows cut to their longest text as the batch's collate does (config key text_padding), then
        both padded to the wider of the two."""
        if self.pad_to_longest:
            text = trim_padding(text, self.tokenizer)
        side = {"input_ids": out[prefix + "input_ids"], "attention_mask": out[prefix + "attention_mask"]}
        width = max(side["input_ids"].shape[1], text["input_ids"].shape[1])
        side, text = (pad_text(t, width, self.tokenizer.pad_id) for t in (side, text))
        for key in ("input_ids", "attention_mask"):
            out[prefix + key] = torch.cat([side[key], text[key]])

    def add_prompt_sentences(self, out: dict[str, Any], kept: list[dict], seeds: list[int]) -> None:
        """Append each kept image-only item's prompt sentence (text/prompt_sentences.py) to the text
        side, with the sentence's own labels; the items count as pairs (`num_pairs`)."""
        drawn = []
        for sample, seed in zip(kept, seeds):
            labels = sample["labels"].numpy()
            if self.zero_uncertain:
                labels = np.where(labels == -1, 0.0, labels)
            drawn.append(self.prompts.sample(labels, random.Random(int(seed))))
        self.append_texts(out, [sentence for sentence, _ in drawn], seeds)
        labels = torch.tensor([lab for _, lab in drawn], dtype=torch.float32)
        out["text_labels"] = torch.cat([out["text_labels"], labels])
        out["num_pairs"] += len(kept)
        out["prompt_sentences"] = [sentence for sentence, _ in drawn]


def unpaired_records(cfg: "Config", records: Mapping[str, list[dict]], data_path: Path) -> tuple[Mapping, Path, Path]:
    """(records, their dataset file, their image root) of the unpaired sources: `cfg.unpaired_data_path`'s
    file (e.g. prepare-chexpert's) when set, else the training file's own records."""
    if not cfg.unpaired_data_path:
        return records, data_path, resolve(cfg.image_root) if cfg.image_root else data_path.parent
    path = resolve(cfg.unpaired_data_path)
    other = load_dataset_file(path)
    validate_splits(other, path, [SOURCE_SPLITS[source] for source in cfg.unpaired_sources])
    return other, path, path.parent


def build_unpaired(
    cfg: "Config", records: Mapping[str, list[dict]], tokenizer, *, data_path, store: Any = None,
    raw_uint8: bool = False, world_size: int = 1,
) -> UnpairedBatches | None:
    """The `UnpairedBatches` of `cfg.unpaired_sources` from the loaded and validated `records`
    (data.build_datasets) or `cfg.unpaired_data_path`'s, or None when no source is set. Image-only
    items use the training transform (or uint8 images with `raw_uint8`, for augmentation on the
    GPU) and `store` where it has them; with `image_only_text: prompt_sentence` each gets a prompt
    sentence. Raises ConfigError under DDP, DataError for a missing or empty split."""
    if not cfg.unpaired_sources:
        return None
    if world_size > 1:
        raise ConfigError(f"config key 'unpaired_sources': single-process for now (this run has {world_size} "
                          "processes)")
    records, source_path, root = unpaired_records(cfg, records, data_path)
    for source in cfg.unpaired_sources:
        split = SOURCE_SPLITS[source]
        if not records.get(split):
            raise DataError(f"{source_path}: split '{split}' is missing or empty; config key 'unpaired_sources' "
                            f"asks for {source} (prepare --unpaired-fraction or prepare-chexpert writes it)")
    images = texts = prompts = None
    if "images" in cfg.unpaired_sources:
        images = CXRDataset(
            records["train_images"], root=root, transform=build_transforms(cfg, train=True),
            on_bad_image=cfg.on_bad_image, store=store if source_path == data_path else None, raw_uint8=raw_uint8,
            resize_size=cfg.resize_size,
        )
    if "texts" in cfg.unpaired_sources:
        texts = UnpairedTexts(records["train_texts"], cfg.report_sampling)
    if cfg.image_only_text == "prompt_sentence":
        table_path = resolve_sentence_labels(cfg)
        if table_path is None:
            raise DataError(f"config key 'image_only_text': prompt_sentence needs a sentence_labels table; none "
                            f"beside {data_path}")
        prompts = PromptSentences(read_sentence_labels(table_path), seed=cfg.seed)
    return UnpairedBatches(images, texts, tokenizer, cfg.unpaired_per_batch, cfg.seed, prompts,
                           zero_uncertain=cfg.image_uncertain_labels == "zero", pad_to_longest=pads_to_longest(cfg))


__all__ = ["SOURCE_SPLITS", "UnpairedBatches", "UnpairedTexts", "build_unpaired", "draw_unpaired"]
