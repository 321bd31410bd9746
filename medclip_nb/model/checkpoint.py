"""Checkpoints: atomic save, safe load, finding the newest complete one, RNG state capture.

A checkpoint is a dict of tensors and plain data (numbers, strings, lists, dicts, None), so
that `torch.load(weights_only=True)` can read it without running any pickled code. The
training loop writes `last.pth`, `best.pth`, `checkpoint_epoch_N.pth` and, after a streak of
non-finite losses, `last_good.pth`; each holds everything `train()` needs to resume.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medclip_nb.config import from_dict
from medclip_nb.errors import CheckpointError, ConfigError, one_line, os_error_reason
from medclip_nb.files import TEMP_INFIX, fsync_path, process_alive, temp_path
from medclip_nb.model.checkpoint_check import MODEL_PARTS, check_checkpoint
from medclip_nb.model.model_files import build_from_model_file, layout
from medclip_nb.paths import resolve
from medclip_nb.runtime import place_model
from medclip_nb.text import tokenizer_from_json

CHECKPOINT_SUFFIX = ".pth"
# Temporary files of an unfinished save look like `.last.pth.tmp-1234` (files.temp_path).
TEMP_MARKER = TEMP_INFIX


class _WriteRecorder:
    """A file wrapper that keeps the OSError of a failed write: torch's zip writer reports it
    only as 'unexpected pos ...', which hides a full disk."""

    def __init__(self, file):
        self._file = file
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._file.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        try:
            self._file.flush()
        except OSError as e:
            self.error = e
            raise


def _open_for_write(path: Path):
    return open(path, "wb")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write `state` to `path` atomically: a crash, a full disk or Ctrl-C midway leaves the
    previous file at `path` untouched and no temporary file behind.

    Returns the path written. Raises CheckpointError (one line) when the write fails.
    """
    target = Path(path)
    tmp = temp_path(target)
    recorder = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            raise CheckpointError(f"could not write checkpoint {target}: it is a folder")
        with _open_for_write(tmp) as f:
            recorder = _WriteRecorder(f)
            torch.save(state, recorder)
            recorder.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        fsync_path(target.parent)  # the rename itself made durable
    except CheckpointError:
        raise
    except BaseException as e:  # noqa: BLE001 - KeyboardInterrupt must clean up too
        tmp.unlink(missing_ok=True)
        error = recorder.error if recorder is not None and recorder.error is not None else e
        if isinstance(e, KeyboardInterrupt):
            cause = "interrupted"
        elif isinstance(error, OSError):
            cause = os_error_reason(error)
        else:
            cause = _first_line(e)
        previous = "the previous checkpoint is intact" if target.exists() else "no previous checkpoint existed"
        raise CheckpointError(f"could not write checkpoint {target}: {cause}; {previous}") from e
    return target


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def _unsafe_reason(e: BaseException) -> str:
    """The part of torch's long weights_only message that names the refused object."""
    match = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
    return f"it would import {match.group(1)}" if match else _first_line(e)


def verify_archive(path: Path) -> None:
    """Check the CRC-32 that torch.save's zip writer stores for every record (weights,
    pickled structure): a flipped byte anywhere is a CheckpointError naming the record."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint, truncated or corrupt ({_first_line(e)})") from None
    if bad is not None:
        raise CheckpointError(f"{path}: corrupt checkpoint: record '{bad}' fails its checksum (the file was damaged "
                              f"after it was written)")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    *, mmap: bool = False, verify: bool = True) -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True` (no pickled code runs), after checking
    every record's checksum (`verify`; skipped only to rank files by their metadata).

    Raises CheckpointError naming the file when it is missing, truncated/corrupt, or holds
    objects other than tensors and plain data. `mmap=True` leaves tensor data on disk
    until touched (cheap for reading metadata such as `step`). The fields' structure is
    checked by `checkpoint_check.check_checkpoint`.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    if not zipfile.is_zipfile(p):  # torch.save writes a zip archive; a cut-short one has no directory
        raise CheckpointError(f"{p}: not a readable checkpoint, truncated or corrupt (not a torch.save archive)")
    if verify:
        verify_archive(p)
    try:
        state = torch.load(p, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{p}: refused to load: it holds objects other than tensors and plain data ({_unsafe_reason(e)})"
        ) from None
    except Exception as e:  # noqa: BLE001 - torch raises RuntimeError/EOFError/... for damaged files
        raise CheckpointError(f"{p}: not a readable checkpoint, truncated or corrupt ({_first_line(e)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{p}: not a medclip-nb checkpoint (holds a {type(state).__name__}, not a dict)")
    return state


def _checkpoint_files(folder: Path) -> list[Path]:
    return [p for p in folder.glob(f"*{CHECKPOINT_SUFFIX}") if TEMP_MARKER not in p.name and p.is_file()]


def find_latest(folder: str | os.PathLike, unreadable: list[Path] | None = None) -> Path | None:
    """Newest complete checkpoint in `folder`: the highest stored `step`, ties going to
    `last.pth` and then to the newer file; None when there is none. Files that cannot be read
    (or fail their checksums) are skipped and appended to `unreadable`."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    ranked = []
    for p in _checkpoint_files(folder):
        try:
            state = load_checkpoint(p, mmap=True, verify=False)  # checksums: only of the one chosen, below
        except CheckpointError:
            if unreadable is not None:
                unreadable.append(p)
            continue  # an incomplete or foreign file is not a resume point
        step = state.get("step")
        step = int(step) if isinstance(step, int) and not isinstance(step, bool) else -1  # no step: mtime only
        ranked.append((step, p.name == "last.pth", p.stat().st_mtime, p))
    for *_, p in sorted(ranked, key=lambda r: r[:3], reverse=True):
        try:
            verify_archive(p)
            return p
        except CheckpointError:
            if unreadable is not None:
                unreadable.append(p)
    return None


