"""Localisation: do a model's maps for a finding's text fall where the finding is?

For test images with finding regions (the phantom's region files, carried by `prepare` as each
record's `regions`; or a CSV of boxes, config key `localisation_boxes`), each (image, finding) pair is
scored: the map of the finding's text over the model's input (model/maps.py: `similarity` and/or
`gradcam`, config key `localisation_maps`) against the region placed on that input
(data.regions.mask_on_input). The scores count only the image's own pixels on the input (not the padding
that makes it square: a map peaking in the padding is judged by where it peaks on the image). Three
scores per pair:

- pointing game: 1 when the map's maximum lies inside the region (ties: the share of the tied maximal
  pixels inside it); chance is the region's share of the image;
- CNR, as MS-CXR reports it: |mean inside - mean outside| / sqrt(var inside + var outside) of the map
  (undefined, left out, for a map constant on both sides but different between them); a map that does
  not tell inside from outside scores about 0 (unsigned: a map lower inside scores as high as one higher);
- IoU of the thresholded map: the map thresholded to keep as many pixels as the region has (so the
  score does not depend on the map's scale or a chosen threshold) against the region; chance for a
  region of share a is a / (2 - a).

Each score is a mean over pairs with its 95 % bootstrap interval over patients (intervals.py), per
finding and over all pairs. The text of a pair is the finding's phrase (prompts.finding_phrase:
"pleural effusion"), or the box table's own text (MS-CXR's phrases). `localisation_images` test images
with at least one region are scored (a seeded subset: the same images for every model of a study).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from medclip_nb.data import BadImageError, SkippedSample, image_key, mask_on_input, read_box_table, read_regions_file
from medclip_nb.errors import DataError
from medclip_nb.evaluate.embeddings import encode_texts
from medclip_nb.evaluate.intervals import mean_interval
from medclip_nb.model import text_to_region_maps
from medclip_nb.paths import resolve
from medclip_nb.prompts import finding_phrase

SCORES = ("pointing_game", "cnr", "iou")
EXAMPLES_PER_FINDING = 2  # maps kept for notebook 04's grid


# ---- the scores of one map against one region -----------------------------------------------------------
def pointing_game(heatmap: np.ndarray, mask: np.ndarray, area: np.ndarray | None = None) -> float:
    """1.0 when the map's maximum (over `area`, default everywhere) lies in the region, 0.0 when not;
    with ties, the share of the maximal pixels that lie in it (a flat map scores the region's share of
    the area: chance)."""
    area = np.ones(mask.shape, dtype=bool) if area is None else area
    top = area & (heatmap >= heatmap[area].max())
    return float((top & mask).sum() / top.sum())


def contrast_to_noise(heatmap: np.ndarray, mask: np.ndarray, area: np.ndarray | None = None) -> float:
    """|mean inside - mean outside| / sqrt(var inside + var outside) (MS-CXR's CNR), outside = the rest of
    `area` (default everywhere); NaN when the region or its outside is empty, or both sides are constant
    and differ."""
    area = np.ones(mask.shape, dtype=bool) if area is None else area
    inside, outside = heatmap[mask & area], heatmap[area & ~mask]
    if not len(inside) or not len(outside):
        return float("nan")
    contrast = abs(float(inside.mean()) - float(outside.mean()))
    noise = float(np.sqrt(inside.var() + outside.var()))
    if noise == 0:
        return 0.0 if contrast == 0 else float("nan")
    return contrast / noise


def area_iou(heatmap: np.ndarray, mask: np.ndarray, area: np.ndarray | None = None) -> float:
    """IoU of the region and the map thresholded at its k-th largest value over `area` (default
    everywhere), k = the region's pixels (ties at the threshold are kept)."""
    area = np.ones(mask.shape, dtype=bool) if area is None else area
    mask = mask & area
    k = int(mask.sum())
    if k == 0:
        return float("nan")
    flat = heatmap[area]
    threshold = np.partition(flat, flat.size - k)[flat.size - k]
    chosen = area & (heatmap >= threshold)
    return float((chosen & mask).sum() / (chosen | mask).sum())


def score_map(heatmap: np.ndarray, mask: np.ndarray, area: np.ndarray | None = None) -> dict[str, float]:
    return {"pointing_game": pointing_game(heatmap, mask, area), "cnr": contrast_to_noise(heatmap, mask, area),
            "iou": area_iou(heatmap, mask, area)}


# ---- the (image, finding) pairs ---------------------------------------------------------------------------
@dataclass
class LocalisationPairs:
    """The scored pairs of a test split: dataset row, finding, text and region on the model's input."""

    source: str
    rows: list[int] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    masks: list[np.ndarray] = field(default_factory=list)
    areas: list[np.ndarray] = field(default_factory=list)  # the image's own pixels on the input (not padding)
    images: int = 0

    def __len__(self) -> int:
        return len(self.rows)


def _region_lookup(dataset, cfg) -> tuple[str, list[int], Callable[[int], list]]:
    """(what the regions are, the dataset rows that have some, row -> [(region, (width, height))])."""
    records = dataset.records
    if cfg.localisation_boxes:
        path = resolve(cfg.localisation_boxes)
        table = read_box_table(path)
        keys = [image_key(records.image_path(i)) for i in range(len(records))]
        seen: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key in table and seen.setdefault(key, i) != i:
                raise DataError(f"localisation_boxes {path}: two test images are named {key!r}; a box table "
                                f"finds images by file name without extension")
        rows = [i for i, key in enumerate(keys) if key in table]

        def boxes(row: int) -> list:
            with Image.open(dataset.image_file(row)) as image:  # the header only: the boxes' pixel frame
                size = image.size
            return [(region, size) for region in table[keys[row]]]
        return f"box table {path}", rows, boxes

    rows = [i for i in range(len(records)) if records.regions(i)]

    def region_file(row: int) -> list:
        path = Path(records.regions(row))  # taken from the image root as the record's image_path is
        size, regions = read_regions_file(path if path.is_absolute() or dataset.root is None else dataset.root / path)
        # the phantom's uncertain (-1) findings are drawn subtle and stated hedged: not scored
        return [(region, size) for region in regions if (region.info or {}).get("value", 1.0) > 0]
    return "the phantom's finding regions (each record's regions file)", rows, region_file


def localisation_pairs(dataset, cfg, seed: int = 0) -> LocalisationPairs | str:
    """Up to `cfg.localisation_images` test images with regions, in a seeded order, and their pairs; a
    string saying why there are none."""
    if not hasattr(dataset, "records") or not hasattr(dataset, "image_file"):
        return "the test split is not a dataset of records"
    source, rows, regions_of = _region_lookup(dataset, cfg)
    if not rows:
        return f"no test image has finding regions ({source})"
    pairs = LocalisationPairs(source)
    for row in np.random.default_rng(seed).permutation(rows).tolist():
        if pairs.images >= cfg.localisation_images:
            break
        try:
            found = regions_of(row)
        except (OSError, BadImageError):
            continue  # an unreadable image is skipped here as the evaluation skips it
        added = 0
        for region, (width, height) in found:
            mask = mask_on_input(region.pixels(width, height), cfg.resize_size, cfg.image_size)
            area = mask_on_input(np.ones((height, width), dtype=bool), cfg.resize_size, cfg.image_size)
            mask &= area
            if mask.any() and not mask[area].all():
                pairs.rows.append(row)
                pairs.findings.append(region.finding)
                pairs.texts.append(region.text or finding_phrase(region.finding))
                pairs.masks.append(mask)
                pairs.areas.append(area)
                added += 1
        pairs.images += added > 0
    return pairs if len(pairs) else f"no finding region lies on the model's input ({source})"


# ---- scoring a model --------------------------------------------------------------------------------------
def score_pairs(model: torch.nn.Module, tokenizer, dataset, pairs: LocalisationPairs, cfg, device,
                ) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray, list[dict]]:
    """({method: {score: values per pair}}, the pairs scored (a bool per pair: its image was readable),
    a few examples with their maps for figures)."""
    texts = sorted(set(pairs.texts))
    embeds = torch.from_numpy(encode_texts(model, tokenizer, texts, device, cfg.eval_batch_size, amp=False))
    text_index = {text: i for i, text in enumerate(texts)}
    methods = list(cfg.localisation_maps)
    scores = {m: {s: np.full(len(pairs), np.nan) for s in SCORES} for m in methods}
    readable = np.zeros(len(pairs), dtype=bool)
    examples: list[dict] = []
    shown: dict[str, int] = {}
    for start in range(0, len(pairs), cfg.eval_batch_size):
        rows = {j: pairs.rows[j] for j in range(start, min(start + cfg.eval_batch_size, len(pairs)))}
        loaded = {row: dataset[row] for row in set(rows.values())}  # an image's pairs share one decode
        samples = {j: loaded[row] for j, row in rows.items()}
        batch = [j for j, sample in samples.items() if not isinstance(sample, SkippedSample)]
        if not batch:
            continue
        readable[batch] = True
        pixels = torch.stack([samples[j]["pixel_values"] for j in batch]).to(device)
        text = embeds[[text_index[pairs.texts[j]] for j in batch]].to(device)
        maps = {m: text_to_region_maps(model, pixels, text, m).float().cpu().numpy() for m in methods}
        for k, j in enumerate(batch):
            for method in methods:
                for name, value in score_map(maps[method][k], pairs.masks[j], pairs.areas[j]).items():
                    scores[method][name][j] = value
            if shown.get(pairs.findings[j], 0) < EXAMPLES_PER_FINDING:
                shown[pairs.findings[j]] = shown.get(pairs.findings[j], 0) + 1
                examples.append({"finding": pairs.findings[j], "text": pairs.texts[j], "row": pairs.rows[j],
                                 "image": pixels[k, 0].float().cpu().numpy(), "mask": pairs.masks[j],
                                 "maps": {m: maps[m][k] for m in methods}})
    return scores, readable, examples


