"""Phantom radiographs, drawn, not sampled from a model.

A chest with lungs, heart, mediastinum, diaphragm, ribs and clavicles whose proportions vary
per patient, plus the findings of its report rendered with the severity, side and location
words the report uses (the MedCLIP prompt vocabulary of `labels.PROMPT_VOCABULARY`). The five
competition findings are drawn with strong contrast and distinct shapes so that a small model
can learn them at 128 px:

    Atelectasis       thin plate-like bands with a raised hemidiaphragm (volume loss)
    Cardiomegaly      a wide heart (cardiothoracic ratio 0.56-0.75 by severity, normal 0.38-0.46)
    Consolidation     a dense mottled lobar patch with air bronchograms
    Edema             bilateral perihilar "bat-wing" haze with Kerley B lines
    Pleural Effusion  homogeneous basal opacity with a meniscus, one or both sides

Uncertain (-1) findings are drawn faintly.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from medclip_nb.config import ConfigError
from medclip_nb.phantom.anatomy import Anatomy
from medclip_nb.phantom.canvas import (
    _blob_patch,
    _Canvas,
    _hemithorax,
    _point,
    _segment_distance,
    _smooth_noise,
    _ss,
    _zone_t,
)
from medclip_nb.phantom.findings import Finding

MIMIC_WIDTH, MIMIC_HEIGHT = 2544, 3056  # the usual MIMIC-CXR-JPG portrait shape
WORKING_MAX_HEIGHT = 512  # anatomy is drawn at most this tall, larger images are upsampled
JPEG_QUALITY = 90
MIN_SIZE, MAX_SIZE = 16, 4096


def image_width(size: int) -> int:
    """Width in pixels of a phantom image `size` pixels tall (MIMIC's portrait aspect)."""
    return max(1, round(size * MIMIC_WIDTH / MIMIC_HEIGHT))


def _draw_devices(c: _Canvas, a: Anatomy, devices: Sequence[str], words: dict, heart: tuple, rng) -> np.ndarray:
    """Radiopaque tubes, lines and leads, drawn with PIL on a layer in [0, 1]."""
    layer = Image.new("L", (c.w, c.h), 0)
    draw = ImageDraw.Draw(layer)
    px = lambda pts: [c.to_pixels(x, y) for x, y in pts]  # noqa: E731
    thin = max(1, round(0.005 * c.h))
    m = c.mid
    carina = a.apex + 0.22
    if "ett" in devices:  # endotracheal tube: two bright walls down the trachea
        tip = carina - 0.012 * words.get("ett_cm", 4)
        wide = max(2, round(0.009 * c.h))
        draw.line(px([(m + 0.002, -0.02), (m + 0.003, tip)]), fill=210, width=wide)
        draw.line(px([(m + 0.002, -0.02), (m + 0.003, tip - 0.004)]), fill=110, width=max(1, round(0.004 * c.h)))
    if "enteric" in devices:  # enteric tube down the oesophagus into the stomach
        pts = [(m - 0.008, -0.02), (m - 0.012, carina), (m + 0.01, a.base_left - 0.04),
               (m + 0.1, a.base_left + 0.04), (m + 0.15, a.base_left + 0.07)]
        draw.line(px(pts), fill=220, width=thin, joint="curve")
    if "picc" in devices:  # peripherally inserted central catheter from an arm to the SVC
        s = -1.0 if words.get("picc_side", "right") == "right" else 1.0
        lx = a.half_width
        pts = [(m + s * (lx + 0.09), 0.2), (m + s * (lx - 0.02), 0.15), (m + s * 0.12, 0.14),
               (m + s * 0.04, 0.17), (m - 0.03, carina - 0.02), (m - 0.03, carina + 0.04)]
        draw.line(px(pts), fill=230, width=thin, joint="curve")
    if "pacemaker" in devices:  # generator in the left upper chest, leads into the heart
        gx, gy = m + a.half_width * 0.7, a.apex + 0.08
        box = px([(gx - 0.04, gy - 0.025), (gx + 0.04, gy + 0.025)])
        (x0, y0), (x1, y1) = box
        draw.rounded_rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)],
                               radius=max(1, round(0.01 * c.h)), fill=255)
        hx, hy = heart
        for end in [(hx - 0.04, hy + 0.02), (hx + 0.01, hy + 0.06)]:
            draw.line(px([(gx - 0.02, gy), (m + 0.05, a.apex + 0.12), (m - 0.02, hy - 0.08), end]),
                      fill=235, width=thin, joint="curve")
    if "ecg" in devices:  # monitoring electrodes with their wires
        for _ in range(3):
            ex = m + float(rng.uniform(-0.9, 0.9)) * a.half_width
            ey = float(rng.uniform(0.12, 0.85))
            (x0, y0), = px([(ex, ey)])
            r = max(1.5, 0.012 * c.h)
            draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], outline=230, width=max(1, thin))
            edge_x = m + math.copysign(a.half_width + a.body_margin + 0.05, ex - m)
            draw.line(px([(ex, ey), (0.5 * (ex + edge_x), ey - 0.05), (edge_x, ey - 0.12)]), fill=190, width=thin)
    layer = layer.filter(ImageFilter.GaussianBlur(max(0.4, 0.0015 * c.h)))
    return np.asarray(layer, dtype=np.float32) * (1.0 / 255.0)


