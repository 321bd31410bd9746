"""What a phantom study shows: its findings, each with a grade that sets both how big and dense it
is drawn and the words its report uses.

A finding's `severity`, `subtype` and `location` are MedCLIP prompt-vocabulary words
(`labels.PROMPT_VOCABULARY`) where the label has a vocabulary; the report (reports.py) says them
in its own, open phrasing. Every finding has a grade (`words["grade"]`: subtle, mild, moderate,
severe) drawn first: the grade sets the drawn contrast (`strength`) and size (`extent`) over a
continuous range, down to findings near the noise of the image (subtle), and the size word of the
report. A change since a prior study (`words["change"]`: new, stable, increased, ...) is drawn
apart from the grade. Uncertain (-1) findings are hedged in the report and drawn subtle.

`finding_from_words(label, severity, sides, zone)` builds a finding from report words (a mapped
Open-i report, for instance) with the same grade tables, for `render.render_chest`.
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

GRADES = ("subtle", "mild", "moderate", "severe")
GRADE_WEIGHTS = (0.22, 0.33, 0.30, 0.15)
# Changes since a prior study; "" = none stated.
CHANGES = ("", "new", "stable", "unchanged", "increased", "decreased", "improved", "persistent")
CHANGE_WEIGHTS = (0.55, 0.08, 0.1, 0.07, 0.06, 0.06, 0.04, 0.04)
# Report size words -> grade (finding_from_words; also what the sampler's grades are called).
GRADE_OF_WORD = {"subtle": "subtle", "minimal": "subtle", "trace": "subtle", "tiny": "subtle", "borderline": "subtle",
                 "mild": "mild", "small": "mild", "": "moderate", "moderate": "moderate",
                 "severe": "severe", "large": "severe", "marked": "severe", "extensive": "severe"}


@dataclass
class Finding:
    """One finding of a study: the CheXpert label it sets and how it is drawn and described.

    `severity`, `subtype` and `location` are prompt-vocabulary words where the label has a
    vocabulary; `sides` are the patient sides drawn ("right" is the image's left); `zone`
    is where on those sides ("upper", "mid", "lower", "base", "retrocardiac", "apical",
    "perihilar", "subpulmonic", "lateral"); `strength` scales contrast (about 0.15 near the noise of
    the image to 1.05); `extent` is the size parameter of the finding (effusion height as a
    fraction of the lung height, cardiothoracic ratio, consolidation radius, atelectasis band
    length, nodule diameter in cm, pneumothorax rim width); `words` holds the grade, the change
    and other report words.
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
    words: dict = field(default_factory=dict)  # grade, change, size names, cm, ...


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

# Cardiomegaly phrases grouped by the grade they describe.
_CARDIO_PHRASES = _VOCAB["Cardiomegaly"]["subtype"]
_CARDIO_GRADE = {
    p: ("subtle" if ("upper limits" in p or "borderline" in p) else
        "severe" if "severe" in p else
        "mild" if "mild" in p else "moderate")
    for p in _CARDIO_PHRASES
}
# Per label and grade: (strength range, extent range). Ranges overlap a little at the seams.
_SHAPES: dict[str, dict[str, tuple[tuple[float, float], tuple[float, float]]]] = {
    "Atelectasis": {"subtle": ((0.18, 0.38), (0.3, 0.45)), "mild": ((0.38, 0.6), (0.4, 0.6)),
                    "moderate": ((0.6, 0.84), (0.5, 0.7)), "severe": ((0.85, 1.05), (0.55, 0.75))},
    "Cardiomegaly": {"subtle": ((1.0, 1.0), (0.50, 0.55)), "mild": ((1.0, 1.0), (0.55, 0.61)),
                     "moderate": ((1.0, 1.0), (0.61, 0.67)), "severe": ((1.0, 1.0), (0.67, 0.75))},
    "Consolidation": {"subtle": ((0.18, 0.38), (0.045, 0.07)), "mild": ((0.38, 0.6), (0.06, 0.09)),
                      "moderate": ((0.6, 0.84), (0.08, 0.115)), "severe": ((0.84, 1.05), (0.1, 0.14))},
    "Edema": {"subtle": ((0.18, 0.38), (0.0, 0.0)), "mild": ((0.38, 0.6), (0.0, 0.0)),
              "moderate": ((0.6, 0.84), (0.0, 0.0)), "severe": ((0.84, 1.05), (0.0, 0.0))},
    "Pleural Effusion": {"subtle": ((0.45, 0.75), (0.06, 0.12)), "mild": ((0.7, 0.95), (0.12, 0.2)),
                         "moderate": ((0.85, 1.0), (0.2, 0.3)), "severe": ((0.95, 1.05), (0.32, 0.48))},
    "Pneumothorax": {"subtle": ((1.0, 1.0), (0.015, 0.03)), "mild": ((1.0, 1.0), (0.03, 0.05)),
                     "moderate": ((1.0, 1.0), (0.05, 0.08)), "severe": ((1.0, 1.0), (0.09, 0.13))},
    "Lung Lesion": {"subtle": ((0.25, 0.5), (0.6, 1.2)), "mild": ((0.45, 0.8), (1.0, 2.0)),
                    "moderate": ((0.7, 1.0), (1.8, 3.0)), "severe": ((0.85, 1.05), (3.2, 6.0))},
}
_EFFUSION_SIZE = {"subtle": "tiny", "mild": "small", "moderate": "moderate", "severe": "large"}
_PNEUMOTHORAX_SIZE = {"subtle": "tiny", "mild": "small", "moderate": "moderate", "severe": "large"}


def pick(rng: np.random.Generator, options: Sequence, weights: Sequence[float] | None = None):
    """One element of `options` (a Python object, not a numpy scalar)."""
    if weights is None:
        return options[int(rng.integers(len(options)))]
    p = np.asarray(weights, dtype=float)
    return options[int(rng.choice(len(options), p=p / p.sum()))]


def shape(label: str, grade: str, rng: np.random.Generator | None = None) -> tuple[float, float]:
    """(strength, extent) of a finding of this label and grade: uniform over the grade's ranges,
    or their midpoints without `rng`."""
    (s0, s1), (e0, e1) = _SHAPES[label][grade]
    if rng is None:
        return 0.5 * (s0 + s1), 0.5 * (e0 + e1)
    return float(rng.uniform(s0, s1)), float(rng.uniform(e0, e1))


def _grade(rng, certain: bool) -> str:
    return pick(rng, GRADES, GRADE_WEIGHTS) if certain else "subtle"


def _side_of(rng, spec: str | None) -> tuple[str, ...]:
    if spec == "both":
        return ("right", "left")
    if spec is None:
        return (pick(rng, ["right", "left"]),)
    return (spec,)


def _vocabulary_words(rng, finding: str, locations_by_subtype: dict[str, list[str]]) -> tuple[str, str]:
    """(subtype, location) from the prompt vocabulary; a subtype that only makes sense in some
    places (retrocardiac, bibasilar, bilateral) draws its location from those."""
    v = _VOCAB[finding]
    subtype = pick(rng, v["subtype"])
    location = pick(rng, locations_by_subtype.get(subtype, v["location"]))
    return subtype, location


def _words(grade: str, change: str, **more) -> dict:
    return {"grade": grade, "change": change, **more}


def _atelectasis(rng, certain: bool) -> Finding:
    grade, change = _grade(rng, certain), pick(rng, CHANGES, CHANGE_WEIGHTS)
    subtype, location = _vocabulary_words(rng, "Atelectasis", {
        "bibasilar atelectasis": ["at the lung bases", "at the bilateral lung bases"],
        "retrocardiac atelectasis": ["at the left lower lobe", "at the left lung base"],
    })
    side, zone = _ATELECTASIS_ZONES[location]
    if subtype == "retrocardiac atelectasis":
        zone = "retrocardiac"
    strength, extent = shape("Atelectasis", grade, rng)
    severity = {"subtle": "minimal", "mild": "mild"}.get(grade, "")
    return Finding("Atelectasis", 1.0 if certain else -1.0, severity, subtype, location, _side_of(rng, side), zone,
                   strength, extent, words=_words(grade, change))


def _cardiomegaly(rng, certain: bool) -> Finding:
    grade, change = _grade(rng, certain), pick(rng, CHANGES, CHANGE_WEIGHTS)
    phrase = pick(rng, [p for p in _CARDIO_PHRASES if _CARDIO_GRADE[p] == grade] or _CARDIO_PHRASES)
    strength, extent = shape("Cardiomegaly", grade, rng)
    return Finding("Cardiomegaly", 1.0 if certain else -1.0, subtype=phrase, strength=strength, extent=extent,
                   words=_words(grade, change))


def _consolidation(rng, certain: bool) -> Finding:
    grade, change = _grade(rng, certain), pick(rng, CHANGES, CHANGE_WEIGHTS)
    subtype, location = _vocabulary_words(rng, "Consolidation", {
        "bilateral consolidation": ["at the lower lung zone", "at the upper lung zone"],
        "retrocardiac consolidation": ["at the left lower lobe", "at the left lung base"],
    })
    side, zone = _CONSOLIDATION_ZONES[location]
    if subtype == "bilateral consolidation":
        side = "both"
    strength, extent = shape("Consolidation", grade, rng)
    severity = {"increased": "increased", "improved": "improved", "new": "appearance of"}.get(change, "")
    return Finding("Consolidation", 1.0 if certain else -1.0, severity, subtype, location, _side_of(rng, side), zone,
                   strength, extent, words=_words(grade, change, pneumonia=bool(rng.random() < 0.35)))


def _edema(rng, certain: bool) -> Finding:
    grade, change = _grade(rng, certain), pick(rng, CHANGES, CHANGE_WEIGHTS)
    subtype = pick(rng, _VOCAB["Edema"]["subtype"])
    strength, _ = shape("Edema", grade, rng)
    severity = {"persistent": "persistent", "improved": "improvement in", "decreased": "decreased"}.get(
        change, {"subtle": "mild", "mild": "mild", "moderate": "moderate"}.get(grade, ""))
    return Finding("Edema", 1.0 if certain else -1.0, severity, subtype, "", ("right", "left"), "perihilar", strength,
                   words=_words(grade, change, interstitial="interstitial" in subtype))


def _pleural_effusion(rng, certain: bool) -> Finding:
    grade, change = _grade(rng, certain), pick(rng, CHANGES, CHANGE_WEIGHTS)
    side = pick(rng, ["right", "left", "bilateral"], [0.35, 0.35, 0.3])
    subpulmonic = side != "bilateral" and rng.random() < 0.12
    strength, extent = shape("Pleural Effusion", grade, rng)
    sides = ("right", "left") if side == "bilateral" else (side,)
    subtype = "subpulmonic pleural effusion" if subpulmonic else (
        "bilateral pleural effusion" if side == "bilateral" else "pleural effusion")
    return Finding("Pleural Effusion", 1.0 if certain else -1.0, _EFFUSION_SIZE[grade], subtype, side, sides,
                   "subpulmonic" if subpulmonic else "base", strength, extent, words=_words(grade, change))


def _pneumothorax(rng) -> Finding:
    grade = pick(rng, GRADES, (0.2, 0.4, 0.25, 0.15))
    strength, rim = shape("Pneumothorax", grade, rng)
    zone = "apical" if grade in ("subtle", "mild") else "lateral"
    return Finding("Pneumothorax", 1.0, severity=_PNEUMOTHORAX_SIZE[grade], sides=(pick(rng, ["right", "left"]),),
                   zone=zone, strength=strength, extent=rim, words=_words(grade, pick(rng, CHANGES, CHANGE_WEIGHTS)))


def _lung_lesion(rng) -> Finding:
    grade = pick(rng, GRADES, GRADE_WEIGHTS)
    strength, cm = shape("Lung Lesion", grade, rng)
    kind = "mass" if cm >= 3.0 else "nodule"
    return Finding("Lung Lesion", 1.0, subtype=kind, sides=(pick(rng, ["right", "left"]),),
                   zone=pick(rng, ["upper", "mid", "lower"]), strength=strength, extent=round(cm, 1),
                   words=_words(grade, pick(rng, CHANGES, CHANGE_WEIGHTS)))


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
                   words={"picc_side": pick(rng, ["right", "left"]), "ett_cm": int(rng.integers(3, 7)),
                          "grade": "moderate", "change": pick(rng, ["", "", "", "stable", "unchanged", "new"])})


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


