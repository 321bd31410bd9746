"""Data side of training: safe dataset loading and validation, image decoding, transforms,
the Dataset, the epoch sampler, batch collation and DataLoader construction.

Determinism: the training sampler yields ``(index, sample_seed)`` pairs and the dataset
seeds each sample's augmentation and sentence choice from ``sample_seed`` alone, so a
sample looks the same whatever the worker count, and after a resume mid-epoch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torchvision.transforms.v2 as v2
from PIL import Image, ImageFile, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler

from medclip_nb.errors import DataError, one_line, quote
from medclip_nb.labels import CHEXPERT_LABELS, NUM_LABELS
from medclip_nb.records import SampleRecords, freeze_inherited_objects
from medclip_nb.text import clean_report, split_sentences
from medclip_nb.text_augment import drop_short_sentences, eda

if TYPE_CHECKING:
    from medclip_nb.config import Config

REQUIRED_SPLITS = ("train", "val", "test")
# Optional splits of unpaired training data (unpaired.py): image-only and text-only records.
UNPAIRED_SPLITS = ("train_images", "train_texts")
# MIMIC-CXR's split file calls the validation split "validate".
SPLIT_ALIASES = {"validate": "val", "valid": "val", "validation": "val"}
ALLOWED_LABEL_VALUES = (1.0, 0.0, -1.0)

# ---------------------------------------------------------------------------------------------
# Dataset files
# ---------------------------------------------------------------------------------------------

def load_dataset_file(path: str | os.PathLike) -> dict[str, list[dict]]:
    """Read a dataset file into ``{split: [record, ...]}``.

    ``.pkl``/``.pickle``: the seed's ``datasets.pkl``, read with an unpickler that allows
    plain containers, strings, numbers and NumPy arrays only. ``.jsonl``: one JSON object
    per line with a ``split`` key. ``.csv``: columns ``split, image_path, report, labels``
    (14 ``;``-separated values, blank = not mentioned), further columns kept.
    Records are returned as read; ``validate_dataset`` checks and normalises them.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: dataset file not found (config key 'data_path')")
    suffix = path.suffix.lower()
    if suffix in (".pkl", ".pickle"):
        return _load_pickle(path)
    if suffix == ".jsonl":
        return _load_jsonl(path)
    if suffix == ".csv":
        return _load_csv(path)
    raise DataError(f"{path}: unknown dataset file type '{suffix}' (use .pkl, .jsonl or .csv)")


def _load_pickle(path: Path) -> dict[str, list[dict]]:
    from medclip_nb.safe_pickle import load_plain_pickle  # pure-Python: see its docstring

    data = load_plain_pickle(path)
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a dict of splits (train/val/test), got {type(data).__name__}")
    return data


def _split_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: key 'split' must be a non-empty string, got {quote(value)}")
    value = value.strip().lower()
    return SPLIT_ALIASES.get(value, value)


