"""A portable export of a trained model: a folder others can load, with no training state and no pickle.

    DIR/model.safetensors         the weights (safetensors: tensors only, nothing to execute)
    DIR/config.json               {"format": "medclip-nb-export", "version": 2, "architecture": {...},
                                  "tokenizer": {...}, "training": {...}, "config": {...}}: the model in plain
                                  keys, how it was trained, and the config keys that rebuild it
    DIR/tokenizer.json            the tokenizer for Hugging Face `tokenizers` (text/tokenizer_export.py)
    DIR/tokenizer_config.json     what `transformers.AutoTokenizer.from_pretrained(DIR)` needs besides
    DIR/preprocessor_config.json  the evaluation transform: pad, resize, crop, mean, std
    DIR/README.md                 the model card (model/export_card.py)

`export_checkpoint` writes them from a training checkpoint (read with `weights_only=True`);
`load_export` rebuilds (model, tokenizer, Config) from config.json, tokenizer.json and the weights,
reading JSON and safetensors only (version 1 exports, three files, still load). config.json has no
`model_type`: the folder is not a transformers architecture, and with one transformers' AutoTokenizer
warns that it instantiates another. A model with `text_encoder: bert` or `precomputed` still needs its
local BERT folder or features file at the path its config names: those are not copied.

Every file goes through `write_export_files`, so anything that must hold for all of them is added there.
"""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch

from medclip_nb.config import from_dict
from medclip_nb.data import eval_preprocessing
from medclip_nb.errors import CheckpointError, ConfigError
from medclip_nb.files import write_atomic, write_text_atomic
from medclip_nb.model.checkpoint import load_checkpoint, model_from_state
from medclip_nb.model.checkpoint_check import MODEL_PARTS, check_checkpoint
from medclip_nb.model.encoders import build_model
from medclip_nb.model.export_card import architecture, check_metrics_entry, model_card, training_record
from medclip_nb.paths import resolve
from medclip_nb.runtime import place_model
from medclip_nb.text import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, tokenizer_files, tokenizer_from_json

EXPORT_FORMAT = "medclip-nb-export"
EXPORT_VERSION = 2
READABLE_VERSIONS = (1, 2)
WEIGHTS_FILE, CONFIG_FILE, PREPROCESSOR_FILE, CARD_FILE = (
    "model.safetensors", "config.json", "preprocessor_config.json", "README.md")
EXPORT_FILES = (WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, PREPROCESSOR_FILE, CARD_FILE)

# What build_model() and the evaluation transform read; nothing about data, training or paths
# of the machine it was trained on, except the two files a bert / precomputed text encoder needs.
MODEL_CONFIG_KEYS = (
    "model", "vision_backbone", "text_encoder", "text_layers", "text_width", "text_heads", "bert_path",
    "text_features_path", "embed_dim", "loss", "max_text_tokens", "vocab_size",
    "image_size", "resize_size", "augment",
)

# An export's files: name -> its text, or a function that writes the file at the path it is given.
ExportFiles = dict[str, "str | Callable[[Path], object]"]


def is_export_dir(path: str | os.PathLike) -> bool:
    """True for a folder holding an export's config.json."""
    return Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file()


def _package_version() -> str | None:
    try:
        return metadata.version("medclip-nb")
    except metadata.PackageNotFoundError:  # run from a checkout that was not installed
        return None


def _json(data) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def export_files(model: torch.nn.Module, tokenizer, cfg, *, training: dict | None = None,
                 metrics: dict | None = None, metrics_source: str | None = None) -> ExportFiles:
    """Every file of the export of `model`, in the order they are written (the card last)."""
    from safetensors.torch import save_file

    # safetensors wants contiguous tensors that share no memory: clone each one.
    weights = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    arch = architecture(model, tokenizer, cfg)
    training = training or {}
    tokenizer_text = tokenizer_files(tokenizer)
    # The subword tokenizer (its JSON has no "kind") is rebuilt from tokenizer.json, the others
    # (characters, a local BERT's, clip indices) from their own small state kept here.
    state = json.loads(tokenizer.to_json())
    tokenizer_entry = ({"kind": "subword", "file": TOKENIZER_FILE} if "kind" not in state
                       else {"kind": state["kind"], "state": state})
    config = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "medclip_nb_version": _package_version(),
              "architecture": arch, "tokenizer": tokenizer_entry, "preprocessor": PREPROCESSOR_FILE,
              "training": training, "config": {k: getattr(cfg, k) for k in MODEL_CONFIG_KEYS}}
    files: ExportFiles = {
        WEIGHTS_FILE: lambda p: save_file(weights, str(p), metadata={"format": "pt"}),
        CONFIG_FILE: _json(config),
        **tokenizer_text,
        PREPROCESSOR_FILE: _json(eval_preprocessing(cfg)),
    }
    files[CARD_FILE] = model_card(arch, training, [*files, CARD_FILE], metrics, metrics_source)
    return files


