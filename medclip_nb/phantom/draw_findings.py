"""The findings on a frontal phantom radiograph: one drawer per finding, each returning its own
change of the attenuation map (a delta map) of the drawn chest.

    delta = FINDING_DRAWERS[f.label](f, scene)     # scene.base: the chest before any finding

Every drawer reads the chest before the findings (`FrontalScene.base`), never another finding's
delta, so each finding's contribution is separable: the image is the base plus the sum of the
deltas (render.frontal_layers returns them one by one), and a finding's mask is where its delta
is non-zero (e.g. `delta > 0.02 * delta.max()`). `strength` scales a finding's contrast: subtle
and uncertain (-1) findings show faintly, down to the noise of the image. Every drawer keeps its
own order of random draws: the drawers run in the order of the study's findings, so the bytes of
an image depend on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from medclip_nb.phantom.anatomy import Anatomy
from medclip_nb.phantom.canvas import (
    Canvas,
    Hemithorax,
    blob_patch,
    lung_point,
    segment_distance,
    soft_step,
    zone_height,
)
from medclip_nb.phantom.findings import Finding


@dataclass
class FrontalScene:
    """What the finding drawers see of a drawn frontal chest."""

    c: Canvas
    a: Anatomy
    sides: dict[str, Hemithorax]  # "right" / "left"
    medium: np.ndarray  # smooth noise of the lung markings, reused for mottle and wobble
    fine: np.ndarray
    ridges: np.ndarray  # vessel ridges, thickened by interstitial edema
    behind: np.ndarray  # opacities behind the heart show less
    heart_centre: tuple[float, float]
    rng: np.random.Generator
    base: np.ndarray  # the attenuation of the chest before any finding


def _draw_pleural_effusion(f: Finding, sc: FrontalScene) -> np.ndarray:
    """Homogeneous basal fluid with a meniscus (or a subpulmonic dome), one or both sides."""
    c, k = sc.c, f.strength
    delta = np.zeros_like(sc.base)
    for s in f.sides:
        hemi = sc.sides[s]
        span = hemi.base - hemi.apex
        q = np.clip((hemi.u - hemi.medial) / (hemi.lateral - hemi.medial + 1e-6), 0.0, 1.0)
        if f.zone == "subpulmonic":  # fluid under the lung: a raised, laterally peaked "dome"
            top = hemi.base - f.extent * span * (0.5 + 0.5 * np.sqrt(q))
        else:  # meniscus: the fluid climbs the lateral chest wall
            top = hemi.base - f.extent * span * (0.62 + 0.38 * q ** 2)
        depth = np.clip((c.y - top) / (f.extent * span + 1e-6), 0.0, 1.0)
        fluid = (soft_step(c.y - top, 0.03) * soft_step(hemi.lateral + 0.012 - hemi.u, 0.015)
                 * soft_step(hemi.u - hemi.medial + 0.015, 0.015) * soft_step(hemi.base + 0.03 - c.y, 0.03))
        density = 0.52 + 0.1 * depth  # no denser than the abdomen: the dome vanishes into it
        delta += fluid * k * (density - sc.base).clip(0.0, None)
    return delta


def _draw_edema(f: Finding, sc: FrontalScene) -> np.ndarray:
    """Bilateral perihilar "bat-wing" haze, reticular markings and Kerley B lines."""
    c, a, k, m = sc.c, sc.a, f.strength, sc.c.mid
    delta = np.zeros_like(sc.base)
    for s in f.sides:
        hemi = sc.sides[s]
        wx = m + hemi.sign * (a.mediastinum + 0.05)
        wing = np.exp(-(((c.x - wx) / 0.14) ** 2 + ((c.y - (a.hilum + 0.04)) / 0.19) ** 2))
        kerley_zone = soft_step(hemi.u - (hemi.lateral - 0.045), 0.02) * soft_step(c.y - (hemi.base - 0.17), 0.03)
        kerley = (0.5 + 0.5 * np.cos(c.y * (2 * math.pi / 0.018) + 2.0 * sc.medium)) ** 10 * kerley_zone
        reticular = sc.ridges * (0.07 if f.words.get("interstitial") else 0.035)
        haze = 0.42 * wing * (1.0 + 0.25 * sc.medium) + 0.05 + reticular + 0.14 * kerley
        delta += hemi.lung * sc.behind * k * haze
    return delta


def _draw_consolidation(f: Finding, sc: FrontalScene) -> np.ndarray:
    """A dense mottled lobar patch with air bronchograms, its radius `extent`."""
    c, a, k, rng = sc.c, sc.a, f.strength, sc.rng
    delta = np.zeros_like(sc.base)
    m, lx = c.mid, a.half_width
    for s in f.sides:
        hemi = sc.sides[s]
        t0 = zone_height(f.zone) + float(rng.uniform(-0.04, 0.04))
        u0 = 0.45 if f.zone == "retrocardiac" else float(rng.uniform(0.5, 0.66))
        cx, cy = lung_point(c, hemi, lx, t0, u0)
        radius = (f.extent or 0.11) * (0.85 if f.subtype == "partial consolidation" else 1.0)
        patch = blob_patch(c, rng, cx, cy, radius, 7) * hemi.lung
        if s == "right" and f.zone == "upper":  # the minor fissure gives a sharp lower edge
            patch *= soft_step(hemi.apex + 0.45 * (hemi.base - hemi.apex) - c.y, 0.006)
        grain = np.abs(sc.fine) if "reticular" in f.subtype else 0.5 * sc.medium
        bronchi = np.zeros_like(c.x)
        for _ in range(3):  # air bronchograms: dark branches inside the patch
            ang = float(rng.uniform(-0.6, 0.6))
            ex, ey = cx + hemi.sign * 0.08 * math.cos(ang), cy + 0.08 * math.sin(ang)
            d = segment_distance(c, m + hemi.sign * (a.mediastinum + 0.03), a.hilum, ex, ey)
            bronchi = np.maximum(bronchi, soft_step(0.004 - d, 0.003))
        delta += k * patch * sc.behind * (0.5 * (0.8 + 0.35 * grain) - 0.2 * bronchi)
    return delta


def _draw_atelectasis(f: Finding, sc: FrontalScene) -> np.ndarray:
    """Thin plate-like bands, `extent` of the hemithorax's width long (the hemidiaphragm of a
    severe one was raised when the chest was drawn)."""
    c, k, rng, lx = sc.c, f.strength, sc.rng, sc.a.half_width
    delta = np.zeros_like(sc.base)
    for s in f.sides:
        hemi = sc.sides[s]
        n_bands = 1 if f.zone == "retrocardiac" else 2 + int(rng.random() < 0.4)
        t0 = zone_height(f.zone) + float(rng.uniform(-0.03, 0.03))
        u0 = 0.5 if f.zone == "retrocardiac" else float(rng.uniform(0.45, 0.6))
        cx, cy = lung_point(c, hemi, lx, t0, u0)
        if f.zone in ("base", "retrocardiac", "lower"):
            cy = min(cy, hemi.base - 0.1)
        ang = math.radians(float(rng.uniform(-14, 14))) * hemi.sign
        length = lx * (f.extent or float(rng.uniform(0.55, 0.7))) * (0.85 if "trace" in f.subtype else 1.0)
        thick = 0.022 + 0.012 * k
        bend = float(rng.uniform(-1.5, 1.5))
        for b in range(n_bands):
            by = cy + (b - 0.5 * (n_bands - 1)) * 0.05
            along = (c.x - cx) * math.cos(ang) + (c.y - by) * math.sin(ang)
            perp = -(c.x - cx) * math.sin(ang) + (c.y - by) * math.cos(ang) - bend * along * along
            taper = np.sqrt(np.clip(1.0 - (2.0 * along / length) ** 2, 0.0, 1.0))
            band = soft_step(0.5 * thick * taper - np.abs(perp), 0.005)
            halo = np.exp(-(perp / 0.02) ** 2) * taper  # the collapsed lung around the plate
            delta += k * (0.45 * band + 0.07 * halo) * hemi.lung * sc.behind * (0.85 + 0.3 * sc.medium)
    return delta


def _draw_lung_lesion(f: Finding, sc: FrontalScene) -> np.ndarray:
    """A lobulated round nodule or mass, its diameter in cm of a thorax about 28 cm wide."""
    c, k, rng, lx = sc.c, f.strength, sc.rng, sc.a.half_width
    hemi = sc.sides[f.sides[0]]
    t0 = zone_height(f.zone) + float(rng.uniform(-0.05, 0.05))
    cx, cy = lung_point(c, hemi, lx, t0, float(rng.uniform(0.4, 0.75)))
    radius = 0.5 * f.extent * (2.0 * lx / 28.0)  # the thorax is about 28 cm wide
    d = np.hypot(c.x - cx, c.y - cy)
    lobulation = 1.0 + 0.1 * np.cos(5.0 * np.arctan2(c.y - cy, c.x - cx) + float(rng.uniform(0, 6.3)))
    return 0.42 * k * soft_step(radius * lobulation - d, 0.006)


def _draw_support_devices(f: Finding, sc: FrontalScene) -> np.ndarray:
    """Radiopaque tubes, lines and leads."""
    return 0.65 * _device_layer(sc.c, sc.a, f.devices, f.words, sc.heart_centre, sc.rng)


# Findings without a drawer here (Cardiomegaly, Enlarged Cardiomediastinum, Pneumothorax)
# change the anatomy itself: the heart, the mediastinum, the lung's rim.
FINDING_DRAWERS: dict[str, Callable[[Finding, FrontalScene], np.ndarray]] = {
    "Pleural Effusion": _draw_pleural_effusion,
    "Edema": _draw_edema,
    "Consolidation": _draw_consolidation,
    "Atelectasis": _draw_atelectasis,
    "Lung Lesion": _draw_lung_lesion,
    "Support Devices": _draw_support_devices,
}


# --------------------------------------------------------------------------------------
# Support devices, drawn with PIL: one drawer per device
# --------------------------------------------------------------------------------------


def _pixels(c: Canvas, pts) -> list[tuple[float, float]]:
    return [c.to_pixels(x, y) for x, y in pts]


def _thin(c: Canvas) -> int:
    return max(1, round(0.005 * c.h))


def _draw_ett(draw: ImageDraw.ImageDraw, c: Canvas, a: Anatomy, words: dict, heart: tuple, rng) -> None:
    """Endotracheal tube: two bright walls down the trachea."""
    m, carina = c.mid, a.apex + 0.22
    tip = carina - 0.012 * words.get("ett_cm", 4)
    wide = max(2, round(0.009 * c.h))
    draw.line(_pixels(c, [(m + 0.002, -0.02), (m + 0.003, tip)]), fill=210, width=wide)
    draw.line(_pixels(c, [(m + 0.002, -0.02), (m + 0.003, tip - 0.004)]), fill=110,
              width=max(1, round(0.004 * c.h)))


def _draw_enteric(draw: ImageDraw.ImageDraw, c: Canvas, a: Anatomy, words: dict, heart: tuple, rng) -> None:
    """Enteric tube down the oesophagus into the stomach."""
    m, carina = c.mid, a.apex + 0.22
    pts = [(m - 0.008, -0.02), (m - 0.012, carina), (m + 0.01, a.base_left - 0.04),
           (m + 0.1, a.base_left + 0.04), (m + 0.15, a.base_left + 0.07)]
    draw.line(_pixels(c, pts), fill=220, width=_thin(c), joint="curve")


def _draw_picc(draw: ImageDraw.ImageDraw, c: Canvas, a: Anatomy, words: dict, heart: tuple, rng) -> None:
    """Peripherally inserted central catheter from an arm to the SVC."""
    m, carina = c.mid, a.apex + 0.22
    s = -1.0 if words.get("picc_side", "right") == "right" else 1.0
    lx = a.half_width
    pts = [(m + s * (lx + 0.09), 0.2), (m + s * (lx - 0.02), 0.15), (m + s * 0.12, 0.14),
           (m + s * 0.04, 0.17), (m - 0.03, carina - 0.02), (m - 0.03, carina + 0.04)]
    draw.line(_pixels(c, pts), fill=230, width=_thin(c), joint="curve")


def _draw_pacemaker(draw: ImageDraw.ImageDraw, c: Canvas, a: Anatomy, words: dict, heart: tuple, rng) -> None:
    """Generator in the left upper chest, leads into the heart."""
    m = c.mid
    gx, gy = m + a.half_width * 0.7, a.apex + 0.08
    box = _pixels(c, [(gx - 0.04, gy - 0.025), (gx + 0.04, gy + 0.025)])
    (x0, y0), (x1, y1) = box
    draw.rounded_rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)],
                           radius=max(1, round(0.01 * c.h)), fill=255)
    hx, hy = heart
    for end in [(hx - 0.04, hy + 0.02), (hx + 0.01, hy + 0.06)]:
        draw.line(_pixels(c, [(gx - 0.02, gy), (m + 0.05, a.apex + 0.12), (m - 0.02, hy - 0.08), end]),
                  fill=235, width=_thin(c), joint="curve")


def _draw_ecg(draw: ImageDraw.ImageDraw, c: Canvas, a: Anatomy, words: dict, heart: tuple, rng) -> None:
    """Monitoring electrodes with their wires."""
    m, thin = c.mid, _thin(c)
    for _ in range(3):
        ex = m + float(rng.uniform(-0.9, 0.9)) * a.half_width
        ey = float(rng.uniform(0.12, 0.85))
        (x0, y0), = _pixels(c, [(ex, ey)])
        r = max(1.5, 0.012 * c.h)
        draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], outline=230, width=max(1, thin))
        edge_x = m + math.copysign(a.half_width + a.body_margin + 0.05, ex - m)
        draw.line(_pixels(c, [(ex, ey), (0.5 * (ex + edge_x), ey - 0.05), (edge_x, ey - 0.12)]), fill=190, width=thin)


_DEVICE_DRAWERS = {  # drawn in this order, whatever the order of the finding's devices
    "ett": _draw_ett,
    "enteric": _draw_enteric,
    "picc": _draw_picc,
    "pacemaker": _draw_pacemaker,
    "ecg": _draw_ecg,
}


def _device_layer(c: Canvas, a: Anatomy, devices: Sequence[str], words: dict, heart: tuple, rng) -> np.ndarray:
    """Radiopaque tubes, lines and leads, drawn with PIL on a layer in [0, 1]."""
    layer = Image.new("L", (c.w, c.h), 0)
    draw = ImageDraw.Draw(layer)
    for kind, drawer in _DEVICE_DRAWERS.items():
        if kind in devices:
            drawer(draw, c, a, words, heart, rng)
    layer = layer.filter(ImageFilter.GaussianBlur(max(0.4, 0.0015 * c.h)))
    return np.asarray(layer, dtype=np.float32) * (1.0 / 255.0)
