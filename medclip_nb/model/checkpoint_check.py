"""Structure of a loaded checkpoint, checked in one place before any part of it is used.

`torch.load(weights_only=True)` guarantees only tensors and plain data; a damaged or
hand-edited file can still hold a config of the wrong type, an RNG state NumPy rejects with a
traceback, a scheduler state whose keys `LambdaLR.load_state_dict` would copy into its
attributes, or a negative batch position. `check_checkpoint` refuses all of that with one
`CheckpointError` line naming the file and the field; what it accepts, the trainer, evaluation
and the notebooks can use without further checks. (The bytes themselves are verified in
`checkpoint.load_checkpoint`: every record's CRC-32 in the archive.)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

import torch

from medclip_nb.config import from_dict
from medclip_nb.errors import CheckpointError, ConfigError, one_line, quote
from medclip_nb.text import tokenizer_from_json

_MAX_COUNT = 2**62
# Progress counters a checkpoint stores (train.state.Progress), with their kind.
_COUNTERS = ("step", "epoch", "batch_in_epoch", "patience_counter", "bad_image_count", "nonfinite_total",
             "nonfinite_streak", "epoch_loss_steps", "epoch_bad_images")
_NUMBERS = ("best_val_loss", "epoch_loss_sum", "train_time")
_SCHEDULER_KEYS = {
    "base_lrs": list, "last_epoch": int, "_step_count": int, "_is_initial": bool,
    "_get_lr_called_within_step": bool, "_last_lr": list, "lr_lambdas": list, "verbose": bool,
}
RESUME_PARTS = ("model", "optimizer", "scheduler", "config", "tokenizer", "rng", "step", "epoch", "batch_in_epoch")
MODEL_PARTS = ("model", "config", "tokenizer")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Checker:
    def __init__(self, path: Path):
        self.path = path

    def fail(self, field: str, problem: str) -> None:
        raise CheckpointError(f"{self.path}: field '{field}' {problem} (damaged, or not written by medclip-nb train)")

    def model(self, value: Any) -> None:
        if not isinstance(value, dict) or not value:
            self.fail("model", "is not a dict of tensors")
        for name, tensor in value.items():
            if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
                self.fail("model", f"holds {quote(name)}, which is not a named tensor")
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                self.fail("model", f"weight {quote(name)} holds NaN or infinite values")

    def optimizer(self, value: Any) -> None:
        if not isinstance(value, dict) or not isinstance(value.get("state"), dict) \
                or not isinstance(value.get("param_groups"), list) \
                or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in value["param_groups"]):
            self.fail("optimizer", "is not an optimizer state (state, param_groups)")

    def scheduler(self, value: Any, groups: int | None) -> None:
        if not isinstance(value, dict):
            self.fail("scheduler", "is not a dict")
        for key in ("base_lrs", "last_epoch", "lr_lambdas"):
            if key not in value:
                self.fail("scheduler", f"has no key '{key}'")
        for key, item in value.items():
            kind = _SCHEDULER_KEYS.get(key)
            if kind is None:
                self.fail("scheduler", f"holds the unknown key {quote(key)}")
            if kind is int and not _is_int(item) or kind is not int and not isinstance(item, kind):
                self.fail("scheduler", f"key '{key}' is not a {kind.__name__}")
        for key in ("base_lrs", "_last_lr"):
            if not all(_is_number(v) and math.isfinite(v) for v in value.get(key, [])):
                self.fail("scheduler", f"key '{key}' holds something other than finite numbers")
        if not all(v is None or isinstance(v, dict) and not v for v in value.get("lr_lambdas", [])):
            self.fail("scheduler", "key 'lr_lambdas' holds a state (this trainer's schedule has none)")
        if not 0 <= value.get("last_epoch", 0) < _MAX_COUNT:
            self.fail("scheduler", "key 'last_epoch' is out of range")
        # One entry per optimizer parameter group, or the schedule would drive fewer groups silently.
        lengths = {len(value[k]) for k in ("base_lrs", "_last_lr", "lr_lambdas") if k in value}
        if len(lengths) != 1 or groups is not None and lengths != {groups}:
            self.fail("scheduler", "lists do not have one entry per optimizer parameter group")

    def scaler(self, value: Any) -> None:
        if value is None or value == {}:
            return
        if not isinstance(value, dict) or not all(isinstance(k, str) and _is_number(v) for k, v in value.items()):
            self.fail("scaler", "is not a grad scaler state (names and numbers)")

    def config(self, value: Any) -> None:
        if not isinstance(value, dict):
            self.fail("config", "is not a dict")
        try:
            from_dict(value, source="stored config")
        except ConfigError as e:
            raise CheckpointError(f"{self.path}: field 'config' is not valid here: {one_line(e)}") from None

    def tokenizer(self, value: Any) -> None:
        if not isinstance(value, str):
            self.fail("tokenizer", "is not a JSON string")
        try:
            tokenizer_from_json(value)
        except CheckpointError as e:
            raise CheckpointError(f"{self.path}: field 'tokenizer': {one_line(e)}") from None
        except Exception as e:  # noqa: BLE001 - the tokenizers library's own parse errors
            raise CheckpointError(f"{self.path}: field 'tokenizer' cannot be rebuilt ({one_line(e, 120)})") from None

    def rng(self, value: Any) -> None:
        if not isinstance(value, dict):
            self.fail("rng", "is not a dict")
        cpu = value.get("torch")
        if not isinstance(cpu, torch.Tensor) or cpu.dtype != torch.uint8 or tuple(cpu.shape) != tuple(
                torch.get_rng_state().shape):
            self.fail("rng", "has no torch CPU generator state (uint8 tensor)")
        cuda = value.get("cuda", [])
        if not isinstance(cuda, list) or not all(isinstance(s, torch.Tensor) and s.dtype == torch.uint8 and s.ndim == 1
                                                 for s in cuda):
            self.fail("rng", "key 'cuda' is not a list of uint8 tensors")
        numpy_state = value.get("numpy")
        if not (isinstance(numpy_state, list) and len(numpy_state) == 5 and numpy_state[0] == "MT19937"
                and self._words(numpy_state[1], 624) and _is_int(numpy_state[2]) and 0 <= numpy_state[2] <= 624
                and numpy_state[3] in (0, 1) and _is_number(numpy_state[4])):
            self.fail("rng", "key 'numpy' is not a NumPy MT19937 state")
        python_state = value.get("python")
        if not (isinstance(python_state, list) and len(python_state) == 3 and python_state[0] == 3
                and self._words(python_state[1][:-1] if isinstance(python_state[1], list) else None, 624)
                and _is_int(python_state[1][-1]) and 0 <= python_state[1][-1] <= 624
                and (python_state[2] is None or _is_number(python_state[2]))):
            self.fail("rng", "key 'python' is not a Python random state")

    @staticmethod
    def _words(values: Any, count: int) -> bool:
        return isinstance(values, list) and len(values) == count and all(
            _is_int(v) and 0 <= v < 2**32 for v in values)

    def progress(self, state: dict) -> None:
        for key in _COUNTERS:
            if key in state and not (_is_int(state[key]) and 0 <= state[key] < _MAX_COUNT):
                self.fail(key, f"is {quote(state[key])}, not a count (an integer >= 0)")
        for key in _NUMBERS:
            if key in state and not (_is_number(state[key]) and not math.isnan(state[key])):
                self.fail(key, f"is {quote(state[key])}, not a number")
        if "world_size" in state and not (_is_int(state["world_size"]) and 1 <= state["world_size"] <= 65536):
            self.fail("world_size", f"is {quote(state['world_size'])}, not a process count")


def check_checkpoint(state: dict, path: str | Path, parts: Iterable[str] = RESUME_PARTS) -> dict:
    """Refuse `state` (read from `path`) unless it has every field of `parts` and every field it
    has is well formed; returns `state`. `parts`: `RESUME_PARTS` to resume training,
    `MODEL_PARTS` to rebuild a model."""
    checker = _Checker(Path(path))
    for key in parts:
        if key not in state:
            raise CheckpointError(f"{path}: checkpoint has no '{key}' entry (not written by medclip-nb train, "
                                  f"or cannot be resumed from)")
    for key in ("model", "optimizer", "scaler", "config", "tokenizer", "rng"):
        if key in state:
            getattr(checker, key)(state[key])
    if "scheduler" in state:
        groups = len(state["optimizer"]["param_groups"]) if "optimizer" in state else None
        checker.scheduler(state["scheduler"], groups)
    checker.progress(state)
    return state
