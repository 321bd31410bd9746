"""The data stage: importing MIMIC-CXR-JPG trees (and what the phantom and prepare wrote),
dataset files (loading, validation), images and transforms, the Dataset and its loaders, the
sampler, the uint8 image store, device augmentation and unpaired data. A lazy facade: the
importers stay torch-free.

The names below are the package's public interface (``from medclip_nb.data import build_datasets``);
each lives in one submodule, listed in docs/architecture.md. Inside the package, modules import
from each other's submodules, never from here.
"""

from __future__ import annotations

from medclip_nb import lazy_exports

# name -> the submodule that defines it, loaded on first use (medclip_nb.lazy_exports).
_PUBLIC = {
    "build_datasets": "medclip_nb.data.build",
    "truncation_warning": "medclip_nb.data.build",
    "prepare_chexpert": "medclip_nb.data.chexpert",
    "convert_to_jsonl": "medclip_nb.data.convert",
    "decoupled_pool": "medclip_nb.data.decoupled",
    "CXRDataset": "medclip_nb.data.dataset",
    "make_collate": "medclip_nb.data.dataset",
    "make_loader": "medclip_nb.data.dataset",
    "seed_worker": "medclip_nb.data.dataset",
    "MEDCLIP_SEED": "medclip_nb.data.five_by_200",
    "frontal_mask": "medclip_nb.data.five_by_200",
    "label_matrix": "medclip_nb.data.five_by_200",
    "select_5x200_gloria": "medclip_nb.data.five_by_200",
    "medclip_5x200": "medclip_nb.data.five_by_200",
    "BatchAugment": "medclip_nb.data.gpu_augment",
    "augment_on_device": "medclip_nb.data.gpu_augment",
    "AUGMENT_PRESETS": "medclip_nb.data.images",
    "BadImageError": "medclip_nb.data.images",
    "BadImageWarning": "medclip_nb.data.images",
    "PadToSquare": "medclip_nb.data.images",
    "RepeatChannels": "medclip_nb.data.images",
    "SkippedSample": "medclip_nb.data.images",
    "build_transforms": "medclip_nb.data.images",
    "eval_preprocessing": "medclip_nb.data.images",
    "load_grayscale": "medclip_nb.data.images",
    "pil_to_grayscale": "medclip_nb.data.images",
    "prepare_iu": "medclip_nb.data.iu",
    "REQUIRED_SPLITS": "medclip_nb.data.loading",
    "load_dataset_file": "medclip_nb.data.loading",
    "CHEXPERT_TABLE": "medclip_nb.data.mimic",
    "METADATA_COLUMNS": "medclip_nb.data.mimic",
    "METADATA_TABLE": "medclip_nb.data.mimic",
    "NEGBIO_TABLE": "medclip_nb.data.mimic",
    "SPLIT_TABLE": "medclip_nb.data.mimic",
    "prepare_mimic": "medclip_nb.data.mimic",
    "report_text": "medclip_nb.data.mimic_reports",
    "REGIONS_SUFFIX": "medclip_nb.data.regions",
    "image_key": "medclip_nb.data.regions",
    "mask_on_input": "medclip_nb.data.regions",
    "read_box_table": "medclip_nb.data.regions",
    "read_regions_file": "medclip_nb.data.regions",
    "regions_document": "medclip_nb.data.regions",
    "append_phase_times": "medclip_nb.data.prepare",
    "ensure_dataset": "medclip_nb.data.prepare",
    "describe_phantom": "medclip_nb.data.provenance",
    "PHANTOM_FILES": "medclip_nb.data.provenance",
    "delete_listed": "medclip_nb.data.provenance",
    "read_phantom_listing": "medclip_nb.data.provenance",
    "removal_problem": "medclip_nb.data.provenance",
    "phantom_params": "medclip_nb.data.provenance",
    "phantom_record": "medclip_nb.data.provenance",
    "prepare_record": "medclip_nb.data.provenance",
    "remove_derived_datasets": "medclip_nb.data.provenance",
    "user_params": "medclip_nb.data.provenance",
    "EpochSampler": "medclip_nb.data.sampling",
    "ImageStore": "medclip_nb.data.store",
    "find_store": "medclip_nb.data.store",
    "build_store": "medclip_nb.data.store_build",
    "split_train_fraction": "medclip_nb.data.train_fraction",
    "build_unpaired": "medclip_nb.data.unpaired",
    "check_clip_index_rows": "medclip_nb.data.validation",
    "uses_precomputed_text": "medclip_nb.data.validation",
    "validate_dataset": "medclip_nb.data.validation",
}
__all__ = sorted(_PUBLIC)
__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
