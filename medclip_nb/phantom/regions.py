"""Where each finding was drawn on a frontal phantom radiograph: its mask, beside the image.

    image, regions = render_with_regions(256, anatomy, findings, rng)   # image: render_chest's bytes

`render_with_regions` draws the same image as `render_chest` (the same draws of `rng`, in the same
order) and returns each drawn finding's region (`MASK_RULE`):

- a finding with a drawer (draw_findings.FINDING_DRAWERS): where its delta of the attenuation map,
  inside the body, exceeds `MASK_THRESHOLD` (2 %) of its largest absolute value;
- a finding that changes the anatomy itself (Cardiomegaly, Enlarged Cardiomediastinum, Pneumothorax,
  the raised hemidiaphragm of a severe atelectasis): where the chest drawn without that finding (same
  anatomy, same random stream) differs from the chest drawn with it by more than 2 % of the largest
  difference (a severe atelectasis: its delta added to that difference).

Masks are computed at the drawing resolution (at most 512 px tall) and resized to the image by nearest
neighbour. A finding whose drawing changes no pixel has no region.
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
from PIL import Image

from medclip_nb.errors import ConfigError
from medclip_nb.phantom.anatomy import Anatomy
from medclip_nb.phantom.findings import Finding
from medclip_nb.phantom.render import (
    MAX_SIZE,
    MIN_SIZE,
    WORKING_MAX_HEIGHT,
    FrontalLayers,
    expose,
    frontal_layers,
    image_width,
    raises_hemidiaphragm,
)

MASK_THRESHOLD = 0.02
ANATOMY_FINDINGS = ("Cardiomegaly", "Enlarged Cardiomediastinum", "Pneumothorax")
MASK_RULE = ("drawn finding: |its delta of the attenuation| inside the body > 0.02 x its maximum; Cardiomegaly, "
             "Enlarged Cardiomediastinum, Pneumothorax, a severe atelectasis (its delta and its raised hemidiaphragm): "
             "|the chest with the finding - the chest without it| inside the body > 0.02 x its maximum; at the drawing "
             "resolution (<= 512 px tall), resized to the image by nearest neighbour")


def changes_anatomy(finding: Finding) -> bool:
    """True for a finding drawn into the chest itself rather than as a delta of it."""
    return finding.label in ANATOMY_FINDINGS or (finding.label == "Atelectasis" and raises_hemidiaphragm(finding))


def above_threshold(change: np.ndarray) -> np.ndarray:
    """Where |change| exceeds MASK_THRESHOLD of its largest value (nothing where it is zero)."""
    magnitude = np.abs(change)
    peak = float(magnitude.max(initial=0.0))
    return magnitude > MASK_THRESHOLD * peak if peak > 0 else np.zeros(change.shape, dtype=bool)


def finding_masks(layers: FrontalLayers, anatomy: Anatomy, findings: Sequence[Finding],
                  rng_before: np.random.Generator) -> list[tuple[Finding, np.ndarray, str]]:
    """(finding, mask at the drawing resolution, how it was drawn: 'delta', 'anatomy' or
    'delta+anatomy') for each finding of `layers` with a non-empty region. `rng_before` is the random
    stream as it was before `layers` were drawn (copied for each chest drawn without a finding)."""
    h, w = layers.base.shape
    masks: dict[int, tuple[Finding, np.ndarray, str]] = {}
    for finding, delta in layers.deltas:
        masks[id(finding)] = (finding, above_threshold(delta * layers.body), "delta")
    deltas = {id(finding): delta for finding, delta in layers.deltas}
    for finding in findings:
        if not changes_anatomy(finding):
            continue
        others = [f for f in findings if f is not finding]
        without = frontal_layers(h, w, anatomy, others, copy.deepcopy(rng_before))
        change = layers.base - without.base + deltas.get(id(finding), 0.0)  # all it changed: one threshold
        drawn = "delta+anatomy" if id(finding) in deltas else "anatomy"
        masks[id(finding)] = (finding, above_threshold(change * layers.body), drawn)
    order = {id(f): i for i, f in enumerate(findings)}
    kept = [entry for entry in masks.values() if entry[1].any()]
    return sorted(kept, key=lambda entry: order[id(entry[0])])


def render_with_regions(size: int, anatomy: Anatomy, findings: Sequence[Finding] = (),
                        rng: np.random.Generator | int = 0) -> tuple[Image.Image, list[dict]]:
    """A frontal radiograph (PA or AP: `anatomy` carries the view) and its findings' regions: the image
    `render_chest(size, anatomy, findings, view, rng)` draws, byte for byte, and for each finding with
    a region {"finding", "mask" (bool, the image's height x width), "drawn", "value", "grade", "sides",
    "zone"} (and "devices" for support devices)."""
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"config key 'phantom_size': {size} is outside {MIN_SIZE}..{MAX_SIZE}")
    rng = np.random.default_rng(rng) if isinstance(rng, (int, np.integer)) else rng
    before = copy.deepcopy(rng)
    work_h = min(size, WORKING_MAX_HEIGHT)
    layers = frontal_layers(work_h, image_width(work_h), anatomy, findings, rng)
    image = expose(layers.attenuation(), size, anatomy, rng)
    regions = []
    for finding, mask, drawn in finding_masks(layers, anatomy, findings, before):
        if mask.shape != (image.height, image.width):
            mask = np.asarray(Image.fromarray(mask).resize(image.size, Image.NEAREST))
        region = {"finding": finding.label, "mask": mask, "drawn": drawn, "value": float(finding.value),
                  "grade": finding.words.get("grade"), "sides": list(finding.sides), "zone": finding.zone}
        if finding.devices:
            region["devices"] = list(finding.devices)
        regions.append(region)
    return image, regions