def resolve_resume(resume_from: str | None, model_save_path: str | os.PathLike, *, force: bool = False,
                   log=print) -> Path | None:
    """The checkpoint `--resume_from` points at: None (start fresh), 'latest' (the newest
    complete checkpoint in model_save_path, or None when it holds none), or a file path
    (relative paths are taken from the repository root; a missing file is an error).

    'latest' names the files it could not read; when none could be read it refuses to start a
    new run over them (which would overwrite them) unless `force`."""
    if resume_from is None or not str(resume_from).strip():
        return None
    if str(resume_from).strip() == "latest":
        unreadable: list[Path] = []
        found = find_latest(resolve(model_save_path), unreadable)
        names = ", ".join(p.name for p in sorted(unreadable))
        if unreadable and found is None and not force:
            raise CheckpointError(
                f"--resume_from latest: no readable checkpoint in {resolve(model_save_path)}; could not read "
                f"{names}; starting fresh would overwrite them (pass --force to do so)")
        if unreadable:
            log(f"Warning: --resume_from latest could not read {names} in {resolve(model_save_path)}")
        return found
    p = resolve(resume_from)
    if not p.is_file():
        raise CheckpointError(f"--resume_from: checkpoint not found: {p}")
    return p


# ---- RNG state --------------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states as tensors and plain lists, so that
    they survive `weights_only=True` loading."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [str(kind), [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
        "python": [int(version), [int(v) for v in internal], gauss_next],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of capture_rng_state(). CUDA states are restored only when the number of
    devices matches (a GPU checkpoint resumed on CPU keeps its CPU and host streams)."""
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    version, internal, gauss_next = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss_next))


# ---- models for evaluation and notebooks --------------------------------------------------------
def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Rebuild a trained model from a checkpoint: returns (model in eval mode on `device`,
    tokenizer, Config: the run's whole stored config). Raises CheckpointError when the file lacks
    a part, its tokenizer is not the one its config describes, or the model is too large or
    does not fit the stored weights, all checked before the model is allocated
    (model_files.build_from_model_file). Commands that use the model take only its model keys
    from that config (model_files.model_config)."""
    p = resolve(path)
    return model_from_state(check_checkpoint(load_checkpoint(p), p, MODEL_PARTS), p, device)


def model_from_state(state: dict, p: Path, device: str | torch.device = "cpu"):
    """(model, tokenizer, Config) from a checkpoint `state` already loaded and checked (of file `p`)."""
    try:
        cfg = from_dict(state["config"], source=str(p))
    except ConfigError as e:
        raise CheckpointError(f"{p}: stored config is not valid here: {e}") from None
    try:
        tokenizer = tokenizer_from_json(state["tokenizer"])
    except CheckpointError as e:
        raise CheckpointError(f"{p}: field 'tokenizer': {one_line(e)}") from None
    # The checkpoint holds every weight: no need for the ImageNet file in the torch hub cache.
    weights = state["model"]
    model = build_from_model_file(cfg.replace(vision_pretrained=False), tokenizer, layout(weights), lambda: weights, p)
    model = place_model(model, device, cfg.channels_last).eval()  # the memory format training used
    return model, tokenizer, cfg


# ---- leftovers of killed saves ------------------------------------------------------------------
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)$")


def remove_stale_temp_files(folder: str | os.PathLike, log=print) -> list[Path]:
    """Delete `.X.pth.tmp-<pid>` and `.metrics.jsonl.tmp-<pid>` files (our own temporary
    names) whose writing process no longer runs: what a kill -9 during a save leaves.
    Returns the files removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        match = _TEMP_NAME.match(p.name)
        if not match or not (match["name"].endswith(CHECKPOINT_SUFFIX) or match["name"].endswith(".jsonl")):
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or process_alive(pid) or not p.is_file():
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    if removed:
        log(f"Removed {len(removed)} temporary file(s) of interrupted saves in {folder}: "
            + ", ".join(p.name for p in removed))
    return removed
