"""Writes the phantom MIMIC-CXR-JPG tree: images, reports, the three tables, the sentence-label
table and the manifest (see the package docstring for the layout)."""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from medclip_nb.data import (
    CHEXPERT_TABLE,
    METADATA_COLUMNS,
    METADATA_TABLE,
    NEGBIO_TABLE,
    PHANTOM_FILES,
    REGIONS_SUFFIX,
    SPLIT_TABLE,
    delete_listed,
    describe_phantom,
    phantom_params,
    phantom_record,
    read_phantom_listing,
    regions_document,
    removal_problem,
    remove_derived_datasets,
    report_text,
    user_params,
)
from medclip_nb.errors import ConfigError, DataError
from medclip_nb.files import write_text_atomic
from medclip_nb.labels import CHEXPERT_LABELS
from medclip_nb.paths import resolve
from medclip_nb.phantom.anatomy import Anatomy, sample_anatomy, study_anatomy
from medclip_nb.phantom.plan import RNG_STUDY, RNG_SUBJECT, PlannedImage, PlannedStudy, plan_studies
from medclip_nb.phantom.regions import MASK_RULE, render_with_regions
from medclip_nb.phantom.render import MAX_SIZE, MIN_SIZE, image_width, render_chest
from medclip_nb.phantom.reports import LABEL_NOISE, PhantomReport, write_report
from medclip_nb.progress import progress
from medclip_nb.text import split_sentences, write_sentence_labels

SENTENCE_TABLE = "sentence-label.csv.gz"  # MedCLIP's sentence-label table, every sentence as written

# Bump when the output of the same arguments changes, so `phantom_is_current` rebuilds.
# 2: writes the sentence-label table; 3: Lung Opacity from opacity words only; 4: open report language, labeler-like
# label noise, graded findings down to the noise level (docs/phantom.md)
PHANTOM_VERSION = 4
# Bump when the finding-region files change (the images' and reports' bytes do not depend on them): a tree
# written without them, or with older ones, is rewritten (same images, same reports) and re-prepared.
# 1: <dicom_id>.regions.json beside each frontal image (phantom/regions.py)
FINDING_REGIONS_VERSION = 1
# The generator's own sources: a change to any of them that forgets the version bump above still
# makes `phantom_is_current` false, so a phantom is never reused from code that would write other bytes.
_GENERATOR_SOURCES = ("phantom/*.py", "text/*.py", "labels.py")
FRONTAL_VIEWS = ("PA", "AP")
PHANTOM_MANIFEST = "phantom.json"
JPEG_QUALITY = 90
_CHUNK_STUDIES = 50  # studies per worker task: an even load over the cores and a live progress line


_VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral"}


def _write_gzip_csv(path: Path, frame: pd.DataFrame) -> None:
    """CSV inside a gzip stream with no name and mtime 0, so the bytes depend on the data only."""
    data = frame.to_csv(index=False, lineterminator="\n").encode("utf-8")
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(data)


def _check_args(studies: int, size: int, seed: int, test_studies: int = 0) -> None:
    if not isinstance(studies, (int, np.integer)) or studies < 1:
        raise ConfigError(f"config key 'phantom_studies': must be a positive integer, got {studies!r}")
    if not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"config key 'phantom_size': must be an integer in {MIN_SIZE}..{MAX_SIZE}, got {size!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"config key 'phantom_seed': must be a non-negative integer, got {seed!r}")
    if not isinstance(test_studies, (int, np.integer)) or test_studies < 0:
        raise ConfigError(f"config key 'phantom_test_studies': must be a non-negative integer, got {test_studies!r}")


@functools.cache
def generator_fingerprint() -> str:
    """SHA-256 over the generator's source files (_GENERATOR_SOURCES: their package paths and bytes)."""
    package = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted({p for pattern in _GENERATOR_SOURCES for p in package.glob(pattern)}):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _manifest(studies: int, size: int, seed: int, test_studies: int = 0) -> dict:
    return {"generator": "medclip_nb.phantom", "version": PHANTOM_VERSION, "finding_regions": FINDING_REGIONS_VERSION,
            "generator_sha256": generator_fingerprint(), "studies": int(studies), "size": int(size),
            "seed": int(seed), "test_studies": int(test_studies)}


def phantom_is_current(out, studies: int, size: int, seed: int, test_studies: int = 0) -> bool:
    """True when `out` holds a complete phantom written with these arguments by this version.
    Relative paths are taken from the repository root."""
    out = resolve(out)
    path = out / PHANTOM_MANIFEST
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(recorded, dict) or not recorded.get("complete"):
        return False
    wanted = _manifest(studies, size, seed, test_studies)
    if any(recorded.get(k) != v for k, v in wanted.items()):
        return False
    tables = (SPLIT_TABLE, CHEXPERT_TABLE, NEGBIO_TABLE, METADATA_TABLE, SENTENCE_TABLE)
    return (out / "files").is_dir() and all((out / name).is_file() for name in tables)


