"""Report banks and nearest reports: what `retrieve` and `Pretrained.retrieve` search.

A bank is the distinct reports of a dataset file (its splits' `report` fields) or of a text file
(one report per line); reports whose cleaned text is equal are one entry, with where the first came
from and how many records share it. Nearest reports are found by cosine similarity, in chunks of
images, so memory grows with the bank, never with images x bank.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medclip_nb.data import REQUIRED_SPLITS, load_dataset_file
from medclip_nb.errors import UserError
from medclip_nb.files import read_text_limited
from medclip_nb.text import clean_report

DATASET_SUFFIXES = (".pkl", ".pickle", ".jsonl", ".csv")


@dataclass
class ReportBank:
    """Distinct reports (`texts`, as written), where each first came from (`sources`: 'train[12]',
    'line 4', 'report 0'), how many records share its cleaned text (`copies`) and the first's
    study id where the file has one (`study_ids`, None otherwise)."""

    texts: list[str]
    sources: list[str]
    copies: list[int] = field(default_factory=list)
    study_ids: list[int | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)


def report_bank(entries: Sequence, where: str = "reports") -> ReportBank:
    """A bank from report texts, or from (text, source, study id) triples; blank texts are left
    out, equal cleaned texts merged. A UserError naming `where` when no report is left."""
    if isinstance(entries, str):
        raise UserError(f"{where}: give a list of reports (or a ReportBank), not one string")
    bank, first = ReportBank([], [], [], []), {}
    for position, entry in enumerate(entries):
        text, source, study = entry if isinstance(entry, tuple) else (entry, f"report {position}", None)
        if not isinstance(text, str) or not text.strip():
            continue
        key = clean_report(text)
        if key in first:
            bank.copies[first[key]] += 1
            continue
        first[key] = len(bank.texts)
        bank.texts.append(text.strip())
        bank.sources.append(source)
        bank.copies.append(1)
        bank.study_ids.append(study)
    if not bank.texts:
        raise UserError(f"{where}: holds no report text")
    return bank


# A text file of reports (all of MIMIC-CXR's are about 200 MB): read whole, so capped.
MAX_BANK_BYTES = 1 << 30


def load_report_bank(path: str | os.PathLike, splits: Sequence[str] | None = None) -> ReportBank:
    """The reports of a dataset file (.pkl, .jsonl, .csv: `splits`, default all three) or of a
    text file (any other suffix: one report per non-blank line). Relative paths are taken from
    the current folder."""
    path = Path(path).expanduser()
    where = f"--reports {path}"
    if not path.is_file():
        raise UserError(f"{where}: no such file")
    if path.suffix.lower() not in DATASET_SUFFIXES:
        if splits:
            raise UserError(f"--splits: {where} is a text file (one report per line); it has no splits")
        lines = read_text_limited(path, MAX_BANK_BYTES, what="--reports", error=UserError).splitlines()
        return report_bank([(line, f"line {i + 1}", None) for i, line in enumerate(lines)], where)
    splits = list(splits or REQUIRED_SPLITS)
    unknown = [s for s in splits if s not in REQUIRED_SPLITS]
    if unknown:
        raise UserError(f"--splits: {unknown[0]!r} is not one of {', '.join(REQUIRED_SPLITS)}")
    records = load_dataset_file(path)
    entries = []
    for split in splits:
        for i, record in enumerate(records.get(split) or []):
            if isinstance(record, dict):
                study = record.get("study_id")
                entries.append((record.get("report"), f"{split}[{i}]", study if isinstance(study, int) else None))
    return report_bank(entries, f"{where} (splits {', '.join(splits)})")


def nearest_reports(image_emb: np.ndarray, bank_emb: np.ndarray, k: int,
                    chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(indices [N, k'], similarities [N, k']) of the k' = min(k, bank size) bank rows nearest to
    each image row (both L2-normalised: the dot product is the cosine), best first; among the k'
    kept, equal similarities keep the lower bank index first."""
    k = min(int(k), len(bank_emb))
    bank = np.asarray(bank_emb, dtype=np.float32)
    orders, scores = [], []
    for start in range(0, len(image_emb), chunk):
        sim = np.asarray(image_emb[start:start + chunk], dtype=np.float32) @ bank.T
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k] if k < sim.shape[1] else np.tile(np.arange(k), (len(sim), 1))
        top_scores = np.take_along_axis(sim, top, axis=1)
        # Best first; on equal similarity the lower bank index first (lexsort: last key is primary).
        order = np.lexsort((top, -top_scores), axis=1)
        orders.append(np.take_along_axis(top, order, axis=1))
        scores.append(np.take_along_axis(top_scores, order, axis=1))
    if not orders:
        return np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32)
    return np.concatenate(orders), np.concatenate(scores)
