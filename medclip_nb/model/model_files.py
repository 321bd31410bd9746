"""Model files are data, not instructions: the checks a checkpoint or an export passes before
anything is built from it, shared by both loaders (checkpoint.load_model, export.load_export).

- `model_config`: a model file contributes only the keys that build the model and its evaluation
  transform (MODEL_CONFIG_KEYS); run-time keys (workers, batch sizes, the bad-image rule, the
  paths of data to read) keep their defaults until the user's command sets them.
- `build_from_model_file`: the model is first built on PyTorch's `meta` device (shapes, no
  memory), its size is bounded (MAX_PARAMETERS, and one evaluation forward under MAX_EVAL_BYTES),
  every stored tensor's name, shape and dtype must equal the model's and every float weight must
  be finite; only then is it built for real and the weights loaded. A 9 MB file can therefore not
  ask for a 1.6 TB model: it is refused before anything is allocated.
- `check_eval_memory`: the estimate of one evaluation batch (images at image_size, texts of the
  tokenizer's length) against MAX_EVAL_BYTES, with the user's batch size.
- `write_checksums` / `verify_checksums`: an export's SHA256SUMS, the SHA-256 of every file it
  wrote (`sha256sum -c SHA256SUMS` checks it too), verified before any file is read.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from medclip_nb.config import Config, from_dict
from medclip_nb.errors import CheckpointError, ConfigError, UserError, one_line, quote
from medclip_nb.files import format_bytes, read_text_limited, sha256_file, write_text_atomic
from medclip_nb.model.encoders import build_model
from medclip_nb.text import tokenizer_problem

# What build_model() and the evaluation transform read; nothing about data, training or paths
# of the machine it was trained on, except the two files a bert / precomputed text encoder needs.
MODEL_CONFIG_KEYS = (
    "model", "vision_backbone", "text_encoder", "text_layers", "text_width", "text_heads", "bert_path",
    "text_features_path", "embed_dim", "loss", "max_text_tokens", "vocab_size",
    "image_size", "resize_size", "augment",
)
# The largest model in this study (ResNet-50 + BERT-large) has 0.36 billion parameters.
MAX_PARAMETERS = 1_000_000_000
# One evaluation forward (a batch of images and texts) of a model read from a file.
MAX_EVAL_BYTES = 16 << 30
# Peak bytes per input pixel of one image in an evaluation forward (measured with torch 2.14 on
# CPU at 224 px, rounded up): activations of the first, full-width stages dominate.
IMAGE_BYTES_PER_PIXEL = {"small_cnn": 100, "resnet18": 120, "resnet34": 120, "resnet50": 300,
                         "mobilenet_v3_small": 80, "swin_t": 450, "simple": 300}
CHECKSUMS_FILE = "SHA256SUMS"
MAX_CHECKSUMS_BYTES = 1 << 20
_CHECKSUM_LINE = re.compile(r"([0-9a-f]{64}) [ *]([^/\\\x00\n]+)")


# ---- which keys a model file may set ---------------------------------------------------------------
def model_config(values: Any, source: str | os.PathLike, *, only_model_keys: bool = False) -> Config:
    """The Config a model file describes: its MODEL_CONFIG_KEYS, every other key at its default
    (data_path names the file: a model has no dataset). `only_model_keys` (exports): any other key
    is refused; a checkpoint's stored training config keeps its other keys out silently (they are
    the run's record, not settings for this command)."""
    if not isinstance(values, Mapping):
        raise CheckpointError(f"{source}: the stored config is not a mapping of keys")
    if only_model_keys:
        other = sorted(str(k) for k in values if k not in MODEL_CONFIG_KEYS)
        if other:
            raise CheckpointError(f"{source}: key {quote(other[0])} is not a model key (run-time settings come "
                                  f"from your command, never from a model file)")
    picked = {k: values[k] for k in MODEL_CONFIG_KEYS if k in values}
    try:
        return from_dict({**picked, "data_path": str(source)}, source=str(source))
    except ConfigError as e:
        raise CheckpointError(f"{source}: stored config is not valid here: {one_line(e)}") from None


