"""Phantom radiographs, drawn, not sampled from a model.

A chest with lungs, heart, mediastinum, diaphragm, ribs and clavicles whose proportions vary
per patient, plus the findings of its report rendered on the side and in the zone the report
names, with the contrast and size of their grade (findings.py: subtle findings sit near the
noise of the image). The five competition findings have distinct shapes:

    Atelectasis       thin plate-like bands (a severe one raises its hemidiaphragm: volume loss)
    Cardiomegaly      a wide heart (cardiothoracic ratio 0.50-0.75 by grade, normal 0.38-0.46, +0.02 on AP)
    Consolidation     a mottled lobar patch with air bronchograms, radius by grade
    Edema             bilateral perihilar "bat-wing" haze with Kerley B lines
    Pleural Effusion  homogeneous basal opacity with a meniscus, one or both sides, height by grade

Uncertain (-1) findings are drawn subtle. `frontal_layers` returns each drawn finding's delta of
the attenuation map apart (regions.py turns them into each finding's mask); `render_chest` gives the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from medclip_nb.config import PHANTOM_SIZES
from medclip_nb.errors import ConfigError
from medclip_nb.phantom.anatomy import Anatomy
from medclip_nb.phantom.canvas import Canvas, Hemithorax, hemithorax, segment_distance, smooth_noise, soft_step
from medclip_nb.phantom.draw_findings import FINDING_DRAWERS, FrontalScene
from medclip_nb.phantom.findings import Finding

MIMIC_WIDTH, MIMIC_HEIGHT = 2544, 3056  # the usual MIMIC-CXR-JPG portrait shape
WORKING_MAX_HEIGHT = 512  # anatomy is drawn at most this tall, larger images are upsampled
MIN_SIZE, MAX_SIZE = PHANTOM_SIZES  # config.py checks phantom_size against the same range


def image_width(size: int) -> int:
    """Width in pixels of a phantom image `size` pixels tall (MIMIC's portrait aspect)."""
    return max(1, round(size * MIMIC_WIDTH / MIMIC_HEIGHT))


def raises_hemidiaphragm(atelectasis: Finding | None) -> bool:
    """A severe (positive, strength >= 0.85) atelectasis: its volume loss raises its hemidiaphragm."""
    return atelectasis is not None and atelectasis.value > 0 and atelectasis.strength >= 0.85


def _hemithoraces(c: Canvas, a: Anatomy, atelectasis: Finding | None) -> tuple[Hemithorax, Hemithorax]:
    """(right, left) hemithorax; the volume loss of atelectasis pulls its hemidiaphragm up."""
    lift = {"right": 0.0, "left": 0.0}
    if raises_hemidiaphragm(atelectasis):
        for s in atelectasis.sides:
            lift[s] = 0.04
    right = hemithorax(c, a, -1.0, a.base_right - lift["right"], a.dome_right)
    left = hemithorax(c, a, 1.0, a.base_left - lift["left"], a.dome_left)
    return right, left


def _soft_tissue(c: Canvas, a: Anatomy) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(body mask, tissue thickness, attenuation) of the trunk, shoulders and spine."""
    m, lx = c.mid, a.half_width
    dx = c.x - m
    adx = np.abs(dx)
    # Soft tissue: thicker at the centre, the trunk narrowing towards the abdomen, dark air outside.
    body_half = (lx + a.body_margin) * (1.03 - 0.07 * c.y)
    thickness = np.sqrt(np.clip(1.0 - (dx / body_half) ** 2, 0.0, 1.0))
    body = soft_step(body_half - adx, 0.025) * soft_step(c.y + 0.05, 0.05)
    att = body * (0.24 + 0.38 * thickness)
    # shoulders and upper arms fill the top corners
    att += 0.12 * soft_step(a.apex + 0.02 - c.y, 0.08) * soft_step(adx - (lx + a.body_margin - 0.02), 0.03)

    # Spine: vertebral bodies seen faintly through the mediastinum.
    att += 0.05 * soft_step(0.032 - adx, 0.012) * (1.0 + 0.25 * np.cos(c.y * (2 * math.pi / 0.047)))
    return body, thickness, att


def _lung_markings(c: Canvas, a: Anatomy, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(medium noise, fine noise, vessel ridges, lung texture).

    Vessels branch out of the hila (ridges of smooth noise, coarse near the hila, fading
    towards the periphery) over a fine parenchymal mottle.
    """
    m = c.mid
    dx = c.x - m
    hx = np.where(dx < 0, m - a.mediastinum - 0.03, m + a.mediastinum + 0.03).astype(np.float32)
    r = np.hypot(c.x - hx, c.y - a.hilum)
    h, w = c.h, c.w
    medium = smooth_noise(rng, h, w, 10)
    fine = smooth_noise(rng, h, w, max(8, min(64, h // 4)))
    branching = smooth_noise(rng, h, w, max(8, min(28, h // 8)))
    theta = np.arctan2(c.y - a.hilum, np.abs(c.x - hx))
    radial = 0.5 + 0.5 * np.cos(11.0 * theta + 2.2 * branching + 1.2 * medium)
    ridges = (1.0 - np.minimum(np.abs(branching), 1.0)) ** 6
    # (the radial pattern fades out at the hilum itself, where it would converge to a star)
    vessels = (0.65 * radial ** 4 * (1.0 - np.exp(-(r / 0.06) ** 2)) + 0.5 * ridges) * np.exp(-r / 0.17)
    texture = 0.09 * vessels + 0.018 * fine + 0.08 * np.exp(-(r / 0.055) ** 2)
    return medium, fine, ridges, texture


def _pneumothorax(c: Canvas, sides: dict[str, Hemithorax], ptx: Finding | None) -> tuple[np.ndarray, np.ndarray]:
    """(lucent rim, pleural line) of a pneumothorax: the rim has no lung markings, outside a
    visible pleural line; both zero without one."""
    ptx_rim = np.zeros_like(c.x)
    pleural_line = np.zeros_like(c.x)
    if ptx is not None:
        hemi = sides[ptx.sides[0]]
        tt = np.clip(hemi.t, 0.0, 1.0)
        depth = ptx.extent * (soft_step(0.5 - tt, 0.25) if ptx.zone == "apical" else (1.0 - 0.55 * tt))
        line_u = hemi.lateral - depth
        shown = depth > 0.004
        ptx_rim = hemi.lung * soft_step(hemi.u - line_u, 0.004) * shown
        pleural_line = hemi.lung * soft_step(0.003 - np.abs(hemi.u - line_u), 0.003) * shown
    return ptx_rim, pleural_line


def _airways(att: np.ndarray, c: Canvas, a: Anatomy) -> np.ndarray:
    """Trachea and main bronchi: dark air columns."""
    m = c.mid
    adx = np.abs(c.x - m)
    carina = a.apex + 0.22
    att -= 0.1 * soft_step(0.011 - adx, 0.006) * soft_step(carina - c.y, 0.01)
    for s in (-1.0, 1.0):
        att -= 0.07 * soft_step(0.008 - segment_distance(c, m, carina, m + s * 0.06, carina + 0.05), 0.005)
    return att


def _ribs(att: np.ndarray, c: Canvas, a: Anatomy, domes: np.ndarray, medium: np.ndarray) -> np.ndarray:
    """Posterior ribs arch down laterally, anterior ribs slope down medially.
    (they fade out gradually below the diaphragm instead of ending on a line)"""
    lx = a.half_width
    adx = np.abs(c.x - c.mid)
    cage = (soft_step(lx + 0.015 - adx, 0.02) * soft_step(c.y - (a.apex - 0.05), 0.03)
            * soft_step(domes + 0.02 - c.y, 0.06))
    ar = adx * (1.0 / lx)
    wobble = 0.08 * medium
    s_post = (c.y - 0.1 * ar * ar + 0.02 * ar) * (1.0 / a.rib_spacing) + a.rib_phase + wobble
    s_ant = (c.y + 0.16 * ar - 0.05 * ar * ar) * (1.0 / (1.15 * a.rib_spacing)) + a.rib_phase * 0.7 + wobble
    rib_post = np.clip((0.5 - 0.5 * np.cos(2 * math.pi * s_post) - 0.5) * 4.0, 0.0, 1.0)
    rib_ant = np.clip((0.5 - 0.5 * np.cos(2 * math.pi * s_ant) - 0.55) * 4.0, 0.0, 1.0)
    att += cage * (0.07 * rib_post * soft_step(adx - 0.035, 0.02) + 0.04 * rib_ant * soft_step(ar - 0.35, 0.15))
    return att


def _shoulder_girdle(att: np.ndarray, c: Canvas, a: Anatomy, body: np.ndarray) -> np.ndarray:
    """Clavicles and humeral heads."""
    m, lx = c.mid, a.half_width
    for s in (-1.0, 1.0):
        d = segment_distance(c, m + s * 0.03, a.apex + 0.035, m + s * (lx + 0.03), a.apex - 0.04)
        att += 0.1 * soft_step(0.013 - d, 0.008)
        head = np.hypot(c.x - (m + s * (lx + 0.075)), c.y - (a.apex - 0.03))
        att += 0.1 * soft_step(0.055 - head, 0.02) * body
    return att


def _abdomen(att: np.ndarray, c: Canvas, a: Anatomy, domes: np.ndarray, left: Hemithorax,
             thickness: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Liver and spleen below the domes, as dense as the heart; the gastric bubble below the
    left hemidiaphragm."""
    m, lx = c.mid, a.half_width
    att += soft_step(c.y - domes, 0.012) * 0.92 * (0.54 + 0.08 * thickness - att) * body
    gx, gy = m + 0.5 * lx, left.base - a.dome_left + 0.045
    att -= (0.14 * soft_step(1.0 - ((c.x - gx) / 0.045) ** 2 - ((c.y - gy) / 0.022) ** 2, 0.4)
            * soft_step(c.y - left.dome, 0.01))
    return att


def _heart(att: np.ndarray, c: Canvas, a: Anatomy, by_label: dict[str, Finding], base: float
           ) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """(attenuation, solid mediastinum mask, heart centre) with heart, pedicle and aortic knob.

    The heart is an ellipse tilted towards its apex (down and to the patient's left), its
    right border a third of its width right of the midline; cardiothoracic ratio = width / (2 lx).
    `base` is the mean height of the two costophrenic angles.
    """
    m, lx = c.mid, a.half_width
    dx = c.x - m
    adx = np.abs(dx)
    card = by_label.get("Cardiomegaly")
    ctr = max(a.ctr, card.extent) if card is not None else a.ctr
    heart_w = ctr * 2.0 * lx
    tilt = math.radians(32.0)
    ct, st = math.cos(tilt), math.sin(tilt)
    semi_major = 0.5 * heart_w / math.sqrt(ct * ct + 0.6 ** 2 * st * st)
    semi_minor = 0.6 * semi_major
    half_height = math.sqrt((semi_major * st) ** 2 + (semi_minor * ct) ** 2)
    hcx = m + heart_w * (0.5 - 0.32)
    hcy = base - 0.04 - 0.45 * half_height
    hu = (c.x - hcx) * ct + (c.y - hcy) * st
    hv = -(c.x - hcx) * st + (c.y - hcy) * ct
    inside = 1.0 - (hu / semi_major) ** 2 - (hv / semi_minor) ** 2
    heart = soft_step(inside, 0.15)
    pedicle = (soft_step(a.mediastinum + 0.006 - np.abs(dx - 0.006), 0.012) * soft_step(hcy - c.y, 0.04)
               * soft_step(c.y - 0.02, 0.04))
    if "Enlarged Cardiomediastinum" in by_label:  # widened upper mediastinum
        pedicle = np.maximum(pedicle, soft_step(a.mediastinum + 0.028 - adx, 0.012) * soft_step(hcy - c.y, 0.04)
                             * soft_step(c.y - a.apex, 0.04))
    carina = a.apex + 0.22
    knob = soft_step(0.026 - np.hypot(c.x - (m + a.mediastinum + 0.006), c.y - (carina - 0.02)), 0.014)
    solid = np.maximum(np.maximum(heart, pedicle), knob)
    # denser where the heart is thicker
    att += solid * 0.85 * (0.55 + 0.08 * np.sqrt(np.clip(inside, 0.0, 1.0)) - att)
    return att, solid, (hcx, hcy)


@dataclass
class FrontalLayers:
    """A frontal radiograph before exposure, finding by finding: the attenuation is
    `base + sum(deltas)` inside the body. `base` is the chest with the findings that change the
    anatomy itself (Cardiomegaly widens the heart, Enlarged Cardiomediastinum the mediastinum,
    Pneumothorax takes the lung markings off its rim, severe atelectasis raises a
    hemidiaphragm); `deltas` holds (finding, its delta map) for every finding with a drawer
    (draw_findings.FINDING_DRAWERS), in the order of the findings. A drawn finding's mask is
    where its delta is non-zero; an anatomy finding's is where `base` differs from the base of
    the same call without it (same anatomy, same seed)."""

    base: np.ndarray
    deltas: list[tuple[Finding, np.ndarray]]
    body: np.ndarray  # soft mask of the patient (outside it is air)

    def attenuation(self) -> np.ndarray:
        att = self.base.copy()
        for _, delta in self.deltas:
            att += delta
        return att * self.body + 0.02 * (1.0 - self.body)


def frontal_layers(h: int, w: int, a: Anatomy, findings: Sequence[Finding], rng) -> FrontalLayers:
    """The layers of a PA/AP chest radiograph `h` x `w` (attenuation, higher = whiter, roughly in
    [0, 1.2])."""
    c = Canvas(h, w, a)
    by_label = {f.label: f for f in findings}
    right, left = _hemithoraces(c, a, by_label.get("Atelectasis"))
    sides = {"right": right, "left": left}
    lungs = right.lung + left.lung
    body, thickness, att = _soft_tissue(c, a)
    medium, fine, ridges, texture = _lung_markings(c, a, rng)
    ptx_rim, pleural_line = _pneumothorax(c, sides, by_label.get("Pneumothorax"))
    att = att - lungs * 0.40 + lungs * texture * (1.0 - ptx_rim) - 0.07 * ptx_rim + 0.16 * pleural_line
    att = _airways(att, c, a)
    domes = np.where(c.x - c.mid < 0, right.dome, left.dome)
    att = _ribs(att, c, a, domes, medium)
    att = _shoulder_girdle(att, c, a, body)
    att = _abdomen(att, c, a, domes, left, thickness, body)
    att, solid, heart_centre = _heart(att, c, a, by_label, 0.5 * (right.base + left.base))
    # Findings, each its own delta of the chest drawn so far. Opacities behind the heart show less.
    scene = FrontalScene(c, a, sides, medium, fine, ridges, 1.0 - 0.5 * solid, heart_centre, rng, att)
    deltas = [(f, FINDING_DRAWERS[f.label](f, scene)) for f in findings if f.label in FINDING_DRAWERS]
    return FrontalLayers(att, deltas, body)


def _render_lateral(h: int, w: int, a: Anatomy, findings: Sequence[Finding], rng) -> np.ndarray:
    """Attenuation map of a lateral view: patient facing the image's left, spine to the right."""
    c = Canvas(h, w, a)
    m = c.mid
    by_label = {f.label: f for f in findings}
    front, back = m - 0.33, m + 0.32
    body = soft_step(c.x - front - 0.02 * (c.y - 0.5) ** 2, 0.03) * soft_step(back - c.x, 0.03)
    depth = np.clip(1.0 - ((c.x - m) / 0.34) ** 2, 0.0, 1.0)
    att = body * (0.28 + 0.34 * np.sqrt(depth))
    base = 0.5 * (a.base_left + a.base_right)
    dome = base - 0.1 * np.clip(1.0 - ((c.x - m + 0.02) / 0.3) ** 2, 0.0, 1.0)
    ly = 0.5 * (a.apex + base)
    lung = (soft_step(1.0 - ((c.x - (m - 0.01)) / 0.27) ** 2 - ((c.y - ly) / (0.5 * (base - a.apex) + 0.06)) ** 2, 0.08)
            * soft_step(dome - c.y, 0.01))
    fine = smooth_noise(rng, h, w, max(8, min(48, h // 5)))
    medium = smooth_noise(rng, h, w, 8)
    att += lung * (-0.36 + 0.025 * fine + 0.03 * medium)
    # arms raised in front of the upper chest
    att += 0.14 * soft_step(a.apex + 0.12 - c.y, 0.1) * body
    spine_x = back - 0.06 + 0.04 * (c.y - 0.5) ** 2
    vertebrae = soft_step(0.028 - np.abs(c.x - spine_x), 0.01)
    att += 0.12 * vertebrae * (0.65 + 0.35 * soft_step(np.cos(c.y * (2 * math.pi / 0.05)) + 0.5, 0.6))
    att += (0.08 * soft_step(0.01 - np.abs(c.x - (front + 0.03)), 0.008) * soft_step(c.y - 0.15, 0.03)
            * soft_step(0.6 - c.y, 0.03))
    att -= (0.1 * soft_step(0.011 - np.abs(c.x - (m + 0.03) - 0.1 * (c.y - 0.1)), 0.006)
            * soft_step(a.apex + 0.25 - c.y, 0.02))
    card = by_label.get("Cardiomegaly")
    ctr = max(a.ctr, card.extent) if card is not None else a.ctr
    hrx, hry = 0.13 * ctr / 0.45, 0.13 + 0.2 * (ctr - 0.45)
    hcx, hcy = front + 0.06 + hrx * 0.9, base - 0.04 - hry * 0.7
    heart = soft_step(1.0 - ((c.x - hcx) / hrx) ** 2 - ((c.y - hcy) / hry) ** 2, 0.2)
    att += heart * 0.8 * (0.58 - att)
    before = att.copy()  # each finding adds its own delta of the chest without findings
    for f in findings:
        if f.label == "Pleural Effusion":  # fluid collects in the posterior costophrenic sulcus
            top = base - f.extent * (base - a.apex) * (0.4 + 0.6 * np.clip((c.x - m) / 0.25, 0.0, 1.0))
            att += f.strength * lung * soft_step(c.y - top, 0.03) * (0.55 - before).clip(0.0, None)
        elif f.label in ("Edema", "Consolidation"):
            att += f.strength * lung * 0.14 * np.exp(-(((c.x - m) / 0.12) ** 2 + ((c.y - a.hilum) / 0.15) ** 2))
    return att * body + 0.02 * (1.0 - body)


def expose(att: np.ndarray, size: int, a: Anatomy, rng: np.random.Generator) -> Image.Image:
    """The film of an attenuation map: exposure curve, noise and quantisation, `size` pixels tall
    (upsampled first when `size` is above the working height)."""
    out_w = image_width(size)
    if att.shape[0] != size:
        att = np.asarray(Image.fromarray(att.astype(np.float32)).resize((out_w, size), Image.BICUBIC))
    noise = rng.standard_normal(att.shape, dtype=np.float32)
    intensity = np.clip(att * a.contrast + a.offset + a.noise * noise, 0.0, 1.0) ** a.gamma
    return Image.fromarray(np.round(intensity * 255.0).astype(np.uint8))


def render_chest(size: int, anatomy: Anatomy, findings: Sequence[Finding] = (), view: str = "PA",
                 rng: np.random.Generator | int = 0) -> Image.Image:
    """One phantom radiograph as an 8-bit grayscale PIL image, `size` pixels tall: the public way
    to draw a study's image from its findings and a chest.

        anatomy = study_anatomy(sample_anatomy(rng), rng, "PA")          # phantom.anatomy
        image = render_chest(256, anatomy, [finding_from_words("Pleural Effusion", "small", ("left",))],
                             "PA", rng)                                   # phantom.findings

    `view` is a MIMIC ViewPosition ("PA", "AP", "LATERAL", "LL"). Anatomy is drawn at a
    working height of at most 512 pixels, then upsampled with fine full-resolution noise,
    so full MIMIC size (3056) stays well under a second per image.
    """
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"config key 'phantom_size': {size} is outside {MIN_SIZE}..{MAX_SIZE}")
    rng = np.random.default_rng(rng) if isinstance(rng, (int, np.integer)) else rng
    work_h = min(size, WORKING_MAX_HEIGHT)
    work_w = image_width(work_h)
    if view in ("LATERAL", "LL"):
        att = _render_lateral(work_h, work_w, anatomy, findings, rng)
    else:
        att = frontal_layers(work_h, work_w, anatomy, findings, rng).attenuation()
    return expose(att, size, anatomy, rng)
