"""Learning curves: the 5x200 zero-shot accuracy of a run's saved checkpoints (config key
`checkpoint_steps`), each scored on exactly the images and prompts of the full evaluation.

`ZeroShotPoints(cfg, tokenizer)` selects the 5x200 rows of the test split as `Evaluation.run`
does (same labels, same seed) and holds those images through the evaluation transform, then
`accuracy(checkpoint)` embeds them with the checkpoint's weights and classifies them with the
prompt ensemble (mean and max modes). The evaluation transform is deterministic, so the image
tensor is built once per process and dataset (`_IMAGES`) and shared by every run and checkpoint
of an ablation. Retrieval and the linear probe are left to a run's end point (`evaluate_model`):
a curve point costs one forward pass over the 5x200 images. Intervals are off: a curve's
intervals are over training seeds (study/seed_stats.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from medclip_nb.config import Config
from medclip_nb.data import SkippedSample
from medclip_nb.errors import DataError
from medclip_nb.evaluate.embeddings import compute_embeddings
from medclip_nb.evaluate.evaluation import Evaluation
from medclip_nb.evaluate.intervals import bootstrap_off
from medclip_nb.evaluate.metrics import select_5x200
from medclip_nb.evaluate.run import eval_datasets
from medclip_nb.model import load_model
from medclip_nb.paths import resolve

# (what decides the images) -> (rows, classes, float images [n, 3, S, S]): one entry per dataset and transform.
_IMAGES: dict[tuple, tuple[np.ndarray, np.ndarray, torch.Tensor]] = {}
_IMAGE_KEYS = ("data_path", "image_root", "image_store", "image_size", "resize_size", "zeroshot_per_class",
               "train_fraction_seed")


def _quiet(*_args, **_kwargs) -> None:
    return None


def five_x_200_images(cfg: Config, tokenizer, seed: int = 0) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """(rows, classes, images) of the 5x200 set of cfg's test split, through the evaluation transform."""
    key = (*(str(resolve(v)) if k == "data_path" else v for k, v in
             ((k, getattr(cfg, k)) for k in _IMAGE_KEYS)), seed)
    if key not in _IMAGES:
        splits, _ = eval_datasets(cfg, tokenizer)
        test = splits["test"]
        labels = np.stack([test.records.labels(i) for i in range(len(test))]) if len(test) else np.zeros((0, 14))
        rows, classes = select_5x200(labels, cfg.zeroshot_per_class, seed)
        samples = [test[int(i)] for i in rows]
        bad = [s for s in samples if isinstance(s, SkippedSample)]
        if bad:
            raise DataError(f"{bad[0].path}: a 5x200 test image could not be read ({bad[0].reason})")
        images = torch.stack([s["pixel_values"] for s in samples]) if samples else torch.zeros((0, 3, 1, 1))
        _IMAGES.clear()  # one dataset at a time: an ablation scores every run on the same images
        _IMAGES[key] = (rows, classes, images)
    return _IMAGES[key]


class ZeroShotPoints:
    """The 5x200 zero-shot accuracy of checkpoints that share one tokenizer (one run's)."""

    def __init__(self, cfg: Config, tokenizer, seed: int = 0):
        self.rows, self.classes, self.images = five_x_200_images(cfg, tokenizer, seed)
        self.cfg, self.tokenizer, self.seed = cfg, tokenizer, seed

    def batches(self) -> list[dict[str, Any]]:
        size = self.cfg.eval_batch_size
        return [{"pixel_values": self.images[i:i + size], "labels": torch.zeros(len(self.images[i:i + size]), 14),
                 "index": torch.arange(i, i + len(self.images[i:i + size]))}
                for i in range(0, len(self.images), size)]

    def accuracy(self, checkpoint: str | Path) -> dict[str, float | None]:
        """{"mean": accuracy, "max": accuracy} of the checkpoint's model on the 5x200 rows."""
        model, _tokenizer, _cfg = load_model(checkpoint, "cpu")
        return self.model_accuracy(model)

    def model_accuracy(self, model: torch.nn.Module) -> dict[str, float | None]:
        """The same for a model in memory, with "top_share": the share of the images given the class
        predicted most often (prompt mean; 1.0 when the model predicts one class for every image)."""
        if not len(self.rows):
            return {"mean": None, "max": None, "top_share": None}
        evaluation = Evaluation(model, self.tokenizer, self.cfg, "cpu", seed=self.seed, log=_quiet)
        embedded = compute_embeddings(model, self.batches(), "cpu", with_text=False, amp=False, progress_desc=None)
        with bootstrap_off():
            result = evaluation.five_x_200(embedded["image"], np.arange(len(self.rows)), self.classes)
        return {**{mode: result[mode]["accuracy"] for mode in ("mean", "max")},
                "top_share": top_class_share(result["mean"]["confusion"])}


def top_class_share(confusion) -> float | None:
    """The share of the images predicted as the most-predicted class, from a confusion matrix [true,
    predicted]; near 1 / classes when predictions spread as the true classes do, 1.0 when the model
    gives every image one class (a collapsed model)."""
    if confusion is None:
        return None
    predicted = np.asarray(confusion, dtype=float).sum(axis=0)
    return round(float(predicted.max() / predicted.sum()), 4) if predicted.sum() else None


__all__ = ["ZeroShotPoints", "five_x_200_images", "top_class_share"]
