"""Zero-shot accuracy and retrieval R@K at each validation, on a small fixed validation subset.

Cheap enough for every `eval_steps`, on a CPU too: `val_metrics_samples` validation images (a
seeded choice made once, so every validation and a resumed run score the same images), their whole
reports, and the prompt embeddings of the five competition classes, encoded once per validation.
The numbers are `evaluate`'s, on fewer images:

- zero_shot_accuracy: 5-way CheXpert-class accuracy, MedCLIP's prompt vocabulary, mean prompt
  embedding ("ours", mean mode), on the subset's images with exactly one competition finding
  (zero_shot_images of them; chance 0.2);
- image_to_text_R@K / text_to_image_R@K for K = 1, 5, 10 over the subset (retrieval_images;
  images of one study share its report, which counts as the one match; chance about K / n).

Run on the main process only, with the model in eval mode; its loader has its own seeded
generator, so the training RNG streams (and the losses) are what they would be without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

from medclip_nb.config import Config
from medclip_nb.data import make_collate, make_loader, uses_precomputed_text
from medclip_nb.evaluate import compute_embeddings, encode_texts, recall_at_k, select_5x200, zero_shot_classify
from medclip_nb.labels import COMPETITION_TASKS
from medclip_nb.prompts import class_prompts

KS = (1, 5, 10)


@dataclass
class ValMetrics:
    """The subset's loader and what scoring it needs; call it with the model after a validation."""

    loader: Any
    tokenizer: Any
    prompts: dict[str, list[str]] | None  # None: text_encoder 'precomputed' cannot encode prompts
    batch_size: int
    amp: bool

    @classmethod
    def build(cls, cfg: Config, val_set, tokenizer) -> "ValMetrics | None":
        """None when switched off (val_metrics_samples 0) or there are fewer than 2 validation images."""
        if not cfg.val_metrics_samples or val_set is None or len(val_set) < 2:
            return None
        n = min(cfg.val_metrics_samples, len(val_set))
        rows = np.sort(np.random.default_rng(cfg.seed).choice(len(val_set), size=n, replace=False))
        # Two loader processes at most: the subset is small, and they stay alive for the whole run.
        loader_cfg = cfg.replace(num_workers=min(cfg.num_workers, 2))
        loader = make_loader(Subset(val_set, rows.tolist()), loader_cfg, train=False,
                             batch_size=cfg.eval_batch_size, collate_fn=make_collate(tokenizer, cfg))
        prompts = None if uses_precomputed_text(cfg) else class_prompts(COMPETITION_TASKS)
        return cls(loader, tokenizer, prompts, cfg.eval_batch_size, bool(cfg.use_amp))

    def __call__(self, model: torch.nn.Module, device: torch.device) -> dict[str, Any]:
        """The metrics row fields (see the module docstring)."""
        emb = compute_embeddings(model, self.loader, device, amp=self.amp, progress_desc=None)
        image, text, group = emb["image"], emb["text"], emb["text_group"]
        fields: dict[str, Any] = {"retrieval_images": len(image)}
        i2t = recall_at_k(image @ text.T, KS, query_ids=group, gallery_ids=group)
        t2i = recall_at_k(text @ image.T, KS, query_ids=group, gallery_ids=group)
        fields.update({f"image_to_text_R@{k}": i2t[k] for k in KS})
        fields.update({f"text_to_image_R@{k}": t2i[k] for k in KS})
        if self.prompts is not None:
            rows, classes = select_5x200(emb["labels"], per_class=len(image))
            fields["zero_shot_images"] = len(rows)
            fields["zero_shot_accuracy"] = None
            if len(rows):
                class_embs = [encode_texts(model, self.tokenizer, self.prompts[t], device, self.batch_size,
                                           amp=self.amp) for t in COMPETITION_TASKS]
                predicted = zero_shot_classify(image[rows], class_embs, "mean").argmax(axis=1)
                fields["zero_shot_accuracy"] = float(np.mean(predicted == classes))
        return fields


def describe(fields: dict[str, Any]) -> str:
    """The console's part of a validation line: '| zero-shot accuracy 0.350 (40 images) | ...'."""
    parts = []
    if fields.get("zero_shot_accuracy") is not None:
        parts.append(f"zero-shot accuracy {fields['zero_shot_accuracy']:.3f} ({fields['zero_shot_images']} images)")
    for direction, name in (("image_to_text", "image->report"), ("text_to_image", "report->image")):
        values = "/".join(f"{fields[f'{direction}_R@{k}']:.2f}" for k in KS)
        parts.append(f"{name} R@1/5/10 {values}")
    return " | ".join(parts) + f" ({fields['retrieval_images']} images)"
