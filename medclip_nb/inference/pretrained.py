"""Use a pretrained model: load it, embed images and texts, classify images zero-shot.

    pretrained = load_pretrained("checkpoints/debug/best.pth")     # or an export folder
    probabilities = pretrained.classify(["scan.jpg", "scans/"])      # pandas DataFrame, 5-way
    findings = pretrained.classify_multilabel(["scan.jpg"])          # per finding, positive vs negative
    nearest = pretrained.retrieve(["scan.jpg"], bank, k=5)           # the nearest reports of a ReportBank
    images = pretrained.embed_images(["scan.jpg"])                   # .embeddings [N, D], .ids
    texts = pretrained.embed_texts(["small left pleural effusion"])  # [T, D]
    maps = pretrained.text_maps("scan.jpg", ["pleural effusion"])     # [T, S, S] over the model's input

As open_clip's model and tokenizer, with tensors in and out (gradients as the caller's context says):

    pixels = pretrained.preprocess("scan.jpg").unsqueeze(0)          # [1, 3, S, S], the evaluation transform
    image = pretrained.encode_image(pixels)                          # [1, D] on pretrained.device
    text = pretrained.encode_text(pretrained.tokenizer(["small left pleural effusion"]))  # or the strings

Images are file paths (a folder stands for the image files under it), PIL images or tensors:
a uint8 tensor is a raw grayscale image (`[H, W]` or `[1, H, W]`; `[3, H, W]` is converted to
luma) and goes through the model's evaluation transform as a file does; a float tensor is
taken as that transform's output (`[3, S, S]`, or a batch `[B, 3, S, S]`, S = image_size).
An unreadable file follows the training rule `on_bad_image`: skipped (warned about, counted
and listed in the result) or an error. Embeddings are L2-normalised, computed in batches on
the model's device (a GPU when there is one, unless told otherwise).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from medclip_nb.config_load import parse_yaml_file
from medclip_nb.data import (
    BadImageError,
    BadImageWarning,
    SkippedSample,
    build_transforms,
)
from medclip_nb.errors import UserError, quote
from medclip_nb.evaluate import encode_texts, model_logit_scale, zero_shot_classify
from medclip_nb.inference.heatmaps import image_maps
from medclip_nb.inference.images import ImageItems, collate_images, image_items
from medclip_nb.inference.retrieval import ReportBank, nearest_reports, report_bank
from medclip_nb.labels import CHEXPERT_LABELS, COMPETITION_TASKS, PROMPT_VOCABULARY
from medclip_nb.model import check_eval_memory, is_export_dir, load_export, load_model, model_config
from medclip_nb.paths import resolve
from medclip_nb.progress import progress as progress_display
from medclip_nb.prompts import binary_prompts, finding_phrase, generate_prompts
from medclip_nb.runtime import amp_dtype, autocast, eval_mode, pick_device
from medclip_nb.text import clean_report


# ---- prompts --------------------------------------------------------------------------------------
def _names(names, prompts: Mapping[str, Any], default: Sequence[str], kind: str) -> list[str]:
    """The `--classes` names, stripped and de-duplicated in order: `names`, else the keys of
    `prompts`, else `default`; one string is refused (a list is meant)."""
    if names is None:
        names = list(prompts) or list(default)
    if isinstance(names, str):
        raise UserError(f"classes: give a list of {kind} names, not the one string {names!r}")
    return list(dict.fromkeys(str(n).strip() for n in names if str(n).strip()))


def resolve_prompts(classes: Sequence[str] | None = None,
                    prompts: Mapping[str, Sequence[str]] | None = None) -> dict[str, list[str]]:
    """{class: prompts}: `prompts[class]` where given, else every MedCLIP vocabulary prompt of
    the class (the five competition classes), else the class's finding phrase ("Pneumothorax"
    -> "pneumothorax"). `classes` defaults to the keys of `prompts`, else the five classes."""
    prompts = dict(prompts or {})
    classes = _names(classes, prompts, COMPETITION_TASKS, "class")
    if len(classes) < 2:
        raise UserError(f"classes: zero-shot classification needs at least two classes, got {classes}")
    unknown = [c for c in prompts if c not in classes]
    if unknown:
        raise UserError(f"prompts: class {unknown[0]!r} is not among the classes ({', '.join(classes)})")
    result = {}
    for name in classes:
        if name in prompts:
            given = [p for p in (prompts[name] or []) if isinstance(p, str) and p.strip()]
            if not given or isinstance(prompts[name], str):
                raise UserError(f"prompts: class {name!r} needs a list of non-empty prompt strings")
            result[name] = given
        elif name in PROMPT_VOCABULARY:
            result[name] = generate_prompts(name)
        else:
            result[name] = [finding_phrase(name)]
    return result


def _prompt_list(value, where: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(p, str) and p.strip() for p in items):
        raise UserError(f"{where}: give a prompt or a list of non-empty prompts")
    return [p.strip() for p in items]


def resolve_pair_prompts(findings: Sequence[str] | None = None,
                         prompts: Mapping[str, Any] | None = None) -> dict[str, tuple[list[str], list[str]]]:
    """{finding: (positive prompts, negative prompts)} for multi-label zero-shot: `prompts[finding]`
    ({"positive": ..., "negative": ...}, each a prompt or a list) where given, else the pair
    `evaluate` uses (prompts.binary_prompts: "pleural effusion" vs "no pleural effusion"; "No
    Finding" has its own). `findings` defaults to the keys of `prompts`, else the 14 CheXpert labels."""
    prompts = dict(prompts or {})
    findings = _names(findings, prompts, CHEXPERT_LABELS, "finding")
    if not findings:
        raise UserError("classes: no finding names given")
    unknown = [f for f in prompts if f not in findings]
    if unknown:
        raise UserError(f"prompts: finding {unknown[0]!r} is not among the findings ({', '.join(findings)})")
    result = {}
    for name in findings:
        if name in prompts:
            pair = prompts[name]
            if not isinstance(pair, Mapping) or set(pair) != {"positive", "negative"}:
                raise UserError(f"prompts: finding {name!r} needs exactly the keys positive and negative")
            result[name] = (_prompt_list(pair["positive"], f"prompts: {name} positive"),
                            _prompt_list(pair["negative"], f"prompts: {name} negative"))
        else:
            try:
                positive, negative = binary_prompts(name)
            except ValueError as e:
                raise UserError(f"classes: {e}; give its positive and negative prompts in --prompts") from None
            result[name] = ([positive], [negative])
    return result


# A prompts file names classes and their prompts; beyond these it is not a prompts file.
MAX_PROMPTS, MAX_PROMPT_CHARS = 10_000, 1_000


def read_prompts_file(path: str | os.PathLike, *, pairs: bool = False) -> dict[str, Any]:
    """A YAML or JSON file mapping each class name to a list of prompts, or with `pairs` (the
    multi-label mode) each finding to {"positive": [...], "negative": [...]}. Read as config files
    are (config_load.parse_yaml_file: size cap, regular file, UTF-8, safe loader, one-line errors);
    at most MAX_PROMPTS prompts, each a string of at most MAX_PROMPT_CHARS characters."""
    path = Path(path)
    data = parse_yaml_file(path, what="--prompts", error=UserError)
    shape = (f"--prompts {path}: with --multi-label, must map each finding to {{positive: [...], negative: [...]}}"
             if pairs else f"--prompts {path}: must map each class name to a list of prompt strings")
    if not isinstance(data, dict) or not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in data) \
            or not all(isinstance(v, dict if pairs else list) for v in data.values()):
        raise UserError(shape)
    lists = {name: [v if isinstance(v, list) else [v] for v in value.values()] if pairs else [value]
             for name, value in data.items()}
    # Aliases are shared references: count before anything is copied or converted.
    if sum(len(part) for parts in lists.values() for part in parts) > MAX_PROMPTS:
        raise UserError(f"--prompts {path}: more than {MAX_PROMPTS} prompts")
    for name, parts in lists.items():
        for prompt in (prompt for part in parts for prompt in part):
            if not isinstance(prompt, str):
                raise UserError(f"{shape}; {quote(name)} holds {quote(prompt)}")
            if len(prompt) > MAX_PROMPT_CHARS or len(str(name)) > MAX_PROMPT_CHARS:
                raise UserError(f"--prompts {path}: {quote(name)}: a name or prompt over {MAX_PROMPT_CHARS} characters")
    return {str(k): v if pairs else list(v) for k, v in data.items()}


