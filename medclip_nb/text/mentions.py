"""A rule-based finding labeller for report sentences, in the manner of the CheXpert labeler.

`find_mentions(sentence)` finds the mentions of the 14 CheXpert findings in one sentence and
gives each a status: 1 positive, 0 negated, -1 uncertain (hedged). `sentence_labels(sentence)`
turns them into a label vector in CHEXPERT_LABELS order (NaN where a finding is not mentioned;
a label mentioned more than once takes positive over uncertain over negated).

The rules, each a plain table below:
- mention patterns per finding: the report wording of the findings and the CheXpert labeler's
  mention phrases, with its "unmention" exclusions (a calcified nodule is not a lung lesion, a
  pericardial effusion not a pleural effusion);
- negation: a cue (`no`, `without`, `negative for`, `clear of`, `free of`, `not`, `resolved`,
  `resolution of`, `removed`, `rather than`) before the mention in the same sentence, with no
  scope stop (`but`, `however`, `although`, `though`, `except`, `which`, `whereas`, `;`) between
  cue and mention;
- uncertainty: a hedge (`may`, `possible`, `likely`, `concerning for`, `versus`, `cannot exclude`,
  ...) anywhere in the sentence makes a mention that is not negated uncertain.

No Finding is not a mention. `labelled_sentence(sentence)` derives it for a sentence-label table
(prepare-iu writes one): No Finding = 1 when the sentence states no positive or uncertain finding
(support devices aside) and no other abnormality outside the 14 labels (`OTHER_FINDINGS`: a
granuloma, degenerative spine, emphysema, ... that is not negated), as the CheXpert labeler's
"other finding" list blocks No Finding; otherwise it stays blank.

Measured on 3,955 real reports (Open-i) against their MeSH labels: 91 % of the report-positive
findings have a positive or uncertain sentence mention (docs/datasets.md).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from medclip_nb.labels import CHEXPERT_LABELS, LABEL_INDEX

_W = r"(?:\w+ ){0,2}"  # up to two words in between
MENTION_PATTERNS: dict[str, str] = {
    "Atelectasis": r"atelecta\w*",
    "Cardiomegaly": (r"cardiomegaly|cardiac enlargement|enlarged (?:heart|cardiac silhouette|cardiac shadow)"
                     r"|(?:heart|heart size|cardiac silhouette|cardiac shadow|cardiac size) " + _W
                     + r"(?:is |are |appears |remains )?(?:\w+ )?enlarg\w*"),
    "Consolidation": r"consolidat\w*",
    "Edema": r"edema|(?:pulmonary |vascular )+congestion|heart failure|\bchf\b",
    "Enlarged Cardiomediastinum": (r"(?:widen\w*|enlarg\w*|prominent) (?:\w+ )?mediastin\w*"
                                   r"|mediastin\w* (?:\w+ )?(?:is |are |appears )?(?:widen\w*|enlarg\w*|prominent)"),
    "Fracture": r"fractur\w*",
    "Lung Lesion": r"(?<!calcified )nodul\w*|\bmass(?:es)?\b|cavitary lesion|cavitation|tumou?r|neoplasm|carcinoma",
    "Lung Opacity": (r"opaci\w*|infiltrat\w*|air ?-?space (?:disease|opaci\w*)|densit(?:y|ies)"
                     r"|interstitial (?:marking|pattern|prominence|opaci)\w*|(?<!pleural )\bscar\w*"),
    "Pleural Effusion": r"(?<!pericardial )effusions?|pleural fluid|hemothorax|hydropneumothorax",
    "Pleural Other": r"pleural (?:thickening|scar\w*|plaque\w*)|pleuroparenchymal|fibros\w*|fibrotic",
    "Pneumonia": r"pneumonia|infection|infectious",
    "Pneumothorax": r"pneumothora\w*",
    "Support Devices": (r"\b(?:catheters?|picc|lines?|tubes?|pacemakers?|pacer|defibrillator|icd|devices?|ports?"
                        r"|stimulator|leads?|stents?|hardware|sternotomy|wires?|clips?)\b"),
}
NEGATION_CUES = r"\b(?:no|without|negative for|clear of|free of|not|resolved|resolution of|removed|rather than)\b"
SCOPE_STOPS = r"\b(?:but|however|although|though|except|which|whereas)\b|;"
HEDGE_CUES = (r"\b(?:may|might|could|possibl\w*|probabl\w*|likely|suggest\w*|concerning for|suspicious for|versus|vs"
              r"|cannot (?:be )?exclude\w*|questionable|differential|consider\w*|represent\w*)\b")

# Abnormalities outside the 14 labels (the CheXpert labeler's "other finding" list, and the Open-i
# MeSH terms the table in data/iu_mesh.py leaves unmapped): they block No Finding, set no label.
OTHER_FINDINGS = (r"\b(?:granulom\w*|calcifi\w*|degenerat\w*|scoliosis|kyphosis|kyphotic|emphysema\w*|copd"
                  r"|hyperinflat\w*|hyperexpan\w*|hyperlucen\w*|hypoinflat\w*|low lung volumes?|hernia\w*"
                  r"|osteophyt\w*|spondylo\w*|tortuous|tortuosity|atheroscler\w*|eventration|bronchiectasis"
                  r"|blunt\w*|deformit\w*|elevat\w* (?:\w+ )?(?:hemi)?diaphragm|(?:hemi)?diaphragm (?:\w+ )?elevat\w*"
                  r"|flatten\w*|adenopathy|lymphadenopathy|cyst\w*|bulla\w*|bleb\w*|osteopeni\w*|arthrit\w*)\b")

_MENTIONS = {label: re.compile(pattern) for label, pattern in MENTION_PATTERNS.items()}
_NEGATION, _STOP, _HEDGE = re.compile(NEGATION_CUES), re.compile(SCOPE_STOPS), re.compile(HEDGE_CUES)
_OTHER = re.compile(OTHER_FINDINGS)


@dataclass(frozen=True)
class Mention:
    label: str  # a CheXpert finding
    start: int  # character offset in the (lower-cased) sentence
    status: int  # 1 positive, 0 negated, -1 uncertain


def negated(text: str, start: int) -> bool:
    """Whether a mention starting at `start` of the lower-cased `text` is under a negation cue:
    a cue before it with no scope stop between the cue and the mention."""
    cues = [m.end() for m in _NEGATION.finditer(text, 0, start)]
    return bool(cues) and not _STOP.search(text, cues[-1], start)


def find_mentions(sentence: str) -> list[Mention]:
    """The finding mentions of one sentence, in order of position."""
    text = " ".join(sentence.lower().split())
    hedged = _HEDGE.search(text) is not None
    found = []
    for label, pattern in _MENTIONS.items():
        for match in pattern.finditer(text):
            status = 0 if negated(text, match.start()) else (-1 if hedged else 1)
            found.append(Mention(label, match.start(), status))
    return sorted(found, key=lambda m: (m.start, m.label))


_PRECEDENCE = {1: 3, -1: 2, 0: 1}  # positive over uncertain over negated


def sentence_labels(sentence: str) -> list[float]:
    """A 14-value label vector (CHEXPERT_LABELS order) from the mentions: 1.0, 0.0, -1.0, NaN where
    not mentioned (No Finding is always NaN here)."""
    labels = [math.nan] * len(CHEXPERT_LABELS)
    for mention in find_mentions(sentence):
        index = LABEL_INDEX[mention.label]
        current = labels[index]
        if math.isnan(current) or _PRECEDENCE[mention.status] > _PRECEDENCE[int(current)]:
            labels[index] = float(mention.status)
    return labels


_NO_FINDING = LABEL_INDEX["No Finding"]
_SUPPORT_DEVICES = LABEL_INDEX["Support Devices"]


def other_finding(sentence: str) -> bool:
    """Whether the sentence states an abnormality outside the 14 labels (`OTHER_FINDINGS`, not negated)."""
    text = " ".join(sentence.lower().split())
    return any(not negated(text, m.start()) for m in _OTHER.finditer(text))


def labelled_sentence(sentence: str) -> list[float]:
    """`sentence_labels` with No Finding derived: 1 when no finding other than support devices is
    positive or uncertain and no other abnormality is stated (`other_finding`), else blank."""
    labels = sentence_labels(sentence)
    findings = [v for i, v in enumerate(labels) if i not in (_NO_FINDING, _SUPPORT_DEVICES)]
    if not any(v in (1.0, -1.0) for v in findings) and not other_finding(sentence):
        labels[_NO_FINDING] = 1.0
    return labels
