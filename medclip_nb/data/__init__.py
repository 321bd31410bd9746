"""The data stage: dataset files (loading, validation), images and transforms, the Dataset and
its loaders, the sampler, the uint8 image store, device augmentation and unpaired data.

The names below are the package's public interface (``from medclip_nb.data import build_datasets``);
each lives in one submodule, listed in docs/architecture.md. Inside the package, modules import
from each other's submodules, never from here.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the submodule that defines it. Loaded on first use (PEP 562), so importing one light
# submodule (sentence_labels for prepare, loading for convert) does not import torch.
_PUBLIC = {
    "build_datasets": "medclip_nb.data.build",
    "BatchCollator": "medclip_nb.data.dataset",
    "CXRDataset": "medclip_nb.data.dataset",
    "make_collate": "medclip_nb.data.dataset",
    "make_loader": "medclip_nb.data.dataset",
    "seed_worker": "medclip_nb.data.dataset",
    "AUGMENT_PRESETS": "medclip_nb.data.images",
    "BadImageError": "medclip_nb.data.images",
    "BadImageWarning": "medclip_nb.data.images",
    "DECODED_FORMATS": "medclip_nb.data.images",
    "MAX_ASPECT_RATIO": "medclip_nb.data.images",
    "MAX_PADDED_SIDE": "medclip_nb.data.images",
    "PadToSquare": "medclip_nb.data.images",
    "RepeatChannels": "medclip_nb.data.images",
    "SkippedSample": "medclip_nb.data.images",
    "build_resize_transform": "medclip_nb.data.images",
    "build_transforms": "medclip_nb.data.images",
    "check_image_size": "medclip_nb.data.images",
    "load_grayscale": "medclip_nb.data.images",
    "pil_to_grayscale": "medclip_nb.data.images",
    "REQUIRED_SPLITS": "medclip_nb.data.loading",
    "SPLIT_ALIASES": "medclip_nb.data.loading",
    "UNPAIRED_SPLITS": "medclip_nb.data.loading",
    "load_dataset_file": "medclip_nb.data.loading",
    "EpochSampler": "medclip_nb.data.sampling",
    "sample_seeds": "medclip_nb.data.sampling",
    "ALLOWED_LABEL_VALUES": "medclip_nb.data.validation",
    "check_clip_index_rows": "medclip_nb.data.validation",
    "uses_precomputed_text": "medclip_nb.data.validation",
    "validate_clip_indices": "medclip_nb.data.validation",
    "validate_dataset": "medclip_nb.data.validation",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'medclip_nb.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
