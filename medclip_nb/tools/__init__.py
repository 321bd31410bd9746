"""tools stage: benchmarks and the fuzzer.

A lazy facade (`medclip_nb.lazy_exports`), as data and text have: `python -m
medclip_nb.tools.gpu_check`, run many times by benchmarks/gpu_check.sh, need not import torch and
every benchmark first.
"""

from __future__ import annotations

from medclip_nb import lazy_exports

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
__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
