"""Import the public Indiana University chest X-ray collection (Open-i) into `datasets.pkl`
(`python -m medclip_nb prepare-iu`, or `data` with config key `iu_reports`).

    prepare_iu(out, reports=None, images="phantom")   # or images="path/to/NLMCXR_png"

- Reports: iu_reports.py reads the XML (a folder, the .tgz, a torchxrayvision wheel, or the installed
  torchxrayvision's copy; nothing is downloaded). The text is FINDINGS + IMPRESSION, as for
  MIMIC-CXR; a report with neither (28 of 3,955) is dropped (`no_report_text`).
- Labels: iu_mesh.py's table from the manual MeSH codes (printed, and written to the report JSON with
  the share of reports it maps). A report whose codes map to no CheXpert label keeps an all-blank
  label vector (it is often abnormal outside the 14 labels, so it is not called normal); how each
  loss treats such a report is in docs/datasets.md.
- Sentence labels: every report sentence labelled by text/mentions.py (negation -> 0, hedges -> -1,
  No Finding by its sentence rule), written as `sentence_labels.csv.gz` for MedCLIP's
  sentence-level targets (config `sentence_labels: auto`).
- Splits: patient = report (the collection has one study per patient); a seeded permutation of
  the reports gives train / val / test of about 70 / 10 / 20 %: patient-disjoint.
- Images, and which kind every output names (`image_kind`): `images=DIR` reads the real PNGs named
  by each report's `parentImage` ids (`<id>.png`), one record per image, view blank (no view is
  in the data; frontal and lateral images are both kept); `images="phantom"` draws one PA phantom
  radiograph per report from its mapped codes (iu_images.py). Reports without a readable image
  are dropped and counted.
- Also written: `iu_reports.jsonl` (every report: id, split, the four sections, MeSH codes,
  labels, unmapped codes, images) and `prepare_report.json`.
"""

from __future__ import annotations

import json
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medclip_nb.data.iu_images import NOT_DRAWN, render_images
from medclip_nb.data.iu_mesh import MESH_TABLE, MeshLabels, format_table, mesh_labels, row_key, table_rows
from medclip_nb.data.iu_reports import IUReport, find_reports, read_reports
from medclip_nb.data.mimic import check_image
from medclip_nb.data.provenance import PREPARE_REPORT, prepare_record
from medclip_nb.errors import ConfigError, DataError
from medclip_nb.files import write_bytes_atomic, write_json_atomic, write_text_atomic
from medclip_nb.labels import CHEXPERT_LABELS
from medclip_nb.paths import resolve
from medclip_nb.text import PREPARED_NAME, labelled_sentence, split_sentences, write_sentence_labels

DATASET_NAME = "open-i"
SPLIT_SHARES = (("train", 0.7), ("val", 0.1), ("test", 0.2))
DROP_REASONS = ("no_report_text", "no_image", "missing_image", "unreadable_image")
REPORTS_FILE = "iu_reports.jsonl"
PHANTOM_IMAGES = "phantom"
VIEW_NOTE = {
    "real": "view blank: the Open-i XML and image ids say no view, so frontal and lateral images are both kept",
    "phantom": "view PA: each phantom image is drawn as a frontal PA radiograph (the Open-i XML says no view)",
}
BLANK_LABELS_NOTE = (
    "reports whose MeSH codes map to no CheXpert label keep all-blank labels (not normal): clip ignores labels; "
    "medclip (published) turns blank into 0, so such a row's soft targets are uniform over the batch; "
    "medclip_cosine with medclip_cosine_no_finding false (params/iu.yaml) gives it its own pair only, "
    "with the rule on it would be called No Finding")


@dataclass(frozen=True)
class IUSource:
    reports_arg: str | None  # as given (None: the installed torchxrayvision's copy)
    reports: Path  # the report source read
    images: Path | None  # the PNG folder, None for phantom images
    out: Path
    size: int
    seed: int

    @property
    def image_kind(self) -> str:
        return "phantom" if self.images is None else "real"