def _render_frontal(h: int, w: int, a: Anatomy, findings: Sequence[Finding], rng) -> np.ndarray:
    """Attenuation map of a PA/AP chest radiograph (higher = whiter), roughly in [0, 1.2]."""
    c = _Canvas(h, w, a)
    m, lx = c.mid, a.half_width
    by_label = {f.label: f for f in findings}

    # Volume loss of atelectasis pulls its hemidiaphragm up.
    lift = {"right": 0.0, "left": 0.0}
    atel = by_label.get("Atelectasis")
    if atel is not None and atel.value > 0 and atel.strength >= 0.85:
        for s in atel.sides:
            lift[s] = 0.04
    right = _hemithorax(c, a, -1.0, a.base_right - lift["right"], a.dome_right)
    left = _hemithorax(c, a, 1.0, a.base_left - lift["left"], a.dome_left)
    sides = {"right": right, "left": left}
    lungs = right.lung + left.lung
    dx = c.x - m
    adx = np.abs(dx)

    # Soft tissue: thicker at the centre, the trunk narrowing towards the abdomen, dark air outside.
    body_half = (lx + a.body_margin) * (1.03 - 0.07 * c.y)
    thickness = np.sqrt(np.clip(1.0 - (dx / body_half) ** 2, 0.0, 1.0))
    body = _ss(body_half - adx, 0.025) * _ss(c.y + 0.05, 0.05)
    att = body * (0.24 + 0.38 * thickness)
    # shoulders and upper arms fill the top corners
    att += 0.12 * _ss(a.apex + 0.02 - c.y, 0.08) * _ss(adx - (lx + a.body_margin - 0.02), 0.03)

    # Spine: vertebral bodies seen faintly through the mediastinum.
    att += 0.05 * _ss(0.032 - adx, 0.012) * (1.0 + 0.25 * np.cos(c.y * (2 * math.pi / 0.047)))

    # Lung markings: vessels branching out of the hila (ridges of smooth noise, coarse near
    # the hila, fading towards the periphery) and fine parenchymal mottle.
    hx = np.where(dx < 0, m - a.mediastinum - 0.03, m + a.mediastinum + 0.03).astype(np.float32)
    r = np.hypot(c.x - hx, c.y - a.hilum)
    medium = _smooth_noise(rng, h, w, 10)
    fine = _smooth_noise(rng, h, w, max(8, min(64, h // 4)))
    branching = _smooth_noise(rng, h, w, max(8, min(28, h // 8)))
    theta = np.arctan2(c.y - a.hilum, np.abs(c.x - hx))
    radial = 0.5 + 0.5 * np.cos(11.0 * theta + 2.2 * branching + 1.2 * medium)
    ridges = (1.0 - np.minimum(np.abs(branching), 1.0)) ** 6
    # (the radial pattern fades out at the hilum itself, where it would converge to a star)
    vessels = (0.65 * radial ** 4 * (1.0 - np.exp(-(r / 0.06) ** 2)) + 0.5 * ridges) * np.exp(-r / 0.17)
    texture = 0.09 * vessels + 0.018 * fine + 0.08 * np.exp(-(r / 0.055) ** 2)

    # Pneumothorax: a lucent rim without markings outside a visible pleural line.
    ptx_rim = np.zeros_like(c.x)
    pleural_line = np.zeros_like(c.x)
    ptx = by_label.get("Pneumothorax")
    if ptx is not None:
        hemi = sides[ptx.sides[0]]
        tt = np.clip(hemi.t, 0.0, 1.0)
        depth = ptx.extent * (_ss(0.5 - tt, 0.25) if ptx.zone == "apical" else (1.0 - 0.55 * tt))
        line_u = hemi.lateral - depth
        shown = depth > 0.004
        ptx_rim = hemi.lung * _ss(hemi.u - line_u, 0.004) * shown
        pleural_line = hemi.lung * _ss(0.003 - np.abs(hemi.u - line_u), 0.003) * shown
    att = att - lungs * 0.40 + lungs * texture * (1.0 - ptx_rim) - 0.07 * ptx_rim + 0.16 * pleural_line

    # Trachea and main bronchi: dark air columns.
    carina = a.apex + 0.22
    att -= 0.1 * _ss(0.011 - adx, 0.006) * _ss(carina - c.y, 0.01)
    for s in (-1.0, 1.0):
        att -= 0.07 * _ss(0.008 - _segment_distance(c, m, carina, m + s * 0.06, carina + 0.05), 0.005)

    # Ribs: posterior ribs arch down laterally, anterior ribs slope down medially.
    # (they fade out gradually below the diaphragm instead of ending on a line)
    domes = np.where(dx < 0, right.dome, left.dome)
    cage = _ss(lx + 0.015 - adx, 0.02) * _ss(c.y - (a.apex - 0.05), 0.03) * _ss(domes + 0.02 - c.y, 0.06)
    ar = adx * (1.0 / lx)
    wobble = 0.08 * medium
    s_post = (c.y - 0.1 * ar * ar + 0.02 * ar) * (1.0 / a.rib_spacing) + a.rib_phase + wobble
    s_ant = (c.y + 0.16 * ar - 0.05 * ar * ar) * (1.0 / (1.15 * a.rib_spacing)) + a.rib_phase * 0.7 + wobble
    rib_post = np.clip((0.5 - 0.5 * np.cos(2 * math.pi * s_post) - 0.5) * 4.0, 0.0, 1.0)
    rib_ant = np.clip((0.5 - 0.5 * np.cos(2 * math.pi * s_ant) - 0.55) * 4.0, 0.0, 1.0)
    att += cage * (0.07 * rib_post * _ss(adx - 0.035, 0.02) + 0.04 * rib_ant * _ss(ar - 0.35, 0.15))

    # Clavicles and humeral heads.
    for s in (-1.0, 1.0):
        d = _segment_distance(c, m + s * 0.03, a.apex + 0.035, m + s * (lx + 0.03), a.apex - 0.04)
        att += 0.1 * _ss(0.013 - d, 0.008)
        head = np.hypot(c.x - (m + s * (lx + 0.075)), c.y - (a.apex - 0.03))
        att += 0.1 * _ss(0.055 - head, 0.02) * body

    # Liver and spleen: the abdomen below the domes is as dense as the heart.
    att += _ss(c.y - domes, 0.012) * 0.92 * (0.54 + 0.08 * thickness - att) * body

    # Gastric bubble below the left hemidiaphragm.
    gx, gy = m + 0.5 * lx, left.base - a.dome_left + 0.045
    att -= 0.14 * _ss(1.0 - ((c.x - gx) / 0.045) ** 2 - ((c.y - gy) / 0.022) ** 2, 0.4) * _ss(c.y - left.dome, 0.01)

    # Heart: an ellipse tilted towards its apex (down and to the patient's left), its right
    # border a third of its width right of the midline; cardiothoracic ratio = width / (2 lx).
    card = by_label.get("Cardiomegaly")
    ctr = max(a.ctr, card.extent) if card is not None else a.ctr
    heart_w = ctr * 2.0 * lx
    tilt = math.radians(32.0)
    ct, st = math.cos(tilt), math.sin(tilt)
    semi_major = 0.5 * heart_w / math.sqrt(ct * ct + 0.6 ** 2 * st * st)
    semi_minor = 0.6 * semi_major
    half_height = math.sqrt((semi_major * st) ** 2 + (semi_minor * ct) ** 2)
    hcx = m + heart_w * (0.5 - 0.32)
    hcy = 0.5 * (right.base + left.base) - 0.04 - 0.45 * half_height
    hu = (c.x - hcx) * ct + (c.y - hcy) * st
    hv = -(c.x - hcx) * st + (c.y - hcy) * ct
    inside = 1.0 - (hu / semi_major) ** 2 - (hv / semi_minor) ** 2
    heart = _ss(inside, 0.15)
    pedicle = _ss(a.mediastinum + 0.006 - np.abs(dx - 0.006), 0.012) * _ss(hcy - c.y, 0.04) * _ss(c.y - 0.02, 0.04)
    if "Enlarged Cardiomediastinum" in by_label:  # widened upper mediastinum
        pedicle = np.maximum(pedicle, _ss(a.mediastinum + 0.028 - adx, 0.012) * _ss(hcy - c.y, 0.04)
                             * _ss(c.y - a.apex, 0.04))
    knob = _ss(0.026 - np.hypot(c.x - (m + a.mediastinum + 0.006), c.y - (carina - 0.02)), 0.014)
    solid = np.maximum(np.maximum(heart, pedicle), knob)
    # denser where the heart is thicker
    att += solid * 0.85 * (0.55 + 0.08 * np.sqrt(np.clip(inside, 0.0, 1.0)) - att)
    heart_centre = (hcx, hcy)

    # Findings. Opacities behind the heart show less.
    behind = 1.0 - 0.5 * solid
    for f in findings:
        k = f.strength
        if f.label == "Pleural Effusion":
            for s in f.sides:
                hemi = sides[s]
                span = hemi.base - hemi.apex
                q = np.clip((hemi.u - hemi.medial) / (hemi.lateral - hemi.medial + 1e-6), 0.0, 1.0)
                if f.zone == "subpulmonic":  # fluid under the lung: a raised, laterally peaked "dome"
                    top = hemi.base - f.extent * span * (0.5 + 0.5 * np.sqrt(q))
                else:  # meniscus: the fluid climbs the lateral chest wall
                    top = hemi.base - f.extent * span * (0.62 + 0.38 * q ** 2)
                depth = np.clip((c.y - top) / (f.extent * span + 1e-6), 0.0, 1.0)
                fluid = (_ss(c.y - top, 0.03) * _ss(hemi.lateral + 0.012 - hemi.u, 0.015)
                         * _ss(hemi.u - hemi.medial + 0.015, 0.015) * _ss(hemi.base + 0.03 - c.y, 0.03))
                density = 0.52 + 0.1 * depth  # no denser than the abdomen: the dome vanishes into it
                att += fluid * k * (density - att).clip(0.0, None)
        elif f.label == "Edema":
            for s in f.sides:
                hemi = sides[s]
                wx = m + hemi.sign * (a.mediastinum + 0.05)
                wing = np.exp(-(((c.x - wx) / 0.14) ** 2 + ((c.y - (a.hilum + 0.04)) / 0.19) ** 2))
                kerley_zone = _ss(hemi.u - (hemi.lateral - 0.045), 0.02) * _ss(c.y - (hemi.base - 0.17), 0.03)
                kerley = (0.5 + 0.5 * np.cos(c.y * (2 * math.pi / 0.018) + 2.0 * medium)) ** 10 * kerley_zone
                reticular = ridges * (0.07 if f.words.get("interstitial") else 0.035)
                haze = 0.42 * wing * (1.0 + 0.25 * medium) + 0.05 + reticular + 0.14 * kerley
                att += hemi.lung * behind * k * haze
        elif f.label == "Consolidation":
            for s in f.sides:
                hemi = sides[s]
                t0 = _zone_t(f.zone) + float(rng.uniform(-0.04, 0.04))
                u0 = 0.45 if f.zone == "retrocardiac" else float(rng.uniform(0.5, 0.66))
                cx, cy = _point(c, hemi, lx, t0, u0)
                radius = 0.11 * (0.85 if f.subtype == "partial consolidation" else 1.0)
                patch = _blob_patch(c, rng, cx, cy, radius, 7) * hemi.lung
                if s == "right" and f.zone == "upper":  # the minor fissure gives a sharp lower edge
                    patch *= _ss(hemi.apex + 0.45 * (hemi.base - hemi.apex) - c.y, 0.006)
                grain = np.abs(fine) if "reticular" in f.subtype else 0.5 * medium
                bronchi = np.zeros_like(c.x)
                for _ in range(3):  # air bronchograms: dark branches inside the patch
                    ang = float(rng.uniform(-0.6, 0.6))
                    ex, ey = cx + hemi.sign * 0.08 * math.cos(ang), cy + 0.08 * math.sin(ang)
                    d = _segment_distance(c, m + hemi.sign * (a.mediastinum + 0.03), a.hilum, ex, ey)
                    bronchi = np.maximum(bronchi, _ss(0.004 - d, 0.003))
                att += k * patch * behind * (0.5 * (0.8 + 0.35 * grain) - 0.2 * bronchi)
        elif f.label == "Atelectasis":
            for s in f.sides:
                hemi = sides[s]
                n_bands = 1 if f.zone == "retrocardiac" else 2 + int(rng.random() < 0.4)
                t0 = _zone_t(f.zone) + float(rng.uniform(-0.03, 0.03))
                u0 = 0.5 if f.zone == "retrocardiac" else float(rng.uniform(0.45, 0.6))
                cx, cy = _point(c, hemi, lx, t0, u0)
                if f.zone in ("base", "retrocardiac", "lower"):
                    cy = min(cy, hemi.base - 0.1)
                ang = math.radians(float(rng.uniform(-14, 14))) * hemi.sign
                length = lx * float(rng.uniform(0.55, 0.7)) * (0.85 if "trace" in f.subtype else 1.0)
                thick = 0.022 + 0.012 * k
                bend = float(rng.uniform(-1.5, 1.5))
                for b in range(n_bands):
                    by = cy + (b - 0.5 * (n_bands - 1)) * 0.05
                    along = (c.x - cx) * math.cos(ang) + (c.y - by) * math.sin(ang)
                    perp = -(c.x - cx) * math.sin(ang) + (c.y - by) * math.cos(ang) - bend * along * along
                    taper = np.sqrt(np.clip(1.0 - (2.0 * along / length) ** 2, 0.0, 1.0))
                    band = _ss(0.5 * thick * taper - np.abs(perp), 0.005)
                    halo = np.exp(-(perp / 0.02) ** 2) * taper  # the collapsed lung around the plate
                    att += k * (0.45 * band + 0.07 * halo) * hemi.lung * behind * (0.85 + 0.3 * medium)
        elif f.label == "Lung Lesion":
            hemi = sides[f.sides[0]]
            t0 = _zone_t(f.zone) + float(rng.uniform(-0.05, 0.05))
            cx, cy = _point(c, hemi, lx, t0, float(rng.uniform(0.4, 0.75)))
            radius = 0.5 * f.extent * (2.0 * lx / 28.0)  # the thorax is about 28 cm wide
            d = np.hypot(c.x - cx, c.y - cy)
            lobulation = 1.0 + 0.1 * np.cos(5.0 * np.arctan2(c.y - cy, c.x - cx) + float(rng.uniform(0, 6.3)))
            att += 0.42 * k * _ss(radius * lobulation - d, 0.006)
        elif f.label == "Support Devices":
            att += 0.65 * _draw_devices(c, a, f.devices, f.words, heart_centre, rng)
    return att * body + 0.02 * (1.0 - body)


def _render_lateral(h: int, w: int, a: Anatomy, findings: Sequence[Finding], rng) -> np.ndarray:
    """Attenuation map of a lateral view: patient facing the image's left, spine to the right."""
    c = _Canvas(h, w, a)
    m = c.mid
    by_label = {f.label: f for f in findings}
    front, back = m - 0.33, m + 0.32
    body = _ss(c.x - front - 0.02 * (c.y - 0.5) ** 2, 0.03) * _ss(back - c.x, 0.03)
    depth = np.clip(1.0 - ((c.x - m) / 0.34) ** 2, 0.0, 1.0)
    att = body * (0.28 + 0.34 * np.sqrt(depth))
    base = 0.5 * (a.base_left + a.base_right)
    dome = base - 0.1 * np.clip(1.0 - ((c.x - m + 0.02) / 0.3) ** 2, 0.0, 1.0)
    ly = 0.5 * (a.apex + base)
    lung = (_ss(1.0 - ((c.x - (m - 0.01)) / 0.27) ** 2 - ((c.y - ly) / (0.5 * (base - a.apex) + 0.06)) ** 2, 0.08)
            * _ss(dome - c.y, 0.01))
    fine = _smooth_noise(rng, h, w, max(8, min(48, h // 5)))
    medium = _smooth_noise(rng, h, w, 8)
    att += lung * (-0.36 + 0.025 * fine + 0.03 * medium)
    # arms raised in front of the upper chest
    att += 0.14 * _ss(a.apex + 0.12 - c.y, 0.1) * body
    spine_x = back - 0.06 + 0.04 * (c.y - 0.5) ** 2
    vertebrae = _ss(0.028 - np.abs(c.x - spine_x), 0.01)
    att += 0.12 * vertebrae * (0.65 + 0.35 * _ss(np.cos(c.y * (2 * math.pi / 0.05)) + 0.5, 0.6))
    att += 0.08 * _ss(0.01 - np.abs(c.x - (front + 0.03)), 0.008) * _ss(c.y - 0.15, 0.03) * _ss(0.6 - c.y, 0.03)
    att -= 0.1 * _ss(0.011 - np.abs(c.x - (m + 0.03) - 0.1 * (c.y - 0.1)), 0.006) * _ss(a.apex + 0.25 - c.y, 0.02)
    card = by_label.get("Cardiomegaly")
    ctr = max(a.ctr, card.extent) if card is not None else a.ctr
    hrx, hry = 0.13 * ctr / 0.45, 0.13 + 0.2 * (ctr - 0.45)
    hcx, hcy = front + 0.06 + hrx * 0.9, base - 0.04 - hry * 0.7
    heart = _ss(1.0 - ((c.x - hcx) / hrx) ** 2 - ((c.y - hcy) / hry) ** 2, 0.2)
    att += heart * 0.8 * (0.58 - att)
    for f in findings:
        if f.label == "Pleural Effusion":  # fluid collects in the posterior costophrenic sulcus
            top = base - f.extent * (base - a.apex) * (0.4 + 0.6 * np.clip((c.x - m) / 0.25, 0.0, 1.0))
            att += f.strength * lung * _ss(c.y - top, 0.03) * (0.55 - att).clip(0.0, None)
        elif f.label in ("Edema", "Consolidation"):
            att += f.strength * lung * 0.14 * np.exp(-(((c.x - m) / 0.12) ** 2 + ((c.y - a.hilum) / 0.15) ** 2))
    return att * body + 0.02 * (1.0 - body)


def _to_image(att: np.ndarray, size: int, a: Anatomy, rng: np.random.Generator) -> Image.Image:
    """Exposure curve, noise and quantisation; upsample first when `size` is above the working height."""
    out_w = image_width(size)
    if att.shape[0] != size:
        att = np.asarray(Image.fromarray(att.astype(np.float32)).resize((out_w, size), Image.BICUBIC))
    noise = rng.standard_normal(att.shape, dtype=np.float32)
    intensity = np.clip(att * a.contrast + a.offset + a.noise * noise, 0.0, 1.0) ** a.gamma
    return Image.fromarray(np.round(intensity * 255.0).astype(np.uint8))


def render_chest(size: int, anatomy: Anatomy, findings: Sequence[Finding] = (), view: str = "PA",
                 rng: np.random.Generator | int = 0) -> Image.Image:
    """One phantom radiograph as an 8-bit grayscale PIL image, `size` pixels tall.

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
        att = _render_frontal(work_h, work_w, anatomy, findings, rng)
    return _to_image(att, size, anatomy, rng)
