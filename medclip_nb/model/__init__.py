"""model stage."""

from medclip_nb.model.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    load_model,
    remove_stale_temp_files,
    resolve_resume,
    restore_rng_state,
    save_checkpoint,
)
from medclip_nb.model.checkpoint_check import RESUME_PARTS, check_checkpoint
from medclip_nb.model.encoders import build_model, count_parameters
from medclip_nb.model.export import EXPORT_FILES, export_checkpoint, is_export_dir, load_export
from medclip_nb.model.losses import ContrastiveLoss
from medclip_nb.model.maps import MAP_METHODS, text_to_region_maps
from medclip_nb.model.model_files import check_eval_memory, model_config

__all__ = [
    "ContrastiveLoss",
    "EXPORT_FILES",
    "MAP_METHODS",
    "RESUME_PARTS",
    "build_model",
    "check_eval_memory",
    "capture_rng_state",
    "check_checkpoint",
    "count_parameters",
    "export_checkpoint",
    "is_export_dir",
    "load_checkpoint",
    "load_export",
    "load_model",
    "model_config",
    "remove_stale_temp_files",
    "resolve_resume",
    "restore_rng_state",
    "save_checkpoint",
    "text_to_region_maps",
]
