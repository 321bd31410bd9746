"""What a phantom study shows: its findings, drawn at random in the words its report uses.

Severity, side and location words are the MedCLIP prompt vocabulary of
`labels.PROMPT_VOCABULARY`. Uncertain (-1) findings are hedged in the report and drawn faintly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from medclip_nb.labels import CHEXPERT_LABELS, COMPETITION_TASKS, PROMPT_VOCABULARY

# Target shares of the phantom; see generate_phantom's docstring.
NO_FINDING_SHARE = 0.15
SINGLE_COMPETITION_SHARE = 0.58


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
# Effusion size words -> fraction of the lung height the fluid rises (laterally).
_EFFUSION_HEIGHT = {"tiny": 0.13, "small": 0.2, "": 0.3, "stable": 0.3, "decreased": 0.27,
                    "increased": 0.33, "large": 0.45}
_EFFUSION_WEIGHTS = {"tiny": 0.06, "small": 0.26, "": 0.18, "stable": 0.12, "decreased": 0.1,
                     "increased": 0.1, "large": 0.18}
_EDEMA_STRENGTH = {"moderate": 1.0, "": 0.9, "persistent": 0.9, "mild": 0.78,
                   "improvement in": 0.72, "decreased": 0.72}


def pick(rng: np.random.Generator, options: Sequence, weights: Sequence[float] | None = None):
    """One element of `options` (a Python object, not a numpy scalar)."""
    if weights is None:
        return options[int(rng.integers(len(options)))]
    p = np.asarray(weights, dtype=float)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def _side_of(rng, spec: str | None) -> tuple[str, ...]:
    if spec == "both":
        return ("right", "left")
    if spec is None:
        return (pick(rng, ["right", "left"]),)
    return (spec,)


def _vocabulary_words(rng, finding: str, locations_by_subtype: dict[str, list[str]]) -> tuple[str, str, str]:
    """(severity, subtype, location) from the prompt vocabulary; a subtype that only makes
    sense in some places (retrocardiac, bibasilar, bilateral) draws its location from those."""
    v = _VOCAB[finding]
    severity = pick(rng, v["severity"])
    subtype = pick(rng, v["subtype"])
    location = pick(rng, locations_by_subtype.get(subtype, v["location"]))
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
    phrase = pick(rng, _CARDIO_PHRASES, weights)
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
    subtype = pick(rng, v["subtype"])
    severity = pick(rng, ["", "persistent"]) if subtype.startswith("trace") else pick(rng, v["severity"])
    strength = _EDEMA_STRENGTH[severity] * (0.8 if subtype.startswith("trace") else 1.0)
    if not certain:
        severity, strength = "mild", 0.42
    return Finding("Edema", 1.0 if certain else -1.0, severity, subtype, "", ("right", "left"),
                   "perihilar", strength, words={"interstitial": "interstitial" in subtype})


def _pleural_effusion(rng, certain: bool) -> Finding:
    side = pick(rng, ["right", "left", "bilateral"], [0.35, 0.35, 0.3])
    subpulmonic = side != "bilateral" and rng.random() < 0.12
    if certain:
        severity = pick(rng, list(_EFFUSION_WEIGHTS), list(_EFFUSION_WEIGHTS.values()))
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
    size = pick(rng, ["small", "moderate", "large"], [0.5, 0.3, 0.2])
    rim = {"small": 0.035, "moderate": 0.07, "large": 0.12}[size]
    side = pick(rng, ["right", "left"])
    return Finding("Pneumothorax", 1.0, severity=size, sides=(side,),
                   zone="apical" if size == "small" else "lateral", extent=rim)


def _lung_lesion(rng) -> Finding:
    kind = pick(rng, ["nodule", "mass"], [0.6, 0.4])
    cm = round(float(rng.uniform(1.0, 2.6) if kind == "nodule" else rng.uniform(3.5, 6.0)), 1)
    side = pick(rng, ["right", "left"])
    zone = pick(rng, ["upper", "mid", "lower"])
    return Finding("Lung Lesion", 1.0, subtype=kind, sides=(side,), zone=zone, extent=cm)


def _support_devices(rng) -> Finding:
    kinds = ["ett", "enteric", "picc", "pacemaker"]
    first = pick(rng, kinds)
    chosen = {first}
    if rng.random() < 0.35:
        chosen.add(pick(rng, kinds))
    if rng.random() < 0.5:
        chosen.add("ecg")
    order = [k for k in kinds + ["ecg"] if k in chosen]
    return Finding("Support Devices", 1.0, devices=tuple(order),
                   words={"picc_side": pick(rng, ["right", "left"]), "ett_cm": int(rng.integers(3, 7))})


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
        findings.append(_COMPETITION_MAKERS[pick(rng, comp)](rng, True))
        if rng.random() < 0.08:
            findings.append(_support_devices(rng))
        return findings
    r2 = rng.random()
    if r2 < 0.35:  # two competition findings together
        a, b = rng.choice(len(comp), size=2, replace=False)
        findings += [_COMPETITION_MAKERS[comp[a]](rng, True), _COMPETITION_MAKERS[comp[b]](rng, True)]
    elif r2 < 0.55:  # one competition finding and one other
        findings.append(_COMPETITION_MAKERS[pick(rng, comp)](rng, True))
        findings.append(_OTHER_MAKERS[pick(rng, others)](rng))
    elif r2 < 0.75:  # other findings only
        picks = rng.choice(len(others), size=1 + int(rng.random() < 0.3), replace=False)
        findings += [_OTHER_MAKERS[others[i]](rng) for i in sorted(picks)]
    else:  # an uncertain competition finding, sometimes next to another finding
        findings.append(_COMPETITION_MAKERS[pick(rng, comp)](rng, False))
        if rng.random() < 0.3:
            findings.append(_OTHER_MAKERS[pick(rng, others)](rng))
    return findings


def study_labels(findings: Sequence[Finding], negated: Sequence[str],
                 uncertain: Sequence[str] = (), mentioned: Sequence[str] = ()) -> dict[str, float]:
    """CheXpert labels of a study (NaN = not mentioned), following the labeler's conventions:
    each label is read from its own mentions. Lung Opacity is positive where the text names an
    opacity (`mentioned`), not implied by atelectasis, consolidation or edema (the CheXpert
    labeler's Lung Opacity phrases are opacity words, so real label tables hold many
    consolidation-only studies). No Finding is 1 when no pathology other than support devices
    is positive or uncertain."""
    labels = {name: math.nan for name in CHEXPERT_LABELS}
    for f in findings:
        if not (labels[f.label] == 1.0):
            labels[f.label] = f.value
    for name in mentioned:
        labels[name] = 1.0
    for name in uncertain:
        if math.isnan(labels[name]):
            labels[name] = -1.0
    for name in negated:
        if math.isnan(labels[name]):
            labels[name] = 0.0
    pathology = [labels[n] for n in CHEXPERT_LABELS if n not in ("No Finding", "Support Devices")]
    if not any(v in (1.0, -1.0) for v in pathology):
        labels["No Finding"] = 1.0
    return labels
