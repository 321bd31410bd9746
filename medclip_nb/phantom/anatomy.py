"""A patient's chest (lung size, heart size, diaphragm, ribs, exposure) and how it varies per study."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np


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


def study_anatomy(patient: Anatomy, rng: np.random.Generator, view: str) -> Anatomy:
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