def _load_jsonl(path: Path) -> dict[str, list[dict]]:
    splits: dict[str, list[dict]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON ({exc.msg})") from None
        except (ValueError, RecursionError) as exc:  # a 5000-digit number, 100000 nested brackets
            raise DataError(f"{where}: unusable JSON ({type(exc).__name__}: {one_line(exc, 120)})") from None
        if not isinstance(record, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
        if "split" not in record:
            raise DataError(f"{where}: key 'split' is missing")
        split = _split_name(record.pop("split"), where)
        splits.setdefault(split, []).append(record)
    return splits


def _parse_csv_labels(cell: str, where: str) -> list[float | None]:
    values: list[float | None] = []
    for part in cell.split(";"):
        part = part.strip()
        if not part:
            values.append(None)
            continue
        try:
            values.append(float(part))
        except ValueError:
            raise DataError(f"{where}: key 'labels': {quote(part)} is not a number") from None
    return values


def _load_csv(path: Path) -> dict[str, list[dict]]:
    try:
        # All cells as strings, blanks kept as "" (a blank label is NaN, decided below).
        table = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV manifest ({exc})") from None
    missing = [c for c in ("split", "image_path", "report", "labels") if c not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (need split, image_path, report, labels)")
    splits: dict[str, list[dict]] = {}
    for row_number, row in enumerate(table.to_dict("records")):
        where = f"{path}: line {row_number + 2}"  # 1-based, after the header
        record: dict[str, Any] = {
            "image_path": row["image_path"],
            "report": row["report"],
            "labels": _parse_csv_labels(row["labels"], where),
        }
        for key, value in row.items():
            if key in record or key == "split" or value == "":
                continue
            record[key] = int(value) if key in ("study_id", "subject_id") and value.isdigit() else value
        splits.setdefault(_split_name(row["split"], where), []).append(record)
    return splits


def _plain(value: Any) -> Any:
    """NumPy arrays/scalars as Python lists/numbers (records must be plain data)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _validated_labels(labels: Any, where: str) -> list[float]:
    if isinstance(labels, np.ndarray):
        labels = labels.tolist()
    if not isinstance(labels, (list, tuple)):
        raise DataError(f"{where}: key 'labels' must be a list of {NUM_LABELS} values, got {type(labels).__name__}")
    if len(labels) != NUM_LABELS:
        raise DataError(f"{where}: key 'labels' has {len(labels)} values, expected {NUM_LABELS}")
    out: list[float] = []
    for position, value in enumerate(labels):
        value = _plain(value)
        if value is None:
            out.append(math.nan)
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DataError(f"{where}: key 'labels'[{position}]: {quote(value)} is not a number")
        try:
            value = float(value)
        except OverflowError:
            raise DataError(f"{where}: key 'labels'[{position}]: {quote(value)} is not 1, 0, -1 or blank") from None
        if not (math.isnan(value) or value in ALLOWED_LABEL_VALUES):
            raise DataError(f"{where}: key 'labels'[{position}]: {quote(value)} is not 1, 0, -1 or blank")
        out.append(value)
    return out


def _check_encodable(record: dict, where: str) -> None:
    """Text that cannot be written as UTF-8 (a lone surrogate such as JSON's "\\ud800") cannot
    name a file or reach the tokenizer."""
    for key in ("image_path", "report"):
        value = record.get(key)
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise DataError(f"{where}: key '{key}' holds text that is not valid Unicode "
                                f"(character {exc.start})") from None


def validate_dataset(
    splits: Mapping[str, Any], source: str | os.PathLike, image_root: str | os.PathLike | None = None
) -> list[str]:
    """Check a loaded dataset and normalise it in place; return warnings.

    Refused (``DataError`` naming the file, split, index and key): a missing train/val/test
    split, an empty train or val split, a record without a non-empty string ``image_path``,
    a string ``report``, or 14 ``labels`` in {1, 0, -1, NaN/None}. Normalised: ``None``
    labels become NaN, NumPy arrays/scalars become plain lists/numbers. Warned: an empty
    test split, unknown splits, empty reports, and image paths found in more than one split
    (leakage between training and evaluation). The optional unpaired splits are checked by
    ``_validate_unpaired_split``.
    """
    source = str(source)
    if not isinstance(splits, Mapping):
        raise DataError(f"{source}: expected a dict of splits, got {type(splits).__name__}")
    warnings_out: list[str] = []
    for split in REQUIRED_SPLITS:
        if split not in splits:
            raise DataError(f"{source}: split '{split}' is missing (need {', '.join(REQUIRED_SPLITS)})")
        if not isinstance(splits[split], list):
            raise DataError(f"{source}: split '{split}' must be a list of records, got {type(splits[split]).__name__}")
    for split in ("train", "val"):
        if not splits[split]:
            raise DataError(f"{source}: split '{split}' is empty")
    if not splits["test"]:
        warnings_out.append(f"{source}: split 'test' is empty; evaluation will have no test images")
    unknown = sorted(set(splits) - set(REQUIRED_SPLITS) - set(UNPAIRED_SPLITS), key=str)
    if unknown:
        warnings_out.append(f"{source}: ignoring split(s) {quote(unknown)}")
    # Leakage is judged on the files the paths name: relative ones taken from image_root (else the
    # dataset file's folder), so 'a.jpg' in train and '/data/a.jpg' in test are the same image.
    base = os.path.abspath(image_root if image_root is not None else os.path.dirname(os.path.abspath(source)))

    def file_key(image_path: str) -> str:
        return os.path.normpath(os.path.join(base, image_path))

    first_split_of: dict[str, str] = {}
    leaked: list[tuple[str, str, str]] = []
    for split in REQUIRED_SPLITS:
        empty_reports = 0
        for index, record in enumerate(splits[split]):
            where = f"{source}: {split}[{index}]"
            if not isinstance(record, dict):
                raise DataError(f"{where}: record must be a dict, got {type(record).__name__}")
            for key in ("image_path", "report", "labels"):
                if key not in record:
                    raise DataError(f"{where}: key '{key}' is missing")
            for key, value in record.items():
                if key != "labels":
                    record[key] = _plain(value)
            image_path = record["image_path"]
            if not isinstance(image_path, str) or not image_path.strip() or "\x00" in image_path:
                raise DataError(f"{where}: key 'image_path' must be a non-empty string, got {quote(image_path)}")
            if not isinstance(record["report"], str):
                raise DataError(f"{where}: key 'report' must be a string, got {type(record['report']).__name__}")
            record["image_path"], record["report"] = str(image_path), str(record["report"])
            _check_encodable(record, where)
            empty_reports += not record["report"].strip()
            record["labels"] = _validated_labels(record["labels"], where)

            first = first_split_of.setdefault(file_key(image_path), split)
            if first != split:
                leaked.append((image_path, first, split))
        if empty_reports:
            warnings_out.append(f"{source}: {empty_reports} record(s) of split '{split}' have an empty report")
    # ---- unpaired splits (unpaired.py) ----
    for split in UNPAIRED_SPLITS:
        if split in splits:
            for image_path in _validate_unpaired_split(splits, split, source):
                first = first_split_of.setdefault(file_key(image_path), split)
                if first != split:
                    leaked.append((image_path, first, split))
    # ---- end unpaired splits ----
    if leaked:
        path, first, second = leaked[0]
        warnings_out.append(
            f"{source}: {len(leaked)} image path(s) appear in more than one split (leakage), "
            f"e.g. '{path}' in {first} and {second}"
        )
    return warnings_out


def _validate_unpaired_split(splits: Mapping[str, Any], split: str, source: str) -> list[str]:
    """Check and normalise an optional unpaired split in place; return its image paths.

    ``train_images``: ``image_path`` (non-empty string) and ``labels``; ``report`` may be
    missing, null or empty (it becomes ""). ``train_texts``: a non-empty string ``report`` and
    ``labels``; no image is needed. Labels follow the rules of the paired splits.
    """
    records = splits[split]
    if not isinstance(records, list):
        raise DataError(f"{source}: split '{split}' must be a list of records, got {type(records).__name__}")
    image_only = split == "train_images"
    image_paths: list[str] = []
    for index, record in enumerate(records):
        where = f"{source}: {split}[{index}]"
        if not isinstance(record, dict):
            raise DataError(f"{where}: record must be a dict, got {type(record).__name__}")
        required = ("image_path", "labels") if image_only else ("report", "labels")
        for key in required:
            if key not in record:
                raise DataError(f"{where}: key '{key}' is missing")
        for key, value in record.items():
            if key != "labels":
                record[key] = _plain(value)
        report = record.get("report")
        if image_only:
            image_path = record["image_path"]
            if not isinstance(image_path, str) or not image_path.strip() or "\x00" in image_path:
                raise DataError(f"{where}: key 'image_path' must be a non-empty string, got {quote(image_path)}")
            if report is not None and not isinstance(report, str):
                raise DataError(f"{where}: key 'report' must be a string or missing, got {type(report).__name__}")
            record["report"] = report or ""
            _check_encodable(record, where)
            image_paths.append(image_path)
        elif not isinstance(report, str) or not report.strip():
            raise DataError(f"{where}: key 'report' must be a non-empty string (a text-only record), got {quote(report)}")
        else:
            _check_encodable(record, where)
        record["labels"] = _validated_labels(record["labels"], where)
    return image_paths


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


class BadImageError(DataError):
    """An image file that is missing, empty, truncated or not an image."""


class BadImageWarning(UserWarning):
    """An unreadable image was skipped (``on_bad_image: skip``)."""


@dataclass(frozen=True)
class SkippedSample:
    """What ``CXRDataset`` returns in place of a sample whose image could not be read,
    so the collate function can count it and name the file."""

    path: str
    reason: str


_CONVERT_TO_L = {"1", "L", "P", "RGB", "CMYK", "YCbCr", "LAB", "HSV"}
_WITH_ALPHA = {"RGBA", "RGBa", "LA", "La", "PA"}


@contextlib.contextmanager
def _strict_truncation():
    """Make PIL raise on truncated files, whatever another library set globally."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _to_grayscale_uint8(img: Image.Image, path: Path) -> np.ndarray:
    mode = img.mode
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in _WITH_ALPHA:
        # Composite on black: transparent pixels become background, not bright noise.
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.array(Image.alpha_composite(black, rgba).convert("L"))
    if mode in _CONVERT_TO_L:
        return np.array(img.convert("L"))
    if mode == "I" or mode.startswith("I;16"):
        # Scale the full 16-bit range (0..65535 -> 0..255, rounded half up). PIL's own
        # convert("L") would clip everything above 255 to white. Mode "I" values outside
        # 0..65535 are clipped into that range first.
        values = np.asarray(img).astype(np.int64)
        values = np.clip(values, 0, 65535)
        return ((values * 255 + 32767) // 65535).astype(np.uint8)
    raise BadImageError(f"{path}: unsupported image mode '{mode}'")


# Only the formats chest X-ray exports come in: every other decoder PIL has is attack surface.
DECODED_FORMATS = ("JPEG", "PNG")
# MIMIC-CXR images are about 2544 x 3056 (aspect 1.2). Padding to a square happens before the
# resize, so a 200000 x 1 image would ask for a 40 GB square; both limits are checked on the
# header, before any pixel is decoded.
MAX_ASPECT_RATIO = 8.0
MAX_PADDED_SIDE = 12_000


def check_image_size(size: tuple[int, int], path: str | os.PathLike) -> None:
    """``BadImageError`` for an image whose aspect ratio or padded square is over the limits."""
    width, height = size
    if width < 1 or height < 1:
        raise BadImageError(f"{path}: image of {width} x {height} pixels")
    if max(width, height) > MAX_PADDED_SIDE:
        raise BadImageError(f"{path}: image of {width} x {height} pixels is over the limit of "
                            f"{MAX_PADDED_SIDE} pixels a side (padded to a square before resizing)")
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise BadImageError(f"{path}: image of {width} x {height} pixels has an aspect ratio over "
                            f"{MAX_ASPECT_RATIO:g} (not a radiograph)")


def load_grayscale(path: str | os.PathLike, draft_size: int | None = None) -> np.ndarray:
    """Decode an image file to a uint8 ``H x W`` array.

    Modes: 8-bit ``L`` as is; ``1``, ``P``, ``RGB`` (and other colour modes) through PIL's
    luma conversion; ``RGBA``/``LA``/``PA`` and transparent palettes composited on black;
    16-bit ``I;16``/``I;16B``/``I`` scaled by the full 16-bit range (``v * 255 / 65535``).
    ``draft_size``: let the JPEG decoder downscale by a power of two while keeping both
    sides at least ``draft_size`` (much faster on full-size MIMIC-CXR images).
    Only JPEG and PNG are decoded, and only within ``MAX_ASPECT_RATIO`` and ``MAX_PADDED_SIDE``
    (checked on the header). Raises ``BadImageError`` naming the file for a missing, empty,
    truncated, over-limit or non-JPEG/PNG file.
    """
    path = Path(path)
    if not path.is_file():
        raise BadImageError(f"{path}: image file not found")
    if path.stat().st_size == 0:
        raise BadImageError(f"{path}: empty image file (0 bytes)")
    with _strict_truncation():
        try:
            with Image.open(path, formats=DECODED_FORMATS) as img:
                check_image_size(img.size, path)  # read from the header: nothing decoded yet
                if draft_size and img.format == "JPEG":
                    img.draft("L", (int(draft_size), int(draft_size)))
                img.load()
                return _to_grayscale_uint8(img, path)
        except UnidentifiedImageError:
            raise BadImageError(f"{path}: not an image file in a format decoded here (JPEG, PNG)") from None
        except Image.DecompressionBombError as exc:
            raise BadImageError(f"{path}: image too large to decode safely ({exc})") from None
        except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
            raise BadImageError(f"{path}: truncated or corrupt image ({one_line(exc, 120)})") from None
        except MemoryError:
            raise BadImageError(f"{path}: image too large to decode (out of memory)") from None


def pil_to_grayscale(img: Image.Image, name: str = "<PIL image>") -> np.ndarray:
    """A PIL image already open as a uint8 ``H x W`` array, by the mode rules of
    ``load_grayscale``; ``name`` is what a ``BadImageError`` calls it."""
    return _to_grayscale_uint8(img, Path(name))


# ---------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------

# Numbers shared with the GPU augmentation (gpu_augment.py). MedCLIP's mean/std were
# measured on its chest X-rays; "seed" keeps the geometry with the grayscale mean/std of
# ImageNet (0.449, 0.226); "none" is MedCLIP's normalisation without any random op.
_MEDCLIP_GEOMETRY = {
    "hflip_p": 0.5,
    "brightness": 0.2,
    "contrast": 0.2,
    "degrees": 10.0,
    "translate": 0.0625,
    "scale": (0.8, 1.1),
}
AUGMENT_PRESETS: dict[str, dict[str, Any]] = {
    "medclip": {"mean": 0.5862785803043838, "std": 0.27950088968644304, "random": True, **_MEDCLIP_GEOMETRY},
    "seed": {"mean": 0.449, "std": 0.226, "random": True, **_MEDCLIP_GEOMETRY},
    "none": {"mean": 0.5862785803043838, "std": 0.27950088968644304, "random": False, **_MEDCLIP_GEOMETRY},
}


class PadToSquare(torch.nn.Module):
    """Pad a ``[C, H, W]`` image with black, centred, to a square (MedCLIP), so resizing
    keeps the aspect ratio of the chest."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        side = max(height, width)
        if height == width:
            return image
        left, top = (side - width) // 2, (side - height) // 2
        return v2.functional.pad(image, [left, top, side - width - left, side - height - top], fill=0)


class RepeatChannels(torch.nn.Module):
    """``[1, H, W]`` -> ``[3, H, W]``: the image backbones expect three channels."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image.repeat(3, 1, 1) if image.shape[-3] == 1 else image


def build_resize_transform(resize_size: int) -> v2.Compose:
    """uint8 ``[1, H, W]`` -> uint8 ``[1, S, S]``: pad to square, resize; nothing random."""
    return v2.Compose([PadToSquare(), v2.Resize([resize_size, resize_size], antialias=True)])


def build_transforms(cfg: "Config", train: bool) -> v2.Compose:
    """uint8 ``[1, H, W]`` -> float32 ``[3, image_size, image_size]``, normalised.

    Pad to square, resize to ``cfg.resize_size``; for training with a random preset:
    horizontal flip, brightness/contrast jitter, random affine and a random crop, otherwise a
    centre crop; then scale to [0, 1], normalise with the preset's mean/std and repeat to
    three channels. Presets: ``AUGMENT_PRESETS[cfg.augment]``.
    """
    # Config validation has already checked the preset name and image_size <= resize_size.
    preset = AUGMENT_PRESETS[cfg.augment]
    steps: list[Callable] = [PadToSquare(), v2.Resize([cfg.resize_size, cfg.resize_size], antialias=True)]
    if train and preset["random"]:
        translate = preset["translate"]
        steps += [
            v2.RandomHorizontalFlip(p=preset["hflip_p"]),
            v2.ColorJitter(brightness=preset["brightness"], contrast=preset["contrast"]),
            v2.RandomAffine(degrees=preset["degrees"], translate=(translate, translate), scale=preset["scale"]),
            v2.RandomCrop(cfg.image_size),
        ]
    else:
        steps.append(v2.CenterCrop(cfg.image_size))
    steps += [
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=[preset["mean"]], std=[preset["std"]]),
        RepeatChannels(),
    ]
    return v2.Compose(steps)


# ---------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------


# A sampled sentence missing from the sentence-label table: No Finding = 1 (MedCLIP's dataset code).
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
        self._resize = build_resize_transform(resize_size) if raw_uint8 else None
        self._warned_paths: set[str] = set()

    def __len__(self) -> int:
        return len(self.records)

    def image_file(self, index: int) -> Path:
        """The image file of record ``index``, relative paths taken from ``root``."""
        path = Path(self.records.image_path(index))
        return path if path.is_absolute() or self.root is None else self.root / path

    def cleaned_report(self, index: int) -> str:
        """The whole cleaned report of record ``index`` (what evaluation compares against)."""
        return clean_report(self.records.report(index))

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
                text_labels = self.sentence_labels.get(report, _UNLISTED_SENTENCE)
            if self.text_eda > 0:
                report = eda(report, self.text_eda, rng)
        labels = torch.tensor(self.records.labels(index), dtype=torch.float32)
        sample = {"pixel_values": pixels, "report": report, "labels": labels, "index": index}
        if text_labels is not None:
            sample["text_labels"] = text_labels
        if self.records.has_clip_indices(index):  # rows of the precomputed text features
            sample["clip_indices"] = self.records.clip_indices(index)
        return sample

    def _apply_transform(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._resize(pixels) if self.raw_uint8 else self.transform(pixels)


# ---------------------------------------------------------------------------------------------
# Sampler
# ---------------------------------------------------------------------------------------------

_UINT64_MASK = (1 << 64) - 1


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array: a bijective, well-mixed 64-bit hash."""
    with np.errstate(over="ignore"):
        z = values + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _epoch_key(seed: int, epoch: int) -> np.uint64:
    mixed = _splitmix64(np.array([seed & _UINT64_MASK], dtype=np.uint64))
    return _splitmix64(mixed ^ np.uint64(epoch & _UINT64_MASK))[0]


def sample_seeds(seed: int, epoch: int, positions: np.ndarray) -> np.ndarray:
    """63-bit seeds (int64 >= 0) for ``positions`` of the global order of ``epoch``; a pure
    function of (seed, epoch, position)."""
    key = _epoch_key(seed, epoch)
    return (_splitmix64(np.asarray(positions, dtype=np.uint64) ^ key) >> np.uint64(1)).astype(np.int64)


class EpochSampler(Sampler):
    """Yields ``(index, sample_seed)`` for one process.

    The global order of an epoch is a permutation of ``range(n)`` drawn from a
    ``torch.Generator`` seeded by (seed, epoch) (or ``range(n)`` without shuffling). With
    ``world_size > 1`` it is padded by repeating its start (or cut, with ``drop_last``) to a
    multiple of ``world_size`` and rank ``r`` takes positions ``r, r + world_size, ...``, as
    ``DistributedSampler`` does. ``set_start(k)`` skips the first ``k`` samples of this
    rank's order in the next pass only, to resume exactly mid-epoch.
    """

    def __init__(
        self, n: int, *, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1, drop_last: bool = False
    ):
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.n, self.seed, self.shuffle = int(n), int(seed), bool(shuffle)
        self.rank, self.world_size, self.drop_last = int(rank), int(world_size), bool(drop_last)
        self.epoch = 0
        self._start = 0
        if self.drop_last:
            self.num_samples = self.n // self.world_size
        else:
            self.num_samples = math.ceil(self.n / self.world_size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next pass yields."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` samples of this rank's order in the next pass only."""
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start {start} is not in [0, {self.num_samples}] (samples of this rank per epoch)")
        self._start = int(start)

    def global_order(self) -> torch.Tensor:
        """Dataset indices of this epoch's global order, padded/cut to the sharded length."""
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(int(_epoch_key(self.seed, self.epoch) >> np.uint64(1)))
            order = torch.randperm(self.n, generator=generator)
        else:
            order = torch.arange(self.n)
        total = self.num_samples * self.world_size
        if total > self.n and self.n > 0:
            repeats = math.ceil(total / self.n)
            order = order.repeat(repeats)
        return order[:total]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        total = self.num_samples * self.world_size
        positions = np.arange(self.rank, total, self.world_size, dtype=np.int64)
        indices = self.global_order()[torch.from_numpy(positions)].tolist()
        seeds = sample_seeds(self.seed, self.epoch, positions).tolist()
        start, self._start = self._start, 0
        # A plain iterator built now, not a generator: the start is consumed by this pass.
        return iter(list(zip(indices[start:], seeds[start:])))

    def __len__(self) -> int:
        return self.num_samples - self._start


# ---------------------------------------------------------------------------------------------
# Precomputed text features (text_encoder: precomputed)
# ---------------------------------------------------------------------------------------------

CLIP_INDEX_PAD = -1  # PrecomputedTextEncoder gives -1 / mask 0 positions no weight


def uses_precomputed_text(cfg: "Config") -> bool:
    """True when the model's text input is each record's ``clip_indices`` (rows of
    ``cfg.text_features_path``) rather than tokenised report text."""
    return cfg.model != "simple" and cfg.text_encoder == "precomputed"


def _clip_index_list(value: Any, where: str) -> list[int]:
    """A record's ``clip_indices`` (one int or a list of ints) as a non-empty list of ints >= 0."""
    value = _plain(value)
    items = [_plain(item) for item in (value if isinstance(value, (list, tuple)) else [value])]
    if not items:
        raise DataError(f"{where}: key 'clip_indices' is empty (need at least one feature row)")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise DataError(f"{where}: key 'clip_indices': {quote(item)} is not an integer row index")
        if not 0 <= item < 2**62:
            raise DataError(f"{where}: key 'clip_indices': {quote(item)} is negative or absurdly large")
    return items


def validate_clip_indices(
    splits: Mapping[str, Sequence[dict]],
    source: str | os.PathLike,
    num_features: int | None = None,
    features_path: str | os.PathLike | None = None,
) -> None:
    """Check every record of train/val/test for ``clip_indices`` and normalise them in place
    to lists of ints. With ``num_features`` (rows of the features file) each index must also
    pick one of those rows. Raises ``DataError`` naming the file, split and index."""
    for split in REQUIRED_SPLITS:
        for index, record in enumerate(splits.get(split) or ()):
            where = f"{source}: {split}[{index}]"
            if "clip_indices" not in record:
                raise DataError(
                    f"{where}: key 'clip_indices' is missing (text_encoder 'precomputed' needs each "
                    f"record's rows of text_features_path)"
                )
            indices = _clip_index_list(record["clip_indices"], where)
            if num_features is not None and max(indices) >= num_features:
                raise DataError(
                    f"{where}: clip index {max(indices)} is out of range: text_features_path "
                    f"{features_path} has {num_features} feature rows"
                )
            record["clip_indices"] = indices


def check_clip_index_rows(datasets: Mapping[str, "CXRDataset"], text_encoder: Any, source: str | os.PathLike) -> None:
    """After the model is built: every record's ``clip_indices`` must pick a row of the
    features its ``PrecomputedTextEncoder`` (``text_encoder``) read; ``DataError`` naming the
    dataset file, split and index otherwise."""
    validate_clip_indices(
        {name: dataset.records for name, dataset in datasets.items()}, source,
        num_features=int(text_encoder.features.shape[0]), features_path=text_encoder.path,
    )


class ClipIndexTokenizer:
    """The tokenizer slot for ``text_encoder: precomputed``: the model's text input is each
    record's ``clip_indices`` (rows of the precomputed features file), not report text.

    ``encode_indices`` pads a batch's index lists to the longest with -1 (attention mask 0),
    as ``models.PrecomputedTextEncoder`` expects; ``BatchCollator`` calls it instead of
    ``encode``. ``to_json``/``text.tokenizer_from_json`` round-trip it through checkpoints.
    """

    kind = "clip_indices"
    pad_id = CLIP_INDEX_PAD

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        raise TypeError(
            "text_encoder 'precomputed' cannot encode text (prompts, reports): its text input is "
            "each record's clip_indices"
        )

    def encode_indices(
        self, index_lists: Sequence[Any], sample_ids: Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """``input_ids`` (int64 ``[B, K]``, K = the longest list, at least 1, padded with -1)
        and ``attention_mask`` (1 on real indices). A missing (None) or malformed entry is a
        ``DataError`` naming the sample's dataset index from ``sample_ids``."""
        lists = []
        for position, value in enumerate(index_lists):
            sample = sample_ids[position] if sample_ids is not None else position
            where = f"dataset sample {sample}"
            if value is None:
                raise DataError(
                    f"{where}: no 'clip_indices' in its record (text_encoder 'precomputed' needs them)"
                )
            lists.append(_clip_index_list(value, where))
        width = max((len(indices) for indices in lists), default=1)
        input_ids = torch.full((len(lists), width), CLIP_INDEX_PAD, dtype=torch.long)
        for row, indices in enumerate(lists):
            input_ids[row, : len(indices)] = torch.tensor(indices, dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": (input_ids != CLIP_INDEX_PAD).long()}

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "pad_id": self.pad_id})

    @classmethod
    def from_json(cls, text: str) -> "ClipIndexTokenizer":
        return cls()


# ---------------------------------------------------------------------------------------------
# Batches and loaders
# ---------------------------------------------------------------------------------------------


class BatchCollator:
    """Turns a list of ``CXRDataset`` samples into the batch of docs/architecture.md.

    ``SkippedSample`` entries (and ``None``) are dropped and counted in ``n_skipped``, their
    files listed in ``skipped_paths``. With a ``ClipIndexTokenizer`` the text input is the
    samples' ``clip_indices``, padded with -1. A batch whose samples were all skipped has ``B = 0``
    tensors; its ``pixel_values`` is ``[0, *empty_image_shape]`` (no image told the size).
    A class rather than a closure so DataLoader workers can pickle it.
    """

    def __init__(self, tokenizer, empty_image_shape: tuple[int, ...] = (3, 0, 0)):
        self.tokenizer = tokenizer
        self.empty_image_shape = tuple(empty_image_shape)

    def __call__(self, samples: list[dict | SkippedSample | None]) -> dict[str, Any]:
        kept = [s for s in samples if isinstance(s, dict)]
        skipped = [s for s in samples if not isinstance(s, dict)]
        if isinstance(self.tokenizer, ClipIndexTokenizer):
            text = self.tokenizer.encode_indices([s.get("clip_indices") for s in kept], [s["index"] for s in kept])
        else:
            text = self.tokenizer.encode([s["report"] for s in kept])
        if kept:
            pixel_values = torch.stack([s["pixel_values"] for s in kept])
            labels = torch.stack([s["labels"] for s in kept]).to(torch.float32)
        else:
            pixel_values = torch.zeros((0, *self.empty_image_shape), dtype=torch.float32)
            labels = torch.zeros((0, NUM_LABELS), dtype=torch.float32)
        extra = {}
        if kept and "text_labels" in kept[0]:  # sentence labels: the text rows' own labels
            extra["text_labels"] = torch.stack([s["text_labels"] for s in kept]).to(torch.float32)
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


def make_collate(tokenizer) -> BatchCollator:
    """The collate function for ``DataLoader``: see ``BatchCollator``."""
    return BatchCollator(tokenizer)


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


def _truncation_warning(tokenizer, reports: Sequence[str], max_reports: int = 2000) -> str | None:
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


def _sentence_label_table(cfg: "Config", data_path: Path, warnings_out: list[str]):
    """The training sentences' label table of `cfg.sentence_labels` (sentence_labels.py), or None."""
    if not getattr(cfg, "sentence_labels", None):
        return None
    from medclip_nb.sentence_labels import (
        PREPARED_NAME,
        label_tensor_table,
        read_sentence_labels,
        resolve_sentence_labels,
    )

    path = resolve_sentence_labels(cfg)
    if path is None:
        warnings_out.append(f"sentence_labels 'auto': no {PREPARED_NAME} beside {data_path}; "
                            "each sentence has its study's labels")
        return None
    return label_tensor_table(read_sentence_labels(path))


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
    from medclip_nb.paths import resolve
    from medclip_nb.provenance import check_not_stale

    data_path = resolve(cfg.data_path)
    records = load_dataset_file(data_path)
    check_not_stale(data_path)  # prepared from a phantom that was replaced since
    root = resolve(cfg.image_root) if cfg.image_root else data_path.parent
    warnings_out = validate_dataset(records, data_path, root)
    if uses_precomputed_text(cfg):
        validate_clip_indices(records, data_path)
    full_sizes = {split: len(items) for split, items in records.items()}
    if cfg.train_fraction < 1:
        from medclip_nb.train_fraction import keep_train_fraction

        records = {**records, "train": keep_train_fraction(records["train"], cfg.train_fraction,
                                                           cfg.train_fraction_seed)}
    if cfg.debug:
        records = {split: items[: cfg.debug_subset] for split, items in records.items()}
    if tokenizer is not None:
        message = _truncation_warning(tokenizer, [r["report"] for r in records["train"]])
        if message:
            warnings_out.append(message)
    sentence_labels = _sentence_label_table(cfg, data_path, warnings_out)
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
        )
        datasets[split].full_size = full_sizes[split]
    return datasets, records, warnings_out
