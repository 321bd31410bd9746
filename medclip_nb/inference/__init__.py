"""inference stage."""

from medclip_nb.inference.commands import embed_command, export_command, predict_command, retrieve_command
from medclip_nb.inference.pretrained import load_pretrained
from medclip_nb.inference.retrieval import load_report_bank

__all__ = [
    "embed_command",
    "export_command",
    "load_pretrained",
    "load_report_bank",
    "predict_command",
    "retrieve_command",
]
