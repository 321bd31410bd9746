"""TensorBoard view of a run (config key `tensorboard: true`): the metrics rows as scalars.

metrics.jsonl stays the record of a run; this writes the same numbers as event files in the run's
own folder (`model_save_path`), so that `tensorboard --logdir checkpoints/` lists every run under
checkpoints/ by its folder name (`debug`, `ablation/clip_s0`, ...) and overlays them. Tags:
train/loss, train/lr, train/temperature, train/pairs_per_s; val/loss, val/pairs_per_s and, with
`val_metrics_samples`, val/zero_shot_accuracy, val/image_to_text_R@K and val/text_to_image_R@K
(K = 1, 5, 10); the step is the optimizer step.
"""

from __future__ import annotations

import math
from pathlib import Path

from medclip_nb.errors import UserError

# Per split, the metrics-row keys written as scalars (a row without one, or with null, skips it).
SCALARS = {
    "train": ("loss", "lr", "temperature", "pairs_per_s"),
    "val": ("loss", "pairs_per_s", "zero_shot_accuracy",
            *(f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10))),
}


def _summary_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            "config key 'tensorboard': needs the tensorboard package: pip install -e .[tensorboard] "
            "(or pip install tensorboard), or set tensorboard: false"
        ) from None
    return SummaryWriter


def require_tensorboard() -> None:
    """Fail now, with one line naming the key, when the package is missing."""
    _summary_writer_class()


class TensorBoardLog:
    """Receives the rows MetricsLog writes and adds their scalars to an event file in `run_dir`.

    A new run's first event tells TensorBoard to drop every earlier event in the folder (an
    earlier run's, as metrics.jsonl starts afresh); on resume, `resume_step` drops only the events
    the stopped run wrote after that step (metrics.jsonl drops the same rows), so no step is shown
    twice."""

    def __init__(self, run_dir: str | Path, resume_step: int | None = None):
        writer_class = _summary_writer_class()
        self.log_dir = Path(run_dir)
        purge = 0 if resume_step is None else resume_step + 1
        self._writer = writer_class(log_dir=str(self.log_dir), purge_step=purge)

    def write(self, row: dict) -> None:
        for key in SCALARS.get(row.get("split"), ()):
            value = row.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):  # a non-finite loss is null in the row
                self._writer.add_scalar(f"{row['split']}/{key}", value, global_step=int(row["step"]))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
