"""What evaluation asks of a model: embeddings of a loader's samples and of prompt texts, its logit scale.

The model-facing functions only need `encode_image` / `encode_text` (docs/architecture.md);
the metrics (metrics.py) are computed from the arrays they return.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medclip_nb.data import make_collate, make_loader
from medclip_nb.errors import DataError
from medclip_nb.labels import COMPETITION_TASKS
from medclip_nb.progress import progress
from medclip_nb.runtime import amp_dtype, autocast, eval_mode
from medclip_nb.text import trim_padding


def _token_key(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> bytes:
    """Digest of a row's real tokens: equal digests = identical text input."""
    tokens = input_ids[attention_mask.bool()].to(torch.int64).numpy()
    return hashlib.blake2b(tokens.tobytes(), digest_size=16).digest()


def compute_embeddings(
    model: torch.nn.Module,
    loader: Iterable[Mapping[str, Any]],
    device: torch.device | str,
    *,
    with_text: bool = True,
    amp: bool = True,
    progress_desc: str | None = "embedding",
) -> dict[str, Any]:
    """Embeddings of every sample a loader yields (batches as in docs/architecture.md).

    Runs in eval mode without gradients (the model's mode is restored afterwards); autocast
    only on CUDA. Returns NumPy arrays: image [N, D], text [N, D] (None without text),
    labels [N, 14], index [N] (dataset index of each row), text_group [N] (rows with the
    same id had identical text tokens, i.e. the same report), n_skipped (unreadable
    images the loader dropped) and skipped_paths (their files). `progress_desc`: the label of a
    progress bar over the batches (None: no bar; TQDM_DISABLE turns every bar off).
    """
    device = torch.device(device)
    images, texts, labels, index, text_keys = [], [], [], [], []
    n_skipped, skipped_paths = 0, []
    with eval_mode(model), autocast(amp_dtype(device, amp)):
        batches = progress(loader, desc=progress_desc or "", disable=progress_desc is None, unit="batch", leave=False)
        for batch in batches:
            n_skipped += int(batch.get("n_skipped", 0))
            skipped_paths.extend(batch.get("skipped_paths", []))
            if len(batch["index"]) == 0:
                continue
            pixels = batch["pixel_values"]
            if pixels.dtype == torch.uint8:
                raise ValueError(
                    "compute_embeddings: got uint8 pixel_values; evaluation needs the normalised "
                    "float images of the eval transforms (build the loader without raw_uint8)"
                )
            images.append(model.encode_image(pixels.to(device, non_blocking=True)).float().cpu())
            if with_text:
                ids, mask = batch["input_ids"], batch["attention_mask"]
                texts.append(model.encode_text(ids.to(device), mask.to(device)).float().cpu())
                text_keys.extend(_token_key(i, m) for i, m in zip(ids.cpu(), mask.cpu()))
            labels.append(torch.as_tensor(batch["labels"], dtype=torch.float32).cpu())
            index.append(torch.as_tensor(batch["index"], dtype=torch.int64).cpu())
    if not images:
        raise DataError("compute_embeddings: the loader yielded no readable samples")
    group_of: dict[bytes, int] = {}
    return {
        "image": torch.cat(images).numpy(),
        "text": torch.cat(texts).numpy() if with_text else None,
        "labels": torch.cat(labels).numpy(),
        "index": torch.cat(index).numpy(),
        "text_group": np.array([group_of.setdefault(k, len(group_of)) for k in text_keys], dtype=np.int64)
        if with_text else None,
        "n_skipped": n_skipped,
        "skipped_paths": skipped_paths,
    }


def encode_texts(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    device: torch.device | str,
    batch_size: int = 64,
    *,
    amp: bool = True,
) -> np.ndarray:
    """Text embeddings [T, D] of a list of strings (prompts), tokenised by `tokenizer` and padded
    to the longest of each batch (the embedding does not depend on the padding)."""
    device = torch.device(device)
    out = []
    with eval_mode(model), autocast(amp_dtype(device, amp)):
        for start in range(0, len(texts), batch_size):
            encoded = trim_padding(tokenizer.encode(list(texts[start : start + batch_size])), tokenizer)
            emb = model.encode_text(encoded["input_ids"].to(device), encoded["attention_mask"].to(device))
            out.append(emb.float().cpu())
    if not out:
        raise ValueError("encode_texts: no texts given")
    return torch.cat(out).numpy()


def model_logit_scale(model: torch.nn.Module) -> float:
    """The similarity multiplier: the model's `logit_multiplier()` when it has one, else exp
    of its learnable log scale `logit_scale` clamped to [0, ln 100] (docs/architecture.md)."""
    with torch.no_grad():
        if callable(getattr(model, "logit_multiplier", None)):
            return float(model.logit_multiplier())
        log_scale = getattr(model, "logit_scale", None)
        if log_scale is None:
            raise AttributeError(f"{type(model).__name__} has no 'logit_scale' (see docs/architecture.md, Models)")
        return float(torch.as_tensor(log_scale).float().clamp(0, math.log(100)).exp())



@dataclass
class EvaluationArrays:
    """The raw arrays behind the metrics, for notebook figures (not written to JSON)."""

    embeddings: dict[str, dict[str, Any]] = field(default_factory=dict)  # split -> compute_embeddings output
    five_x_200_rows: np.ndarray | None = None  # rows of the test embeddings
    five_x_200_classes: np.ndarray | None = None  # class index per row (COMPETITION_TASKS order)
    zero_shot_scores: dict[str, np.ndarray] = field(default_factory=dict)  # mode -> [n, 5]
    multilabel_probabilities: np.ndarray | None = None  # [N_test, 14]
    prompts: dict[str, list[str]] = field(default_factory=dict)
    class_names: tuple[str, ...] = COMPETITION_TASKS
    test_groups: np.ndarray | None = None  # patient id of each test row (the bootstrap's unit); None: unknown
    localisation: dict[str, Any] | None = None  # localisation.py: pairs, per-pair scores, patients, example maps



def loader_for(dataset_or_batches, cfg, tokenizer):
    """A DataLoader for a Dataset (eval settings); an iterable of batches is used as it is."""
    if isinstance(dataset_or_batches, torch.utils.data.Dataset):
        return make_loader(dataset_or_batches, cfg, train=False, batch_size=cfg.eval_batch_size,
                           collate_fn=make_collate(tokenizer, cfg))
    return dataset_or_batches
