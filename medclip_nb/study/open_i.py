"""Notebook views of the dataset a run used, for Open-i above all (prepare-iu): which images (real
or phantom), the MeSH table with the reports each row matched, the report language beside the
phantom's, and the prompt gap (MedCLIP's 5x200 prompts against the training sentences).

Presentation only: the numbers come from prepare_report.json, the dataset file and text/language.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from medclip_nb.labels import COMPETITION_TASKS
from medclip_nb.phantom import phantom_report_texts
from medclip_nb.prompts import generate_prompts
from medclip_nb.text import split_sentences

if TYPE_CHECKING:  # pandas is imported inside the functions that use it (a heavy import)
    import pandas as pd

PHANTOM_COMPARISON_SEED = 0


def prepare_report(dataset_file: str | Path) -> dict[str, Any]:
    """The prepare_report.json beside a dataset file ({} when there is none)."""
    path = Path(dataset_file).parent / "prepare_report.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def dataset_description(dataset_file: str | Path) -> dict[str, Any]:
    """Which data a run used: dataset (open-i, phantom MIMIC-CXR-JPG, MIMIC-CXR-JPG or a file of
    unknown origin), image kind and what is known of views."""
    report = prepare_report(dataset_file)
    if report.get("dataset") == "open-i":
        return {"dataset": "Open-i (Indiana University chest X-rays)", "image_kind": report["image_kind"],
                "images": report["images"], "views": report["views"], "reports": report["reports_source"]}
    if report.get("source_phantom"):
        return {"dataset": "phantom MIMIC-CXR-JPG", "image_kind": "phantom", "views": "from the phantom's metadata"}
    if report:
        return {"dataset": "MIMIC-CXR-JPG", "image_kind": "real", "views": ", ".join(report.get("frontal_views", []))}
    return {"dataset": f"{Path(dataset_file).name} (not written by prepare)", "image_kind": "unknown"}


def is_open_i(dataset_file: str | Path) -> bool:
    return prepare_report(dataset_file).get("dataset") == "open-i"


def study_reports(splits: Mapping[str, list], names=("train", "val", "test")) -> list[str]:
    """One report text per study (a study with several images counts once)."""
    seen: dict[Any, str] = {}
    for name in names:
        for i, record in enumerate(splits.get(name, [])):
            seen.setdefault(record.get("study_id", (name, i)), record["report"])
    return list(seen.values())


def language_corpora(dataset_file: str | Path, splits: Mapping[str, list]) -> dict[str, list[str]]:
    """{column name: report texts} for study.language_table: this dataset's reports, and for Open-i
    the phantom's reports of a phantom with as many studies (seed 0, text only: no image drawn),
    since type and template counts grow with the corpus."""
    texts = study_reports(splits)
    name = "Open-i" if is_open_i(dataset_file) else "this dataset"
    corpora = {f"{name} ({len(texts)} reports)": texts}
    if is_open_i(dataset_file):
        corpora[f"phantom ({len(texts)} reports)"] = phantom_report_texts(len(texts), PHANTOM_COMPARISON_SEED)
    return corpora


def mesh_table(report: Mapping[str, Any]) -> "pd.DataFrame":
    """prepare-iu's MeSH -> CheXpert table with the reports each row matched (most first)."""
    import pandas as pd

    counts = report["mesh"]["row_reports"]
    rows = []
    for row in report["mesh_table"]:
        key = row["mesh_term"] + ("|" + "/".join(row["when_qualifier"]) if row["when_qualifier"] else "")
        also = "".join(f", {label} {value:g}" for label, value in (row.get("also") or {}).items())
        rows.append({"MeSH term": row["mesh_term"], "with qualifier": " or ".join(row["when_qualifier"]) or "–",
                     "CheXpert label(s)": ", ".join(row["labels"]) + also, "reports": counts.get(key, 0),
                     "source": row["source"]})
    return pd.DataFrame(rows).sort_values("reports", ascending=False, kind="stable").reset_index(drop=True)


def mapped_share(report: Mapping[str, Any]) -> "pd.DataFrame":
    """How many reports the MeSH table maps, and how many keep blank labels."""
    import pandas as pd

    mesh = report["mesh"]
    rows = {"reports read": mesh["reports"], "mapped to a CheXpert label": mesh["mapped"],
            "  of which normal (No Finding)": mesh["normal"], "  of which with a mapped finding":
            mesh["with_mapped_finding"], "blank labels (kept, not normal)": mesh["blank"],
            "  of which only unmapped codes": mesh["blank_with_unmapped_codes"],
            "  of which only neutral codes": mesh["blank_with_neutral_codes_only"]}
    table = pd.DataFrame({"reports": rows})
    table["share"] = (table["reports"] / mesh["reports"]).round(3)
    return table


def prompt_gap(texts: list[str]) -> "pd.DataFrame":
    """Per competition class: MedCLIP's prompts (every severity x subtype x location combination)
    and how many of them occur word for word in a sentence of `texts` (the training reports): a
    prompt that never occurs is a sentence the text encoder never saw."""
    import pandas as pd

    corpus = "\n".join(sorted({" ".join(s.split()) for t in texts for s in split_sentences(t)}))
    rows = []
    for task in COMPETITION_TASKS:
        prompts = sorted({" ".join(p.lower().split()) for p in generate_prompts(task)})
        found = [p for p in prompts if p in corpus and re.search(r"\b" + re.escape(p) + r"\b", corpus)]
        rows.append({"class": task, "prompts": len(prompts), "found in a training sentence": len(found),
                     "share": round(len(found) / len(prompts), 3) if prompts else 0.0,
                     "examples found": "; ".join(found[:3])})
    return pd.DataFrame(rows).set_index("class")
