"""Use a pretrained model: load it, embed images and texts, classify images zero-shot.

    pretrained = load_pretrained("checkpoints/debug/best.pth")     # or an export folder
    probabilities = pretrained.classify(["scan.jpg", "scans/"])      # pandas DataFrame
    images = pretrained.embed_images(["scan.jpg"])                   # .embeddings [N, D], .ids
    texts = pretrained.embed_texts(["small left pleural effusion"])  # [T, D]

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
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from medclip_nb.data import (
    REQUIRED_SPLITS,
    BadImageError,
    BadImageWarning,
    SkippedSample,
    build_transforms,
    check_clip_index_rows,
    load_dataset_file,
    load_grayscale,
    make_collate,
    make_loader,
    pil_to_grayscale,
    uses_precomputed_text,
)
from medclip_nb.errors import DataError, UserError
from medclip_nb.evaluate import compute_embeddings, encode_texts, eval_datasets, model_logit_scale, zero_shot_classify
from medclip_nb.files import write_atomic
from medclip_nb.labels import COMPETITION_TASKS, PROMPT_VOCABULARY
from medclip_nb.model.checkpoint import load_model
from medclip_nb.model.export import is_export_dir, load_export
from medclip_nb.paths import resolve
from medclip_nb.progress import progress as progress_display
from medclip_nb.prompts import finding_phrase, generate_prompts
from medclip_nb.runtime import amp_dtype, autocast, eval_mode, pick_device
from medclip_nb.text.clean import clean_report

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


# ---- inputs ---------------------------------------------------------------------------------------
def image_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files and folders -> image files: a file as given, a folder as the files under it
    (recursively, sorted) whose suffix is one of IMAGE_SUFFIXES. A path that does not exist or
    a folder without images is a UserError; relative paths are taken from the current folder."""
    files: list[Path] = []
    for item in paths:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise UserError(f"{path}: folder holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise UserError(f"{path}: no such file or folder")
    return files


def _image_items(images) -> tuple[list[Any], list[str]]:
    """One entry per image (a float batch tensor becomes B entries) and an id for each: the
    file path, a PIL image's filename, else 'image_<position>'."""
    if isinstance(images, (str, os.PathLike, Image.Image, torch.Tensor)):
        images = [images]
    items: list[Any] = []
    for image in images:
        if isinstance(image, torch.Tensor) and image.is_floating_point() and image.ndim == 4:
            items.extend(image.unbind(0))
        elif isinstance(image, (str, os.PathLike)):
            items.extend(image_files([image]))
        elif isinstance(image, (Image.Image, torch.Tensor)):
            items.append(image)
        else:
            raise TypeError(f"images: expected paths, PIL images or tensors, got {type(image).__name__}")
    ids = [str(item) if isinstance(item, Path) else (getattr(item, "filename", "") or f"image_{i}")
           for i, item in enumerate(items)]
    return items, ids


class _ImageItems(Dataset):
    """Paths, PIL images and tensors as model input; an unreadable file gives a SkippedSample
    (the caller applies on_bad_image, so a worker never raises)."""

    def __init__(self, items: Sequence[Any], ids: Sequence[str], transform, image_size: int, resize_size: int):
        self.items, self.ids, self.transform = items, ids, transform
        self.image_size, self.resize_size = image_size, resize_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any] | SkippedSample:
        try:
            return {"pixel_values": self._pixels(self.items[i], self.ids[i]), "index": i}
        except BadImageError as exc:
            return SkippedSample(path=self.ids[i], reason=str(exc))

    def _pixels(self, item, name: str) -> torch.Tensor:
        if isinstance(item, Path):
            gray = torch.from_numpy(load_grayscale(item, draft_size=self.resize_size))
        elif isinstance(item, Image.Image):
            gray = torch.from_numpy(pil_to_grayscale(item, name))
        elif item.is_floating_point():  # already the eval transform's output
            expected = (3, self.image_size, self.image_size)
            if tuple(item.shape) != expected:
                raise ValueError(f"{name}: a float tensor must be a transformed image {expected}, got "
                                 f"{tuple(item.shape)}")
            return item.float()
        elif item.dtype == torch.uint8 and item.ndim in (2, 3):
            gray = item if item.ndim == 2 else item[0] if item.shape[0] == 1 else None
            if gray is None and item.shape[0] == 3:
                from torchvision.transforms.v2.functional import rgb_to_grayscale

                gray = rgb_to_grayscale(item)[0]
            if gray is None:
                raise ValueError(f"{name}: a uint8 tensor must be [H, W], [1, H, W] or [3, H, W], got "
                                 f"{tuple(item.shape)}")
        else:
            raise ValueError(f"{name}: tensor of dtype {item.dtype} and shape {tuple(item.shape)} is not an image")
        return self.transform(gray.contiguous().unsqueeze(0))


def _collate_images(samples: list) -> dict[str, Any]:
    kept = [s for s in samples if isinstance(s, dict)]
    return {
        "pixel_values": torch.stack([s["pixel_values"] for s in kept]) if kept else None,
        "index": [s["index"] for s in kept],
        "skipped": [s for s in samples if isinstance(s, SkippedSample)],
    }