def _clear_previous(out: Path, wanted: dict, force: bool) -> None:
    """Remove an earlier phantom's files (see data/provenance.py): refuse a folder that is not a
    phantom, a complete phantom of other parameters unless `force`, and a files/ tree holding
    anything the generator did not write."""
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(f"phantom output {out} exists and is not a folder")
    if not (out / PHANTOM_MANIFEST).exists():
        if (out / "files").exists() or any((out / n).exists() for n in (SPLIT_TABLE, CHEXPERT_TABLE, METADATA_TABLE)):
            raise DataError(f"refusing to overwrite {out}: it holds MIMIC-CXR files but no "
                            f"{PHANTOM_MANIFEST} (not a phantom)")
        return
    recorded = phantom_record(out)
    if recorded is None and not force:
        raise DataError(f"refusing to replace {out}: its {PHANTOM_MANIFEST} cannot be read "
                        f"(pass --force to replace it)")
    old = phantom_params(recorded)
    if old is not None and user_params(old) != user_params(wanted) and not force:
        raise DataError(
            f"{out} holds a phantom of {describe_phantom(old)}; replacing it with one of "
            f"{describe_phantom(wanted)} deletes its files/ and the datasets prepared from it: pass --force "
            f"(config key 'force'), or choose another phantom_dir")
    listed = read_phantom_listing(out)
    if listed is None:
        raise DataError(f"refusing to replace {out}: which files its generator wrote cannot be read (no "
                        f"{PHANTOM_FILES} and no readable split table); move the folder away first")
    problem = removal_problem(out, listed)
    if problem is not None:
        raise DataError(f"refusing to delete the phantom in {out}: {problem}")
    if old is not None:
        remove_derived_datasets(out, old)
    (out / PHANTOM_MANIFEST).unlink()
    delete_listed(out, listed)
    (out / PHANTOM_FILES).unlink(missing_ok=True)


@dataclass
class _Tables:
    """Rows of the three MIMIC tables and the sentence-label table, filled study by study."""

    split_rows: list[dict] = field(default_factory=list)
    label_rows: list[dict] = field(default_factory=list)
    meta_rows: list[dict] = field(default_factory=list)
    sentences: dict[str, list[float]] = field(default_factory=dict)  # sentence key -> labels, first writing wins
    noise: dict[str, int] = field(default_factory=dict)  # labeler-like noise: kind -> studies
    files: dict[str, str] = field(default_factory=dict)  # path under the root -> SHA-256 of what was written

    def add_report(self, s: PlannedStudy, report: PhantomReport) -> None:
        labels = report.labels
        if report.label_noise:
            self.noise[report.label_noise] = self.noise.get(report.label_noise, 0) + 1
        for text, sentence_labels in report.sentence_labels:
            for piece in split_sentences(text):
                self.sentences.setdefault(piece, [sentence_labels[name] for name in CHEXPERT_LABELS])
        self.label_rows.append({"subject_id": s.subject_id, "study_id": s.study_id, **labels})

    def add_image(self, s: PlannedStudy, im: PlannedImage, frontal: str, size: int, rng: np.random.Generator) -> None:
        self.split_rows.append({"dicom_id": im.dicom_id, "study_id": s.study_id, "subject_id": s.subject_id,
                                "split": s.split})
        procedure = "CHEST (PORTABLE AP)" if frontal == "AP" else "CHEST (PA AND LAT)"
        orientation = ("Recumbent" if rng.random() < 0.5 else "Erect") if frontal == "AP" else "Erect"
        self.meta_rows.append({
            "dicom_id": im.dicom_id, "subject_id": s.subject_id, "study_id": s.study_id,
            "PerformedProcedureStepDescription": procedure,
            "ViewPosition": "" if im.blank_view else im.view,
            "Rows": size, "Columns": image_width(size), "StudyDate": s.date, "StudyTime": s.time,
            "ProcedureCodeSequence_CodeMeaning": procedure,
            "ViewCodeSequence_CodeMeaning": "" if im.blank_view else _VIEW_MEANING[im.view],
            "PatientOrientationCodeSequence_CodeMeaning": "" if im.blank_view else orientation,
        })

    def extend(self, other: _Tables) -> None:
        """Append the rows of the studies that follow (merged in plan order: same tables, same bytes)."""
        self.split_rows += other.split_rows
        self.label_rows += other.label_rows
        self.meta_rows += other.meta_rows
        for sentence, labels in other.sentences.items():
            self.sentences.setdefault(sentence, labels)
        for kind, count in other.noise.items():
            self.noise[kind] = self.noise.get(kind, 0) + count
        self.files.update(other.files)

    def write(self, out: Path) -> None:
        split_columns = ["dicom_id", "study_id", "subject_id", "split"]
        _write_gzip_csv(out / SPLIT_TABLE, pd.DataFrame(self.split_rows, columns=split_columns))
        label_columns = ["subject_id", "study_id", *CHEXPERT_LABELS]
        _write_gzip_csv(out / CHEXPERT_TABLE, pd.DataFrame(self.label_rows, columns=label_columns))
        # NegBio's table (MedCLIP reads it): the phantom has one labeler, so the same labels under its name.
        _write_gzip_csv(out / NEGBIO_TABLE, pd.DataFrame(self.label_rows, columns=label_columns))
        _write_gzip_csv(out / METADATA_TABLE, pd.DataFrame(self.meta_rows, columns=list(METADATA_COLUMNS)))
        write_sentence_labels(out / SENTENCE_TABLE, dict(sorted(self.sentences.items())))


