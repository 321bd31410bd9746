"""tools stage."""

from medclip_nb.tools.ablation_bench import main_bench_ablation
from medclip_nb.tools.bench import run_bench
from medclip_nb.tools.scale_bench import main_scale
from medclip_nb.tools.step_bench import run_step_bench
from medclip_nb.tools.train_bench import main_bench_train

__all__ = [
    "main_bench_ablation",
    "main_bench_train",
    "main_scale",
    "run_bench",
    "run_step_bench",
]