# ---- prompts --------------------------------------------------------------------------------------
def resolve_prompts(classes: Sequence[str] | None = None,
                    prompts: Mapping[str, Sequence[str]] | None = None) -> dict[str, list[str]]:
    """{class: prompts}: `prompts[class]` where given, else every MedCLIP vocabulary prompt of
    the class (the five competition classes), else the class's finding phrase ("Pneumothorax"
    -> "pneumothorax"). `classes` defaults to the keys of `prompts`, else the five classes."""
    prompts = dict(prompts or {})
    if classes is None:
        classes = list(prompts) or list(COMPETITION_TASKS)
    if isinstance(classes, str):
        raise UserError(f"classes: give a list of class names, not the one string {classes!r}")
    classes = list(dict.fromkeys(str(c).strip() for c in classes if str(c).strip()))
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


def read_prompts_file(path: str | os.PathLike) -> dict[str, list[str]]:
    """A YAML or JSON file mapping each class name to a list of prompts."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"--prompts {path}: cannot be read ({e.strerror or type(e).__name__})") from None
    except yaml.YAMLError:
        raise UserError(f"--prompts {path}: not valid YAML or JSON") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise UserError(f"--prompts {path}: must map each class name to a list of prompts")
    return {str(k): [str(p) for p in v] for k, v in data.items()}


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

    def embed_images(self, images, *, batch_size: int | None = None, num_workers: int = 0,
                     on_bad_image: str | None = None, progress: bool = False) -> ImageEmbeddings:
        """Embeddings of images (see the module docstring for the inputs), `batch_size`
        (default: the config's eval_batch_size) at a time, files decoded by `num_workers`
        loader processes. `on_bad_image` ('skip' | 'error', default the config's)."""
        rule = on_bad_image or self.config.on_bad_image
        if rule not in ("skip", "error"):
            raise UserError(f"on_bad_image: {rule!r} is not one of skip, error")
        items, ids = _image_items(images)
        dataset = _ImageItems(items, ids, self.transform, self.config.image_size, self.config.resize_size)
        loader = DataLoader(dataset, batch_size=batch_size or self.config.eval_batch_size, num_workers=num_workers,
                            collate_fn=_collate_images, pin_memory=self.device.type == "cuda")
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
        if self.config.model != "simple" and self.config.text_encoder == "precomputed":
            raise UserError("text_encoder 'precomputed' reads stored report features; it cannot embed new text")
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


def load_pretrained(path: str | os.PathLike, device: str | torch.device | None = None) -> Pretrained:
    """The model of a training checkpoint (.pth, read with weights_only=True) or of an export
    folder (`python -m medclip_nb export`, read without pickle), with its tokenizer, config and
    evaluation transform, in eval mode on `device` (default: a GPU when there is one).
    Relative paths are taken from the repository root, as for config keys."""
    source = resolve(path)
    target = device if isinstance(device, torch.device) else pick_device(device, what="device", log=lambda _: None)
    if source.is_dir():
        if not is_export_dir(source):
            raise UserError(f"{source}: a folder, but not a medclip-nb export (no config.json)")
        model, tokenizer, cfg = load_export(source, target)
    else:
        model, tokenizer, cfg = load_model(source, target)
    return Pretrained(model, tokenizer, cfg, build_transforms(cfg, train=False), target, source)


# ---- a whole dataset ----------------------------------------------------------------------------------
def embed_dataset(pretrained: Pretrained, data_path: str | os.PathLike, *, splits: Sequence[str] = REQUIRED_SPLITS,
                  overrides: Mapping[str, Any] | None = None, progress: bool = True, log=print) -> dict[str,
                                                                                                        np.ndarray]:
    """Image and report embeddings of every record of `splits` of a dataset file, as arrays
    aligned by row: image, text [N, D] float32 (text: the record's whole cleaned report),
    split, index (row in its split), image_path, study_id (-1 when absent), dicom_id ('' when
    absent), text_group (rows with equal ids have the same report text), labels [N, 14].
    Unreadable images are skipped (on_bad_image 'skip') and logged by name. `overrides`: config
    keys such as image_root, image_store, eval_batch_size, num_workers, on_bad_image."""
    cfg = pretrained.config.replace(data_path=str(data_path), debug=False, **dict(overrides or {}))
    unknown = [s for s in splits if s not in REQUIRED_SPLITS]
    if unknown or not splits:
        first = unknown[0] if unknown else "nothing"
        raise UserError(f"--splits: {first!r} is not one of {', '.join(REQUIRED_SPLITS)}")
    datasets, dataset_warnings = eval_datasets(cfg, pretrained.tokenizer)
    for warning in dataset_warnings:
        log(f"warning: {warning}")
    if uses_precomputed_text(cfg):
        check_clip_index_rows(datasets, pretrained.model.text_encoder, resolve(cfg.data_path))
    # The datasets hold only what the loader needs (records.SampleRecords); ids come from the file.
    source_records = load_dataset_file(resolve(cfg.data_path))
    parts: dict[str, list] = {k: [] for k in ("image", "text", "split", "index", "image_path", "study_id",
                                              "dicom_id", "text_group", "labels")}
    group_offset = 0
    for split in splits:
        dataset = datasets[split]
        if len(dataset) == 0:
            continue
        loader = make_loader(dataset, cfg, train=False, collate_fn=make_collate(pretrained.tokenizer))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", BadImageWarning)  # named below, once each
            emb = compute_embeddings(pretrained.model, loader, pretrained.device, amp=bool(cfg.use_amp),
                                     progress_desc=None if not progress else f"embed {split}")
        if emb["n_skipped"]:
            log(f"Skipped {emb['n_skipped']} unreadable images in split '{split}': {', '.join(emb['skipped_paths'])}")
        records = [source_records[split][i] for i in emb["index"]]
        parts["image"].append(emb["image"])
        parts["text"].append(emb["text"])
        parts["split"].append(np.full(len(records), split))
        parts["index"].append(emb["index"])
        parts["image_path"].append(np.array([str(r["image_path"]) for r in records]))
        parts["study_id"].append(np.array([int(r.get("study_id", -1)) for r in records], dtype=np.int64))
        parts["dicom_id"].append(np.array([str(r.get("dicom_id", "")) for r in records]))
        parts["text_group"].append(emb["text_group"] + group_offset)  # unique across splits
        group_offset += int(emb["text_group"].max()) + 1
        parts["labels"].append(emb["labels"])
    if not parts["image"]:
        raise DataError(f"{resolve(cfg.data_path)}: no readable image in split(s) {', '.join(splits)}")
    return {k: np.concatenate(v) for k, v in parts.items()}


def save_embeddings(arrays: Mapping[str, np.ndarray], out: str | os.PathLike) -> Path:
    """Write arrays to an .npz file (readable with np.load(allow_pickle=False)), atomically."""
    out = Path(out)
    if out.suffix != ".npz":
        raise UserError(f"--out {out}: the embeddings file must end in .npz")

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add '.npz' to a path
            np.savez(f, **arrays)

    return write_atomic(out, write, what="--out")


# ---- command-line entry points --------------------------------------------------------------------------
def _note(message: str) -> None:
    print(message, file=sys.stderr)


def predict_command(checkpoint, paths, *, classes=None, prompts_file=None, mode="mean", csv=None,
                    overrides: Mapping[str, Any] | None = None) -> "Any":
    """`python -m medclip_nb predict`: the probability table on stdout (with the predicted
    class), notes on stderr, the table also as CSV with `csv`. Returns the DataFrame."""
    overrides = dict(overrides or {})
    if mode not in ("mean", "max"):
        raise UserError(f"--mode: {mode!r} is not one of mean, max")
    files = image_files(paths)  # a typo in a path fails before the model is loaded
    pretrained = load_pretrained(checkpoint, overrides.get("gpu_id"))
    prompts = read_prompts_file(prompts_file) if prompts_file else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)  # named below, once each
        table = pretrained.classify(
            files, classes, prompts=prompts, mode=mode, batch_size=overrides.get("eval_batch_size"),
            num_workers=int(overrides.get("num_workers", pretrained.config.num_workers)),
            on_bad_image=overrides.get("on_bad_image"),
            progress=True,
        )
    skipped = table.attrs["skipped"]
    if skipped:
        _note(f"Skipped {len(skipped)} unreadable image{'s' if len(skipped) != 1 else ''}:")
        for _path, reason in skipped:
            _note(f"  {reason}")
    if table.empty:
        raise DataError(f"no readable image among the {len(files)} given")
    shown = table.assign(prediction=table.idxmax(axis=1))
    print(shown.to_string(float_format=lambda v: f"{v:.4f}"))
    if csv:
        _note(f"Saved CSV: {write_atomic(csv, shown.to_csv, what='--csv')}")
    _note(f"Classified {len(table)} image{'s' if len(table) != 1 else ''} into {len(table.columns)} classes "
          f"on {pretrained.device}")
    return table


def embed_command(checkpoint, data_path, out, *, splits=REQUIRED_SPLITS,
                  overrides: Mapping[str, Any] | None = None) -> Path:
    """`python -m medclip_nb embed`: embed a dataset file's splits into an .npz file."""
    overrides = dict(overrides or {})
    if Path(out).suffix != ".npz":  # before the model and the images
        raise UserError(f"--out {out}: the embeddings file must end in .npz")
    pretrained = load_pretrained(checkpoint, overrides.pop("gpu_id", None))
    arrays = embed_dataset(pretrained, data_path, splits=splits, overrides=overrides, log=_note)
    path = save_embeddings(arrays, out)
    counts = {s: int((arrays["split"] == s).sum()) for s in splits}
    _note(f"Saved {len(arrays['image'])} image and text embeddings of dimension {arrays['image'].shape[1]} "
          f"({', '.join(f'{s}: {n}' for s, n in counts.items())}) to {path}")
    return path