def _write_study(out: Path, s: PlannedStudy, patient: Anatomy, size: int, seed: int, tables: _Tables) -> None:
    """Write the study's report and JPEGs (beside each frontal one its finding regions) and add its rows.
    The report, then each image (sorted by dicom_id), draw from one random stream of the study, in this order."""
    rng = np.random.default_rng([seed, RNG_STUDY, s.index, 1])
    views = [im.view for im in s.images]
    report = write_report(s.findings, views, s.style, rng)
    folder = out / "files" / f"p{str(s.subject_id)[:2]}" / f"p{s.subject_id}"
    study_dir = folder / f"s{s.study_id}"
    study_dir.mkdir(parents=True, exist_ok=True)
    _write_listed(out, folder / f"s{s.study_id}.txt", report.text.encode("utf-8"), tables)
    tables.add_report(s, report)
    frontal = next(v for v in views if v in ("PA", "AP"))
    for im in s.images:  # sorted by dicom_id
        anatomy = study_anatomy(patient, rng, im.view)
        if im.view in FRONTAL_VIEWS:  # the same image render_chest draws, and where each finding is
            image, regions = render_with_regions(size, anatomy, s.findings, rng)
            document = regions_document(image.width, image.height, regions, MASK_RULE)
            _write_listed(out, study_dir / f"{im.dicom_id}{REGIONS_SUFFIX}",
                          json.dumps(document, separators=(",", ":")).encode("utf-8"), tables)
        else:
            image = render_chest(size, anatomy, s.findings, im.view, rng)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        _write_listed(out, study_dir / f"{im.dicom_id}.jpg", buffer.getvalue(), tables)
        tables.add_image(s, im, frontal, size, rng)


def _write_listed(out: Path, path: Path, data: bytes, tables: _Tables) -> None:
    """Write a file of the phantom and record its SHA-256 for the listing (PHANTOM_FILES)."""
    path.write_bytes(data)
    tables.files[path.relative_to(out).as_posix()] = hashlib.sha256(data).hexdigest()


def _write_listing(out: Path, tables: _Tables) -> None:
    """PHANTOM_FILES: `<sha256>  <path>` of every file written (sha256sum's format), the tables
    included; a later --force deletes exactly these (data/provenance.py)."""
    files = dict(tables.files)
    for name in (SPLIT_TABLE, CHEXPERT_TABLE, NEGBIO_TABLE, METADATA_TABLE, SENTENCE_TABLE):
        files[name] = hashlib.sha256((out / name).read_bytes()).hexdigest()
    write_text_atomic(out / PHANTOM_FILES, "".join(f"{digest}  {name}\n" for name, digest in sorted(files.items())),
                      error=DataError)


def _write_chunk(out: Path, chunk: list[PlannedStudy], size: int, seed: int) -> _Tables:
    """Write a run of consecutive studies and return their table rows. Every study draws from
    its own random stream and every patient's anatomy from the patient's, so any split of the
    plan writes the same bytes."""
    tables, patients = _Tables(), {}
    for s in chunk:
        if s.subject_index not in patients:
            patients[s.subject_index] = sample_anatomy(np.random.default_rng([seed, RNG_SUBJECT, s.subject_index]))
        _write_study(out, s, patients[s.subject_index], size, seed, tables)
    return tables


def _write_studies(out: Path, plan: list[PlannedStudy], size: int, seed: int, workers: int | None) -> _Tables:
    """All studies of the plan, in chunks over `workers` processes (default: one per core);
    the rows are merged in plan order."""
    chunks = [plan[i:i + _CHUNK_STUDIES] for i in range(0, len(plan), _CHUNK_STUDIES)]
    workers = min(len(chunks), workers or os.cpu_count() or 1)
    write = partial(_write_chunk, out, size=size, seed=seed)
    tables = _Tables()
    # spawn, not fork: a notebook's kernel may hold torch's threads, which fork does not copy safely
    with (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if workers > 1
          else nullcontext()) as pool, progress(total=len(plan), desc="phantom", unit="study") as bar:
        listing = open(out / PHANTOM_FILES, "w", encoding="utf-8")  # as it goes: an interrupted run is listed too
        with listing:
            for chunk, part in zip(chunks, pool.map(write, chunks) if pool else map(write, chunks)):
                tables.extend(part)
                listing.writelines(f"{digest}  {name}\n" for name, digest in part.files.items())
                listing.flush()
                bar.update(len(chunk))
    return tables


