"""Phantom radiographs for Open-i reports (`prepare-iu --images phantom`): one frontal image per
report, drawn by the phantom's renderer from the report's mapped MeSH codes, so real report text
is paired with an image that shows what the report says.

Each mapped code becomes a phantom `Finding` with its qualifiers: side (`left`, `right`,
`bilateral` -> both), zone (`base`, `lower lobe` -> lower, `middle lobe` / `lingula` / `hilum` -> mid,
`upper lobe` -> upper, `apex` -> apical, `retrocardiac`), severity (`borderline`, `mild`, `small`,
`moderate`, `large`, `severe`: the drawn size or contrast). What a code leaves open (a side, a zone)
is drawn from the report's own seeded stream. Lung Opacity and Pneumonia are drawn with the
consolidation drawer (fainter for an opacity); Fracture and Pleural Other have no drawer and are not
drawn (`NOT_DRAWN`; the prepare report counts them). Unmapped codes (granulomas, spine) are not drawn.
"""

from __future__ import annotations

import io
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import numpy as np

from medclip_nb.data.iu_mesh import MappedCode
from medclip_nb.phantom import Finding, render_chest, sample_anatomy, study_anatomy
from medclip_nb.progress import progress

NOT_DRAWN = ("Fracture", "Pleural Other")
JPEG_QUALITY = 90
_ZONES = {"base": "base", "lower lobe": "lower", "middle lobe": "mid", "lingula": "mid", "hilum": "mid",
          "upper lobe": "upper", "apex": "apical", "retrocardiac": "retrocardiac", "costophrenic angle": "base"}
_SEVERITIES = ("borderline", "mild", "small", "moderate", "large", "severe")
_STRENGTH = {"borderline": 0.7, "mild": 0.8, "small": 0.85, "": 1.0, "moderate": 1.0, "large": 1.0, "severe": 1.0}
_CTR = {"borderline": (0.56, 0.59), "mild": (0.6, 0.64), "small": (0.6, 0.64), "": (0.64, 0.68),
        "moderate": (0.64, 0.68), "large": (0.7, 0.75), "severe": (0.7, 0.75)}
_EFFUSION_HEIGHT = {"borderline": 0.13, "mild": 0.2, "small": 0.2, "": 0.3, "moderate": 0.3, "large": 0.45,
                    "severe": 0.45}
_PNEUMOTHORAX_RIM = {"borderline": 0.035, "mild": 0.035, "small": 0.035, "": 0.07, "moderate": 0.07,
                     "large": 0.12, "severe": 0.12}
_DEVICES = {"catheters, indwelling": "picc", "implanted medical device": "pacemaker", "tube, inserted": "ett",
            "medical device": "ecg", "stents": "ecg"}


def _words(code: MappedCode) -> tuple[tuple[str, ...] | None, str | None, str]:
    """(sides or None, zone or None, severity) from a code's qualifiers."""
    q = set(code.qualifiers)
    sides = ("right", "left") if "bilateral" in q else tuple(s for s in ("right", "left") if s in q) or None
    zone = next((_ZONES[z] for z in code.qualifiers if z in _ZONES), None)
    severity = next((s for s in _SEVERITIES if s in q), "")
    return sides, zone, severity


def phantom_findings(codes: list[MappedCode], rng: np.random.Generator) -> list[Finding]:
    """The phantom findings that draw a report's mapped codes (module docstring)."""
    findings: list[Finding] = []
    devices: list[str] = []
    device_side = "right"
    for code in codes:
        sides, zone, severity = _words(code)
        side = sides or (("right", "left")[int(rng.integers(2))],)
        strength = _STRENGTH[severity] * (0.5 if code.value < 0 else 1.0)
        label = code.label
        if label in ("Atelectasis", "Consolidation", "Lung Opacity", "Pneumonia"):
            faint = 0.65 if label == "Lung Opacity" else 1.0
            drawn_as = "Atelectasis" if label == "Atelectasis" else "Consolidation"
            findings.append(Finding(drawn_as, code.value, severity=severity, sides=side,
                                    zone=zone or ("base" if drawn_as == "Atelectasis" else "lower"),
                                    strength=strength * faint))
        elif label == "Cardiomegaly":
            low, high = (0.52, 0.55) if code.value < 0 else _CTR[severity]
            findings.append(Finding(label, code.value, strength=strength, extent=float(rng.uniform(low, high))))
        elif label == "Edema":
            findings.append(Finding(label, code.value, severity=severity, sides=("right", "left"), zone="perihilar",
                                    strength=0.9 * strength, words={"interstitial": "interstitial" in code.qualifiers}))
        elif label == "Pleural Effusion":
            findings.append(Finding(label, code.value, severity=severity, sides=side, zone="base", strength=strength,
                                    extent=_EFFUSION_HEIGHT[severity] * float(rng.uniform(0.92, 1.08))))
        elif label == "Pneumothorax":
            findings.append(Finding(label, code.value, severity=severity, sides=side[:1],
                                    zone="apical" if severity in ("", "small", "mild") else "lateral",
                                    extent=_PNEUMOTHORAX_RIM[severity]))
        elif label == "Lung Lesion":
            mass = code.term == "mass"
            cm = round(float(rng.uniform(3.5, 6.0) if mass else rng.uniform(1.0, 2.6)), 1)
            findings.append(Finding(label, code.value, subtype="mass" if mass else "nodule", sides=side[:1],
                                    zone=zone if zone in ("upper", "mid", "lower") else "mid", extent=cm))
        elif label == "Enlarged Cardiomediastinum":
            findings.append(Finding(label, code.value))
        elif label == "Support Devices":
            devices.append(_DEVICES.get(code.term, "ecg"))
            device_side = side[0]
    if devices:
        findings.append(Finding("Support Devices", 1.0, devices=tuple(dict.fromkeys(devices)),
                                words={"picc_side": device_side, "ett_cm": 4}))
    return findings


def render_report_image(codes: list[MappedCode], number: int, size: int, seed: int) -> bytes:
    """The JPEG bytes of one report's phantom radiograph (PA), drawn from the report's own stream
    (seed, report number): the same report, seed and size give the same bytes."""
    rng = np.random.default_rng([seed, 25, number])
    findings = phantom_findings(codes, rng)
    anatomy = study_anatomy(sample_anatomy(rng), rng, "PA")
    image = render_chest(size, anatomy, findings, "PA", rng)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def _render_chunk(folder: Path, size: int, seed: int, jobs: list[tuple[str, int, list[MappedCode]]]) -> int:
    for name, number, codes in jobs:
        (folder / name).write_bytes(render_report_image(codes, number, size, seed))
    return len(jobs)


def render_images(folder: Path, jobs: list[tuple[str, int, list[MappedCode]]], size: int, seed: int,
                  workers: int | None = None) -> None:
    """Write one JPEG per job (file name, report number, mapped codes) into `folder`, on `workers`
    spawned processes (default: one per core this process may use); the bytes do not depend on the worker count."""
    folder.mkdir(parents=True, exist_ok=True)
    chunks = [jobs[i:i + 50] for i in range(0, len(jobs), 50)]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = min(len(chunks), workers or cores)
    render = partial(_render_chunk, folder, size, seed)
    # spawn, not fork: a notebook's kernel may hold torch's threads, which fork does not copy safely
    with (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers > 1
          else nullcontext()) as pool, progress(total=len(jobs), desc="prepare-iu: phantom images",
                                                unit="img") as bar:
        for done in (pool.map(render, chunks) if pool else map(render, chunks)):
            bar.update(done)
