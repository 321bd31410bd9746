"""Radiology reports of phantom studies in MIMIC's style, in the words of their findings.

Every finding has its own sentence builder (a FINDINGS sentence and an IMPRESSION sentence);
the report adds negative statements for some absent findings, shuffles the statements, and
lays them out under MIMIC's header and sections. The random draws happen in a fixed order
(finding sentences, negative statements, shuffle, impression, header), so the same stream
gives the same report.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from medclip_nb.phantom.findings import Finding, pick, study_labels

_CARDIO_IMPRESSION = {
    "borderline": ["Borderline heart size.", "Heart size at the upper limits of normal."],
    "mild": ["Mild cardiomegaly.", "Mildly enlarged cardiac silhouette."],
    "moderate": ["Cardiomegaly.", "Stable cardiomegaly.", "Unchanged cardiomegaly."],
    "severe": ["Severe cardiomegaly.", "Persistent severe cardiomegaly."],
}
# Words that describe a change since a prior study: the report then names a comparison.
_TEMPORAL_WORDS = ("stable", "increased", "decreased", "improved", "improvement", "persistent",
                   "unchanged", "redemonstration", "remains", "residual")
_NORMAL_IMPRESSIONS = ["No acute cardiopulmonary process.", "No acute intrathoracic abnormality.",
                       "No evidence of acute cardiopulmonary disease.", "Normal chest radiograph."]
_INDICATIONS = ["shortness of breath", "cough and fever", "chest pain", "hypoxia", "dyspnea on exertion",
                "fever, evaluate for pneumonia", "line placement", "weakness", "tachycardia", "fall"]


def _cap(sentence: str) -> str:
    sentence = sentence.strip()
    return sentence[:1].upper() + sentence[1:]


def _words(*parts: str) -> str:
    return " ".join(p for p in parts if p)


# --------------------------------------------------------------------------------------
# One sentence builder per finding: (FINDINGS sentence, IMPRESSION sentence)
# --------------------------------------------------------------------------------------


def _atelectasis_sentences(f: Finding, rng) -> tuple[str, str]:
    if f.value < 0:
        s = pick(rng, [f"Possible {_words(f.severity, 'atelectasis')} {f.location}.",
                        f"Streaky opacity {f.location} may reflect atelectasis."])
        return s, f"Possible atelectasis {f.location}."
    s = pick(rng, [f"{_words(f.severity, f.subtype)} {f.location}.",
                    f"There is {_words(f.severity, f.subtype)} {f.location}.",
                    f"{_words(f.severity, f.subtype)} is seen {f.location}."])
    return _cap(s), _cap(f"{_words(f.severity, f.subtype)} {f.location}.")


def _cardiomegaly_sentences(f: Finding, rng) -> tuple[str, str]:
    if f.value < 0:
        return ("The heart size is possibly mildly enlarged, though this may be accentuated by technique.",
                "Possible mild cardiomegaly.")
    phrase = f.subtype.replace(". other", ". Other")
    return _cap(phrase + "."), pick(rng, _CARDIO_IMPRESSION[f.words["grade"]])


def _consolidation_sentences(f: Finding, rng) -> tuple[str, str]:
    if f.value < 0:
        s = pick(rng, [f"Cannot exclude early consolidation {f.location}.",
                        f"Subtle opacity {f.location}; early consolidation cannot be excluded."])
        return s, f"Cannot exclude early consolidation {f.location}."
    body = _words(f.severity, f.words.get("descriptor", "") + f.subtype)
    s = pick(rng, [f"{body} {f.location}.", f"There is {body} {f.location}."])
    imp = _cap(f"{f.words.get('descriptor', '') + f.subtype} {f.location}")
    if f.words.get("pneumonia"):
        s += " Findings may reflect pneumonia in the appropriate clinical setting."
        imp += ", which may reflect pneumonia"
    return _cap(s), imp + "."


def _edema_sentences(f: Finding, rng) -> tuple[str, str]:
    if f.value < 0:
        s = pick(rng, ["Possible mild pulmonary edema.",
                        "Mild vascular congestion; early pulmonary edema cannot be excluded."])
        return s, "Possible mild pulmonary edema."
    body = _words(f.severity, f.subtype)
    s = pick(rng, [f"{body}.", f"There is {body}.", f"{body} with perihilar haziness."])
    return _cap(s), _cap(body + ".")


def _pleural_effusion_sentences(f: Finding, rng) -> tuple[str, str]:
    plural = f.location == "bilateral" and rng.random() < 0.5
    noun = f.subtype.replace("bilateral ", "") + ("s" if plural else "")
    if f.value < 0:
        s = pick(rng, [f"Possible small {f.location} {noun}.",
                        f"Blunting of the {f.location} costophrenic angle may reflect a small {noun}."])
        return s, f"Possible small {f.location} {noun}."
    body = _words(f.severity, f.location, noun)
    s = pick(rng, [f"{body}.", f"There is a {body}.", f"{body} is present."])
    if s.startswith("There is a ") and f.severity == "":
        s = f"There is a {f.location} {noun}."
    return _cap(s), _cap(body + ".")


def _pneumothorax_sentences(f: Finding, rng) -> tuple[str, str]:
    side = f.sides[0]
    where = "apical " if f.zone == "apical" else ""
    s = f"{f.severity} {side} {where}pneumothorax."
    return _cap(s), _cap(f"{f.severity} {side} pneumothorax.")


def _lung_lesion_sentences(f: Finding, rng) -> tuple[str, str]:
    side, kind = f.sides[0], f.subtype
    s = pick(rng, [f"There is a {f.extent} cm {kind} in the {side} {f.zone} lung zone.",
                    f"A {f.extent} cm {kind} projects over the {side} {f.zone} lung zone."])
    return s, f"{f.extent} cm {side} {f.zone} lung {kind}; chest CT is recommended for further evaluation."


def _support_devices_sentences(f: Finding, rng) -> tuple[str, str]:
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


def _enlarged_cardiomediastinum_sentences(f: Finding, rng) -> tuple[str, str]:
    return "The cardiomediastinal silhouette is enlarged.", ""


_SENTENCE_BUILDERS: dict[str, Callable[[Finding, np.random.Generator], tuple[str, str]]] = {
    "Atelectasis": _atelectasis_sentences,
    "Cardiomegaly": _cardiomegaly_sentences,
    "Consolidation": _consolidation_sentences,
    "Edema": _edema_sentences,
    "Pleural Effusion": _pleural_effusion_sentences,
    "Pneumothorax": _pneumothorax_sentences,
    "Lung Lesion": _lung_lesion_sentences,
    "Support Devices": _support_devices_sentences,
    "Enlarged Cardiomediastinum": _enlarged_cardiomediastinum_sentences,
}


def _finding_sentence(f: Finding, rng) -> tuple[str, str]:
    """(FINDINGS sentence, IMPRESSION sentence) of a finding, in the vocabulary's words."""
    builder = _SENTENCE_BUILDERS.get(f.label)
    if builder is None:
        raise ValueError(f"no sentence for {f.label}")
    return builder(f, rng)


