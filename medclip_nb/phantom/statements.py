"""The statements of a phantom report: one sentence builder per finding (its FINDINGS text and its
IMPRESSION text, in the open phrasing of phrases.py) and the normal statements about absent
findings. Every builder draws its words from the study's stream in a fixed order.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import medclip_nb.phantom.phrases as P
from medclip_nb.phantom.findings import Finding, pick

_NEEDS_TAIL = re.compile(r"(?<!, )\{tail\}")  # a template whose change tail is not optional


@dataclass
class FindingText:
    findings: str  # FINDINGS text (one sentence, sometimes two)
    impression: str  # IMPRESSION sentence ("" for none)


def _template(rng, templates: list[str], change: str) -> str:
    """One template; those that need a change tail only when a change is stated."""
    usable = [t for t in templates if change or not _NEEDS_TAIL.search(t)]
    return pick(rng, usable)


def _change(rng, f: Finding) -> dict[str, str]:
    """{chg}: a change lead, {tail}: a change tail ("" when no change is stated); a template uses one."""
    change = f.words.get("change", "")
    if not change:
        return {"chg": "", "tail": ""}
    return {"chg": pick(rng, P.CHANGE_LEAD[change]), "tail": pick(rng, P.CHANGE_TAIL[change])}


def _place(rng, f: Finding) -> dict[str, str]:
    """{where} (prepositional) and {adj} (adjectival) phrases of the finding's side and zone."""
    both = len(f.sides) == 2
    zone = f.zone if f.zone in P.WHERE_PREP else "base"
    if both and zone in P.WHERE_PREP_BOTH:
        where, adj = pick(rng, P.WHERE_PREP_BOTH[zone]), pick(rng, P.WHERE_ADJ_BOTH[zone])
    else:
        side = f.sides[0] if f.sides else "right"
        where = pick(rng, P.WHERE_PREP[zone]).replace("{s}", side)
        adj = pick(rng, P.WHERE_ADJ[zone]).replace("{s}", side)
        if zone == "mid" and rng.random() < 0.3:
            where = pick(rng, P.MIDDLE[side])
    if f.location.startswith("at the ") and rng.random() < 0.12:  # the prompt vocabulary's own words
        where = f.location
    return {"where": where, "adj": adj}


def _say(rng, table: dict, f: Finding, slots: dict[str, str]) -> FindingText:
    """FINDINGS and IMPRESSION text of a finding from its table (hedged forms for -1)."""
    certain = f.value > 0
    change = "" if not certain else f.words.get("change", "")
    findings = P.expand(rng, _template(rng, table["findings" if certain else "hedged"], change), **slots)
    if certain and "detail" in table and rng.random() < 0.25:
        findings += " " + P.expand(rng, pick(rng, table["detail"]), **slots)
    impression = P.expand(rng, _template(rng, table["impression" if certain else "hedged_impression"], change),
                          **slots)
    return FindingText(findings, impression)


def _size(rng, f: Finding, table: dict[str, list[str]]) -> str:
    return pick(rng, table[f.words.get("grade", "moderate")])


def _atelectasis(f: Finding, rng) -> FindingText:
    first = f.subtype.split()[0] if f.subtype else "linear"
    slots = {**_change(rng, f), **_place(rng, f), "sz": _size(rng, f, P.SIZE), "kind": pick(rng, P.KIND[first])}
    return _say(rng, P.ATELECTASIS, f, slots)


def _cardiomegaly(f: Finding, rng) -> FindingText:
    grade = f.words.get("grade", "moderate")
    slots = {**_change(rng, f), "adv": pick(rng, P.HEART_ADVERB[grade]), "adj": pick(rng, P.HEART_ADJ[grade]),
             "phrase": f.subtype.replace(". other", ". Other") or "cardiomegaly"}
    return _say(rng, P.CARDIOMEGALY, f, slots)


def _consolidation(f: Finding, rng) -> FindingText:
    first = f.subtype.split()[0] if f.subtype else "airspace"
    slots = {**_change(rng, f), **_place(rng, f), "sz": _size(rng, f, P.SIZE), "desc": pick(rng, P.DESC[first])}
    text = _say(rng, P.CONSOLIDATION, f, slots)
    if f.value > 0 and f.words.get("pneumonia"):  # the radiologist's reading of the consolidation
        clause = P.choose(rng, pick(rng, P.CONSOLIDATION["pneumonia"]))
        text = FindingText(P.tidy(text.findings[:-1] + clause), text.impression)
    return text


def _edema(f: Finding, rng) -> FindingText:
    return _say(rng, P.EDEMA, f, {**_change(rng, f), "sz": _size(rng, f, P.SIZE)})


def _pleural_effusion(f: Finding, rng) -> FindingText:
    both = len(f.sides) == 2
    side = pick(rng, ["bilateral", "bilateral", "right and left"]) if both else pick(rng, [f.sides[0], f.sides[0],
                                                                                           f.sides[0] + "-sided"])
    noun = pick(rng, ["pleural effusions", "effusions"]) if both else pick(rng, ["pleural effusion", "effusion"])
    onside = "bilaterally" if both else pick(rng, [f"on the {f.sides[0]}", f"at the {f.sides[0]} base",
                                                   f"in the {f.sides[0]} hemithorax"])
    there = "[There are|There are again|Again seen are]" if both else "[There is a|There is again a|Again seen is a]"
    slots = {**_change(rng, f), "sz": _size(rng, f, P.EFFUSION_SIZE), "side": side, "noun": noun, "onside": onside,
             "s": "s" if both else "", "there": there, "verb": "are" if both else "is"}
    table = P.EFFUSION
    if f.zone == "subpulmonic" and f.value > 0 and rng.random() < 0.6:
        table = {**P.EFFUSION, "findings": P.EFFUSION["subpulmonic"]}
    return _say(rng, table, f, slots)


