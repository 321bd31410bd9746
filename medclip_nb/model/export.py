"""A portable export of a trained model: a folder others can load, with no training state and no pickle.

    DIR/model.safetensors         the weights (safetensors: tensors only, nothing to execute)
    DIR/config.json               {"format": "medclip-nb-export", "version": 2, "architecture": {...},
                                  "tokenizer": {...}, "training": {...}, "config": {...}}: the model in plain
                                  keys, how it was trained, and the config keys that rebuild it
    DIR/tokenizer.json            the tokenizer for Hugging Face `tokenizers` (text/tokenizer_export.py)
    DIR/tokenizer_config.json     what `transformers.AutoTokenizer.from_pretrained(DIR)` needs besides
    DIR/preprocessor_config.json  the evaluation transform: pad, resize, crop, mean, std
    DIR/README.md                 the model card (model/export_card.py)
    DIR/SHA256SUMS                the SHA-256 of every file above (model/model_files.py), verified on load

`export_checkpoint` writes them from a training checkpoint (read with `weights_only=True`);
`load_export` rebuilds (model, tokenizer, Config) from config.json, tokenizer.json and the weights,
reading JSON and safetensors only, after the checks of model_files.py: SHA256SUMS, model keys only,
the model's size, every tensor's name, shape and dtype, finite weights, and config.json equal to the
model keys stored in the weights' own metadata. Exports of versions 1 and 2 (written before exports
were checksummed) are refused: export them again from their checkpoints. config.json has no
`model_type`: the folder is not a transformers architecture, and with one transformers' AutoTokenizer
warns that it instantiates another. A model with `text_encoder: bert` or `precomputed` still needs its
local BERT folder or features file at the path its config names: those are not copied.

Every file goes through `write_export_files`, so anything that must hold for all of them is added there:
they are written into a staging folder and moved in together, with SHA256SUMS over all of them.
"""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch

from medclip_nb.data import eval_preprocessing
from medclip_nb.errors import CheckpointError, one_line, quote
from medclip_nb.files import read_text_limited, write_atomic, write_text_atomic
from medclip_nb.model.checkpoint import load_checkpoint, model_from_state
from medclip_nb.model.checkpoint_check import MODEL_PARTS, check_checkpoint
from medclip_nb.model.export_card import architecture, check_metrics_entry, model_card, training_record
from medclip_nb.model.model_files import (
    MODEL_CONFIG_KEYS,
    StagedExport,
    build_from_model_file,
    check_export_target,
    model_config,
    verify_checksums,
)
from medclip_nb.paths import resolve
from medclip_nb.runtime import place_model
from medclip_nb.text import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, tokenizer_files, tokenizer_from_json

EXPORT_FORMAT = "medclip-nb-export"
EXPORT_VERSION = 3  # 3: SHA256SUMS and the model keys in the weights' metadata
READABLE_VERSIONS = (3,)
WEIGHTS_FILE, CONFIG_FILE, PREPROCESSOR_FILE, CARD_FILE = (
    "model.safetensors", "config.json", "preprocessor_config.json", "README.md")
EXPORT_FILES = (WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, PREPROCESSOR_FILE, CARD_FILE)

# The weights file's metadata holds the model keys too: config.json edited alone is refused.
METADATA_CONFIG = "medclip_nb_config"
# Limits of what load_export reads as text (a config.json is a few KiB).
MAX_CONFIG_BYTES, MAX_TOKENIZER_BYTES = 1 << 20, 64 << 20

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
    from safetensors.torch import save

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
    model_keys = {k: getattr(cfg, k) for k in MODEL_CONFIG_KEYS}
    config = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "medclip_nb_version": _package_version(),
              "architecture": arch, "tokenizer": tokenizer_entry, "preprocessor": PREPROCESSOR_FILE,
              "training": training, "config": model_keys}
    weights_metadata = {"format": "pt", METADATA_CONFIG: json.dumps(model_keys, sort_keys=True)}
    files: ExportFiles = {
        # As bytes, then written: a full disk is an OSError (one line), not safetensors' own error.
        WEIGHTS_FILE: lambda p: p.write_bytes(save(weights, metadata=weights_metadata)),
        CONFIG_FILE: _json(config),
        **tokenizer_text,
        PREPROCESSOR_FILE: _json(eval_preprocessing(cfg)),
    }
    files[CARD_FILE] = model_card(arch, training, [*files, CARD_FILE], metrics, metrics_source)
    return files


