"""The Dataset of image-report pairs, batch collation and DataLoader construction.

Determinism: the training sampler (sampling.py) yields ``(index, sample_seed)`` pairs and the
dataset seeds each sample's augmentation and sentence choice from ``sample_seed`` alone.
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from medclip_nb.data.images import BadImageError, BadImageWarning, SkippedSample, build_resize_transform, load_grayscale
from medclip_nb.data.records import SampleRecords, freeze_inherited_objects
from medclip_nb.errors import DataError
from medclip_nb.labels import CHEXPERT_LABELS, NUM_LABELS
from medclip_nb.text import (
    clean_report,
    drop_short_sentences,
    eda,
    medclip_eda,
    sentence_key,
    split_sentences,
    trim_padding,
)

if TYPE_CHECKING:
    from medclip_nb.config import Config

_UNLISTED_SENTENCE = torch.tensor([1.0 if name == "No Finding" else 0.0 for name in CHEXPERT_LABELS])


class CXRDataset(Dataset):
    """Image-report pairs of one split.

    ``dataset[i]`` or ``dataset[(i, sample_seed)]`` returns a dict: ``pixel_values`` (float32
    ``[3, H, W]`` from ``transform``, or uint8 ``[1, S, S]`` padded and resized to
    ``resize_size`` when ``raw_uint8``, for augmentation on the GPU), ``report`` (the cleaned
    report, or one random sentence of it with ``report_sampling='sentence'``), ``labels``
    (float32 ``[14]``, NaN = blank), ``index`` and, when the record has them, ``clip_indices``
    (rows of the precomputed text features). With a ``sample_seed`` the random
    augmentation and the sentence depend on that seed only.

    An unreadable image gives a ``SkippedSample`` (``on_bad_image='skip'``, one warning per
    file) or raises ``BadImageError`` (``'error'``). ``store``, when given, is asked first:
    ``store.get(record['image_path']) -> uint8 array | None``. ``resize_size`` is also the
    JPEG draft size, so full-size JPEGs decode at a fraction of their resolution.

    ``records`` (a list of dicts or a ``records.SampleRecords``) is kept as ``SampleRecords``:
    the fields the loader reads, in NumPy arrays that forked workers share without copying.
    With a store that maps paths to rows (``store.rows_of``), each record's row is looked up
    once here, into an int64 array, rather than in a dict per sample.
    """

    def __init__(
        self,
        records: Sequence[dict],
        *,
        root: str | os.PathLike | None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None,
        on_bad_image: str,
        report_sampling: str = "full",
        store: Any = None,
        raw_uint8: bool = False,
        resize_size: int | None = None,
        short_sentence_tokens: int = 0,
        text_eda: float = 0.0,
        sentence_labels: Mapping[str, torch.Tensor] | None = None,
        sentence_label_miss: str = "study_labels",
        text_eda_view: bool = False,
    ):
        if on_bad_image not in ("skip", "error"):
            raise ValueError(f"on_bad_image must be 'skip' or 'error', got {on_bad_image!r}")
        if report_sampling not in ("full", "sentence"):
            raise ValueError(f"report_sampling must be 'full' or 'sentence', got {report_sampling!r}")
        if raw_uint8 and resize_size is None:
            raise ValueError("raw_uint8 needs resize_size (the side of the uint8 images)")
        if not raw_uint8 and transform is None:
            raise ValueError("a transform is needed unless raw_uint8 is set")
        self.records = SampleRecords.of(records)
        self.full_size = len(self.records)  # build_datasets sets the split's size before a debug subset
        self.root = Path(root) if root is not None else None
        self.transform = transform
        self.on_bad_image = on_bad_image
        self.report_sampling = report_sampling
        self.store = store
        rows_of = getattr(store, "rows_of", None)
        self._store_rows = rows_of(self.records.image_paths()) if rows_of is not None else None
        self.raw_uint8 = raw_uint8
        self.resize_size = resize_size
        # MedCLIP's text options for sentence sampling (text_augment.py)
        self.short_sentence_tokens = int(short_sentence_tokens)
        self.text_eda = float(text_eda)
        # sentence key -> float32 [14] labels (sentence_labels.py); None: a sentence has its study's labels
        self.sentence_labels = sentence_labels
        self.sentence_label_miss = sentence_label_miss  # study_labels | no_finding | error
        self.text_eda_view = bool(text_eda_view)  # MedCLIP's second, EDA-augmented text view
        self._resize = build_resize_transform(resize_size) if raw_uint8 else None
        self._warned_paths: set[str] = set()

    def __len__(self) -> int:
        return len(self.records)

    def image_file(self, index: int) -> Path:
        """The image file of record ``index``, relative paths taken from ``root``."""
        path = Path(self.records.image_path(index))
        return path if path.is_absolute() or self.root is None else self.root / path

    def _image(self, index: int) -> np.ndarray:
        if self._store_rows is not None:
            image = self.store.row(int(self._store_rows[index]))
            if image is not None:
                return image
        elif self.store is not None:
            image = self.store.get(self.records.image_path(index))
            if image is not None:
                return image
        return load_grayscale(self.image_file(index), draft_size=self.resize_size)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any] | SkippedSample:
        index, sample_seed = key if isinstance(key, (tuple, list)) else (key, None)
        index = int(index)
        try:
            image = self._image(index)
        except BadImageError as exc:
            if self.on_bad_image == "error":
                raise
            path = str(self.image_file(index))
            if path not in self._warned_paths:
                self._warned_paths.add(path)
                warnings.warn(f"skipped unreadable image: {exc}", BadImageWarning, stacklevel=2)
            return SkippedSample(path=path, reason=str(exc))
        # A copy: PIL and memory-mapped stores hand out read-only arrays.
        pixels = torch.tensor(image, dtype=torch.uint8).unsqueeze(0)

        if sample_seed is None:
            pixels = self._apply_transform(pixels)
            rng: random.Random | Any = random  # the process's own generators
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(sample_seed))
                pixels = self._apply_transform(pixels)
            rng = random.Random(int(sample_seed))

        report = clean_report(self.records.report(index))
        text_labels = None
        if self.report_sampling == "sentence":
            sentences = split_sentences(report)
            # A report made only of short sentences keeps them: the filter never empties a text.
            sentences = drop_short_sentences(sentences, self.short_sentence_tokens) or sentences
            if sentences:
                report = rng.choice(sentences)
            if self.sentence_labels is not None:  # looked up before EDA changes the words
                text_labels = self.sentence_labels.get(sentence_key(report))
                if text_labels is None:
                    text_labels = self.missing_sentence(report, index)
            if self.text_eda > 0:
                report = eda(report, self.text_eda, rng)
        labels = torch.tensor(self.records.labels(index), dtype=torch.float32)
        sample = {"pixel_values": pixels, "report": report, "labels": labels, "index": index}
        if self.text_eda_view:
            sample["report_aug"] = medclip_eda(report, rng)
        if text_labels is not None:
            sample["text_labels"] = text_labels
        if self.records.has_clip_indices(index):  # rows of the precomputed text features
            sample["clip_indices"] = self.records.clip_indices(index)
        return sample

    def missing_sentence(self, sentence: str, index: int) -> torch.Tensor:
        """The text labels of a sampled sentence the table lacks, as `sentence_label_miss` says."""
        if self.sentence_label_miss == "no_finding":
            return _UNLISTED_SENTENCE
        if self.sentence_label_miss == "error":
            raise DataError(f"sentence_labels: the table has no entry for {sentence!r} (sentence_label_miss: error)")
        return torch.tensor(self.records.labels(index), dtype=torch.float32)

    def _apply_transform(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._resize(pixels) if self.raw_uint8 else self.transform(pixels)


class BatchCollator:
    """Turns a list of ``CXRDataset`` samples into the batch of docs/architecture.md.

    ``SkippedSample`` entries (and ``None``) are dropped and counted in ``n_skipped``, their
    files listed in ``skipped_paths``. With a ``tokenizers.ClipIndexTokenizer`` the text input is the
    samples' ``clip_indices``, padded with -1. Text is padded to the batch's longest text (at most
    the tokenizer's ``max_length``) unless ``pad_to_longest`` is False (config key text_padding). A
    batch whose samples were all skipped has ``B = 0`` tensors; its ``pixel_values`` is
    ``[0, *empty_image_shape]`` (no image told the size). A class rather than a closure so
    DataLoader workers can pickle it.
    """

    def __init__(self, tokenizer, empty_image_shape: tuple[int, ...] = (3, 0, 0), pad_to_longest: bool = True):
        self.tokenizer = tokenizer
        self.empty_image_shape = tuple(empty_image_shape)
        self.pad_to_longest = pad_to_longest

    def __call__(self, samples: list[dict | SkippedSample | None]) -> dict[str, Any]:
        kept = [s for s in samples if isinstance(s, dict)]
        skipped = [s for s in samples if not isinstance(s, dict)]
        if hasattr(self.tokenizer, "encode_indices"):  # tokenizers.ClipIndexTokenizer
            text = self.tokenizer.encode_indices([s.get("clip_indices") for s in kept], [s["index"] for s in kept])
        else:
            text = self.tokenizer.encode([s["report"] for s in kept])
            if self.pad_to_longest:
                text = trim_padding(text, self.tokenizer)
        if kept:
            pixel_values = torch.stack([s["pixel_values"] for s in kept])
            labels = torch.stack([s["labels"] for s in kept]).to(torch.float32)
        else:
            pixel_values = torch.zeros((0, *self.empty_image_shape), dtype=torch.float32)
            labels = torch.zeros((0, NUM_LABELS), dtype=torch.float32)
        extra = {}
        if kept and "text_labels" in kept[0]:  # sentence labels: the text rows' own labels
            extra["text_labels"] = torch.stack([s["text_labels"] for s in kept]).to(torch.float32)
        if kept and "report_aug" in kept[0]:  # MedCLIP's EDA view of each text row (text_eda_view)
            aug = self.tokenizer.encode([s["report_aug"] for s in kept])
            if self.pad_to_longest:  # its own width: the step pads both sides to the wider (train/step.py)
                aug = trim_padding(aug, self.tokenizer)
            extra["aug_input_ids"], extra["aug_attention_mask"] = aug["input_ids"], aug["attention_mask"]
        return {
            **extra,
            "pixel_values": pixel_values,
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "labels": labels,
            "index": torch.tensor([s["index"] for s in kept], dtype=torch.int64),
            "n_skipped": len(skipped),
            "skipped_paths": [s.path for s in skipped if isinstance(s, SkippedSample)],
        }


def pads_to_longest(cfg: "Config | None") -> bool:
    """Config key text_padding: 'auto' pads to the longest text of a batch except under
    torch.compile, where fixed shapes avoid recompiling for every new text length."""
    if cfg is None:
        return True
    return cfg.text_padding == "longest" or (cfg.text_padding == "auto" and not cfg.compile)


def make_collate(tokenizer, cfg: "Config | None" = None) -> BatchCollator:
    """The collate function for ``DataLoader``: see ``BatchCollator``; ``cfg`` sets its text
    padding (``pads_to_longest``; without a config: the longest text)."""
    return BatchCollator(tokenizer, pad_to_longest=pads_to_longest(cfg))


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed NumPy and ``random`` in each worker from torch's per-worker
    seed (torch itself is already seeded by the DataLoader's generator), and keep the garbage
    collector off the objects inherited from the parent (``records.freeze_inherited_objects``)."""
    freeze_inherited_objects()  # the parent's objects stay shared (records.py)
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def make_loader(
    dataset: Dataset,
    cfg: "Config",
    *,
    train: bool,
    sampler: Sampler | None = None,
    batch_size: int | None = None,
    collate_fn: Callable,
) -> DataLoader:
    """A ``DataLoader`` with ``cfg.num_workers`` (persistent when > 0), pinned memory when
    CUDA is present, a generator seeded by ``cfg.seed`` and, for training, the last partial
    batch dropped. Without ``sampler``, training shuffles and evaluation keeps the order."""
    if batch_size is None:
        batch_size = cfg.batch_size if train else cfg.eval_batch_size
    generator = torch.Generator()
    generator.manual_seed(cfg.seed)
    workers = cfg.num_workers
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=train if sampler is None else False,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=seed_worker,
        generator=generator,
        drop_last=train,
        collate_fn=collate_fn,
    )
