"""Images: decoding a file to uint8 grayscale (the formats and modes chest X-ray exports come
in, within size limits checked on the header), and the transforms to the model's input.
"""

from __future__ import annotations

import contextlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
import torchvision.transforms.v2 as v2
from PIL import Image, ImageFile, UnidentifiedImageError

from medclip_nb.errors import DataError, one_line

if TYPE_CHECKING:
    from medclip_nb.config import Config

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


# Rows converted at a time: the arithmetic's temporaries stay a few tens of MB whatever the image.
_ROWS = 256


def _to_grayscale_uint8(img: Image.Image, path: Path) -> np.ndarray:
    mode = img.mode
    if mode in _WITH_ALPHA or (mode == "P" and "transparency" in img.info):
        # Composite on black: transparent pixels become background, not bright noise. Luma and
        # alpha (2 bytes a pixel), then luma * alpha / 255 a block of rows at a time.
        luma_alpha = np.asarray(img.convert("LA"))
        out = np.empty(luma_alpha.shape[:2], dtype=np.uint8)
        for start in range(0, out.shape[0], _ROWS):
            block = luma_alpha[start:start + _ROWS].astype(np.uint16)
            out[start:start + _ROWS] = (block[..., 0] * block[..., 1] + 127) // 255
        return out
    if mode in _CONVERT_TO_L:
        return np.array(img.convert("L"))
    if mode == "I" or mode.startswith("I;16"):
        # Scale the full 16-bit range (0..65535 -> 0..255, rounded half up). PIL's own
        # convert("L") would clip everything above 255 to white. Mode "I" values outside
        # 0..65535 are clipped into that range first. A block of rows at a time: an int64 copy
        # of a whole 12000 x 12000 image would be 1.1 GB.
        values = np.asarray(img)
        out = np.empty(values.shape, dtype=np.uint8)
        for start in range(0, values.shape[0], _ROWS):
            block = np.clip(values[start:start + _ROWS].astype(np.int64), 0, 65535)
            out[start:start + _ROWS] = (block * 255 + 32767) // 65535
        return out
    raise BadImageError(f"{path}: unsupported image mode '{mode}'")


# Only the formats chest X-ray exports come in: every other decoder PIL has is attack surface.
DECODED_FORMATS = ("JPEG", "PNG")
# MIMIC-CXR images are about 2544 x 3056 (aspect 1.2). Padding to a square happens before the
# resize, so a 200000 x 1 image would ask for a 40 GB square; both limits are checked on the
# header, before any pixel is decoded.
MAX_ASPECT_RATIO = 8.0
MAX_PADDED_SIDE = 12_000
# Pixels decoded at most (MIMIC-CXR: 7.8 million; the largest flat-panel detectors about 19).
MAX_PIXELS = 40_000_000


def check_image_size(size: tuple[int, int], path: str | os.PathLike) -> None:
    """``BadImageError`` for an image whose aspect ratio or padded square is over the limits."""
    width, height = size
    if width < 1 or height < 1:
        raise BadImageError(f"{path}: image of {width} x {height} pixels")
    if max(width, height) > MAX_PADDED_SIDE:
        raise BadImageError(f"{path}: image of {width} x {height} pixels is over the limit of "
                            f"{MAX_PADDED_SIDE} pixels a side (padded to a square before resizing)")
    if width * height > MAX_PIXELS:
        raise BadImageError(f"{path}: image of {width} x {height} pixels is over the limit of "
                            f"{MAX_PIXELS // 1_000_000} megapixels")
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


def eval_preprocessing(cfg: "Config") -> dict[str, Any]:
    """`build_transforms(cfg, train=False)` in plain keys (an export's preprocessor_config.json):
    the key names of Hugging Face image processors where one fits, and `steps` in order."""
    preset = AUGMENT_PRESETS[cfg.augment]
    resize, crop = cfg.resize_size, cfg.image_size
    return {
        "input": "grayscale uint8 (colour converted to luma, 16-bit scaled to 8 bits, transparency on black)",
        "do_pad": True,
        "pad": {"to": "square", "position": "centred", "fill": 0},
        "do_resize": True,
        "size": {"height": resize, "width": resize},
        "resample": "bilinear",
        "antialias": True,
        "do_center_crop": True,
        "crop_size": {"height": crop, "width": crop},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [preset["mean"]] * 3,
        "image_std": [preset["std"]] * 3,
        "num_channels": 3,
        "channels": "the grey channel repeated three times",
        "steps": [
            "pad the shorter side with black (0), centred, to a square",
            f"resize to {resize} x {resize} (bilinear, antialiased; torchvision.transforms.v2.Resize on a tensor)",
            f"centre-crop {crop} x {crop}",
            "divide by 255",
            f"subtract {preset['mean']} and divide by {preset['std']}",
            "repeat to 3 channels",
        ],
        "augment_preset": cfg.augment,
    }


# ---------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------
