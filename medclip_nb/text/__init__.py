"""text stage."""

from __future__ import annotations

import importlib
from typing import Any

# name -> the submodule that defines it, loaded on first use (PEP 562): importing a light
# submodule's names (the importers, text cleaning) does not import torch.
_PUBLIC = {
    "drop_short_sentences": "medclip_nb.text.augment",
    "eda": "medclip_nb.text.augment",
    "clean_report": "medclip_nb.text.clean",
    "split_sentences": "medclip_nb.text.clean",
    "PREPARED_NAME": "medclip_nb.text.sentence_labels",
    "find_source_table": "medclip_nb.text.sentence_labels",
    "label_tensor_table": "medclip_nb.text.sentence_labels",
    "read_sentence_labels": "medclip_nb.text.sentence_labels",
    "resolve_sentence_labels": "medclip_nb.text.sentence_labels",
    "write_sentence_labels": "medclip_nb.text.sentence_labels",
    "build_tokenizer": "medclip_nb.text.tokenizers",
    "clip_index_list": "medclip_nb.text.tokenizers",
    "from_local_folder": "medclip_nb.text.tokenizers",
    "import_transformers": "medclip_nb.text.tokenizers",
    "local_hf_folder": "medclip_nb.text.tokenizers",
    "tokenizer_from_json": "medclip_nb.text.tokenizers",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