def write_export_files(out: Path, files: ExportFiles) -> None:
    """The one place an export's files are written: each atomically into a staging folder beside
    `out`, then SHA256SUMS over all of them, then moved into `out` together (model_files.StagedExport:
    a failure leaves `out` as it was); the files of an earlier export in `out` that this one does
    not have are removed, so none is stale."""
    with StagedExport(out, stale=EXPORT_FILES, ours=is_unchecksummed_export) as stage:
        for name, content in files.items():
            if callable(content):
                write_atomic(stage / name, content, what="--out", error=CheckpointError)
            else:
                write_text_atomic(stage / name, content, what="--out", error=CheckpointError)


def is_unchecksummed_export(folder: Path) -> bool:
    """An export written before SHA256SUMS (versions 1 and 2): only export file names, and a
    config.json of this format. `export --out` may replace it without --force."""
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    if not names or any(name not in EXPORT_FILES for name in names) or CONFIG_FILE not in names:
        return False
    try:  # a config.json that cannot be read: not ours to replace
        text = read_text_limited(folder / CONFIG_FILE, MAX_CONFIG_BYTES, error=CheckpointError)
        return json.loads(text).get("format") == EXPORT_FORMAT
    except (CheckpointError, ValueError, RecursionError, AttributeError):
        return False


def export_model(model: torch.nn.Module, tokenizer, cfg, out_dir: str | os.PathLike, *, force: bool = False,
                 **card) -> Path:
    """Write the export of `model` (with `tokenizer`, `cfg`'s model keys) to `out_dir`; `card`:
    training=, metrics=, metrics_source= for config.json and the model card (export_files).

    Refuses a file, or a folder holding anything but an earlier export, unless `force`
    (model_files.check_export_target: never deletes a user's files)."""
    out = check_export_target(Path(out_dir), force, ours=is_unchecksummed_export)
    return _write_export(model, tokenizer, cfg, out, **card)


def _write_export(model: torch.nn.Module, tokenizer, cfg, out: Path, **card) -> Path:
    """export_model's writing, for a target already checked (export_checkpoint checks it before the
    checkpoint is read: every file of an earlier export is hashed once, not twice)."""
    write_export_files(out, export_files(model, tokenizer, cfg, **card))
    return out


def export_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, metrics: dict | None = None,
                      metrics_source: str | None = None, force: bool = False) -> Path:
    """Export the model of a training checkpoint (best.pth, last.pth, ...) to `out_dir`, with
    its training record and, given one, a metrics.json entry (`metrics`, named by `metrics_source`)
    in the model card. The folder is checked before the checkpoint is read."""
    out = check_export_target(resolve(out_dir), force, ours=is_unchecksummed_export)
    path = resolve(checkpoint)
    state = check_checkpoint(load_checkpoint(path), path, MODEL_PARTS)
    model, tokenizer, cfg = model_from_state(state, path, "cpu")
    if metrics is not None:
        check_metrics_entry(metrics, cfg, path, metrics_source)
    return _write_export(model, tokenizer, cfg, out, training=training_record(cfg, state), metrics=metrics,
                         metrics_source=metrics_source)