# --------------------------------------------------------------------------------------
# Negative statements about absent findings
# --------------------------------------------------------------------------------------


@dataclass
class _Normals:
    """The negative statements of a report, in the order stated: each sentence, the labels
    the report sets to 0.0, and (sentence, labels) for the sentence-label table."""

    present: set[str]  # labels of the study's findings
    rng: np.random.Generator
    sentences: list[str] = field(default_factory=list)
    negated: list[str] = field(default_factory=list)
    labelled: list[tuple[str, dict]] = field(default_factory=list)

    def state(self, sentence: str, *absent: str) -> None:
        self.sentences.append(sentence)
        self.negated.extend(absent)
        self.labelled.append((sentence, study_labels((), absent)))

    def maybe(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def free(self, *labels: str) -> bool:
        """None of these labels is a finding of the study."""
        return not any(label in self.present for label in labels)


def _state_heart(n: _Normals) -> None:
    if n.free("Cardiomegaly") and n.maybe(0.8):
        n.state(pick(n.rng, ["Heart size is normal.", "The heart is normal in size.", "Normal heart size."]),
                "Cardiomegaly")
    if n.free("Enlarged Cardiomediastinum") and n.maybe(0.6):
        if "Cardiomegaly" in n.present:
            n.state("The mediastinal and hilar contours are unremarkable.", "Enlarged Cardiomediastinum")
        else:
            n.state(pick(n.rng, ["The cardiomediastinal silhouette is within normal limits.",
                                  "The mediastinal and hilar contours are normal."]), "Enlarged Cardiomediastinum")


def _state_lungs_and_pleura(n: _Normals) -> None:
    pleura: tuple[str, ...] = ()  # (sentence, *labels it negates), stated after the consolidation one
    if n.free("Consolidation", "Pleural Effusion", "Pneumothorax") and n.maybe(0.3):
        pleura = ("There is no focal consolidation, pleural effusion or pneumothorax.",
                  "Consolidation", "Pleural Effusion", "Pneumothorax")
    else:
        if n.free("Consolidation") and n.maybe(0.7):
            n.state(pick(n.rng, ["No focal consolidation.", "There is no focal consolidation."]), "Consolidation")
        if n.free("Pleural Effusion", "Pneumothorax") and n.maybe(0.85):
            pleura = (pick(n.rng, ["No pleural effusion or pneumothorax.",
                                    "There is no pleural effusion or pneumothorax."]),
                      "Pleural Effusion", "Pneumothorax")
        elif n.free("Pleural Effusion") and n.maybe(0.7):
            pleura = ("No pleural effusion.", "Pleural Effusion")
        elif n.free("Pneumothorax") and n.maybe(0.7):
            pleura = ("No pneumothorax.", "Pneumothorax")
    if pleura:
        n.state(*pleura)
    if n.free("Edema") and n.maybe(0.5):
        n.state(pick(n.rng, ["No pulmonary edema.", "There is no pulmonary vascular congestion or edema.",
                              "No evidence of pulmonary edema."]), "Edema")
    if not n.present and n.maybe(0.5):
        n.state("The lungs are clear.")


def _state_bones(n: _Normals) -> None:
    if n.maybe(0.5):
        bones = pick(n.rng, ["No acute osseous abnormality.", "Osseous structures are unremarkable.",
                              "No displaced fracture is identified."])
        n.state(bones, *(("Fracture",) if "fracture" in bones else ()))


def _normal_statements(present: set[str], rng) -> _Normals:
    """Negative statements ("No pleural effusion or pneumothorax.") for some absent findings."""
    normals = _Normals(present, rng)
    _state_heart(normals)
    _state_lungs_and_pleura(normals)
    _state_bones(normals)
    return normals


# --------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------


@dataclass
class PhantomReport:
    text: str
    negated: tuple[str, ...]  # labels explicitly reported absent (0.0)
    uncertain: tuple[str, ...]  # labels set -1 by hedged sentences beyond the findings
    mentioned: tuple[str, ...] = ()  # labels set 1 by words beyond the findings (an opacity)
    # (text, CheXpert labels) of each statement written: a finding's sentences carry that finding
    # (and its hedged pneumonia), a normal statement the labels it negates (sentence-label table)
    sentence_labels: tuple[tuple[str, dict], ...] = ()


@dataclass
class _Header:
    frontal: str  # the study's frontal view, "PA" or "AP"
    exam: str
    technique: str
    comparison: str
    indication: str


def _mentions(text: str) -> tuple[str, ...]:
    """Labels a sentence names beyond its finding: an opacity word is a Lung Opacity mention."""
    return ("Lung Opacity",) if "opacit" in text.lower() else ()


def _finding_statements(findings: Sequence[Finding], pairs: list[tuple[str, str]]
                        ) -> tuple[list[tuple[str, dict]], list[str], list[str]]:
    """((sentence, labels) of each finding's sentences, labels its hedges make uncertain,
    labels its words mention)."""
    labelled: list[tuple[str, dict]] = []
    uncertain: list[str] = []
    mentioned: list[str] = []
    for f, (sentence, impression) in zip(findings, pairs):
        hedged = ("Pneumonia",) if f.label == "Consolidation" and f.value > 0 and f.words.get("pneumonia") else ()
        uncertain.extend(hedged)
        for text in (sentence, impression):
            if text:
                names = _mentions(text)
                mentioned.extend(names)
                labelled.append((text, study_labels([f], (), hedged, names)))
    return labelled, uncertain, mentioned


def _section_texts(findings: Sequence[Finding], pairs: list[tuple[str, str]], normal: list[str],
                   rng) -> tuple[str, str, str, str]:
    """(FINDINGS text, IMPRESSION text, the paragraph of a report without FINDINGS, the normal
    impression added when no disease is found or "")."""
    impressions = [imp for _, imp in pairs if imp]
    devices = [s for f, (s, _) in zip(findings, pairs) if f.label == "Support Devices"]
    others = [s for f, (s, _) in zip(findings, pairs) if f.label != "Support Devices"]
    body = others + normal
    order = rng.permutation(len(body))
    findings_text = " ".join(devices + [body[i] for i in order])
    no_disease = all(f.label == "Support Devices" for f in findings)
    normal_impression = ""
    if no_disease:
        normal_impression = pick(rng, _NORMAL_IMPRESSIONS)
        impressions = impressions + [normal_impression]
    # Without a FINDINGS section the sentences stand alone, closed by a normal impression if any.
    single_paragraph = findings_text + (" " + impressions[-1] if no_disease else "")
    if len(impressions) > 1 and bool(rng.random() < 0.5):
        impression_text = "\n".join(f"{i}. {s}" for i, s in enumerate(impressions, 1))
    else:
        impression_text = " ".join(impressions)
    return findings_text, impression_text, single_paragraph, normal_impression


def _header(views: Sequence[str], all_text: str, rng) -> _Header:
    """Examination, technique, comparison and indication; a comparison is named when the
    report describes a change (`all_text`, lower case, holds a temporal word)."""
    frontal = next((v for v in views if v in ("PA", "AP")), "PA")
    has_lateral = any(v in ("LATERAL", "LL") for v in views)
    exam = "CHEST (PORTABLE AP)" if frontal == "AP" else "CHEST (PA AND LAT)"
    technique = ("Portable AP chest radiograph." if frontal == "AP" else
                 "Chest PA and lateral." if has_lateral else "PA view of the chest.")
    comparison = ("Chest radiograph from ___." if any(w in all_text for w in _TEMPORAL_WORDS)
                  else pick(rng, ["None.", "___.", "Prior chest radiograph from ___."]))
    sex = pick(rng, ["man", "woman"])
    indication = f"___-year-old {sex} with {pick(rng, _INDICATIONS)}.  // ___"
    return _Header(frontal, exam, technique, comparison, indication)


def _para(text: str) -> str:
    return "\n".join(textwrap.fill(line, width=78, initial_indent=" ", subsequent_indent=" ")
                     for line in text.split("\n"))


def _layout(style: str, h: _Header, findings_text: str, impression_text: str, single_paragraph: str) -> str:
    """The report text: FINAL REPORT header, then upper-case sections as `style` asks."""
    lines = ["                                 FINAL REPORT"]
    if style == "no_sections":
        lines += [f" {'PORTABLE AP CHEST RADIOGRAPH' if h.frontal == 'AP' else 'PA AND LATERAL CHEST RADIOGRAPH'}",
                  "", f" HISTORY:  {h.indication}", "", f" COMPARISON:  {h.comparison}", "",
                  _para(single_paragraph), ""]
    else:
        lines += [f" EXAMINATION:  {h.exam}", "", f" INDICATION:  {h.indication}", "",
                  f" TECHNIQUE:  {h.technique}", "", f" COMPARISON:  {h.comparison}", ""]
        if style == "full":
            lines += [" FINDINGS:", "", _para(findings_text), ""]
            lines += [" IMPRESSION:", "", _para(impression_text), ""]
        else:  # impression only: the findings sentences move into the impression
            lines += [" IMPRESSION:", "", _para(single_paragraph), ""]
    return "\n".join(lines)


def write_report(findings: Sequence[Finding], views: Sequence[str], style: str, rng) -> PhantomReport:
    """Radiology report of a study in MIMIC's style: FINAL REPORT header, upper-case sections.

    `style` is "full" (FINDINGS and IMPRESSION), "impression_only", or "no_sections" (free
    paragraphs only, the importer's fallback case). Negative statements ("No pleural
    effusion or pneumothorax.") are added for some absent findings and returned as the
    labels they set to 0.0.
    """
    pairs = [_finding_sentence(f, rng) for f in findings]
    labelled, uncertain, mentioned = _finding_statements(findings, pairs)
    normals = _normal_statements({f.label for f in findings}, rng)
    labelled += normals.labelled
    findings_text, impression_text, single_paragraph, normal_impression = _section_texts(
        findings, pairs, normals.sentences, rng)
    if normal_impression:
        labelled.append((normal_impression, study_labels((), ())))
    header = _header(views, (findings_text + " " + impression_text).lower(), rng)
    text = _layout(style, header, findings_text, impression_text, single_paragraph)
    return PhantomReport(text, tuple(normals.negated), tuple(uncertain), mentioned=tuple(dict.fromkeys(mentioned)),
                         sentence_labels=tuple(labelled))