# ---- the loaded model -------------------------------------------------------------------------------
@dataclass
class ImageEmbeddings:
    """`embeddings` [N, D] float32 (L2-normalised), `ids` (one per row), `skipped` (unreadable
    files that have no row)."""

    embeddings: np.ndarray
    ids: list[str]
    skipped: list[SkippedSample] = field(default_factory=list)


@dataclass
class Pretrained:
    """A model with what it needs to be used: its tokenizer, its config and its evaluation
    transform (uint8 `[1, H, W]` -> float `[3, S, S]`), on `device`. Build it with load_pretrained."""

    model: torch.nn.Module
    tokenizer: Any
    config: Any
    transform: Any
    device: torch.device
    source: Path

    @property
    def logit_scale(self) -> float:
        """The similarity multiplier the model learned (1 / temperature)."""
        return model_logit_scale(self.model)

    # ---- open_clip's calls: tensors in, tensors out ------------------------------------------------
    def preprocess(self, image) -> torch.Tensor:
        """One image (a path, a PIL image or a uint8 tensor) through the evaluation transform:
        float `[3, S, S]`. An unreadable file raises BadImageError naming it."""
        items, ids = image_items(image)
        if len(items) != 1:
            raise UserError(f"preprocess: one image at a time, got {len(items)} (embed_images takes many)")
        sample = ImageItems(items, ids, self.transform, self.config.image_size, self.config.resize_size)[0]
        if isinstance(sample, SkippedSample):
            raise BadImageError(sample.reason)
        return sample["pixel_values"]

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings `[B, D]` of preprocessed images (`[B, 3, S, S]`, or one
        `[3, S, S]`), computed on the model's device."""
        if pixel_values.ndim == 3:
            pixel_values = pixel_values.unsqueeze(0)
        return self.model.encode_image(pixel_values.to(self.device))

    def encode_text(self, text) -> torch.Tensor:
        """L2-normalised embeddings `[T, D]` of `tokenizer(texts)`'s output, or of texts (a string
        or a list, tokenised here the same way)."""
        if not isinstance(text, Mapping):
            self.check_text_input()
        tokens = text if isinstance(text, Mapping) else self.tokenizer(text)
        return self.model.encode_text(tokens["input_ids"].to(self.device), tokens["attention_mask"].to(self.device))

    def text_maps(self, image, texts: str | Sequence[str], *, method: str = "similarity") -> np.ndarray:
        """[T, S, S] maps of each text over one image as the model sees it (`preprocess(image)`): the
        similarity of each location to the text, or Grad-CAM of the image-text similarity (`method`;
        model/maps.py, docs/localisation.md)."""
        self.check_text_input()
        texts = [texts] if isinstance(texts, str) else list(texts)
        return image_maps(self, image, torch.from_numpy(self.embed_texts(texts)), method)[1]

    def check_text_input(self) -> None:
        """A UserError for a model that cannot read new text (text_encoder: precomputed)."""
        if self.config.model != "simple" and self.config.text_encoder == "precomputed":
            raise UserError("text_encoder 'precomputed' reads stored report features; it cannot embed new text")

    # ---- embeddings of many inputs ------------------------------------------------------------------
    def embed_images(self, images, *, batch_size: int | None = None, num_workers: int = 0,
                     on_bad_image: str | None = None, progress: bool = False) -> ImageEmbeddings:
        """Embeddings of images (see the module docstring for the inputs), `batch_size`
        (default: the config's eval_batch_size) at a time, files decoded by `num_workers`
        loader processes. `on_bad_image` ('skip' | 'error', default the config's)."""
        rule = on_bad_image or self.config.on_bad_image
        if rule not in ("skip", "error"):
            raise UserError(f"on_bad_image: {rule!r} is not one of skip, error")
        items, ids = image_items(images)
        batch_size = min(batch_size or self.config.eval_batch_size, max(1, len(items)))
        check_eval_memory(self.config, self.tokenizer, batch_size, self.source, flag="the batch size")
        dataset = ImageItems(items, ids, self.transform, self.config.image_size, self.config.resize_size)
        batches = -(-len(items) // batch_size)
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=min(num_workers, batches),
                            collate_fn=collate_images, pin_memory=self.device.type == "cuda")
        chunks, kept, skipped = [], [], []
        with eval_mode(self.model), autocast(amp_dtype(self.device, bool(self.config.use_amp))):
            for batch in progress_display(loader, desc="images", unit="batch", disable=not progress):
                if batch["skipped"] and rule == "error":
                    raise BadImageError(batch["skipped"][0].reason)
                skipped += batch["skipped"]
                if batch["pixel_values"] is not None:
                    pixels = batch["pixel_values"].to(self.device, non_blocking=True)
                    chunks.append(self.model.encode_image(pixels).float().cpu())
                    kept += batch["index"]
        for sample in skipped:
            warnings.warn(f"skipped unreadable image: {sample.reason}", BadImageWarning, stacklevel=2)
        dim = self.model.embed_dim
        embeddings = torch.cat(chunks).numpy() if chunks else np.zeros((0, dim), dtype=np.float32)
        return ImageEmbeddings(embeddings, [ids[i] for i in kept], skipped)

    def embed_texts(self, texts: str | Sequence[str], *, batch_size: int | None = None) -> np.ndarray:
        """Embeddings [T, D] of texts, cleaned as training cleaned the reports (clean_report)."""
        self.check_text_input()
        texts = [texts] if isinstance(texts, str) else list(texts)
        return encode_texts(self.model, self.tokenizer, [clean_report(t) for t in texts], self.device,
                            batch_size or self.config.eval_batch_size, amp=bool(self.config.use_amp))

    def classify(self, images, classes: Sequence[str] | None = None, *,
                 prompts: Mapping[str, Sequence[str]] | None = None, mode: str = "mean", **embed_options):
        """Zero-shot probabilities: a pandas DataFrame, one row per readable image (index: its
        id), one column per class, rows summing to 1.

        Each class is scored by the cosine similarity of the image to its prompts (`mode`
        'mean': to the normalised mean prompt embedding, the ensemble of evaluate.py; 'max': the best
        prompt), times the model's logit scale, then softmax over the classes. Classes and
        prompts: see resolve_prompts (default: the five competition classes with MedCLIP's
        vocabulary). `df.attrs` holds 'prompts' (per class) and 'skipped' ([(path, reason)]).
        `embed_options` go to embed_images."""
        import pandas as pd

        class_prompts = resolve_prompts(classes, prompts)
        class_embs = [self.embed_texts(p) for p in class_prompts.values()]
        images_out = self.embed_images(images, **embed_options)
        scores = zero_shot_classify(images_out.embeddings, class_embs, mode).reshape(-1, len(class_prompts))
        probabilities = torch.from_numpy(scores * self.logit_scale).softmax(dim=1).numpy()
        table = pd.DataFrame(probabilities, index=pd.Index(images_out.ids, name="image"), columns=list(class_prompts))
        table.attrs["prompts"] = class_prompts
        table.attrs["skipped"] = [(s.path, s.reason) for s in images_out.skipped]
        return table

    def classify_multilabel(self, images, findings: Sequence[str] | None = None, *,
                            prompts: Mapping[str, Any] | None = None, mode: str = "mean", **embed_options):
        """Per-finding zero-shot probabilities: a DataFrame, one row per readable image, one
        column per finding, each in [0, 1] on its own (rows do not sum to 1).

        A finding's probability is the softmax over its (positive, negative) prompt pair of the
        logit scale times the image's similarity to each side (`mode` 'mean' or 'max' over a side's
        prompts), as `evaluate` scores zero_shot_multilabel. Findings and prompts: see
        resolve_pair_prompts (default: the 14 CheXpert labels). `df.attrs`: 'prompts', 'skipped'."""
        import pandas as pd

        pairs = resolve_pair_prompts(findings, prompts)
        sides = [self.embed_texts(side) for pair in pairs.values() for side in pair]
        images_out = self.embed_images(images, **embed_options)
        scores = zero_shot_classify(images_out.embeddings, sides, mode).reshape(-1, len(pairs), 2)
        probabilities = torch.from_numpy(scores * self.logit_scale).softmax(dim=-1)[..., 0].numpy()
        table = pd.DataFrame(probabilities, index=pd.Index(images_out.ids, name="image"), columns=list(pairs))
        table.attrs["prompts"] = {name: {"positive": p, "negative": n} for name, (p, n) in pairs.items()}
        table.attrs["skipped"] = [(s.path, s.reason) for s in images_out.skipped]
        return table

    def retrieve(self, images, reports: ReportBank | Sequence[str], k: int = 5, *,
                 bank_embeddings: np.ndarray | None = None, **embed_options):
        """The `k` reports of `reports` nearest to each image (cosine similarity of the embeddings):
        a DataFrame with one row per (image, rank): image, rank (1 = nearest), similarity, report,
        source (where the report came from) and copies (records that share its text). `reports`:
        a ReportBank (inference.retrieval.load_report_bank: a dataset file's or a text file's
        reports) or a list of report texts. `bank_embeddings` (embed_texts(bank.texts)) saves
        embedding a large bank again. `df.attrs['skipped']`: unreadable images."""
        import pandas as pd

        bank = reports if isinstance(reports, ReportBank) else report_bank(reports)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise UserError(f"-k: {k!r} is not a whole number of at least 1")
        if bank_embeddings is None:
            bank_embeddings = self.embed_texts(bank.texts)
        elif bank_embeddings.shape != (len(bank), self.model.embed_dim):
            raise UserError(f"bank_embeddings: shape {bank_embeddings.shape}, expected ({len(bank)}, "
                            f"{self.model.embed_dim})")
        images_out = self.embed_images(images, **embed_options)
        order, similarity = nearest_reports(images_out.embeddings, bank_embeddings, k)
        rows = [{"image": image, "rank": rank + 1, "similarity": float(similarity[i, rank]),
                 "report": bank.texts[j], "source": bank.sources[j], "copies": bank.copies[j]}
                for i, image in enumerate(images_out.ids) for rank, j in enumerate(order[i])]
        table = pd.DataFrame(rows, columns=["image", "rank", "similarity", "report", "source", "copies"])
        table.attrs["skipped"] = [(s.path, s.reason) for s in images_out.skipped]
        table.attrs["bank_size"] = len(bank)
        return table


def load_pretrained(path: str | os.PathLike, device: str | torch.device | None = None) -> Pretrained:
    """The model of a training checkpoint (.pth, read with weights_only=True) or of an export
    folder (`python -m medclip_nb export`, read without pickle), with its tokenizer, config and
    evaluation transform, in eval mode on `device` (default: a GPU when there is one). The config
    holds the file's model keys only: batch sizes, workers, the bad-image rule and data paths are
    the defaults until the caller gives its own (model_files.model_config). Relative paths are taken
    from the repository root, as for config keys."""
    source = resolve(path)
    target = device if isinstance(device, torch.device) else pick_device(device, what="device", log=lambda _: None)
    if source.is_dir():
        if not is_export_dir(source):
            raise UserError(f"{source}: a folder, but not a medclip-nb export (no config.json)")
        model, tokenizer, cfg = load_export(source, target)
    else:
        model, tokenizer, stored = load_model(source, target)
        cfg = model_config(stored.to_dict(), source)  # a checkpoint's run-time keys are its run's, not ours
    return Pretrained(model, tokenizer, cfg, build_transforms(cfg, train=False), target, source)


