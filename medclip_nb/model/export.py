"""A portable export of a trained model: three files, no training state, no pickle.

    DIR/model.safetensors   the model's weights (safetensors: tensors only, nothing to execute)
    DIR/config.json         {"format": "medclip-nb-export", "version": 1, "config": {...}}: the
                            config keys that build the model and its evaluation transform
    DIR/tokenizer.json      the tokenizer as `tokenizer.to_json()` writes it (for the subword
                            tokenizer, the Hugging Face `tokenizers` JSON)

`export_checkpoint` writes them from a training checkpoint (read with `weights_only=True`);
`load_export` rebuilds (model, tokenizer, Config) from them, reading JSON and safetensors only.
A model with `text_encoder: bert` or `precomputed` still needs its local BERT folder or
features file at the path its config names: those are not copied.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from medclip_nb.config import from_dict
from medclip_nb.errors import CheckpointError, ConfigError
from medclip_nb.files import write_atomic, write_json_atomic, write_text_atomic
from medclip_nb.model.checkpoint import load_model
from medclip_nb.model.encoders import build_model
from medclip_nb.paths import resolve
from medclip_nb.text import tokenizer_from_json

EXPORT_FORMAT = "medclip-nb-export"
EXPORT_VERSION = 1
WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE = "model.safetensors", "config.json", "tokenizer.json"
EXPORT_FILES = (WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE)

# What build_model() and the evaluation transform read; nothing about data, training or paths
# of the machine it was trained on, except the two files a bert / precomputed text encoder needs.
MODEL_CONFIG_KEYS = (
    "model", "vision_backbone", "text_encoder", "text_layers", "text_width", "text_heads", "bert_path",
    "text_features_path", "embed_dim", "loss", "max_text_tokens", "vocab_size",
    "image_size", "resize_size", "augment",
)


def is_export_dir(path: str | os.PathLike) -> bool:
    """True for a folder holding an export's config.json."""
    return Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file()


def export_model(model: torch.nn.Module, tokenizer, cfg, out_dir: str | os.PathLike) -> Path:
    """Write `model` (weights), `cfg` (model keys only) and `tokenizer` to `out_dir`.

    Refuses a folder that holds files other than an earlier export's (never deletes them)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"--out {out}: exists and is not a folder")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_FILES) if out.is_dir() else []
    if foreign:
        raise CheckpointError(f"--out {out}: folder holds other files ({foreign[0]}, ...); give an empty or new folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"--out {out}: cannot create the folder ({e.strerror or type(e).__name__})") from None
    # safetensors wants contiguous tensors that share no memory: clone each one.
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    config = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION,
              "config": {k: getattr(cfg, k) for k in MODEL_CONFIG_KEYS}}
    write_atomic(out / WEIGHTS_FILE, lambda p: save_file(weights, str(p), metadata={"format": "pt"}), what="--out")
    write_json_atomic(out / CONFIG_FILE, config, sort_keys=True, what="--out")
    write_text_atomic(out / TOKENIZER_FILE, tokenizer.to_json(), what="--out")
    return out


def export_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Export the model of a training checkpoint (best.pth, last.pth, ...) to `out_dir`."""
    model, tokenizer, cfg = load_model(resolve(checkpoint), "cpu")
    return export_model(model, tokenizer, cfg, resolve(out_dir))


def _read_json(path: Path, what: str):
    if not path.is_file():
        raise CheckpointError(f"{path.parent}: not a medclip-nb export (no {path.name})")
    try:
        return json.loads(path.read_text(encoding="utf-8")) if what == "json" else path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot be read ({type(e).__name__})") from None


def load_export(folder: str | os.PathLike, device: str | torch.device = "cpu"):
    """Rebuild (model in eval mode on `device`, tokenizer, Config) from an export folder.

    Reads JSON and safetensors only. Raises CheckpointError (one line, naming the file) for a
    missing or damaged file or weights that do not fit the config."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file


    folder = Path(folder)
    meta = _read_json(folder / CONFIG_FILE, "json")
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT or not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{folder / CONFIG_FILE}: not a medclip-nb export config (no format '{EXPORT_FORMAT}')")
    if meta.get("version") != EXPORT_VERSION:
        raise CheckpointError(f"{folder / CONFIG_FILE}: export version {meta.get('version')!r}, "
                              f"this medclip-nb reads version {EXPORT_VERSION}")
    try:
        # data_path is a required key of Config; an export has no dataset, so it names the folder.
        cfg = from_dict({**meta["config"], "data_path": str(folder)}, source=str(folder / CONFIG_FILE))
    except ConfigError as e:
        raise CheckpointError(f"{folder / CONFIG_FILE}: {e}") from None
    tokenizer = tokenizer_from_json(_read_json(folder / TOKENIZER_FILE, "text"))
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"{folder}: not a medclip-nb export (no {WEIGHTS_FILE})")
    try:
        weights = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights_path}: not readable safetensors ({str(e).splitlines()[0]})") from None
    model = build_model(cfg, tokenizer)  # vision_pretrained is not exported: the weights file has them all
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{weights_path}: weights do not fit {CONFIG_FILE} ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), tokenizer, cfg