# ---- size before allocation -------------------------------------------------------------------------
def text_length(tokenizer: Any) -> int:
    return int(getattr(tokenizer, "max_length", 0) or 0)


def eval_bytes(cfg: Config, tokenizer: Any, batch: int) -> int:
    """Estimated peak bytes of one evaluation forward of `batch` images and `batch` texts."""
    backbone = "simple" if cfg.model == "simple" else cfg.vision_backbone
    image = IMAGE_BYTES_PER_PIXEL.get(backbone, max(IMAGE_BYTES_PER_PIXEL.values())) * cfg.image_size ** 2
    length = text_length(tokenizer)
    text = 4 * (2 * cfg.text_heads * length ** 2 + 16 * cfg.text_width * length) \
        if cfg.model != "simple" and cfg.text_encoder == "transformer" else 0
    return batch * (image + text)


def check_eval_memory(cfg: Config, tokenizer: Any, batch: int, source: str | os.PathLike, *,
                      flag: str = "--eval_batch_size") -> None:
    """Refuse a batch whose evaluation forward would need more than MAX_EVAL_BYTES."""
    need = eval_bytes(cfg, tokenizer, max(1, batch))
    if need > MAX_EVAL_BYTES:
        hint = f"; lower {flag}" if batch > 1 else ""
        raise CheckpointError(
            f"{source}: one evaluation batch of {batch} (image_size {cfg.image_size}, {text_length(tokenizer)} text "
            f"tokens) needs about {format_bytes(need)}, over the limit of {format_bytes(MAX_EVAL_BYTES)}{hint}")


def skeleton(cfg: Config, tokenizer: Any, source: str | os.PathLike) -> torch.nn.Module:
    """The model `cfg` describes on the meta device: every shape, no memory. A BERT text encoder
    cannot be built there (transformers refuses); its size is bounded by its folder's files
    (text.local_hf_folder) and the rest by the key table, so that model is built for real."""
    try:
        if cfg.model != "simple" and cfg.text_encoder == "bert":
            return build_model(cfg, tokenizer)
        with torch.device("meta"):
            return build_model(cfg, tokenizer)
    except UserError as e:
        raise CheckpointError(f"{source}: {one_line(e)}") from None
    except (RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{source}: its config does not describe a model that can be built "
                              f"({one_line(e, 160)})") from None


