"""Radiology reports of phantom studies in MIMIC's style, in the words of their findings."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Sequence

from medclip_nb.phantom.findings import Finding, _pick, study_labels

_CARDIO_IMPRESSION = {
    "borderline": ["Borderline heart size.", "Heart size at the upper limits of normal."],
    "mild": ["Mild cardiomegaly.", "Mildly enlarged cardiac silhouette."],
    "moderate": ["Cardiomegaly.", "Stable cardiomegaly.", "Unchanged cardiomegaly."],
    "severe": ["Severe cardiomegaly.", "Persistent severe cardiomegaly."],
}
# Words that describe a change since a prior study: the report then names a comparison.
_TEMPORAL_WORDS = ("stable", "increased", "decreased", "improved", "improvement", "persistent",
                   "unchanged", "redemonstration", "remains", "residual")


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
