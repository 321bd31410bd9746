"""tools stage."""

from medclip_nb.tools.ablation_bench import main_bench_ablation
from medclip_nb.tools.bench import run_bench
from medclip_nb.tools.scale_bench import main_scale

__all__ = [
    "main_bench_ablation",
    "main_scale",
    "run_bench",
]
