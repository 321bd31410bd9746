"""Radiology reports of phantom studies in MIMIC's style, in open, varied language.

Every finding has its own sentence builder (statements.py: a FINDINGS text and an IMPRESSION
sentence, phrased from the tables of phrases.py); the report adds normal statements for some
absent findings, sometimes a comparison with a prior study, shuffles the statements, and lays
them out under MIMIC's header and sections. The random draws happen in a fixed order (finding
sentences, normal statements, comparison, shuffle, impression, header, labeler noise), so the same
stream gives the same report.

Labels, as a labeler would read the report (`PhantomReport.labels`, the study's row of the CheXpert
table): each finding's own label (1, or -1 where hedged), the labels the normal statements report
absent (0), and Lung Opacity and Pneumonia where a finding's sentences name them (read with
text/mentions.py: "opacity", "airspace disease", "concerning for pneumonia"). Then labeler-like
noise (`LABEL_NOISE`): in a small share of studies the table disagrees with the text, as the
CheXpert labeler's tables do on real reports: a stated finding missed (blank), or a hedged one
read as positive.

Sentence labels (`PhantomReport.sentence_labels`, the sentence-label table): the generator's
reading of each statement, without the noise: the finding it describes (1, or -1 where hedged)
even where it names no label word, the labels a normal statement reports absent by name, Lung
Opacity / Pneumonia as above, and No Finding = 1 where nothing is positive or uncertain (the
CheXpert labeler's rule).
"""

from __future__ import annotations

import dataclasses
import textwrap
from dataclasses import dataclass
from typing import Sequence

import medclip_nb.phantom.phrases as P
from medclip_nb.phantom.findings import Finding, pick, study_labels
from medclip_nb.phantom.statements import FindingText, finding_text, normal_statements
from medclip_nb.text import find_mentions

# Labeler-like noise of the study label table (documented in docs/phantom.md, recorded in phantom.json).
LABEL_NOISE = {
    "missed_mention": 0.04,  # of studies stating a pathology: one stated finding is left blank in the table
    "uncertain_as_positive": 0.3,  # of studies with a hedged finding: the table reads it as positive (1.0)
}
_READ_FROM_WORDS = ("Lung Opacity", "Pneumonia")  # labels a finding's sentences may name beyond its own
# Words that describe a change since a prior study: the report then names a comparison.
_TEMPORAL_WORDS = ("stable", "increase", "decrease", "improv", "persist", "unchanged", "redemonstrat", "again",
                   "new", "interval", "prior", "previous", "resol", "worsen", "smaller", "larger", "residual")
_INDICATIONS = ["shortness of breath", "cough and fever", "chest pain", "hypoxia", "dyspnea on exertion",
                "fever, evaluate for pneumonia", "line placement", "weakness", "tachycardia", "fall",
                "evaluate for interval change", "pre-operative evaluation", "leukocytosis", "tachypnea"]


@dataclass
class PhantomReport:
    text: str
    labels: dict[str, float]  # the study's row of the CheXpert table (with the labeler-like noise)
    label_noise: str = ""  # "" or the kind of noise in `labels` (a key of LABEL_NOISE)
    # (text, CheXpert labels) of each statement written: a finding's sentences carry that finding,
    # a normal statement the labels it reports absent (the sentence-label table; no noise)
    sentence_labels: tuple[tuple[str, dict], ...] = ()


def _word_labels(text: str) -> tuple[list[str], list[str], list[str]]:
    """(positive, uncertain, negated) labels of `_READ_FROM_WORDS` that `text` names, read as
    text/mentions.py reads them."""
    found: dict[str, int] = {}
    for mention in find_mentions(text):
        if mention.label in _READ_FROM_WORDS:
            rank = {1: 3, -1: 2, 0: 1}
            if mention.label not in found or rank[mention.status] > rank[found[mention.label]]:
                found[mention.label] = mention.status
    return ([k for k, v in found.items() if v == 1], [k for k, v in found.items() if v == -1],
            [k for k, v in found.items() if v == 0])


@dataclass
class _Reading:
    """What the report says, label by label, as the statements are written."""

    negated: list[str] = dataclasses.field(default_factory=list)
    uncertain: list[str] = dataclasses.field(default_factory=list)
    mentioned: list[str] = dataclasses.field(default_factory=list)
    sentences: list[tuple[str, dict]] = dataclasses.field(default_factory=list)

    def finding(self, f: Finding, text: str) -> None:
        positive, uncertain, negated = _word_labels(text)
        self.mentioned += positive
        self.uncertain += uncertain
        self.negated += negated
        self.sentences.append((text, study_labels([f], negated, uncertain, positive)))

    def normal(self, text: str, negated: Sequence[str]) -> None:
        self.negated += negated
        self.sentences.append((text, study_labels((), negated)))


