"""What `predict`, `retrieve`, `embed` and `export` do: a pretrained model over a user's images or
a whole dataset file, results on stdout / in an .npz file / in an export folder, notes on stderr."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medclip_nb.data import (
    REQUIRED_SPLITS,
    BadImageWarning,
    check_clip_index_rows,
    load_dataset_file,
    make_collate,
    make_loader,
    uses_precomputed_text,
)
from medclip_nb.errors import DataError, UserError, quote
from medclip_nb.evaluate import compute_embeddings, eval_datasets, read_metrics
from medclip_nb.files import check_output, write_atomic
from medclip_nb.inference.heatmaps import heatmap_targets, write_heatmaps
from medclip_nb.inference.images import image_files
from medclip_nb.inference.pretrained import Pretrained, load_pretrained, read_prompts_file
from medclip_nb.inference.retrieval import load_report_bank
from medclip_nb.model import EXPORT_FILES, check_eval_memory, export_checkpoint
from medclip_nb.paths import resolve
from medclip_nb.paths import shown as shown_path


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
    check_eval_memory(cfg, pretrained.tokenizer, cfg.eval_batch_size, pretrained.source)
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
        loader = make_loader(dataset, cfg, train=False, collate_fn=make_collate(pretrained.tokenizer, cfg))
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
        ids = [_study_id(r, cfg.data_path, split, i) for r, i in zip(records, emb["index"])]
        parts["study_id"].append(np.array(ids, dtype=np.int64))
        parts["dicom_id"].append(np.array([str(r.get("dicom_id", "")) for r in records]))
        parts["text_group"].append(emb["text_group"] + group_offset)  # unique across splits
        group_offset += int(emb["text_group"].max()) + 1
        parts["labels"].append(emb["labels"])
    if not parts["image"]:
        raise DataError(f"{resolve(cfg.data_path)}: no readable image in split(s) {', '.join(splits)}")
    return {k: np.concatenate(v) for k, v in parts.items()}


def _study_id(record: Mapping[str, Any], data_path, split: str, index: int) -> int:
    """A record's study_id as the int64 the .npz holds (-1 when absent)."""
    value = record.get("study_id", -1)
    if isinstance(value, np.integer):
        value = int(value)
    if isinstance(value, str) and value.isascii() and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not -2**63 <= value < 2**63:
        raise DataError(f"{data_path}: {split}[{index}]: key 'study_id' {quote(value)} is not an integer id")
    return value


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


def _say_skipped(skipped, given: int, kept: int) -> None:
    """The unreadable images by name; with none readable, one error line giving the first reason."""
    if not kept:
        first = f": {skipped[0][1]}" if skipped else ""
        raise DataError(f"no readable image among the {given} given{first}")
    if skipped:
        _note(f"Skipped {len(skipped)} unreadable image{'s' if len(skipped) != 1 else ''}:")
        for _path, reason in skipped:
            _note(f"  {reason}")


def _embed_options(pretrained: Pretrained, overrides: Mapping[str, Any]) -> dict[str, Any]:
    return dict(batch_size=overrides.get("eval_batch_size"),
                num_workers=int(overrides.get("num_workers", pretrained.config.num_workers)),
                on_bad_image=overrides.get("on_bad_image"), progress=True)


def predict_command(checkpoint, paths, *, classes=None, prompts_file=None, mode="mean", csv=None,
                    multi_label: bool = False, heatmap=None, heatmap_method: str = "similarity", force: bool = False,
                    overrides: Mapping[str, Any] | None = None) -> "Any":
    """`python -m medclip_nb predict`: the probability table on stdout, notes on stderr, the table
    also as CSV with `csv` (an existing file only with `force`, never one of the inputs). 5-way
    (default): one softmax over the classes, with the predicted class. `multi_label`: each finding
    on its own (positive vs negative prompt), with the findings over 0.5. `heatmap`: a folder for
    one overlay PNG per image, the map of each class's text (heatmaps.py; `heatmap_method`
    similarity or gradcam; files there replaced only with `force`). Returns the DataFrame."""
    overrides = dict(overrides or {})
    if mode not in ("mean", "max"):
        raise UserError(f"--mode: {mode!r} is not one of mean, max")
    files = image_files(paths)  # a typo in a path fails before the model is loaded
    if csv:
        check_output(csv, flag="--csv", force=force, inputs=(checkpoint, prompts_file, *files))
    targets = heatmap_targets(heatmap, heatmap_method, files, force) if heatmap else None
    prompts = read_prompts_file(prompts_file, pairs=multi_label) if prompts_file else None
    pretrained = load_pretrained(checkpoint, overrides.get("gpu_id"))
    classify = pretrained.classify_multilabel if multi_label else pretrained.classify
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)  # named below, once each
        table = classify(files, classes, prompts=prompts, mode=mode, **_embed_options(pretrained, overrides))
    _say_skipped(table.attrs["skipped"], len(files), len(table))
    if multi_label:
        shown = table.assign(positive=[", ".join(c for c in table.columns if row[c] > 0.5) or "-"
                                       for _, row in table.iterrows()])
    else:
        shown = table.assign(prediction=table.idxmax(axis=1))
    print(shown.to_string(float_format=lambda v: f"{v:.4f}"))
    if csv:
        _note(f"Saved CSV: {shown_path(write_atomic(csv, shown.to_csv, what='--csv'))}")
    if targets is not None:
        texts = {name: list(p["positive"]) if multi_label else list(p) for name, p in table.attrs["prompts"].items()}
        written = write_heatmaps(pretrained, table, texts, targets, heatmap_method)
        _note(f"Saved {len(written)} {heatmap_method} overlay{'s' if len(written) != 1 else ''} in "
              f"{shown_path(Path(heatmap).expanduser())}/")
    n = len(table)
    how = (f"for {len(table.columns)} findings, each positive vs negative prompt (positive: p > 0.5)" if multi_label
           else f"into {len(table.columns)} classes")
    _note(f"Classified {n} image{'s' if n != 1 else ''} {how} on {pretrained.device}")
    return table


