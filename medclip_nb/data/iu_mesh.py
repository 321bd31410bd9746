"""The Open-i MeSH codes of a report -> its 14 CheXpert labels: one plain table (docs/datasets.md).

Every Open-i report carries manual MeSH codes (`<major>`), each a term with qualifiers such as
`Pleural Effusion/left/small` or `Opacity/lung/base/left/mild`. The table below maps a term to
CheXpert labels, following the CheXpert labeler's mention phrases (the convention of the
MIMIC-CXR labels this project also uses) and torchxrayvision's Openi_Dataset where it has a
mapping. The rules:

- a code matches a row on its normalised term (the part before the first `/`: stripped,
  whitespace collapsed, case-folded); a row with `when` also needs one of those qualifiers;
- a matched row sets its labels to its value (1.0; `Heart Failure` gives Cardiomegaly -1.0, the
  labeler's chf rule); 1 wins over -1;
- `normal` -> No Finding = 1; `No Indexing` and `Technical Quality of Image Unsatisfactory` are
  neutral (neither a finding nor normal);
- MeSH names only what is present: every other label stays blank (NaN), never 0;
- a term no row maps (granulomas, degenerative spine, low lung volumes, ...) is kept as text
  (`unmapped`): such a report may be abnormal outside the 14 labels, so it is *not* normal.

The qualifiers of a mapped code (side, zone, severity) travel with it (`MappedCode`): the phantom
images of `prepare-iu --images phantom` are drawn from them (iu_images.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from medclip_nb.labels import CHEXPERT_LABELS, LABEL_INDEX

NORMAL_TERM = "normal"
NEUTRAL_TERMS = ("no indexing", "technical quality of image unsatisfactory")


@dataclass(frozen=True)
class MeshRule:
    """One row of the table: a MeSH term (normalised), the labels it sets, and a condition."""

    term: str
    labels: tuple[str, ...]
    when: tuple[str, ...] = ()  # at least one of these qualifiers must be present ("" = none needed)
    value: float = 1.0
    extra: tuple[tuple[str, float], ...] = ()  # other labels set to another value (Heart Failure)
    source: str = "CheXpert"


# The table (research counts and reasons: docs/datasets.md). Order does not matter: every row that
# matches a code applies.
MESH_TABLE: tuple[MeshRule, ...] = (
    MeshRule("pulmonary atelectasis", ("Atelectasis",), source="txv + CheXpert"),
    MeshRule("cardiomegaly", ("Cardiomegaly",), source="txv + CheXpert"),
    MeshRule("cardiac shadow", ("Cardiomegaly",), when=("enlarged",), source="CheXpert (cardiac silhouette)"),
    MeshRule("consolidation", ("Consolidation",)),
    MeshRule("pulmonary edema", ("Edema",), source="txv + CheXpert"),
    MeshRule("pulmonary congestion", ("Edema",), source="CheXpert (congestion is an Edema mention)"),
    MeshRule("heart failure", ("Edema",), extra=(("Cardiomegaly", -1.0),),
             source="CheXpert (heart failure: Edema; chf: uncertain Cardiomegaly)"),
    MeshRule("mediastinum", ("Enlarged Cardiomediastinum",), when=("enlarged", "prominent")),
    MeshRule("fractures, bone", ("Fracture",), source="txv + CheXpert (healed fractures count, as in CheXpert)"),
    MeshRule("nodule", ("Lung Lesion",)),
    MeshRule("mass", ("Lung Lesion",)),
    MeshRule("cavitation", ("Lung Lesion",), source="CheXpert (cavitary lesion)"),
    MeshRule("opacity", ("Lung Opacity",), source="txv + CheXpert"),
    MeshRule("airspace disease", ("Lung Opacity",)),
    MeshRule("infiltrate", ("Lung Opacity",)),
    MeshRule("density", ("Lung Opacity",), when=("lung", "retrocardiac"), source="CheXpert (increased density)"),
    MeshRule("markings", ("Lung Opacity",), when=("interstitial",), source="CheXpert (interstitial markings)"),
    MeshRule("lung", ("Lung Opacity",), when=("interstitial",), source="CheXpert (interstitial lung)"),
    MeshRule("cicatrix", ("Lung Opacity",), when=("lung",), source="CheXpert (scar)"),
    MeshRule("cicatrix", ("Pleural Other",), when=("pleura",), source="CheXpert (pleural scar)"),
    MeshRule("pleural effusion", ("Pleural Effusion",), source="txv + CheXpert"),
    MeshRule("hydropneumothorax", ("Pneumothorax", "Pleural Effusion"), source="air and fluid"),
    MeshRule("hemopneumothorax", ("Pneumothorax", "Pleural Effusion"), source="air and fluid"),
    MeshRule("hemothorax", ("Pleural Effusion",), source="pleural fluid"),
    MeshRule("thickening", ("Pleural Other",), when=("pleura",), source="CheXpert (pleural thickening)"),
    MeshRule("pulmonary fibrosis", ("Pleural Other",), source="CheXpert lists fibrosis under Pleural Other"),
    MeshRule("fibrosis", ("Pleural Other",), source="CheXpert lists fibrosis under Pleural Other"),
    MeshRule("pneumonia", ("Pneumonia",), source="txv + CheXpert"),
    MeshRule("pneumothorax", ("Pneumothorax",), source="txv + CheXpert"),
    MeshRule("catheters, indwelling", ("Support Devices",), source="CheXpert (catheter)"),
    MeshRule("implanted medical device", ("Support Devices",), source="CheXpert (device)"),
    MeshRule("medical device", ("Support Devices",), source="CheXpert (device)"),
    MeshRule("tube, inserted", ("Support Devices",), source="CheXpert (tube)"),
    MeshRule("stents", ("Support Devices",), source="judgement (no stent in CheXpert's list)"),
)
for _rule in MESH_TABLE:
    assert all(label in LABEL_INDEX for label in _rule.labels), _rule


def normalise(text: str) -> str:
    """A MeSH term or qualifier as compared: stripped, whitespace collapsed, case-folded."""
    return " ".join(text.split()).casefold()


def split_code(code: str) -> tuple[str, tuple[str, ...]]:
    """('pleural effusion', ('left', 'small')) from 'Pleural Effusion/left/small' (normalised)."""
    parts = [normalise(p) for p in code.split("/")]
    return parts[0], tuple(p for p in parts[1:] if p)


@dataclass(frozen=True)
class MappedCode:
    """A MeSH code that set a label, with its qualifiers (side, zone, severity words)."""

    label: str
    value: float
    term: str
    qualifiers: tuple[str, ...]


@dataclass
class MeshLabels:
    """What the table makes of one report's MeSH codes."""

    labels: list[float]  # 14 values in CHEXPERT_LABELS order: 1.0, -1.0, NaN (never 0: MeSH names what is present)
    mapped: list[MappedCode] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)  # codes as written (stripped), abnormal outside the 14
    neutral: list[str] = field(default_factory=list)
    normal: bool = False
    rows: set[str] = field(default_factory=set)  # row_key of every table row that matched

    @property
    def blank(self) -> bool:
        """No CheXpert label at all (the losses' treatment of such reports: docs/datasets.md)."""
        return all(math.isnan(v) for v in self.labels)