def layout(tensors: Mapping[str, Any]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {name: (tuple(t.shape), t.dtype) for name, t in tensors.items()}


def check_layout(expected: Mapping[str, tuple], stored: Mapping[str, tuple], source: str | os.PathLike) -> None:
    """Every stored tensor has the model's name, shape and dtype, and the model lacks none."""
    missing = [k for k in expected if k not in stored]
    extra = [k for k in stored if k not in expected]
    if missing or extra:
        what = f"lacks weight {quote(missing[0])}" if missing else f"holds weight {quote(extra[0])}, which"
        tail = "" if missing else " the model its config describes does not have"
        raise CheckpointError(f"{source}: {what}{tail} ({len(missing)} missing, {len(extra)} unexpected)")
    for name, (shape, dtype) in expected.items():
        if stored[name] != (shape, dtype):
            got_shape, got_dtype = stored[name]
            raise CheckpointError(f"{source}: weight {quote(name)} is {got_dtype} {list(got_shape)}, the model its "
                                  f"config describes has {dtype} {list(shape)}")


def explain_mismatch(empty: torch.nn.Module, stored: Mapping[str, tuple]) -> None:
    """Let the model's own load hooks see the stored shapes (as meta tensors): one that knows why
    they differ raises its own error (the precomputed text encoder names its features file)."""
    try:
        empty.load_state_dict({name: torch.empty(shape, dtype=dtype, device="meta")
                               for name, (shape, dtype) in stored.items() if isinstance(dtype, torch.dtype)})
    except (RuntimeError, ValueError, TypeError):
        pass  # no hook knew: check_layout says which tensor differs


def build_from_model_file(cfg: Config, tokenizer: Any, stored: Mapping[str, tuple],
                          read_weights: Callable[[], Mapping[str, torch.Tensor]],
                          source: str | os.PathLike) -> torch.nn.Module:
    """The model of a checkpoint or an export, in eval mode on the CPU: the tokenizer must be
    the one `cfg` describes, the model (built on the meta device first) at most MAX_PARAMETERS
    and one evaluation image within MAX_EVAL_BYTES, `stored` (name -> (shape, dtype) of the
    file's tensors) equal to its layout; then `read_weights()` is called, every float weight
    must be finite, and the model is built and loaded."""
    problem = tokenizer_problem(tokenizer, cfg)
    if problem:
        raise CheckpointError(f"{source}: {problem}")
    empty = skeleton(cfg, tokenizer, source)
    parameters = sum(p.numel() for p in empty.parameters())
    if parameters > MAX_PARAMETERS:
        raise CheckpointError(f"{source}: its config describes a model of {parameters:,} parameters, over the limit "
                              f"of {MAX_PARAMETERS:,}")
    expected = layout(empty.state_dict())
    if dict(stored) != expected:
        explain_mismatch(empty, stored)
        check_layout(expected, stored, source)
    check_eval_memory(cfg, tokenizer, 1, source)
    weights = read_weights()
    check_layout(layout(empty.state_dict()), layout(weights), source)
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{source}: weight {quote(name)} holds NaN or infinite values")
    on_meta = any(t.is_meta for t in empty.state_dict().values())
    model = build_model(cfg, tokenizer) if on_meta else empty
    try:
        model.load_state_dict(weights)
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"{source}: weights do not fit its config ({one_line(e, 160)})") from None
    return model.eval()


# ---- an export's SHA256SUMS -------------------------------------------------------------------------
def write_checksums(folder: Path, names: Iterable[str]) -> Path:
    """SHA256SUMS in `folder`: one `<sha256>  <name>` line per file, sorted (sha256sum's format)."""
    lines = [f"{sha256_file(folder / name, error=CheckpointError)}  {name}\n" for name in sorted(names)]
    return write_text_atomic(folder / CHECKSUMS_FILE, "".join(lines), what="--out", error=CheckpointError)


def verify_checksums(folder: Path) -> list[str]:
    """The names SHA256SUMS lists, after checking that each listed file has its recorded SHA-256
    and that the folder holds no other file (dot-files and folders aside): a flipped bit, an
    edited config.json or a file put beside them is one CheckpointError line naming the file."""
    listing = folder / CHECKSUMS_FILE
    if not listing.exists():
        raise CheckpointError(f"{folder}: no {CHECKSUMS_FILE} (not a medclip-nb export, or one written before "
                              f"exports were checksummed: export it again from its checkpoint)")
    text = read_text_limited(listing, MAX_CHECKSUMS_BYTES, error=CheckpointError)
    recorded: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        match = _CHECKSUM_LINE.fullmatch(line)
        if not match or match[2] in (".", "..", CHECKSUMS_FILE) or match[2] in recorded:
            raise CheckpointError(f"{listing}: line {number} is not '<sha256>  <file name>' of a file of the export")
        recorded[match[2]] = match[1]
    if not recorded:
        raise CheckpointError(f"{listing}: lists no file")
    for name, digest in recorded.items():
        path = folder / name
        try:
            actual = sha256_file(path, error=CheckpointError)
        except OSError as e:
            raise CheckpointError(f"{path}: listed in {CHECKSUMS_FILE} but cannot be read "
                                  f"({e.strerror or type(e).__name__})") from None
        if actual != digest:
            raise CheckpointError(f"{path}: its SHA-256 differs from the one {CHECKSUMS_FILE} recorded at export "
                                  f"(the file was changed or damaged after export)")
    for path in sorted(folder.iterdir()):
        if path.name not in recorded and path.name != CHECKSUMS_FILE and not path.name.startswith(".") \
                and not path.is_dir():
            raise CheckpointError(f"{path}: not listed in {CHECKSUMS_FILE} (not written by the export)")
    return sorted(recorded)