def pair_groups(dataset, pairs: LocalisationPairs) -> np.ndarray:
    """The patient of each pair (the bootstrap's unit); an image whose record names none is its own."""
    rows = np.asarray(pairs.rows, dtype=np.int64)
    subjects = dataset.records.subject_ids()[rows]
    return np.where(subjects >= 0, subjects, 2**62 + rows)


def summarise(values: dict[str, np.ndarray], shares: np.ndarray, keep: np.ndarray, groups: np.ndarray,
              seed: int) -> dict[str, Any]:
    """Mean and patient-level interval of each score over the pairs `keep`, with the chance levels
    (`shares`: each pair's region as a share of its image)."""
    share = shares[keep]
    entry: dict[str, Any] = {"n": int(keep.sum()), "patients": int(len(np.unique(groups[keep]))),
                             "chance_pointing_game": float(share.mean()),
                             "chance_iou": float((share / (2 - share)).mean())}
    for name in SCORES:
        column = values[name][keep]
        defined = np.isfinite(column)
        entry[name] = float(column[defined].mean()) if defined.any() else None
        entry[f"{name}_ci"] = mean_interval(column[defined], groups=groups[keep][defined], seed=seed)
    return entry


def localisation_entry(scores, readable: np.ndarray, pairs: LocalisationPairs, groups: np.ndarray,
                       seed: int) -> dict[str, Any]:
    """The metrics.json entry: per map method, all pairs and each finding."""
    findings = np.array(pairs.findings)
    entry: dict[str, Any] = {
        "source": pairs.source, "images": int(len(set(np.array(pairs.rows)[readable]))), "pairs": int(readable.sum()),
        "text": "the finding's phrase (prompts.finding_phrase), or the box table's text",
        "scores": {"pointing_game": "map maximum inside the region (chance: the region's share of the image)",
                   "cnr": "|mean in - mean out| / sqrt(var in + var out) of the map (MS-CXR)",
                   "iou": "IoU of the map's top-k pixels, k = the region's pixels (chance a / (2 - a))",
                   "area": "the image's own pixels on the model's input (the padding to a square is left out)"},
    }
    shares = np.array([m.sum() / a.sum() for m, a in zip(pairs.masks, pairs.areas)])
    for method, values in scores.items():
        per_finding = {name: summarise(values, shares, readable & (findings == name), groups, seed)
                       for name in sorted(set(pairs.findings)) if (readable & (findings == name)).any()}
        entry[method] = {"all": summarise(values, shares, readable, groups, seed), "per_finding": per_finding}
    return entry