def rules_for(term: str, qualifiers: tuple[str, ...]) -> list[MeshRule]:
    """The table's rows that a code with this term and these qualifiers matches."""
    present = set(qualifiers)
    return [r for r in MESH_TABLE if r.term == term and (not r.when or present.intersection(r.when))]


def mesh_labels(codes: list[str]) -> MeshLabels:
    """The labels of one report from its `<major>` MeSH codes (module docstring)."""
    labels = [math.nan] * len(CHEXPERT_LABELS)
    result = MeshLabels(labels)

    def put(label: str, value: float) -> None:
        index = LABEL_INDEX[label]
        if math.isnan(labels[index]) or value > labels[index]:  # 1 wins over -1
            labels[index] = value

    for code in codes:
        term, qualifiers = split_code(code)
        if not term:
            continue
        if term == NORMAL_TERM:
            result.normal = True
            put("No Finding", 1.0)
            continue
        if term in NEUTRAL_TERMS:
            result.neutral.append(code.strip())
            continue
        rules = rules_for(term, qualifiers)
        if not rules:
            result.unmapped.append(" ".join(code.split()))
        for rule in rules:
            result.rows.add(row_key(rule))
            for label in rule.labels:
                put(label, rule.value)
                result.mapped.append(MappedCode(label, rule.value, term, qualifiers))
            for label, value in rule.extra:
                put(label, value)
    return result


def table_rows() -> list[dict]:
    """The table as plain rows (printed by prepare-iu, written to its report JSON)."""
    return [{"mesh_term": r.term, "when_qualifier": list(r.when), "labels": list(r.labels), "value": r.value,
             **({"also": {label: value for label, value in r.extra}} if r.extra else {}), "source": r.source}
            for r in MESH_TABLE]


def format_table(counts: dict[str, int] | None = None) -> list[str]:
    """The table as text lines, with the number of reports each row matched when `counts` is given
    (keyed by `row_key`)."""
    lines = []
    for r in MESH_TABLE:
        condition = f" (with {' or '.join(r.when)})" if r.when else ""
        target = ", ".join(r.labels) + "".join(f", {label} {value:g}" for label, value in r.extra)
        count = f"  [{counts.get(row_key(r), 0)} reports]" if counts is not None else ""
        lines.append(f"{r.term}{condition} -> {target}{count}")
    return lines


def row_key(rule: MeshRule) -> str:
    return rule.term + ("|" + "/".join(rule.when) if rule.when else "")
