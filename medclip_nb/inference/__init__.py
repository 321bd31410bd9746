"""inference stage."""

from medclip_nb.inference.commands import embed_command, predict_command
from medclip_nb.inference.pretrained import load_pretrained

__all__ = [
    "embed_command",
    "load_pretrained",
    "predict_command",
]