def _short(text: str, width: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def retrieve_command(checkpoint, paths, reports, *, k: int = 5, splits=None, csv=None,
                     overrides: Mapping[str, Any] | None = None, force: bool = False) -> "Any":
    """`python -m medclip_nb retrieve`: for each image, the `k` nearest reports of the bank
    `reports` (a dataset file's `splits`, or a text file) on stdout, cut to one line each; the
    whole reports in the CSV (an existing file only with `force`, never an input). Returns the
    DataFrame."""
    overrides = dict(overrides or {})
    if k < 1:
        raise UserError(f"-k: {k} is not a whole number of at least 1")
    files = image_files(paths)
    if csv:
        check_output(csv, flag="--csv", force=force, inputs=(checkpoint, reports, *files))
    bank = load_report_bank(reports, splits)  # both before the model is loaded
    pretrained = load_pretrained(checkpoint, overrides.get("gpu_id"))
    pretrained.check_text_input()
    _note(f"Embedding {len(bank)} distinct reports of {shown_path(reports)} ...")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BadImageWarning)  # named below, once each
        table = pretrained.retrieve(files, bank, k, **_embed_options(pretrained, overrides))
    _say_skipped(table.attrs["skipped"], len(files), table["image"].nunique() if len(table) else 0)
    for image, rows in table.groupby("image", sort=False):
        print(image)
        for row in rows.itertuples():
            print(f"  {row.rank:>3}  {row.similarity:.4f}  {row.source:<14} {_short(row.report)}")
    if csv:
        _note(f"Saved CSV: {shown_path(write_atomic(csv, lambda p: table.to_csv(p, index=False), what='--csv'))}")
    shown = min(k, len(bank))
    _note(f"The {shown} nearest of {len(bank)} distinct reports (cosine similarity) for "
          f"{table['image'].nunique()} image(s) on {pretrained.device}")
    return table


def export_command(checkpoint, out, *, metrics_file=None, metrics_key=None, force: bool = False) -> Path:
    """`python -m medclip_nb export`: the export folder, with the metrics.json entry `metrics_key`
    (default: the checkpoint's own key, '<run folder>/<file stem>') in its model card; a folder
    holding other files only with `force`."""
    entry = source = None
    if metrics_key and not metrics_file:
        raise UserError("--metrics-key: give the metrics.json it names with --metrics")
    if metrics_file:
        path = Path(metrics_file).expanduser()
        if not path.is_file():
            raise UserError(f"--metrics {path}: no such file")
        data = read_metrics(path)
        ckpt = Path(checkpoint)
        key = metrics_key or f"{ckpt.parent.name}/{ckpt.stem}"
        if not isinstance(data.get(key), dict):
            entries = ", ".join(sorted(data)) or "none"
            raise UserError(f"--metrics-key: {path} has no entry {key!r}; its entries: {entries}")
        entry, source = data[key], f"{path.name}: {key}"
    folder = export_checkpoint(checkpoint, out, metrics=entry, metrics_source=source, force=force)
    written = [name for name in (*EXPORT_FILES, "SHA256SUMS") if (folder / name).is_file()]
    print(f"Exported {shown_path(checkpoint)} to {shown_path(folder)}/ ({', '.join(written)})")
    return folder


def embed_command(checkpoint, data_path, out, *, splits=REQUIRED_SPLITS,
                  overrides: Mapping[str, Any] | None = None, force: bool = False) -> Path:
    """`python -m medclip_nb embed`: embed a dataset file's splits into an .npz file (an
    existing file only with `force`, never one of the inputs)."""
    overrides = dict(overrides or {})
    if Path(out).suffix != ".npz":  # before the model and the images
        raise UserError(f"--out {out}: the embeddings file must end in .npz")
    check_output(out, flag="--out", force=force, inputs=(checkpoint, resolve(data_path)))
    pretrained = load_pretrained(checkpoint, overrides.pop("gpu_id", None))
    arrays = embed_dataset(pretrained, data_path, splits=splits, overrides=overrides, log=_note)
    path = save_embeddings(arrays, out)
    counts = {s: int((arrays["split"] == s).sum()) for s in splits}
    _note(f"Saved {len(arrays['image'])} image and text embeddings of dimension {arrays['image'].shape[1]} "
          f"({', '.join(f'{s}: {n}' for s, n in counts.items())}) to {path}")
    return path