def phantom_report_texts(studies: int, seed: int = 0) -> list[str]:
    """FINDINGS + IMPRESSION of the reports of a phantom of `studies` studies, without drawing an
    image: the same texts `generate_phantom(studies=..., seed=...)` writes (a study's report is the
    first draw of its stream). For comparing report language with another corpus (notebook 01)."""
    texts = []
    for s in plan_studies(studies, seed):
        rng = np.random.default_rng([seed, RNG_STUDY, s.index, 1])
        texts.append(report_text(write_report(s.findings, [im.view for im in s.images], s.style, rng).text))
    return texts


def generate_phantom(out, studies: int = 300, size: int = 256, seed: int = 0, test_studies: int = 0, *,
                     force: bool = False, workers: int | None = None) -> dict:
    """Write a deterministic phantom MIMIC-CXR-JPG tree (images, reports, three tables) to `out`.

    About studies/3 patients with several studies each; patient-disjoint splits of about
    70/10/20 % (train/validate/test) of the studies. Each study has one frontal image (PA
    or AP) and about 25% also a lateral (LATERAL or LL); about 4% of images have a blank
    ViewPosition; about 3% of reports lack FINDINGS and about 1% have no sections at all.
    Images are `size` pixels tall and round(size * 2544 / 3056) wide. Same arguments, same
    bytes. `test_studies` adds that many test-only studies of new patients (a test cohort for
    evaluation sets big enough to separate methods; the other studies keep their bytes). An
    earlier phantom in `out` is replaced when it was incomplete or had the same
    arguments; one of other arguments only with `force` (the datasets prepared from it in `out`
    are deleted too); a folder holding other MIMIC files, or a files/ tree holding files the
    generator does not write, is refused (data/provenance.py). Relative paths are taken from the
    repository root. `workers` processes write the studies (default: one per core; the bytes do
    not depend on it). Returns a summary: studies, images, subjects and per-split counts
    (subjects, studies, images of each split).
    """
    _check_args(studies, size, seed, test_studies)
    out = resolve(out)
    manifest = _manifest(studies, size, seed, test_studies)
    _clear_previous(out, manifest, force)
    out.mkdir(parents=True, exist_ok=True)
    # Written first as incomplete: an interrupted run is recognised as a phantom and redone.
    (out / PHANTOM_MANIFEST).write_text(json.dumps({**manifest, "complete": False}, indent=2) + "\n")

    plan = plan_studies(studies, seed, test_studies)
    tables = _write_studies(out, plan, size, seed, workers)
    tables.write(out)
    _write_listing(out, tables)

    summary = {**_summary(plan, studies, size, seed), "label_noise": _noise_summary(tables, len(plan))}
    (out / PHANTOM_MANIFEST).write_text(json.dumps({**manifest, "complete": True, "summary": summary}, indent=2) + "\n")
    return summary


def _noise_summary(tables: _Tables, studies: int) -> dict:
    """The labeler-like noise of the label table: its rates (reports.LABEL_NOISE) and the studies of each kind."""
    counts = {kind: tables.noise.get(kind, 0) for kind in LABEL_NOISE}
    return {"rates": dict(LABEL_NOISE), "studies": counts,
            "share_of_studies": round(sum(counts.values()) / studies, 4) if studies else 0.0}


def _summary(plan: list[PlannedStudy], studies: int, size: int, seed: int) -> dict:
    splits = {}
    for name in ("train", "validate", "test"):
        group = [s for s in plan if s.split == name]
        splits[name] = {"subjects": len({s.subject_id for s in group}), "studies": len(group),
                        "images": sum(len(s.images) for s in group)}
    images = [im for s in plan for im in s.images]
    return {
        "studies": len(plan),
        "images": len(images),
        "subjects": len({s.subject_id for s in plan}),
        "splits": splits,
        "frontal_images": sum(im.view in ("PA", "AP") for im in images),
        "lateral_images": sum(im.view in ("LATERAL", "LL") for im in images),
        "blank_view_images": sum(im.blank_view for im in images),
        "reports_without_findings": sum(s.style == "impression_only" for s in plan),
        "reports_without_sections": sum(s.style == "no_sections" for s in plan),
        "size": [image_width(size), size],
        "seed": seed,
        "version": PHANTOM_VERSION,
    }
