"""The data stage: dataset files (loading, validation), images and transforms, the Dataset and
its loaders, the sampler, the uint8 image store, device augmentation and unpaired data.

The names below are the package's public interface (``from medclip_nb.data import build_datasets``);
each lives in one submodule, listed in docs/architecture.md. Inside the package, modules import
from each other's submodules, never from here.
"""

from medclip_nb.data.build import build_datasets
from medclip_nb.data.dataset import BatchCollator, CXRDataset, make_collate, make_loader, seed_worker
from medclip_nb.data.images import (
    AUGMENT_PRESETS,
    DECODED_FORMATS,
    MAX_ASPECT_RATIO,
    MAX_PADDED_SIDE,
    BadImageError,
    BadImageWarning,
    PadToSquare,
    RepeatChannels,
    SkippedSample,
    build_resize_transform,
    build_transforms,
    check_image_size,
    load_grayscale,
    pil_to_grayscale,
)
from medclip_nb.data.loading import REQUIRED_SPLITS, SPLIT_ALIASES, UNPAIRED_SPLITS, load_dataset_file
from medclip_nb.data.sampling import EpochSampler, sample_seeds
from medclip_nb.data.validation import (
    ALLOWED_LABEL_VALUES,
    check_clip_index_rows,
    uses_precomputed_text,
    validate_clip_indices,
    validate_dataset,
)

__all__ = [
    "ALLOWED_LABEL_VALUES", "AUGMENT_PRESETS", "DECODED_FORMATS", "MAX_ASPECT_RATIO", "MAX_PADDED_SIDE",
    "REQUIRED_SPLITS", "SPLIT_ALIASES", "UNPAIRED_SPLITS", "BadImageError", "BadImageWarning", "BatchCollator",
    "CXRDataset", "EpochSampler", "PadToSquare", "RepeatChannels", "SkippedSample", "build_datasets",
    "build_resize_transform", "build_transforms", "check_clip_index_rows", "check_image_size", "load_dataset_file",
    "load_grayscale", "make_collate", "make_loader", "pil_to_grayscale", "sample_seeds", "seed_worker",
    "uses_precomputed_text", "validate_clip_indices", "validate_dataset",
]