# ---- loading ----------------------------------------------------------------------------------------
def _read_json(path: Path, what: str):
    if not path.is_file():
        raise CheckpointError(f"{path.parent}: not a medclip-nb export (no {path.name})")
    text = read_text_limited(path, MAX_CONFIG_BYTES if what == "json" else MAX_TOKENIZER_BYTES, error=CheckpointError)
    if what != "json":
        return text
    try:
        return json.loads(text)
    except RecursionError:
        raise CheckpointError(f"{path}: nested too deeply") from None
    except ValueError as e:
        raise CheckpointError(f"{path}: not valid JSON ({one_line(e, 120)})") from None


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def _weights_header(path: Path) -> tuple[dict, dict]:
    """(name -> (shape, dtype), metadata) of a safetensors file, from its header alone."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            stored = {}
            for name in f.keys():
                part = f.get_slice(name)
                stored[name] = (tuple(part.get_shape()), _SAFETENSORS_DTYPES.get(part.get_dtype(), part.get_dtype()))
            return stored, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not readable safetensors ({one_line(e, 120)})") from None


def _check_config_matches_weights(cfg, metadata: dict, config_path: Path, weights_path: Path) -> None:
    """The model keys config.json gives must be those stored with the weights at export: keys that
    change no tensor's shape (text_heads, image_size, resize_size, augment, loss) cannot be edited."""
    try:
        recorded = json.loads(metadata[METADATA_CONFIG])
    except (KeyError, TypeError, ValueError, RecursionError):
        raise CheckpointError(f"{weights_path}: its metadata holds no model config (not written by medclip-nb "
                              f"export)") from None
    if not isinstance(recorded, dict):
        raise CheckpointError(f"{weights_path}: its metadata's model config is not a mapping")
    for key in MODEL_CONFIG_KEYS:
        if recorded.get(key) != getattr(cfg, key):
            raise CheckpointError(f"{config_path}: '{key}' is {quote(getattr(cfg, key))}, the weights were exported "
                                  f"with {quote(recorded.get(key))}")


def _export_tokenizer(folder: Path, meta: dict):
    """The project tokenizer of an export: from tokenizer.json (version 1, and the subword
    tokenizer) or from the state config.json holds."""
    entry = meta.get("tokenizer")
    if isinstance(entry, dict) and entry.get("kind") == "subword":
        try:
            return tokenizer_from_json(_read_json(folder / TOKENIZER_FILE, "text"))
        except CheckpointError as e:
            raise CheckpointError(f"{folder / TOKENIZER_FILE}: {one_line(e)}") from None
    if not isinstance(entry, dict) or not isinstance(entry.get("state"), dict):
        raise CheckpointError(f"{folder / CONFIG_FILE}: key 'tokenizer' must hold the kind 'subword' or a 'state'")
    try:
        return tokenizer_from_json(json.dumps(entry["state"]))
    except CheckpointError as e:
        raise CheckpointError(f"{folder / CONFIG_FILE}: key 'tokenizer': {e}") from None


def load_export(folder: str | os.PathLike, device: str | torch.device = "cpu"):
    """Rebuild (model in eval mode on `device`, tokenizer, Config) from an export folder.

    Reads JSON and safetensors only, after SHA256SUMS verified every file; the Config holds the
    export's model keys (any other key is refused) and defaults for the rest. Raises
    CheckpointError (one line, naming the file) for a missing, damaged or edited file, or weights
    that do not fit the config (model_files.build_from_model_file)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    verify_checksums(folder)
    config_path = folder / CONFIG_FILE
    meta = _read_json(config_path, "json")
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT or not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{config_path}: not a medclip-nb export config (no format '{EXPORT_FORMAT}')")
    if meta.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{config_path}: export version {quote(meta.get('version'))}, "
                              f"this medclip-nb reads versions {', '.join(map(str, READABLE_VERSIONS))}")
    cfg = model_config(meta["config"], config_path, only_model_keys=True)
    tokenizer = _export_tokenizer(folder, meta)
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"{folder}: not a medclip-nb export (no {WEIGHTS_FILE})")
    stored, weights_metadata = _weights_header(weights_path)
    _check_config_matches_weights(cfg, weights_metadata, config_path, weights_path)

    def read_weights():
        try:
            return load_file(str(weights_path), device="cpu")
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{weights_path}: not readable safetensors ({one_line(e, 120)})") from None

    model = build_from_model_file(cfg, tokenizer, stored, read_weights, weights_path)
    return place_model(model, device, cfg.channels_last).eval(), tokenizer, cfg  # training's memory format
