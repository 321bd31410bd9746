"""Training: `train(cfg)` and its pieces (being split out of loop.py)."""

from medclip_nb.train.loop import METRICS_FILE, MetricsLog, TrainResult, param_groups, train, warmup_cosine

__all__ = ["METRICS_FILE", "MetricsLog", "TrainResult", "param_groups", "train", "warmup_cosine"]
