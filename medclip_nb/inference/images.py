"""Images as model input: files and folders, PIL images and tensors, through a model's
evaluation transform; an unreadable file becomes a SkippedSample (the caller applies
on_bad_image)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from medclip_nb.data import (
    BadImageError,
    SkippedSample,
    load_grayscale,
    pil_to_grayscale,
)
from medclip_nb.errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


# ---- inputs ---------------------------------------------------------------------------------------
MAX_IMAGE_FILES = 10_000_000


def _files_under(folder: Path) -> list[Path]:
    """Image files under `folder`, sorted; walked with an explicit stack (a folder nested a
    thousand deep is no recursion), symbolic links to folders not followed (no loops)."""
    found: list[Path] = []
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES and entry.is_file():
                        found.append(Path(entry.path))
        except OSError as e:
            raise UserError(f"{current}: cannot list this folder ({e.strerror or type(e).__name__})") from None
        if len(found) > MAX_IMAGE_FILES:
            raise UserError(f"{folder}: more than {MAX_IMAGE_FILES:,} image files")
    return sorted(found)


def image_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files and folders -> image files: a file as given, a folder as the files under it
    (recursively, sorted) whose suffix is one of IMAGE_SUFFIXES. A path that does not exist or
    a folder without images is a UserError; relative paths are taken from the current folder."""
    files: list[Path] = []
    for item in paths:
        path = Path(item).expanduser()
        try:
            is_dir, exists = path.is_dir(), path.exists()
        except OSError as e:
            raise UserError(f"{path}: cannot be read ({e.strerror or type(e).__name__})") from None
        if is_dir:
            found = _files_under(path)
            if not found:
                raise UserError(f"{path}: folder holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif exists:
            files.append(path)
        else:
            raise UserError(f"{path}: no such file or folder")
    return files


def image_items(images) -> tuple[list[Any], list[str]]:
    """One entry per image (a float batch tensor becomes B entries) and an id for each: the
    file path, a PIL image's filename, else 'image_<position>'."""
    if isinstance(images, (str, os.PathLike, Image.Image, torch.Tensor)):
        images = [images]
    items: list[Any] = []
    for image in images:
        if isinstance(image, torch.Tensor) and image.is_floating_point() and image.ndim == 4:
            items.extend(image.unbind(0))
        elif isinstance(image, (str, os.PathLike)):
            items.extend(image_files([image]))
        elif isinstance(image, (Image.Image, torch.Tensor)):
            items.append(image)
        else:
            raise TypeError(f"images: expected paths, PIL images or tensors, got {type(image).__name__}")
    ids = [str(item) if isinstance(item, Path) else (getattr(item, "filename", "") or f"image_{i}")
           for i, item in enumerate(items)]
    return items, ids


class ImageItems(Dataset):
    """Paths, PIL images and tensors as model input; an unreadable file gives a SkippedSample
    (the caller applies on_bad_image, so a worker never raises)."""

    def __init__(self, items: Sequence[Any], ids: Sequence[str], transform, image_size: int, resize_size: int):
        self.items, self.ids, self.transform = items, ids, transform
        self.image_size, self.resize_size = image_size, resize_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any] | SkippedSample:
        try:
            return {"pixel_values": self._pixels(self.items[i], self.ids[i]), "index": i}
        except BadImageError as exc:
            return SkippedSample(path=self.ids[i], reason=str(exc))

    def _pixels(self, item, name: str) -> torch.Tensor:
        if isinstance(item, Path):
            gray = torch.from_numpy(load_grayscale(item, draft_size=self.resize_size))
        elif isinstance(item, Image.Image):
            gray = torch.from_numpy(pil_to_grayscale(item, name))
        elif item.is_floating_point():  # already the eval transform's output
            expected = (3, self.image_size, self.image_size)
            if tuple(item.shape) != expected:
                raise ValueError(f"{name}: a float tensor must be a transformed image {expected}, got "
                                 f"{tuple(item.shape)}")
            return item.float()
        elif item.dtype == torch.uint8 and item.ndim in (2, 3):
            gray = item if item.ndim == 2 else item[0] if item.shape[0] == 1 else None
            if gray is None and item.shape[0] == 3:
                from torchvision.transforms.v2.functional import rgb_to_grayscale

                gray = rgb_to_grayscale(item)[0]
            if gray is None:
                raise ValueError(f"{name}: a uint8 tensor must be [H, W], [1, H, W] or [3, H, W], got "
                                 f"{tuple(item.shape)}")
        else:
            raise ValueError(f"{name}: tensor of dtype {item.dtype} and shape {tuple(item.shape)} is not an image")
        return self.transform(gray.contiguous().unsqueeze(0))


def collate_images(samples: list) -> dict[str, Any]:
    kept = [s for s in samples if isinstance(s, dict)]
    return {
        "pixel_values": torch.stack([s["pixel_values"] for s in kept]) if kept else None,
        "index": [s["index"] for s in kept],
        "skipped": [s for s in samples if isinstance(s, SkippedSample)],
    }