def write_export_files(out: Path, files: ExportFiles) -> None:
    """The one place an export's files are written: each atomically (write_atomic); then the files
    of an earlier export in `out` that this one does not have are removed, so none is stale."""
    for name, content in files.items():
        if callable(content):
            write_atomic(out / name, content, what="--out")
        else:
            write_text_atomic(out / name, content, what="--out")
    for name in EXPORT_FILES:
        if name not in files:
            (out / name).unlink(missing_ok=True)


def export_model(model: torch.nn.Module, tokenizer, cfg, out_dir: str | os.PathLike, **card) -> Path:
    """Write the export of `model` (with `tokenizer`, `cfg`'s model keys) to `out_dir`; `card`:
    training=, metrics=, metrics_source= for config.json and the model card (export_files).

    Refuses a folder that holds files other than an earlier export's (never deletes them)."""
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
    write_export_files(out, export_files(model, tokenizer, cfg, **card))
    return out


def export_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, metrics: dict | None = None,
                      metrics_source: str | None = None) -> Path:
    """Export the model of a training checkpoint (best.pth, last.pth, ...) to `out_dir`, with
    its training record and, given one, a metrics.json entry (`metrics`, named by `metrics_source`)
    in the model card."""
    path = resolve(checkpoint)
    state = check_checkpoint(load_checkpoint(path), path, MODEL_PARTS)
    model, tokenizer, cfg = model_from_state(state, path, "cpu")
    if metrics is not None:
        check_metrics_entry(metrics, cfg, path, metrics_source)
    return export_model(model, tokenizer, cfg, resolve(out_dir), training=training_record(cfg, state),
                        metrics=metrics, metrics_source=metrics_source)


# ---- loading ----------------------------------------------------------------------------------------
def _read_json(path: Path, what: str):
    if not path.is_file():
        raise CheckpointError(f"{path.parent}: not a medclip-nb export (no {path.name})")
    try:
        return json.loads(path.read_text(encoding="utf-8")) if what == "json" else path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: cannot be read ({type(e).__name__})") from None


def _export_tokenizer(folder: Path, meta: dict):
    """The project tokenizer of an export: from tokenizer.json (version 1, and the subword
    tokenizer) or from the state config.json holds."""
    entry = meta.get("tokenizer")
    if meta["version"] == 1 or (isinstance(entry, dict) and entry.get("kind") == "subword"):
        return tokenizer_from_json(_read_json(folder / TOKENIZER_FILE, "text"))
    if not isinstance(entry, dict) or not isinstance(entry.get("state"), dict):
        raise CheckpointError(f"{folder / CONFIG_FILE}: key 'tokenizer' must hold the kind 'subword' or a 'state'")
    try:
        return tokenizer_from_json(json.dumps(entry["state"]))
    except CheckpointError as e:
        raise CheckpointError(f"{folder / CONFIG_FILE}: key 'tokenizer': {e}") from None


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
    if meta.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{folder / CONFIG_FILE}: export version {meta.get('version')!r}, "
                              f"this medclip-nb reads versions {', '.join(map(str, READABLE_VERSIONS))}")
    try:
        # data_path is a required key of Config; an export has no dataset, so it names the folder.
        cfg = from_dict({**meta["config"], "data_path": str(folder)}, source=str(folder / CONFIG_FILE))
    except ConfigError as e:
        raise CheckpointError(f"{folder / CONFIG_FILE}: {e}") from None
    tokenizer = _export_tokenizer(folder, meta)
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
    return place_model(model, device, cfg.channels_last).eval(), tokenizer, cfg
