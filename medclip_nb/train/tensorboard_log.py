"""TensorBoard view of a run (config key `tensorboard: true`): the metrics rows as scalars.

metrics.jsonl stays the record of a run; this writes the same numbers as event files under
`model_save_path/tensorboard/`, for watching a long run live with
`tensorboard --logdir <model_save_path>/tensorboard`. Tags: train/loss, train/lr,
train/temperature, train/pairs_per_s, val/loss, val/pairs_per_s; the step is the optimizer step.
"""

from __future__ import annotations

import math
from pathlib import Path

from medclip_nb.errors import UserError

TENSORBOARD_DIR = "tensorboard"
# Per split, the metrics-row keys written as scalars.
SCALARS = {"train": ("loss", "lr", "temperature", "pairs_per_s"), "val": ("loss", "pairs_per_s")}


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
    """Receives the rows MetricsLog writes and adds their scalars to an event file.

    On resume, `resume_step` makes TensorBoard drop the events the stopped run wrote after that
    step (metrics.jsonl drops the same rows), so no step is shown twice."""

    def __init__(self, run_dir: str | Path, resume_step: int | None = None):
        writer_class = _summary_writer_class()
        self.log_dir = Path(run_dir) / TENSORBOARD_DIR
        purge = None if resume_step is None else resume_step + 1
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
