"""tools stage: benchmarks and the fuzzer.

A lazy facade (PEP 562), as data and text have: `python -m medclip_nb.tools.gpu_check`, run many
times by benchmarks/gpu_check.sh, need not import torch and every benchmark first.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the submodule that defines it, loaded on first use
_PUBLIC = {
    "main_bench_ablation": "medclip_nb.tools.ablation_bench",
    "BenchOptions": "medclip_nb.tools.bench",
    "run_bench": "medclip_nb.tools.bench",
    "main_scale": "medclip_nb.tools.scale_bench",
    "run_step_bench": "medclip_nb.tools.step_bench",
    "main_bench_train": "medclip_nb.tools.train_bench",
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