def finding_from_words(label: str, severity: str = "", sides: Sequence[str] = (), zone: str = "",
                       value: float = 1.0, rng: np.random.Generator | None = None) -> Finding:
    """A finding built from report words, for `render.render_chest`: `severity` a size word
    (mild, moderate, severe, small, large, borderline, minimal, trace, tiny, or ""), `sides` the
    patient's sides ("right", "left"), `zone` one of Finding's zones (defaults per label).
    Strength and extent come from the grade tables the sampler uses (midpoints without `rng`);
    an uncertain finding (`value` -1) is drawn subtle. Cardiomegaly and Enlarged Cardiomediastinum
    ignore sides and zone; Support Devices draws an ECG lead set."""
    grade = GRADE_OF_WORD.get(severity.strip().lower(), "moderate") if value > 0 else "subtle"
    sides = tuple(sides) or (("right", "left") if label in ("Edema",) else ("right",))
    default_zone = {"Edema": "perihilar", "Pleural Effusion": "base", "Pneumothorax": "apical",
                    "Atelectasis": "base", "Consolidation": "lower", "Lung Lesion": "mid"}
    zone = zone or default_zone.get(label, "")
    words = {"grade": grade, "change": ""}
    if label == "Support Devices":
        return Finding(label, value, devices=("ecg",), words={**words, "picc_side": "right", "ett_cm": 4})
    if label not in _SHAPES:
        return Finding(label, value, severity=severity, sides=sides, zone=zone, words=words)
    strength, extent = shape(label, grade, rng)
    if label == "Lung Lesion":
        words["kind"] = "mass" if extent >= 3.0 else "nodule"
    return Finding(label, value, severity=severity, sides=sides, zone=zone, strength=strength, extent=extent,
                   subtype=words.get("kind", ""), location=" ".join(sides), words=words)


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