def _labeler_noise(findings: Sequence[Finding], rng) -> tuple[list[Finding], str]:
    """The findings as the label table holds them: in a few studies a stated finding is missed
    (left out) or a hedged one read as positive; one draw per study."""
    r = float(rng.random())
    hedged = [f for f in findings if f.value < 0]
    stated = [f for f in findings if f.value > 0 and f.label != "Support Devices"]
    if hedged and r < LABEL_NOISE["uncertain_as_positive"]:
        return [dataclasses.replace(f, value=1.0) if f is hedged[0] else f for f in findings], "uncertain_as_positive"
    if not hedged and stated and r < LABEL_NOISE["missed_mention"]:
        missed = stated[int(r / LABEL_NOISE["missed_mention"] * len(stated))]
        return [f for f in findings if f is not missed], "missed_mention"
    return list(findings), ""


def _comparison(findings: Sequence[Finding], rng) -> str:
    """A sentence comparing with a prior study, or ""."""
    changes = {f.words.get("change", "") for f in findings if f.value > 0}
    if not rng.random() < (0.3 if changes - {""} else 0.1):
        return ""
    moving = changes & {"new", "increased", "decreased", "improved"}
    templates = P.COMPARISON[3:] if moving else P.COMPARISON[:3]
    lead = P.choose(rng, pick(rng, P.COMPARE_LEAD).format(prior=pick(rng, P.PRIOR)))
    return P.expand(rng, pick(rng, templates), lead=lead)


def _section_texts(findings: Sequence[Finding], texts: list[FindingText], normal: list[str], comparison: str,
                   rng) -> tuple[str, str, str, tuple[str, tuple[str, ...]]]:
    """(FINDINGS text, IMPRESSION text, the paragraph of a report without FINDINGS, (the normal
    impression added when no disease is found or "", the labels it reports absent))."""
    impressions = [t.impression for t in texts if t.impression]
    devices = [t.findings for f, t in zip(findings, texts) if f.label == "Support Devices"]
    others = [t.findings for f, t in zip(findings, texts) if f.label != "Support Devices"]
    body = others + normal
    order = rng.permutation(len(body))
    findings_text = " ".join(([comparison] if comparison else []) + devices + [body[i] for i in order])
    no_disease = all(f.label == "Support Devices" for f in findings)
    normal_impression: tuple[str, tuple[str, ...]] = ("", ())
    if no_disease:
        template, negated = pick(rng, P.NORMAL_IMPRESSIONS)
        normal_impression = (P.expand(rng, template), negated)
        impressions = impressions + [normal_impression[0]]
    # Without a FINDINGS section the sentences stand alone, closed by a normal impression if any.
    single_paragraph = findings_text + (" " + impressions[-1] if no_disease else "")
    if len(impressions) > 1 and bool(rng.random() < 0.5):
        impression_text = "\n".join(f"{i}. {s}" for i, s in enumerate(impressions, 1))
    else:
        impression_text = " ".join(impressions)
    return findings_text, impression_text, single_paragraph, normal_impression


@dataclass
class _Header:
    frontal: str  # the study's frontal view, "PA" or "AP"
    exam: str
    technique: str
    comparison: str
    indication: str


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
    paragraphs only, the importer's fallback case). Normal statements ("No pleural effusion or
    pneumothorax.") are added for some absent findings. Returns the text, the study's labels as
    a labeler would read them (with the labeler-like noise) and the sentence labels.
    """
    texts = [finding_text(f, rng) for f in findings]
    reading = _Reading()
    for f, t in zip(findings, texts):
        for text in (t.findings, t.impression):
            if text:
                reading.finding(f, text)
    normals = normal_statements({f.label for f in findings}, rng)
    for text, negated in normals.statements:
        reading.normal(text, negated)
    comparison = _comparison(findings, rng)
    if comparison:
        reading.normal(comparison, ())
    findings_text, impression_text, single_paragraph, normal_impression = _section_texts(
        findings, texts, [text for text, _ in normals.statements], comparison, rng)
    if normal_impression[0]:
        reading.normal(*normal_impression)
    header = _header(views, (findings_text + " " + impression_text).lower(), rng)
    text = _layout(style, header, findings_text, impression_text, single_paragraph)
    table_findings, noise = _labeler_noise(findings, rng)
    labels = study_labels(table_findings, reading.negated, reading.uncertain, reading.mentioned)
    return PhantomReport(text, labels, noise, tuple(reading.sentences))