# ---- writing an export: never into a user's folder, all files or none --------------------------------
def is_earlier_export(folder: Path) -> bool:
    """True for a folder holding exactly what an export wrote (its SHA256SUMS verifies)."""
    try:
        verify_checksums(folder)
        return True
    except (CheckpointError, OSError):
        return False


def check_export_target(out: Path, force: bool = False, ours: Callable[[Path], bool] | None = None) -> Path:
    """`export --out`, before the checkpoint is read: a new or empty folder, or an earlier export
    (its SHA256SUMS verifies, or `ours(out)` recognises an older one) to replace; a folder holding
    anything else (a user's config.json, a Hugging Face model folder) only with `force` (then only
    the export's own file names are replaced), a file never."""
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"--out {out}: exists and is not a folder")
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CheckpointError(f"--out {out}: {ancestor} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not force and not is_earlier_export(out) \
            and not (ours is not None and ours(out)):
        first = sorted(p.name for p in out.iterdir())[0]
        raise CheckpointError(f"--out {out}: folder holds files an export did not write ({first}, ...); give a new or "
                              f"empty folder, or pass --force to write the export's files into it")
    return out


class StagedExport:
    """`with StagedExport(out) as stage:` write the export's files into `stage` (a temporary
    folder beside `out`); on success SHA256SUMS is written over every file there and they are
    moved into `out` (the listing last), so a failure midway leaves `out` as it was. When `out`
    holds an earlier export (its SHA256SUMS verifies, or `ours(out)`), its files that this one did
    not write (listed in its SHA256SUMS, or named in `stale`) are removed; a user's folder written
    into with --force loses nothing."""

    def __init__(self, out: Path, stale: Iterable[str] = (), ours: Callable[[Path], bool] | None = None):
        self.out, self.stale, self.ours = out, set(stale), ours
        self.stage = out.parent / f".{out.name}.tmp-{os.getpid()}"

    def __enter__(self) -> Path:
        import shutil

        shutil.rmtree(self.stage, ignore_errors=True)
        try:
            self.stage.mkdir(parents=True)
        except OSError as e:
            raise CheckpointError(f"--out {self.out}: cannot create a folder beside it "
                                  f"({e.strerror or type(e).__name__})") from None
        return self.stage

    def __exit__(self, kind, error, traceback) -> None:
        import shutil

        try:
            if kind is None:
                self._publish()
        finally:
            shutil.rmtree(self.stage, ignore_errors=True)

    def _publish(self) -> None:
        names = sorted(p.name for p in self.stage.iterdir() if p.is_file())
        write_checksums(self.stage, names)
        previous: set[str] = set()
        if self.out.is_dir():
            try:  # an earlier export (its SHA256SUMS verifies): its files are replaced or removed
                previous = set(verify_checksums(self.out)) | self.stale
            except (CheckpointError, OSError):
                previous = self.stale if self.ours is not None and self.ours(self.out) else set()
        try:
            if not self.out.exists() or (self.out.is_dir() and not any(self.out.iterdir())):
                os.replace(self.stage, self.out)
                return
            for name in [*names, CHECKSUMS_FILE]:
                os.replace(self.stage / name, self.out / name)
            for name in previous - set(names):
                (self.out / name).unlink(missing_ok=True)
        except OSError as e:
            raise CheckpointError(f"--out {self.out}: cannot be written ({e.strerror or type(e).__name__})") from None
