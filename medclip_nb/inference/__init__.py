"""inference stage."""

from medclip_nb.inference.commands import embed_command, export_command, predict_command, retrieve_command
from medclip_nb.inference.pretrained import load_pretrained

__all__ = [
    "embed_command",
    "export_command",
    "load_pretrained",
    "predict_command",
    "retrieve_command",
]