def iu_params(reports, images, size: int, seed: int) -> dict:
    """What decides an Open-i dataset's content (a prepared one with other values is prepared again)."""
    kind = PHANTOM_IMAGES if images == PHANTOM_IMAGES else "real"
    return {"reports": str(reports) if reports is not None else "installed torchxrayvision",
            "images": PHANTOM_IMAGES if kind == PHANTOM_IMAGES else str(resolve(images)),
            "size": int(size) if kind == PHANTOM_IMAGES else None, "seed": int(seed)}


def is_current(data_path, reports, images, size: int, seed: int) -> bool:
    """True when `data_path` was prepared by prepare_iu with these arguments."""
    record = prepare_record(data_path)
    return bool(record) and record.get("dataset") == DATASET_NAME and \
        record.get("iu_params") == iu_params(reports, images, size, seed) and Path(data_path).is_file()


def prepare_iu(out, reports=None, images=None, *, size: int = 256, seed: int = 0, workers: int | None = None,
               log=print) -> dict:
    """Import Open-i into `out` (module docstring); returns the import report (also
    `out/prepare_report.json`). `reports`: a folder, .tgz or wheel, or None for the installed
    torchxrayvision's copy; `images`: a folder of the PNGs or "phantom" (drawn `size` px tall);
    `seed` draws the splits and the phantom images. Relative paths are taken from the repository root."""
    source = _checked_source(out, reports, images, size, seed)
    parsed = read_reports(source.reports)
    labelled = [(r, mesh_labels(r.major)) for r in parsed]
    splits = assign_splits([r.uid for r, _ in labelled if r.text], seed)
    records, dropped, image_count = _records(source, labelled, splits, workers, log)
    datasets: dict[str, list[dict]] = {name: [] for name, _ in SPLIT_SHARES}
    for split, record in records:
        datasets[split].append(record)
    if not any(datasets.values()):
        raise DataError(f"Open-i: no report of {source.reports} has text and a readable image")
    source.out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(source.out / "datasets.pkl", pickle.dumps(datasets, protocol=4), error=DataError)
    kept = {rec["study_id"] for recs in datasets.values() for rec in recs}
    sentences = _write_sentence_labels(source.out, [r for r, _ in labelled if r.number in kept])
    _write_reports_file(source.out, labelled, splits, kept)
    report = _import_report(source, labelled, datasets, dropped, image_count, sentences)
    write_json_atomic(source.out / PREPARE_REPORT, report, error=DataError)
    _print_report(report, log)
    return report