def _pneumothorax(f: Finding, rng) -> FindingText:
    cm = f"{f.extent * 40:.1f}"  # the rim as a share of a film about 40 cm tall
    slots = {**_change(rng, f), "sz": _size(rng, f, P.PNEUMOTHORAX_SIZE), "side": f.sides[0], "cm": cm}
    return _say(rng, P.PNEUMOTHORAX, f, slots)


def _lung_lesion(f: Finding, rng) -> FindingText:
    slots = {**_change(rng, f), **_place(rng, f), "cm": f"{f.extent:.1f}", "kind": f.subtype or "nodule"}
    return _say(rng, P.LESION, f, slots)


def _support_devices(f: Finding, rng) -> FindingText:
    side = f.words.get("picc_side", "right")
    parts = [P.expand(rng, pick(rng, P.DEVICES[d]), n=str(f.words.get("ett_cm", 4)), side=side, Side=side.title())
             for d in f.devices]
    return FindingText(" ".join(parts), P.expand(rng, pick(rng, P.DEVICES["impression"])))


def _enlarged_cardiomediastinum(f: Finding, rng) -> FindingText:
    return FindingText(P.expand(rng, pick(rng, P.MEDIASTINUM)), "")


SENTENCE_BUILDERS: dict[str, Callable[[Finding, np.random.Generator], FindingText]] = {
    "Atelectasis": _atelectasis,
    "Cardiomegaly": _cardiomegaly,
    "Consolidation": _consolidation,
    "Edema": _edema,
    "Pleural Effusion": _pleural_effusion,
    "Pneumothorax": _pneumothorax,
    "Lung Lesion": _lung_lesion,
    "Support Devices": _support_devices,
    "Enlarged Cardiomediastinum": _enlarged_cardiomediastinum,
}


def finding_text(f: Finding, rng) -> FindingText:
    """FINDINGS and IMPRESSION text of a finding."""
    builder = SENTENCE_BUILDERS.get(f.label)
    if builder is None:
        raise ValueError(f"no sentence for {f.label}")
    return builder(f, rng)


# --------------------------------------------------------------------------------------
# Normal statements about absent findings
# --------------------------------------------------------------------------------------

_LUNG_FINDINGS = {"Atelectasis", "Consolidation", "Edema", "Lung Lesion", "Pleural Effusion", "Pneumothorax"}
_RESOLVABLE = ("Atelectasis", "Consolidation", "Edema", "Pleural Effusion", "Pneumothorax")


@dataclass
class Normals:
    """The normal statements of a report, in the order stated, with the labels each reports absent."""

    present: set[str]  # labels of the study's findings
    rng: np.random.Generator
    statements: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)

    def state(self, table: list[tuple[str, tuple[str, ...]]]) -> None:
        template, negated = pick(self.rng, table)
        self.statements.append((P.expand(self.rng, template), negated))

    def maybe(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def free(self, *labels: str) -> bool:
        """None of these labels is a finding of the study."""
        return not any(label in self.present for label in labels)


def _heart(n: Normals) -> None:
    if n.free("Cardiomegaly", "Enlarged Cardiomediastinum") and n.maybe(0.3):
        n.state(P.HEART_AND_MEDIASTINUM_NORMAL)
        return
    if n.free("Cardiomegaly") and n.maybe(0.75):
        n.state(P.HEART_NORMAL)
    if n.free("Enlarged Cardiomediastinum") and n.maybe(0.55):
        n.state(P.MEDIASTINUM_NORMAL)


def _lungs_and_pleura(n: Normals) -> None:
    if n.free("Consolidation", "Pleural Effusion", "Pneumothorax") and n.maybe(0.3):
        n.state(P.PLEURA_NORMAL)
    else:
        if n.free("Consolidation") and n.maybe(0.7):
            lungs_clear = not (n.present & _LUNG_FINDINGS)
            n.state(P.OPACITY_NORMAL if lungs_clear and n.maybe(0.3) else P.CONSOLIDATION_NORMAL)
        if n.free("Pleural Effusion", "Pneumothorax") and n.maybe(0.8):
            n.state(P.EFFUSION_PNEUMOTHORAX_NORMAL)
        elif n.free("Pleural Effusion") and n.maybe(0.7):
            n.state(P.EFFUSION_NORMAL)
        elif n.free("Pneumothorax") and n.maybe(0.7):
            n.state(P.PNEUMOTHORAX_NORMAL)
    if n.free("Edema") and n.maybe(0.6):
        n.state(P.EDEMA_NORMAL)
    if not n.present & _LUNG_FINDINGS and n.maybe(0.45):
        n.state(P.LUNGS_NORMAL)
    if n.free("Lung Lesion") and n.maybe(0.12):
        n.state(P.LESION_NORMAL)
    absent = [label for label in _RESOLVABLE if n.free(label)]
    if absent and n.maybe(0.06):  # a follow-up study: a finding of an earlier one has gone
        label = pick(n.rng, absent)
        phrase = pick(n.rng, P.RESOLVED_PHRASE[label])
        n.statements.append((P.expand(n.rng, pick(n.rng, P.RESOLVED), phrase=phrase), (label,)))


def normal_statements(present: set[str], rng) -> Normals:
    """Normal statements ("No pleural effusion or pneumothorax.") for some absent findings, bones and
    incidental remarks that name no finding."""
    normals = Normals(present, rng)
    _heart(normals)
    _lungs_and_pleura(normals)
    if normals.maybe(0.5):
        normals.state(P.BONES_NORMAL)
    for _ in range(2):
        if normals.maybe(0.2):
            normals.state(P.INCIDENTAL)
    return normals
