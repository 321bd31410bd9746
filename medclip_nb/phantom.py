"""Deterministic phantom MIMIC-CXR-JPG dataset, for machines without the real data.

`generate_phantom(out)` writes the official MIMIC-CXR-JPG + reports layout:

    out/files/p10/p10000032/s50414267/<dicom_id>.jpg     8-bit grayscale radiographs
    out/files/p10/p10000032/s50414267.txt                free-text radiology report
    out/mimic-cxr-2.0.0-split.csv.gz                     patient-disjoint train/validate/test
    out/mimic-cxr-2.0.0-chexpert.csv.gz                  study-level CheXpert labels
    out/mimic-cxr-2.0.0-metadata.csv.gz                  DICOM metadata (ViewPosition, ...)
    out/sentence-label.csv.gz                            every report sentence with its own labels (MedCLIP's
                                                         sentence-label table; not part of MIMIC-CXR)
    out/phantom.json                                     generator arguments and version

so the real importer (`medclip_nb.mimic.prepare_mimic`) reads it unchanged. Same seed, same
bytes: every random draw comes from numpy Generators seeded from (seed, stream, index), the
gzip headers carry no time or name, and JPEGs use a fixed quality.

Images are drawn, not sampled from a model: a chest with lungs, heart, mediastinum,
diaphragm, ribs and clavicles whose proportions vary per patient, plus the findings of its
report rendered with the severity, side and location words the report uses (the MedCLIP
prompt vocabulary of `labels.PROMPT_VOCABULARY`). The five competition findings are drawn
with strong contrast and distinct shapes so that a small model can learn them at 128 px:

    Atelectasis       thin plate-like bands with a raised hemidiaphragm (volume loss)
    Cardiomegaly      a wide heart (cardiothoracic ratio 0.56-0.75 by severity, normal 0.38-0.46)
    Consolidation     a dense mottled lobar patch with air bronchograms
    Edema             bilateral perihilar "bat-wing" haze with Kerley B lines
    Pleural Effusion  homogeneous basal opacity with a meniscus, one or both sides

Uncertain (-1) findings are hedged in the report and drawn faintly.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import math
import shutil
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from medclip_nb.config import ConfigError
from medclip_nb.errors import DataError
from medclip_nb.labels import CHEXPERT_LABELS, COMPETITION_TASKS, PROMPT_VOCABULARY
from medclip_nb.mimic import CHEXPERT_TABLE, METADATA_COLUMNS, METADATA_TABLE, SPLIT_TABLE
from medclip_nb.paths import resolve
from medclip_nb.progress import progress
from medclip_nb.data.sentence_labels import write_sentence_labels
from medclip_nb.text import split_sentences

SENTENCE_TABLE = "sentence-label.csv.gz"  # MedCLIP's sentence-label table, every sentence as written

# Bump when the output of the same arguments changes, so `phantom_is_current` rebuilds.
PHANTOM_VERSION = 2  # 2: writes the sentence-label table
PHANTOM_MANIFEST = "phantom.json"

MIMIC_WIDTH, MIMIC_HEIGHT = 2544, 3056  # the usual MIMIC-CXR-JPG portrait shape
WORKING_MAX_HEIGHT = 512  # anatomy is drawn at most this tall, larger images are upsampled
JPEG_QUALITY = 90
MIN_SIZE, MAX_SIZE = 16, 4096

# Target shares of the phantom; see generate_phantom's docstring.
SPLIT_SHARES = {"test": 0.20, "validate": 0.10}  # the rest is train
NO_FINDING_SHARE = 0.15
SINGLE_COMPETITION_SHARE = 0.58
LATERAL_SHARE_PA, LATERAL_SHARE_AP = 0.40, 0.08  # about 25% of studies overall
BLANK_VIEW_SHARE = 0.04
IMPRESSION_ONLY_SHARE, NO_SECTIONS_SHARE = 0.03, 0.01

_RNG_PLAN, _RNG_STUDY, _RNG_SUBJECT, _RNG_TEST_COHORT = 0, 1, 2, 3  # independent random streams per purpose


def image_width(size: int) -> int:
    """Width in pixels of a phantom image `size` pixels tall (MIMIC's portrait aspect)."""
    return max(1, round(size * MIMIC_WIDTH / MIMIC_HEIGHT))


# --------------------------------------------------------------------------------------
# Findings: what a study shows, in the words its report uses
# --------------------------------------------------------------------------------------


@dataclass
class Finding:
    """One finding of a study: the CheXpert label it sets and how it is drawn and described.

    `severity`, `subtype` and `location` are prompt-vocabulary words where the label has a
    vocabulary; `sides` are the patient sides drawn ("right" is the image's left); `zone`
    is where on those sides ("upper", "mid", "lower", "base", "retrocardiac", "apical");
    `strength` scales contrast (uncertain findings are faint); `extent` is the size
    parameter of the finding (effusion height as a fraction of the lung height,
    cardiothoracic ratio, nodule diameter in cm, pneumothorax rim width).
    """

    label: str
    value: float = 1.0
    severity: str = ""
    subtype: str = ""
    location: str = ""
    sides: tuple[str, ...] = ()
    zone: str = ""
    strength: float = 1.0
    extent: float = 0.0
    devices: tuple[str, ...] = ()
    words: dict = field(default_factory=dict)  # extra report words (size names, cm, ...)


_VOCAB = PROMPT_VOCABULARY
_ATELECTASIS_ZONES = {  # location phrase -> (side or None for either, zone)
    "at the mid lung zone": (None, "mid"),
    "at the upper lung zone": (None, "upper"),
    "at the right lung zone": ("right", "mid"),
    "at the left lung zone": ("left", "mid"),
    "at the lung bases": ("both", "base"),
    "at the right lung base": ("right", "base"),
    "at the left lung base": ("left", "base"),
    "at the bilateral lung bases": ("both", "base"),
    "at the left lower lobe": ("left", "lower"),
    "at the right lower lobe": ("right", "lower"),
}
_CONSOLIDATION_ZONES = {
    "at the lower lung zone": (None, "lower"),
    "at the upper lung zone": (None, "upper"),
    "at the left lower lobe": ("left", "lower"),
    "at the right lower lobe": ("right", "lower"),
    "at the left upper lobe": ("left", "upper"),
    "at the right upper lobe": ("right", "upper"),
    "at the right lung base": ("right", "base"),
    "at the left lung base": ("left", "base"),
}
assert set(_ATELECTASIS_ZONES) == set(_VOCAB["Atelectasis"]["location"])
assert set(_CONSOLIDATION_ZONES) == set(_VOCAB["Consolidation"]["location"])

# Cardiomegaly phrases grouped by the cardiothoracic ratio they describe.
_CARDIO_PHRASES = _VOCAB["Cardiomegaly"]["subtype"]
_CARDIO_GRADE = {
    p: ("borderline" if ("upper limits" in p or "borderline" in p) else
        "severe" if "severe" in p else
        "mild" if "mild" in p else "moderate")
    for p in _CARDIO_PHRASES
}
_CTR_RANGE = {"borderline": (0.56, 0.59), "mild": (0.6, 0.64), "moderate": (0.64, 0.68), "severe": (0.7, 0.75)}
_CARDIO_IMPRESSION = {
    "borderline": ["Borderline heart size.", "Heart size at the upper limits of normal."],
    "mild": ["Mild cardiomegaly.", "Mildly enlarged cardiac silhouette."],
    "moderate": ["Cardiomegaly.", "Stable cardiomegaly.", "Unchanged cardiomegaly."],
    "severe": ["Severe cardiomegaly.", "Persistent severe cardiomegaly."],
}
# Effusion size words -> fraction of the lung height the fluid rises (laterally).
_EFFUSION_HEIGHT = {"tiny": 0.13, "small": 0.2, "": 0.3, "stable": 0.3, "decreased": 0.27,
                    "increased": 0.33, "large": 0.45}
_EFFUSION_WEIGHTS = {"tiny": 0.06, "small": 0.26, "": 0.18, "stable": 0.12, "decreased": 0.1,
                     "increased": 0.1, "large": 0.18}
_EDEMA_STRENGTH = {"moderate": 1.0, "": 0.9, "persistent": 0.9, "mild": 0.78,
                   "improvement in": 0.72, "decreased": 0.72}
# Words that describe a change since a prior study: the report then names a comparison.
_TEMPORAL_WORDS = ("stable", "increased", "decreased", "improved", "improvement", "persistent",
                   "unchanged", "redemonstration", "remains", "residual")


def _pick(rng: np.random.Generator, options: Sequence, weights: Sequence[float] | None = None):
    """One element of `options` (a Python object, not a numpy scalar)."""
    if weights is None:
        return options[int(rng.integers(len(options)))]
    p = np.asarray(weights, dtype=float)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def _side_of(rng, spec: str | None) -> tuple[str, ...]:
    if spec == "both":
        return ("right", "left")
    if spec is None:
        return (_pick(rng, ["right", "left"]),)
    return (spec,)


def _vocabulary_words(rng, finding: str, locations_by_subtype: dict[str, list[str]]) -> tuple[str, str, str]:
    """(severity, subtype, location) from the prompt vocabulary; a subtype that only makes
    sense in some places (retrocardiac, bibasilar, bilateral) draws its location from those."""
    v = _VOCAB[finding]
    severity = _pick(rng, v["severity"])
    subtype = _pick(rng, v["subtype"])
    location = _pick(rng, locations_by_subtype.get(subtype, v["location"]))
    return severity, subtype, location


def _atelectasis(rng, certain: bool) -> Finding:
    severity, subtype, location = _vocabulary_words(rng, "Atelectasis", {
        "bibasilar atelectasis": ["at the lung bases", "at the bilateral lung bases"],
        "retrocardiac atelectasis": ["at the left lower lobe", "at the left lung base"],
    })
    side, zone = _ATELECTASIS_ZONES[location]
    if subtype == "retrocardiac atelectasis":
        zone = "retrocardiac"
    strength = {"": 1.0, "mild": 0.88, "minimal": 0.75}[severity] * (0.85 if "trace" in subtype else 1.0)
    if not certain:
        strength = 0.45
    return Finding("Atelectasis", 1.0 if certain else -1.0, severity, subtype, location,
                   _side_of(rng, side), zone, strength)


def _cardiomegaly(rng, certain: bool) -> Finding:
    if not certain:
        return Finding("Cardiomegaly", -1.0, strength=0.5, extent=float(rng.uniform(0.52, 0.55)),
                       words={"grade": "uncertain"})
    # Borderline phrases are hard to see at low resolution: draw them less often.
    weights = [0.4 if _CARDIO_GRADE[p] == "borderline" else 1.0 for p in _CARDIO_PHRASES]
    phrase = _pick(rng, _CARDIO_PHRASES, weights)
    grade = _CARDIO_GRADE[phrase]
    lo, hi = _CTR_RANGE[grade]
    return Finding("Cardiomegaly", 1.0, subtype=phrase, extent=float(rng.uniform(lo, hi)),
                   words={"grade": grade})


def _consolidation(rng, certain: bool) -> Finding:
    severity, subtype, location = _vocabulary_words(rng, "Consolidation", {
        "bilateral consolidation": ["at the lower lung zone", "at the upper lung zone"],
        "retrocardiac consolidation": ["at the left lower lobe", "at the left lung base"],
    })
    side, zone = _CONSOLIDATION_ZONES[location]
    if subtype == "bilateral consolidation":
        side = "both"
    # "patchy airspace consolidation" reads like a report; keep the vocabulary words intact.
    descriptor = "patchy " if subtype == "airspace consolidation" and rng.random() < 0.4 else ""
    strength = (0.8 if severity == "improved" else 1.0) * (0.9 if subtype == "partial consolidation" else 1.0)
    if not certain:
        strength = 0.45
    return Finding("Consolidation", 1.0 if certain else -1.0, severity, subtype, location,
                   _side_of(rng, side), zone, strength,
                   words={"descriptor": descriptor, "pneumonia": bool(rng.random() < 0.35)})


def _edema(rng, certain: bool) -> Finding:
    v = _VOCAB["Edema"]
    subtype = _pick(rng, v["subtype"])
    severity = _pick(rng, ["", "persistent"]) if subtype.startswith("trace") else _pick(rng, v["severity"])
    strength = _EDEMA_STRENGTH[severity] * (0.8 if subtype.startswith("trace") else 1.0)
    if not certain:
        severity, strength = "mild", 0.42
    return Finding("Edema", 1.0 if certain else -1.0, severity, subtype, "", ("right", "left"),
                   "perihilar", strength, words={"interstitial": "interstitial" in subtype})


def _pleural_effusion(rng, certain: bool) -> Finding:
    side = _pick(rng, ["right", "left", "bilateral"], [0.35, 0.35, 0.3])
    subpulmonic = side != "bilateral" and rng.random() < 0.12
    if certain:
        severity = _pick(rng, list(_EFFUSION_WEIGHTS), list(_EFFUSION_WEIGHTS.values()))
        strength = 1.0
    else:
        severity, strength = "small", 0.55
    sides = ("right", "left") if side == "bilateral" else (side,)
    height = _EFFUSION_HEIGHT[severity] * float(rng.uniform(0.92, 1.08))
    subtype = "subpulmonic pleural effusion" if subpulmonic else (
        "bilateral pleural effusion" if side == "bilateral" else "pleural effusion")
    return Finding("Pleural Effusion", 1.0 if certain else -1.0, severity, subtype, side, sides,
                   "subpulmonic" if subpulmonic else "base", strength, extent=height)


def _pneumothorax(rng) -> Finding:
    size = _pick(rng, ["small", "moderate", "large"], [0.5, 0.3, 0.2])
    rim = {"small": 0.035, "moderate": 0.07, "large": 0.12}[size]
    side = _pick(rng, ["right", "left"])
    return Finding("Pneumothorax", 1.0, severity=size, sides=(side,),
                   zone="apical" if size == "small" else "lateral", extent=rim)


def _lung_lesion(rng) -> Finding:
    kind = _pick(rng, ["nodule", "mass"], [0.6, 0.4])
    cm = round(float(rng.uniform(1.0, 2.6) if kind == "nodule" else rng.uniform(3.5, 6.0)), 1)
    side = _pick(rng, ["right", "left"])
    zone = _pick(rng, ["upper", "mid", "lower"])
    return Finding("Lung Lesion", 1.0, subtype=kind, sides=(side,), zone=zone, extent=cm)


def _support_devices(rng) -> Finding:
    kinds = ["ett", "enteric", "picc", "pacemaker"]
    first = _pick(rng, kinds)
    chosen = {first}
    if rng.random() < 0.35:
        chosen.add(_pick(rng, kinds))
    if rng.random() < 0.5:
        chosen.add("ecg")
    order = [k for k in kinds + ["ecg"] if k in chosen]
    return Finding("Support Devices", 1.0, devices=tuple(order),
                   words={"picc_side": _pick(rng, ["right", "left"]), "ett_cm": int(rng.integers(3, 7))})


_COMPETITION_MAKERS = {
    "Atelectasis": _atelectasis,
    "Cardiomegaly": _cardiomegaly,
    "Consolidation": _consolidation,
    "Edema": _edema,
    "Pleural Effusion": _pleural_effusion,
}
_OTHER_MAKERS = {"Pneumothorax": _pneumothorax, "Lung Lesion": _lung_lesion, "Support Devices": _support_devices}


def sample_findings(rng: np.random.Generator) -> list[Finding]:
    """The findings of one study.

    About 15% none; about 58% exactly one competition finding (uniform over the five),
    sometimes with support devices; the rest mixes two competition findings, a competition
    finding with pneumothorax / lung lesion / devices, those others alone, and uncertain
    (-1) competition findings.
    """
    r = rng.random()
    comp = list(COMPETITION_TASKS)
    others = list(_OTHER_MAKERS)
    findings: list[Finding] = []
    if r < NO_FINDING_SHARE:
        return findings
    if r < NO_FINDING_SHARE + SINGLE_COMPETITION_SHARE:
        findings.append(_COMPETITION_MAKERS[_pick(rng, comp)](rng, True))
        if rng.random() < 0.08:
            findings.append(_support_devices(rng))
        return findings
    r2 = rng.random()
    if r2 < 0.35:  # two competition findings together
        a, b = rng.choice(len(comp), size=2, replace=False)
        findings += [_COMPETITION_MAKERS[comp[a]](rng, True), _COMPETITION_MAKERS[comp[b]](rng, True)]
    elif r2 < 0.55:  # one competition finding and one other
        findings.append(_COMPETITION_MAKERS[_pick(rng, comp)](rng, True))
        findings.append(_OTHER_MAKERS[_pick(rng, others)](rng))
    elif r2 < 0.75:  # other findings only
        picks = rng.choice(len(others), size=1 + int(rng.random() < 0.3), replace=False)
        findings += [_OTHER_MAKERS[others[i]](rng) for i in sorted(picks)]
    else:  # an uncertain competition finding, sometimes next to another finding
        findings.append(_COMPETITION_MAKERS[_pick(rng, comp)](rng, False))
        if rng.random() < 0.3:
            findings.append(_OTHER_MAKERS[_pick(rng, others)](rng))
    return findings


# --------------------------------------------------------------------------------------
# Anatomy and rendering
# --------------------------------------------------------------------------------------


@dataclass
class Anatomy:
    """A patient's chest, in units of the image height (x grows to the image's right)."""

    half_width: float = 0.32  # thorax half-width (midline to lateral rib margin)
    body_margin: float = 0.05  # soft tissue outside the ribs
    apex: float = 0.11  # lung apex height
    base_right: float = 0.76  # costophrenic angles
    base_left: float = 0.78
    dome_right: float = 0.07  # hemidiaphragm dome heights above the angles
    dome_left: float = 0.06
    mediastinum: float = 0.05  # upper mediastinum half-width
    ctr: float = 0.44  # cardiothoracic ratio
    hilum: float = 0.42
    rib_spacing: float = 0.075
    rib_phase: float = 0.0
    rotation_deg: float = 0.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    gamma: float = 1.0
    contrast: float = 1.0
    offset: float = 0.0
    noise: float = 0.012


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """A patient's anatomy: lung size, heart size, diaphragm, ribs, exposure."""
    base = float(rng.uniform(0.74, 0.80))
    right_higher = float(rng.uniform(0.005, 0.03))  # the right hemidiaphragm usually sits higher
    return Anatomy(
        half_width=float(rng.uniform(0.30, 0.345)),
        body_margin=float(rng.uniform(0.035, 0.07)),
        apex=float(rng.uniform(0.09, 0.135)),
        base_right=base - right_higher,
        base_left=base,
        dome_right=float(rng.uniform(0.05, 0.08)),
        dome_left=float(rng.uniform(0.045, 0.07)),
        mediastinum=float(rng.uniform(0.04, 0.055)),
        ctr=float(rng.uniform(0.38, 0.46)),
        hilum=float(rng.uniform(0.40, 0.45)),
        rib_spacing=float(rng.uniform(0.068, 0.082)),
        rib_phase=float(rng.uniform(0, 1)),
        rotation_deg=float(rng.normal(0, 1.5)),
        shift_x=float(rng.normal(0, 0.012)),
        shift_y=float(rng.normal(0, 0.01)),
        gamma=float(rng.uniform(0.85, 1.2)),
        contrast=float(rng.uniform(0.9, 1.1)),
        offset=float(rng.uniform(-0.04, 0.04)),
        noise=float(rng.uniform(0.008, 0.016)),
    )


def _study_anatomy(patient: Anatomy, rng: np.random.Generator, view: str) -> Anatomy:
    """The patient on the day of a study: positioning, inspiration and exposure vary."""
    inspiration = float(rng.normal(0, 0.012))
    a = dataclasses.replace(
        patient,
        base_right=patient.base_right + inspiration,
        base_left=patient.base_left + inspiration,
        rotation_deg=patient.rotation_deg + float(rng.normal(0, 1.0)),
        shift_x=patient.shift_x + float(rng.normal(0, 0.006)),
        shift_y=patient.shift_y + float(rng.normal(0, 0.006)),
        gamma=patient.gamma * float(rng.uniform(0.95, 1.05)),
        offset=patient.offset + float(rng.uniform(-0.02, 0.02)),
        rib_phase=patient.rib_phase + float(rng.normal(0, 0.05)),
    )
    if view == "AP":  # portable AP: the heart is magnified and inspiration is shallower
        a = dataclasses.replace(a, ctr=a.ctr + 0.02, base_right=a.base_right - 0.02, base_left=a.base_left - 0.02)
    return a


def _ss(z: np.ndarray, width: float) -> np.ndarray:
    """Soft step: 0 where z < -width/2, 1 where z > width/2, smooth between."""
    t = np.clip(z * (1.0 / width) + 0.5, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Zero-mean smooth noise of shape (h, w), about `cells` blobs along the height."""
    ch = max(2, min(cells, h))
    cw = max(2, round(ch * w / h))
    small = rng.standard_normal((ch, cw)).astype(np.float32)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.float32)


class _Canvas:
    """Coordinate grids of one image, in units of its height, in the patient's frame."""

    def __init__(self, h: int, w: int, anatomy: Anatomy):
        self.h, self.w = h, w
        self.mid = 0.5 * w / h
        angle = math.radians(anatomy.rotation_deg)
        self.cos, self.sin = math.cos(angle), math.sin(angle)
        self.shift = (anatomy.shift_x, anatomy.shift_y)
        xs = ((np.arange(w, dtype=np.float32) + 0.5) / h - self.mid)[None, :]
        ys = ((np.arange(h, dtype=np.float32) + 0.5) / h - 0.5)[:, None]
        # patient coordinates of each pixel: rotate about the centre, then shift
        self.x = self.cos * xs + self.sin * ys + self.mid - anatomy.shift_x
        self.y = -self.sin * xs + self.cos * ys + 0.5 - anatomy.shift_y

    def to_pixels(self, x: float, y: float) -> tuple[float, float]:
        """Pixel position of a point given in patient coordinates."""
        px, py = x - self.mid + self.shift[0], y - 0.5 + self.shift[1]
        xs = self.cos * px - self.sin * py
        ys = self.sin * px + self.cos * py
        return (xs + self.mid) * self.h, (ys + 0.5) * self.h


@dataclass
class _Hemithorax:
    sign: float  # -1 for the patient's right (image left), +1 for the left
    u: np.ndarray  # distance from the midline towards this side
    t: np.ndarray  # 0 at the apex, 1 at the costophrenic angle
    lateral: np.ndarray  # lateral lung border at each height
    medial: np.ndarray
    dome: np.ndarray  # diaphragm height below each point
    lung: np.ndarray  # soft lung mask
    base: float
    apex: float


def _hemithorax(c: _Canvas, a: Anatomy, sign: float, base: float, dome_height: float) -> _Hemithorax:
    u = sign * (c.x - c.mid)
    t = (c.y - a.apex) / (base - a.apex)
    tt = np.clip(t, 0.0, 1.0)
    lx = a.half_width
    # lateral border: a rounded apex widening to the costophrenic angle
    lateral = lx * (0.3 + 0.7 * np.sqrt(1.0 - (1.0 - tt) ** 2))
    medial = a.mediastinum + 0.012 * tt
    q = np.clip(1.0 - ((u - 0.5 * lx) / (0.58 * lx)) ** 2, 0.0, 1.0)
    dome = base - dome_height * q
    edge = 0.008
    lung = _ss(lateral - u, edge) * _ss(u - medial, edge) * _ss(dome - c.y, edge) * _ss(t, 0.03)
    return _Hemithorax(sign, u, t, lateral, medial, dome, lung, base, a.apex)


def _zone_t(zone: str) -> float:
    """Height within the lung (0 apex, 1 base) of a zone's centre."""
    return {"apical": 0.12, "upper": 0.3, "mid": 0.52, "lower": 0.68, "base": 0.8, "retrocardiac": 0.84}[zone]


def _point(c: _Canvas, side: _Hemithorax, lx: float, t: float, u_frac: float) -> tuple[float, float]:
    """Patient coordinates of a point at lung height t, u_frac of the way to the ribs."""
    y = side.apex + t * (side.base - side.apex)
    return c.mid + side.sign * u_frac * lx, y


def _blob_patch(c: _Canvas, rng, cx: float, cy: float, radius: float, n: int) -> np.ndarray:
    """Irregular patch: the union of a few Gaussian blobs around (cx, cy), in [0, 1]."""
    acc = np.zeros_like(c.x)
    for _ in range(n):
        bx = cx + float(rng.normal(0, radius * 0.45))
        by = cy + float(rng.normal(0, radius * 0.35))
        r = radius * float(rng.uniform(0.55, 0.85))
        acc = np.maximum(acc, np.exp(-(((c.x - bx) ** 2 + (c.y - by) ** 2) * (1.0 / (r * r)))))
    return np.clip((acc - 0.3) * 2.5, 0.0, 1.0)


def _segment_distance(c: _Canvas, x0, y0, x1, y1) -> np.ndarray:
    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy
    s = np.clip(((c.x - x0) * dx + (c.y - y0) * dy) * (1.0 / length2), 0.0, 1.0)
    return np.hypot(c.x - (x0 + s * dx), c.y - (y0 + s * dy))


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


# --------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------


def _cap(sentence: str) -> str:
    sentence = sentence.strip()
    return sentence[:1].upper() + sentence[1:]


def _words(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def _finding_sentence(f: Finding, rng) -> tuple[str, str]:
    """(FINDINGS sentence, IMPRESSION sentence) of a finding, in the vocabulary's words."""
    if f.label == "Atelectasis":
        if f.value < 0:
            s = _pick(rng, [f"Possible {_words(f.severity, 'atelectasis')} {f.location}.",
                            f"Streaky opacity {f.location} may reflect atelectasis."])
            return s, f"Possible atelectasis {f.location}."
        s = _pick(rng, [f"{_words(f.severity, f.subtype)} {f.location}.",
                        f"There is {_words(f.severity, f.subtype)} {f.location}.",
                        f"{_words(f.severity, f.subtype)} is seen {f.location}."])
        return _cap(s), _cap(f"{_words(f.severity, f.subtype)} {f.location}.")
    if f.label == "Cardiomegaly":
        if f.value < 0:
            return ("The heart size is possibly mildly enlarged, though this may be accentuated by technique.",
                    "Possible mild cardiomegaly.")
        phrase = f.subtype.replace(". other", ". Other")
        return _cap(phrase + "."), _pick(rng, _CARDIO_IMPRESSION[f.words["grade"]])
    if f.label == "Consolidation":
        if f.value < 0:
            s = _pick(rng, [f"Cannot exclude early consolidation {f.location}.",
                            f"Subtle opacity {f.location}; early consolidation cannot be excluded."])
            return s, f"Cannot exclude early consolidation {f.location}."
        body = _words(f.severity, f.words.get("descriptor", "") + f.subtype)
        s = _pick(rng, [f"{body} {f.location}.", f"There is {body} {f.location}."])
        imp = _cap(f"{f.words.get('descriptor', '') + f.subtype} {f.location}")
        if f.words.get("pneumonia"):
            s += " Findings may reflect pneumonia in the appropriate clinical setting."
            imp += ", which may reflect pneumonia"
        return _cap(s), imp + "."
    if f.label == "Edema":
        if f.value < 0:
            s = _pick(rng, ["Possible mild pulmonary edema.",
                            "Mild vascular congestion; early pulmonary edema cannot be excluded."])
            return s, "Possible mild pulmonary edema."
        body = _words(f.severity, f.subtype)
        s = _pick(rng, [f"{body}.", f"There is {body}.", f"{body} with perihilar haziness."])
        return _cap(s), _cap(body + ".")
    if f.label == "Pleural Effusion":
        plural = f.location == "bilateral" and rng.random() < 0.5
        noun = f.subtype.replace("bilateral ", "") + ("s" if plural else "")
        if f.value < 0:
            s = _pick(rng, [f"Possible small {f.location} {noun}.",
                            f"Blunting of the {f.location} costophrenic angle may reflect a small {noun}."])
            return s, f"Possible small {f.location} {noun}."
        body = _words(f.severity, f.location, noun)
        s = _pick(rng, [f"{body}.", f"There is a {body}.", f"{body} is present."])
        if s.startswith("There is a ") and f.severity == "":
            s = f"There is a {f.location} {noun}."
        return _cap(s), _cap(body + ".")
    if f.label == "Pneumothorax":
        side = f.sides[0]
        where = "apical " if f.zone == "apical" else ""
        s = f"{f.severity} {side} {where}pneumothorax."
        return _cap(s), _cap(f"{f.severity} {side} pneumothorax.")
    if f.label == "Lung Lesion":
        side, kind = f.sides[0], f.subtype
        s = _pick(rng, [f"There is a {f.extent} cm {kind} in the {side} {f.zone} lung zone.",
                        f"A {f.extent} cm {kind} projects over the {side} {f.zone} lung zone."])
        return s, f"{f.extent} cm {side} {f.zone} lung {kind}; chest CT is recommended for further evaluation."
    if f.label == "Support Devices":
        parts = []
        for d in f.devices:
            parts.append({
                "ett": f"Endotracheal tube terminates approximately {f.words.get('ett_cm', 4)} cm above the carina.",
                "enteric": "Enteric tube courses below the diaphragm with the tip in the stomach.",
                "picc": f"{_cap(f.words.get('picc_side', 'right'))}-sided PICC line terminates in the mid SVC.",
                "pacemaker": "Left-sided pacemaker device with leads in the right atrium and right ventricle.",
                "ecg": "ECG leads overlie the chest.",
            }[d])
        return " ".join(parts), "Support devices in standard position."
    if f.label == "Enlarged Cardiomediastinum":
        return "The cardiomediastinal silhouette is enlarged.", ""
    raise ValueError(f"no sentence for {f.label}")


_NORMAL_IMPRESSIONS = ["No acute cardiopulmonary process.", "No acute intrathoracic abnormality.",
                       "No evidence of acute cardiopulmonary disease.", "Normal chest radiograph."]
_INDICATIONS = ["shortness of breath", "cough and fever", "chest pain", "hypoxia", "dyspnea on exertion",
                "fever, evaluate for pneumonia", "line placement", "weakness", "tachycardia", "fall"]


@dataclass
class PhantomReport:
    text: str
    negated: tuple[str, ...]  # labels explicitly reported absent (0.0)
    uncertain: tuple[str, ...]  # labels set -1 by hedged sentences beyond the findings
    # (text, CheXpert labels) of each statement written: a finding's sentences carry that finding
    # (and its hedged pneumonia), a normal statement the labels it negates (sentence-label table)
    sentence_labels: tuple[tuple[str, dict], ...] = ()


def write_report(findings: Sequence[Finding], views: Sequence[str], style: str, rng) -> PhantomReport:
    """Radiology report of a study in MIMIC's style: FINAL REPORT header, upper-case sections.

    `style` is "full" (FINDINGS and IMPRESSION), "impression_only", or "no_sections" (free
    paragraphs only, the importer's fallback case). Negative statements ("No pleural
    effusion or pneumothorax.") are added for some absent findings and returned as the
    labels they set to 0.0.
    """
    present = {f.label for f in findings}
    uncertain_extra: list[str] = []

    pairs = [_finding_sentence(f, rng) for f in findings]
    impressions = [imp for _, imp in pairs if imp]
    labelled: list[tuple[str, dict]] = []
    for f, (sentence, impression) in zip(findings, pairs):
        hedged = ("Pneumonia",) if f.label == "Consolidation" and f.value > 0 and f.words.get("pneumonia") else ()
        uncertain_extra.extend(hedged)
        own = study_labels([f], (), hedged)
        labelled += [(sentence, own)] + ([(impression, own)] if impression else [])

    negated: list[str] = []
    normal: list[str] = []

    def state_normal(sentence: str, *absent: str) -> None:
        normal.append(sentence)
        negated.extend(absent)
        labelled.append((sentence, study_labels((), absent)))

    def maybe(p: float) -> bool:
        return bool(rng.random() < p)

    def free(*labels: str) -> bool:  # none of these labels is a finding of the study
        return not any(label in present for label in labels)

    if free("Cardiomegaly") and maybe(0.8):
        state_normal(_pick(rng, ["Heart size is normal.", "The heart is normal in size.", "Normal heart size."]),
                     "Cardiomegaly")
    if free("Enlarged Cardiomediastinum") and maybe(0.6):
        if "Cardiomegaly" in present:
            state_normal("The mediastinal and hilar contours are unremarkable.", "Enlarged Cardiomediastinum")
        else:
            state_normal(_pick(rng, ["The cardiomediastinal silhouette is within normal limits.",
                                     "The mediastinal and hilar contours are normal."]), "Enlarged Cardiomediastinum")
    pleura: tuple[str, ...] = ()  # (sentence, *labels it negates), stated after the consolidation one
    if free("Consolidation", "Pleural Effusion", "Pneumothorax") and maybe(0.3):
        pleura = ("There is no focal consolidation, pleural effusion or pneumothorax.",
                  "Consolidation", "Pleural Effusion", "Pneumothorax")
    else:
        if free("Consolidation") and maybe(0.7):
            state_normal(_pick(rng, ["No focal consolidation.", "There is no focal consolidation."]), "Consolidation")
        if free("Pleural Effusion", "Pneumothorax") and maybe(0.85):
            pleura = (_pick(rng, ["No pleural effusion or pneumothorax.",
                                  "There is no pleural effusion or pneumothorax."]), "Pleural Effusion", "Pneumothorax")
        elif free("Pleural Effusion") and maybe(0.7):
            pleura = ("No pleural effusion.", "Pleural Effusion")
        elif free("Pneumothorax") and maybe(0.7):
            pleura = ("No pneumothorax.", "Pneumothorax")
    if pleura:
        state_normal(*pleura)
    if free("Edema") and maybe(0.5):
        state_normal(_pick(rng, ["No pulmonary edema.", "There is no pulmonary vascular congestion or edema.",
                                 "No evidence of pulmonary edema."]), "Edema")
    if not present and maybe(0.5):
        state_normal("The lungs are clear.")
    if maybe(0.5):
        bones = _pick(rng, ["No acute osseous abnormality.", "Osseous structures are unremarkable.",
                            "No displaced fracture is identified."])
        state_normal(bones, *(("Fracture",) if "fracture" in bones else ()))

    devices = [s for f, (s, _) in zip(findings, pairs) if f.label == "Support Devices"]
    others = [s for f, (s, _) in zip(findings, pairs) if f.label != "Support Devices"]
    body = others + normal
    order = rng.permutation(len(body))
    findings_text = " ".join(devices + [body[i] for i in order])
    no_disease = all(f.label == "Support Devices" for f in findings)
    if no_disease:
        impressions = impressions + [_pick(rng, _NORMAL_IMPRESSIONS)]
        labelled.append((impressions[-1], study_labels((), ())))
    # Without a FINDINGS section the sentences stand alone, closed by a normal impression if any.
    single_paragraph = findings_text + (" " + impressions[-1] if no_disease else "")
    if len(impressions) > 1 and maybe(0.5):
        impression_text = "\n".join(f"{i}. {s}" for i, s in enumerate(impressions, 1))
    else:
        impression_text = " ".join(impressions)

    frontal = next((v for v in views if v in ("PA", "AP")), "PA")
    has_lateral = any(v in ("LATERAL", "LL") for v in views)
    exam = "CHEST (PORTABLE AP)" if frontal == "AP" else "CHEST (PA AND LAT)"
    technique = ("Portable AP chest radiograph." if frontal == "AP" else
                 "Chest PA and lateral." if has_lateral else "PA view of the chest.")
    all_text = (findings_text + " " + impression_text).lower()
    comparison = ("Chest radiograph from ___." if any(w in all_text for w in _TEMPORAL_WORDS)
                  else _pick(rng, ["None.", "___.", "Prior chest radiograph from ___."]))
    sex = _pick(rng, ["man", "woman"])
    indication = f"___-year-old {sex} with {_pick(rng, _INDICATIONS)}.  // ___"

    def para(text: str) -> str:
        return "\n".join(textwrap.fill(line, width=78, initial_indent=" ", subsequent_indent=" ")
                         for line in text.split("\n"))

    lines = ["                                 FINAL REPORT"]
    if style == "no_sections":
        lines += [f" {'PORTABLE AP CHEST RADIOGRAPH' if frontal == 'AP' else 'PA AND LATERAL CHEST RADIOGRAPH'}", "",
                  f" HISTORY:  {indication}", "", f" COMPARISON:  {comparison}", "",
                  para(single_paragraph), ""]
    else:
        lines += [f" EXAMINATION:  {exam}", "", f" INDICATION:  {indication}", "",
                  f" TECHNIQUE:  {technique}", "", f" COMPARISON:  {comparison}", ""]
        if style == "full":
            lines += [" FINDINGS:", "", para(findings_text), ""]
            lines += [" IMPRESSION:", "", para(impression_text), ""]
        else:  # impression only: the findings sentences move into the impression
            lines += [" IMPRESSION:", "", para(single_paragraph), ""]
    return PhantomReport("\n".join(lines), tuple(negated), tuple(uncertain_extra), tuple(labelled))


def study_labels(findings: Sequence[Finding], negated: Sequence[str],
                 uncertain: Sequence[str] = ()) -> dict[str, float]:
    """CheXpert labels of a study (NaN = not mentioned), following the labeler's conventions:
    Lung Opacity follows Atelectasis / Consolidation / Edema; No Finding is 1 when no
    pathology other than support devices is positive or uncertain."""
    labels = {name: math.nan for name in CHEXPERT_LABELS}
    for f in findings:
        if not (labels[f.label] == 1.0):
            labels[f.label] = f.value
    for name in uncertain:
        if math.isnan(labels[name]):
            labels[name] = -1.0
    opacity = [labels[n] for n in ("Atelectasis", "Consolidation", "Edema")]
    if 1.0 in opacity:
        labels["Lung Opacity"] = 1.0
    elif -1.0 in opacity:
        labels["Lung Opacity"] = -1.0
    for name in negated:
        if math.isnan(labels[name]):
            labels[name] = 0.0
    pathology = [labels[n] for n in CHEXPERT_LABELS if n not in ("No Finding", "Support Devices")]
    if not any(v in (1.0, -1.0) for v in pathology):
        labels["No Finding"] = 1.0
    return labels


# --------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------


@dataclass
class _Image:
    dicom_id: str
    view: str  # ViewPosition as drawn ("PA", "AP", "LATERAL", "LL")
    blank_view: bool = False  # ViewPosition missing from the metadata


@dataclass
class _Study:
    index: int
    subject_index: int
    subject_id: int
    study_id: int
    split: str
    date: int
    time: float
    images: list[_Image]
    findings: list[Finding]
    style: str = "full"


def _dicom_id(rng: np.random.Generator) -> str:
    hexes = rng.bytes(20).hex()
    return "-".join(hexes[i:i + 8] for i in range(0, 40, 8))


def _assign_splits(study_counts: np.ndarray, rng: np.random.Generator) -> list[str]:
    """Patient-disjoint splits: shuffled patients fill test, then validate, by study share."""
    n = len(study_counts)
    total = int(study_counts.sum())
    splits = ["train"] * n
    order = rng.permutation(n)
    position = 0
    for name in ("test", "validate"):
        target = SPLIT_SHARES[name] * total
        taken = 0
        # keep at least one patient for train once there are three or more
        while position < n - 1 and (taken < target or (taken == 0 and n >= 3)):
            if taken > 0 and taken + study_counts[order[position]] > target * 1.5:
                break
            splits[order[position]] = name
            taken += int(study_counts[order[position]])
            position += 1
    return splits


def _fill_study(s: _Study, seed: int) -> None:
    """Draw the study's findings and its images (a frontal view, sometimes a lateral)."""
    srng = np.random.default_rng([seed, _RNG_STUDY, s.index])
    s.findings = sample_findings(srng)
    if any(f.label == "Cardiomegaly" and f.value > 0 and f.words["grade"] != "borderline" for f in s.findings) \
            and srng.random() < 0.3:
        s.findings.append(Finding("Enlarged Cardiomediastinum", 1.0))
    devices = any(f.label == "Support Devices" for f in s.findings)
    portable = any(f.label == "Cardiomegaly" and f.value > 0 and
                   ("portable" in f.subtype or f.subtype.startswith("ap ")) for f in s.findings)
    frontal = "AP" if portable or srng.random() < (0.85 if devices else 0.4) else "PA"
    s.images.append(_Image(_dicom_id(srng), frontal))
    if srng.random() < (LATERAL_SHARE_AP if frontal == "AP" else LATERAL_SHARE_PA):
        s.images.append(_Image(_dicom_id(srng), _pick(srng, ["LATERAL", "LL"], [0.7, 0.3])))
    s.images.sort(key=lambda im: im.dicom_id)


def _study_dates(counts: np.ndarray, rng: np.random.Generator):
    """(subject, StudyDate, StudyTime) of each study, subject by subject, dates increasing."""
    for subject, count in enumerate(counts):
        day = np.datetime64("2110-01-01") + int(rng.integers(0, 80 * 365))
        for _ in range(count):
            day = day + int(rng.integers(1, 400))
            hh, mm, ss, ms = rng.integers(0, 24), rng.integers(0, 60), rng.integers(0, 60), rng.integers(0, 1000)
            yield subject, int(str(day).replace("-", "")), float(f"{hh:02d}{mm:02d}{ss:02d}.{ms:03d}")


def _test_cohort(plan: list[_Study], test_studies: int, seed: int) -> list[_Study]:
    """`test_studies` more test studies of new patients, drawn like the others from a stream of
    their own, so the rest of the phantom keeps its bytes. Test images cost only inference:
    this is what gives the zero-shot and retrieval metrics sample sizes worth an interval."""
    if not test_studies:
        return []
    rng = np.random.default_rng([seed, _RNG_TEST_COHORT])
    n_subjects = max(1, round(test_studies / 3))
    owner = np.concatenate([np.arange(n_subjects), rng.integers(0, n_subjects, test_studies - n_subjects)])
    counts = np.bincount(owner, minlength=n_subjects)
    used_subjects, used_studies = {s.subject_id for s in plan}, {s.study_id for s in plan}
    subject_ids = [i for i in 10_000_000 + rng.choice(10_000_000, n_subjects + len(used_subjects), replace=False)
                   if i not in used_subjects][:n_subjects]
    study_ids = [i for i in 50_000_000 + rng.choice(10_000_000, test_studies + len(used_studies), replace=False)
                 if i not in used_studies][:test_studies]
    first_subject = max(s.subject_index for s in plan) + 1
    cohort: list[_Study] = []
    for k, date, time in _study_dates(counts, rng):
        cohort.append(_Study(
            index=len(plan) + len(cohort), subject_index=first_subject + k, subject_id=int(subject_ids[k]),
            study_id=int(study_ids[len(cohort)]), split="test", date=date, time=time, images=[], findings=[]))
    for s in cohort:
        _fill_study(s, seed)
    return cohort


def _plan_studies(studies: int, seed: int, test_studies: int = 0) -> list[_Study]:
    rng = np.random.default_rng([seed, _RNG_PLAN])
    n_subjects = max(1, round(studies / 3))
    owner = np.concatenate([np.arange(n_subjects), rng.integers(0, n_subjects, studies - n_subjects)])
    counts = np.bincount(owner, minlength=n_subjects)
    subject_ids = np.sort(10_000_000 + rng.choice(10_000_000, n_subjects, replace=False))
    study_ids = 50_000_000 + rng.choice(10_000_000, studies, replace=False)
    splits = _assign_splits(counts, rng)

    plan: list[_Study] = []
    for s_index, date, time in _study_dates(counts, rng):
        plan.append(_Study(
            index=len(plan), subject_index=s_index, subject_id=int(subject_ids[s_index]),
            study_id=int(study_ids[len(plan)]), split=splits[s_index], date=date, time=time,
            images=[], findings=[]))
    plan.sort(key=lambda s: (s.subject_id, s.study_id))
    for i, s in enumerate(plan):
        s.index = i

    # Exact counts of the rare report styles, so even a small phantom has each one.
    n_none = max(1, round(NO_SECTIONS_SHARE * studies)) if studies >= 10 else 0
    n_imp = max(1, round(IMPRESSION_ONLY_SHARE * studies)) if studies >= 10 else 0
    order = rng.permutation(studies)
    for i in order[:n_none]:
        plan[i].style = "no_sections"
    for i in order[n_none:n_none + n_imp]:
        plan[i].style = "impression_only"

    for s in plan:
        _fill_study(s, seed)

    # Blank ViewPosition on a few images (only of ordinary studies, so the rare report
    # styles stay importable and testable).
    candidates = [im for s in plan if s.style == "full" for im in s.images]
    n_blank = max(1, round(BLANK_VIEW_SHARE * sum(len(s.images) for s in plan))) if len(candidates) >= 10 else 0
    for i in sorted(rng.choice(len(candidates), n_blank, replace=False)) if n_blank else []:
        candidates[i].blank_view = True
    return plan + _test_cohort(plan, test_studies, seed)


_VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral"}


def _write_gzip_csv(path: Path, frame: pd.DataFrame) -> None:
    """CSV inside a gzip stream with no name and mtime 0, so the bytes depend on the data only."""
    data = frame.to_csv(index=False, lineterminator="\n").encode("utf-8")
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(data)


def _check_args(studies: int, size: int, seed: int, test_studies: int = 0) -> None:
    if not isinstance(studies, (int, np.integer)) or studies < 1:
        raise ConfigError(f"config key 'phantom_studies': must be a positive integer, got {studies!r}")
    if not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"config key 'phantom_size': must be an integer in {MIN_SIZE}..{MAX_SIZE}, got {size!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"config key 'phantom_seed': must be a non-negative integer, got {seed!r}")
    if not isinstance(test_studies, (int, np.integer)) or test_studies < 0:
        raise ConfigError(f"config key 'phantom_test_studies': must be a non-negative integer, got {test_studies!r}")


def _manifest(studies: int, size: int, seed: int, test_studies: int = 0) -> dict:
    return {"generator": "medclip_nb.phantom", "version": PHANTOM_VERSION,
            "studies": int(studies), "size": int(size), "seed": int(seed), "test_studies": int(test_studies)}


def phantom_is_current(out, studies: int, size: int, seed: int, test_studies: int = 0) -> bool:
    """True when `out` holds a complete phantom written with these arguments by this version.
    Relative paths are taken from the repository root."""
    out = resolve(out)
    path = out / PHANTOM_MANIFEST
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(recorded, dict) or not recorded.get("complete"):
        return False
    wanted = _manifest(studies, size, seed, test_studies)
    if any(recorded.get(k) != v for k, v in wanted.items()):
        return False
    tables = (SPLIT_TABLE, CHEXPERT_TABLE, METADATA_TABLE, SENTENCE_TABLE)
    return (out / "files").is_dir() and all((out / name).is_file() for name in tables)


def _clear_previous(out: Path, wanted: dict, force: bool) -> None:
    """Remove an earlier phantom's files (see provenance.py): refuse a folder that is not a
    phantom, a complete phantom of other parameters unless `force`, and a files/ tree holding
    anything the generator did not write."""
    from medclip_nb import provenance

    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"phantom output {out} exists and is not a folder")
    if not (out / PHANTOM_MANIFEST).exists():
        if (out / "files").exists() or any((out / n).exists() for n in (SPLIT_TABLE, CHEXPERT_TABLE, METADATA_TABLE)):
            raise DataError(f"refusing to overwrite {out}: it holds MIMIC-CXR files but no "
                            f"{PHANTOM_MANIFEST} (not a phantom)")
        return
    recorded = provenance.phantom_record(out)
    if recorded is None and not force:
        raise DataError(f"refusing to replace {out}: its {PHANTOM_MANIFEST} cannot be read (pass --force to replace it)")
    old = provenance.phantom_params(recorded)
    if old is not None and provenance.user_params(old) != provenance.user_params(wanted) and not force:
        raise DataError(
            f"{out} holds a phantom of {provenance.describe(old)}; replacing it with one of "
            f"{provenance.describe(wanted)} deletes its files/ and the datasets prepared from it: pass --force "
            f"(config key 'force'), or choose another phantom_dir")
    foreign = provenance.foreign_file(out / "files")
    if foreign is not None:
        raise DataError(f"refusing to delete {out / 'files'}: it holds {foreign}, which the phantom generator did "
                        f"not write; move it away first")
    if old is not None:
        provenance.remove_derived_datasets(out, old)
    (out / PHANTOM_MANIFEST).unlink()
    if (out / "files").is_dir():
        shutil.rmtree(out / "files")
    for name in (SPLIT_TABLE, CHEXPERT_TABLE, METADATA_TABLE, SENTENCE_TABLE):
        (out / name).unlink(missing_ok=True)


def generate_phantom(out, studies: int = 300, size: int = 256, seed: int = 0, test_studies: int = 0, *,
                     force: bool = False) -> dict:
    """Write a deterministic phantom MIMIC-CXR-JPG tree (images, reports, three tables) to `out`.

    About studies/3 patients with several studies each; patient-disjoint splits of about
    70/10/20 % (train/validate/test) of the studies. Each study has one frontal image (PA
    or AP) and about 25% also a lateral (LATERAL or LL); about 4% of images have a blank
    ViewPosition; about 3% of reports lack FINDINGS and about 1% have no sections at all.
    Images are `size` pixels tall and round(size * 2544 / 3056) wide. Same arguments, same
    bytes. `test_studies` adds that many test-only studies of new patients (a test cohort for
    evaluation sets big enough to separate methods; the other studies keep their bytes). An
    earlier phantom in `out` is replaced when it was incomplete or had the same
    arguments; one of other arguments only with `force` (the datasets prepared from it in `out`
    are deleted too); a folder holding other MIMIC files, or a files/ tree holding files the
    generator does not write, is refused (provenance.py). Relative paths are taken from the repository root. Returns a summary: studies,
    images, subjects and per-split counts (subjects, studies, images of each split).
    """
    _check_args(studies, size, seed, test_studies)
    out = resolve(out)
    manifest = _manifest(studies, size, seed, test_studies)
    _clear_previous(out, manifest, force)
    out.mkdir(parents=True, exist_ok=True)
    # Written first as incomplete: an interrupted run is recognised as a phantom and redone.
    (out / PHANTOM_MANIFEST).write_text(json.dumps({**manifest, "complete": False}, indent=2) + "\n")

    plan = _plan_studies(studies, seed, test_studies)
    patients: dict[int, Anatomy] = {}
    split_rows, label_rows, meta_rows = [], [], []
    sentence_table: dict[str, list[float]] = {}  # sentence key -> labels, first writing wins
    width = image_width(size)
    for s in progress(plan, desc="phantom", unit="study"):  # sorted by (subject_id, study_id)
        if s.subject_index not in patients:
            patients[s.subject_index] = sample_anatomy(np.random.default_rng([seed, _RNG_SUBJECT, s.subject_index]))
        rng = np.random.default_rng([seed, _RNG_STUDY, s.index, 1])
        views = [im.view for im in s.images]
        report = write_report(s.findings, views, s.style, rng)
        folder = out / "files" / f"p{str(s.subject_id)[:2]}" / f"p{s.subject_id}"
        study_dir = folder / f"s{s.study_id}"
        study_dir.mkdir(parents=True, exist_ok=True)
        (folder / f"s{s.study_id}.txt").write_text(report.text, encoding="utf-8")
        labels = study_labels(s.findings, report.negated, report.uncertain)
        for text, sentence_labels in report.sentence_labels:
            for piece in split_sentences(text):
                sentence_table.setdefault(piece, [sentence_labels[name] for name in CHEXPERT_LABELS])
        label_rows.append({"subject_id": s.subject_id, "study_id": s.study_id, **labels})
        frontal = next(v for v in views if v in ("PA", "AP"))
        for im in s.images:  # sorted by dicom_id
            anatomy = _study_anatomy(patients[s.subject_index], rng, im.view)
            image = render_chest(size, anatomy, s.findings, im.view, rng)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
            (study_dir / f"{im.dicom_id}.jpg").write_bytes(buffer.getvalue())
            split_rows.append({"dicom_id": im.dicom_id, "study_id": s.study_id, "subject_id": s.subject_id,
                               "split": s.split})
            procedure = "CHEST (PORTABLE AP)" if frontal == "AP" else "CHEST (PA AND LAT)"
            orientation = ("Recumbent" if rng.random() < 0.5 else "Erect") if frontal == "AP" else "Erect"
            meta_rows.append({
                "dicom_id": im.dicom_id, "subject_id": s.subject_id, "study_id": s.study_id,
                "PerformedProcedureStepDescription": procedure,
                "ViewPosition": "" if im.blank_view else im.view,
                "Rows": size, "Columns": width, "StudyDate": s.date, "StudyTime": s.time,
                "ProcedureCodeSequence_CodeMeaning": procedure,
                "ViewCodeSequence_CodeMeaning": "" if im.blank_view else _VIEW_MEANING[im.view],
                "PatientOrientationCodeSequence_CodeMeaning": "" if im.blank_view else orientation,
            })

    split_columns = ["dicom_id", "study_id", "subject_id", "split"]
    _write_gzip_csv(out / SPLIT_TABLE, pd.DataFrame(split_rows, columns=split_columns))
    label_columns = ["subject_id", "study_id", *CHEXPERT_LABELS]
    _write_gzip_csv(out / CHEXPERT_TABLE, pd.DataFrame(label_rows, columns=label_columns))
    _write_gzip_csv(out / METADATA_TABLE, pd.DataFrame(meta_rows, columns=list(METADATA_COLUMNS)))
    write_sentence_labels(out / SENTENCE_TABLE, dict(sorted(sentence_table.items())))

    summary = _summary(plan, studies, size, seed)
    (out / PHANTOM_MANIFEST).write_text(json.dumps({**manifest, "complete": True, "summary": summary}, indent=2) + "\n")
    return summary


def _summary(plan: list[_Study], studies: int, size: int, seed: int) -> dict:
    splits = {}
    for name in ("train", "validate", "test"):
        group = [s for s in plan if s.split == name]
        splits[name] = {"subjects": len({s.subject_id for s in group}), "studies": len(group),
                        "images": sum(len(s.images) for s in group)}
    images = [im for s in plan for im in s.images]
    return {
        "studies": len(plan),
        "images": len(images),
        "subjects": len({s.subject_id for s in plan}),
        "splits": splits,
        "frontal_images": sum(im.view in ("PA", "AP") for im in images),
        "lateral_images": sum(im.view in ("LATERAL", "LL") for im in images),
        "blank_view_images": sum(im.blank_view for im in images),
        "reports_without_findings": sum(s.style == "impression_only" for s in plan),
        "reports_without_sections": sum(s.style == "no_sections" for s in plan),
        "size": [image_width(size), size],
        "seed": seed,
        "version": PHANTOM_VERSION,
    }