def _checked_source(out, reports, images, size: int, seed: int) -> IUSource:
    """Every argument checked before a file is read: one line naming the flag, folder or file."""
    if images is None or (isinstance(images, str) and not images.strip()):
        raise ConfigError("prepare-iu --images: required: a folder of the Open-i PNGs (named <image id>.png, as in "
                          "NLMCXR_png.tgz from Open-i), or 'phantom' to draw one phantom radiograph per report")
    if not isinstance(size, int) or not 16 <= size <= 4096:
        raise ConfigError(f"prepare-iu --size: must be an integer in 16..4096, got {size!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"prepare-iu --seed: must be a non-negative integer, got {seed!r}")
    out = resolve(out)
    if (out / "datasets.pkl").exists() and not (out / PREPARE_REPORT).is_file():
        raise DataError(f"refusing to overwrite {out / 'datasets.pkl'}: it was not written by prepare (no "
                        f"{PREPARE_REPORT} beside it); move it away or choose another output folder")
    folder = None
    if images != PHANTOM_IMAGES:
        folder = resolve(images)
        if not folder.is_dir():
            raise DataError(f"prepare-iu --images: {folder} is not a folder (give the folder of the Open-i PNGs, or "
                            f"'phantom')")
    return IUSource(None if reports is None else str(reports), find_reports(reports), folder, out, size, seed)


def assign_splits(uids: list[str], seed: int) -> dict[str, str]:
    """{report id: split}: a seeded permutation cut at 70 / 10 / 20 % (patient = report)."""
    order = [uids[i] for i in np.random.default_rng([seed, 25]).permutation(len(uids))]
    splits, start = {}, 0
    for i, (name, share) in enumerate(SPLIT_SHARES):
        end = len(order) if i == len(SPLIT_SHARES) - 1 else start + round(share * len(order))
        splits.update(dict.fromkeys(order[start:end], name))
        start = end
    return splits


def _records(source: IUSource, labelled: list[tuple[IUReport, MeshLabels]], splits: dict[str, str], workers,
             log) -> tuple[list[tuple[str, dict]], dict[str, int], int]:
    """([(split, record)], dropped counts, images found)."""
    dropped = dict.fromkeys(DROP_REASONS, 0)
    dropped["no_report_text"] = sum(1 for r, _ in labelled if not r.text)
    with_text = [(r, m) for r, m in labelled if r.text]
    if source.images is None:
        jobs = [(f"{r.uid}_phantom.jpg", r.number, m.mapped) for r, m in with_text]
        render_images(source.out / "images", jobs, source.size, source.seed, workers)
        images = {r.uid: [(f"images/{r.uid}_phantom.jpg", f"{r.uid}_phantom", "PA")] for r, _ in with_text}
    else:
        images = _real_images(source, [r for r, _ in with_text], dropped)
    records = []
    for r, m in with_text:
        for path, image_id, view in images.get(r.uid, []):
            records.append((splits[r.uid], {"image_path": path, "report": r.text, "labels": list(m.labels),
                                            "study_id": r.number, "subject_id": r.number, "dicom_id": image_id,
                                            "view": view}))
    return records, dropped, sum(len(v) for v in images.values())


def _real_images(source: IUSource, reports: list[IUReport], dropped: dict[str, int]) -> dict[str, list[tuple]]:
    """{report id: [(path relative to out, image id, view "")]} for the PNGs present and readable;
    DataError when the folder holds none of them."""
    try:
        base = os.path.relpath(source.images, source.out).replace(os.sep, "/")
    except ValueError:  # another drive on Windows
        base = str(source.images)
    found: dict[str, list[tuple]] = {}
    wanted = 0
    for r in reports:
        if not r.image_ids:
            dropped["no_image"] += 1
            continue
        for image_id in r.image_ids:
            wanted += 1
            status = check_image(str(source.images / f"{image_id}.png"))
            if status == "ok":
                found.setdefault(r.uid, []).append((f"{base}/{image_id}.png", image_id, ""))
            else:
                dropped[status] += 1
    if not found:
        example = next((f"{i}.png" for r in reports for i in r.image_ids), "CXR1_1_IM-0001-3001.png")
        raise DataError(f"prepare-iu --images: none of the {wanted} PNGs the reports name is in {source.images} "
                        f"(expected e.g. {example}; the PNGs are Open-i's NLMCXR_png.tgz), or pass --images phantom")
    return found


def _write_sentence_labels(out: Path, reports: list[IUReport]) -> dict:
    """Every FINDINGS/IMPRESSION sentence with its labels from text/mentions.py, beside datasets.pkl."""
    table: dict[str, list[float]] = {}
    for r in reports:
        for sentence in split_sentences(r.text):
            if sentence not in table:
                table[sentence] = labelled_sentence(sentence)
    write_sentence_labels(out / PREPARED_NAME, dict(sorted(table.items())))
    return {"path": str(out / PREPARED_NAME), "sentences": len(table), "labeller": "medclip_nb/text/mentions.py"}


def _write_reports_file(out: Path, labelled, splits: dict[str, str], kept: set[int]) -> None:
    lines = []
    for r, m in labelled:
        lines.append(json.dumps({
            "id": r.uid, "split": splits.get(r.uid) if r.number in kept else None, "sections": r.sections,
            "mesh_major": r.major, "mesh_automatic": r.automatic,
            "labels": [None if math.isnan(v) else v for v in m.labels], "unmapped_mesh": m.unmapped,
            "image_ids": r.image_ids}, sort_keys=True))
    write_text_atomic(out / REPORTS_FILE, "\n".join(lines) + "\n", error=DataError)


def _mesh_summary(labelled: list[tuple[IUReport, MeshLabels]]) -> dict:
    """The share of reports the table maps, and the reports each of its rows matched."""
    n = len(labelled)
    finding = sum(1 for _, m in labelled if not m.blank and not m.normal)
    normal = sum(1 for _, m in labelled if m.normal)
    blank = [m for _, m in labelled if m.blank]
    counts = {row_key(rule): 0 for rule in MESH_TABLE}
    for _, m in labelled:
        for key in m.rows:
            counts[key] += 1
    return {
        "reports": n, "mapped": normal + finding, "mapped_share": (normal + finding) / n if n else 0.0,
        "normal": normal, "with_mapped_finding": finding, "blank": len(blank),
        "blank_with_unmapped_codes": sum(1 for m in blank if m.unmapped),
        "blank_with_neutral_codes_only": sum(1 for m in blank if not m.unmapped),
        "row_reports": counts,
    }


def _import_report(source: IUSource, labelled, datasets: dict[str, list[dict]], dropped: dict[str, int],
                   image_count: int, sentences: dict) -> dict:
    records = [rec for recs in datasets.values() for rec in recs]
    labels = np.array([rec["labels"] for rec in records], dtype=float).reshape(-1, len(CHEXPERT_LABELS))
    studies = {name: len({rec["study_id"] for rec in recs}) for name, recs in datasets.items()}
    drawn = [c.label for r, m in labelled for c in m.mapped if r.text]
    return {
        "dataset": DATASET_NAME, "licence": "CC BY-NC-ND 4.0 (never committed or redistributed)",
        "iu_params": iu_params(source.reports_arg, PHANTOM_IMAGES if source.images is None else source.images,
                               source.size, source.seed),
        "reports_source": str(source.reports), "image_kind": source.image_kind,
        "images": PHANTOM_IMAGES if source.images is None else str(source.images),
        "views": VIEW_NOTE[source.image_kind], "datasets": str(source.out / "datasets.pkl"),
        "mimic_root": None, "source_phantom": None,
        "reports_read": len(labelled), "images_named": sum(len(r.image_ids) for r, _ in labelled),
        "kept": {name: len(recs) for name, recs in datasets.items()}, "kept_total": len(records),
        "kept_studies": studies, "kept_subjects": studies, "images_used": image_count, "dropped": dropped,
        "label_positives": {name: int((labels[:, i] == 1).sum()) for i, name in enumerate(CHEXPERT_LABELS)},
        "blank_label_images": int(np.isnan(labels).all(axis=1).sum()), "blank_labels": BLANK_LABELS_NOTE,
        "mesh_table": table_rows(), "mesh": _mesh_summary(labelled),
        "phantom_not_drawn": ({label: drawn.count(label) for label in NOT_DRAWN}
                              if source.images is None else None),
        "sentence_labels": sentences, "reports_file": str(source.out / REPORTS_FILE),
    }


def _print_report(report: dict, log) -> None:
    mesh = report["mesh"]
    log(f"prepared {report['kept_total']} Open-i images ({report['image_kind']} images) from "
        f"{report['reports_source']} -> {report['datasets']}")
    where = "drawn from each report's MeSH codes" if report["image_kind"] == "phantom" else report["images"]
    log(f"  images: {report['image_kind']} ({where}); {report['views']}")
    log("  kept: " + ", ".join(f"{k} {v}" for k, v in report["kept"].items())
        + " (images; patient = report, patient-disjoint)")
    log("  dropped reports/images: " + ", ".join(f"{k} {v}" for k, v in report["dropped"].items()))
    log("  MeSH -> CheXpert table (major codes; reports matched):")
    for line in format_table(mesh["row_reports"]):
        log(f"    {line}")
    log(f"  mapped: {mesh['mapped']} of {mesh['reports']} reports ({mesh['mapped_share']:.1%}): "
        f"{mesh['normal']} normal, {mesh['with_mapped_finding']} with a mapped finding; {mesh['blank']} with no "
        f"CheXpert label ({mesh['blank_with_unmapped_codes']} only unmapped codes, "
        f"{mesh['blank_with_neutral_codes_only']} only neutral ones) keep blank labels")
    log(f"  sentence labels: {report['sentence_labels']['sentences']} sentences -> {report['sentence_labels']['path']}")
    if report["phantom_not_drawn"]:
        log("  not drawn on phantom images (no drawer): "
            + ", ".join(f"{k} ({v} codes)" for k, v in report["phantom_not_drawn"].items()))
