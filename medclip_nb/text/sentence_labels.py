"""Sentence-label tables: each report sentence with its own CheXpert labels (MedCLIP's
`sentence-label.csv`), so that a sampled sentence is labelled by what it says rather than by its
whole study (config `sentence_labels`).

Format: a CSV (optionally gzipped) with the sentence in a column `Reports` (MedCLIP's name;
`report` or `sentence` also accepted) and the 14 CheXpert label columns, values 1 / 0 / -1 or blank.
Sentences are matched in MedCLIP's normal form (`sentence_key`, its `_split_report_into_segment`
as the paper was trained with it, repository commit f8599d2): "digits." removed, word characters
only (the word-character tokens of the lower-case text: every punctuation mark and the final period dropped),
ASCII, joined by single spaces. So a table in MedCLIP's form ("heart size is normal") and one of
cleaned sentences ("heart size is normal.") both match the sentences sampling gives; two rows of
one key: the last wins, as MedCLIP's dict. A sampled sentence missing from the table is counted
(`sentence_hits`, printed at the start of training) and gets what `sentence_label_miss` says:
its study's labels (default), No Finding = 1 (MedCLIP's dataset code), or an error.

Where tables come from: the phantom writes `sentence-label.csv.gz` beside its reports (it writes
every sentence from labels); `prepare` carries a `sentence-label.csv[.gz]` found in the MIMIC root
through to `sentence_labels.csv.gz` beside datasets.pkl; MIMIC-CXR users bring their own
(MedCLIP's, or one from a CheXpert labeler run on the sentences).
"""

from __future__ import annotations

import gzip
import math
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from medclip_nb.errors import DataError
from medclip_nb.labels import CHEXPERT_LABELS, LABEL_INDEX, NUM_LABELS
from medclip_nb.paths import resolve
from medclip_nb.text.augment import drop_short_sentences
from medclip_nb.text.clean import split_sentences

SOURCE_NAMES = ("sentence-label.csv", "sentence-label.csv.gz")  # in a MIMIC root (MedCLIP's name)
PREPARED_NAME = "sentence_labels.csv.gz"  # beside datasets.pkl, written by prepare
TEXT_COLUMNS = ("Reports", "report", "sentence")


_DIGITS_PERIOD = re.compile(r"[0-9]+\.")
_WORD = re.compile(r"\w+")


def sentence_key(text: str) -> str:
    """MedCLIP's normal form of a sentence (module docstring): case, whitespace and punctuation
    insensitive. "Stable small left-sided effusion." -> "stable small left sided effusion";
    "2.0 cm above the carina" -> "0 cm above the carina", as MedCLIP's own table has it. MedCLIP
    cuts a text at "digits." and at every period into segments and keeps those of more than 4
    tokens; a sentence with exactly one such segment is keyed by it (what MedCLIP samples and
    looks up), any other by all its tokens."""
    pieces = [p for d in _DIGITS_PERIOD.split(text.replace("\n", " ").lower()) for p in d.split(".")]
    tokens = [[a for a in (t.encode("ascii", "ignore").decode("ascii")
                           for t in _WORD.findall(p.replace("\ufffd\ufffd", " "))) if a] for p in pieces]
    segments = [" ".join(t) for t in tokens if len(t) > 4]
    return segments[0] if len(segments) == 1 else " ".join(" ".join(t) for t in tokens if t)


def sentence_hits(texts, table: Mapping[str, object], short_sentence_tokens: int = 0) -> tuple[int, int, str | None]:
    """(sentences found, sentences, the first one missing) over every sentence a training step can
    sample from `texts` (reports; sentences of more than `short_sentence_tokens` words, as sampling
    filters them)."""
    hits = total = 0
    first_miss = None
    for text in texts:
        sentences = split_sentences(text)
        for sentence in drop_short_sentences(sentences, short_sentence_tokens) or sentences:
            total += 1
            if sentence_key(sentence) in table:
                hits += 1
            elif first_miss is None:
                first_miss = sentence
    return hits, total, first_miss


def unlisted_sentence_labels() -> list[float]:
    """Labels of a sentence missing from the table: No Finding = 1, everything else 0."""
    values = [0.0] * NUM_LABELS
    values[LABEL_INDEX["No Finding"]] = 1.0
    return values


def read_sentence_labels(path: str | Path) -> dict[str, list[float]]:
    """{sentence_key: 14 label values (NaN = blank)} from a sentence-label CSV; DataError with one
    line naming the file and the column for a table that cannot be used."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"sentence labels: {path} not found")
    try:
        frame = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS}, keep_default_na=True)
    except (ValueError, OSError, UnicodeDecodeError, gzip.BadGzipFile, pd.errors.ParserError) as e:
        raise DataError(f"sentence labels: {path} is not a readable CSV ({type(e).__name__})") from None
    text_column = next((c for c in TEXT_COLUMNS if c in frame.columns), None)
    if text_column is None:
        raise DataError(f"sentence labels: {path} has no sentence column (one of {', '.join(TEXT_COLUMNS)})")
    missing = [name for name in CHEXPERT_LABELS if name not in frame.columns]
    if missing:
        raise DataError(f"sentence labels: {path} lacks the label column '{missing[0]}'")
    values = frame[list(CHEXPERT_LABELS)].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    raw = frame[list(CHEXPERT_LABELS)].to_numpy()
    bad = ~np.isnan(values) & ~np.isin(values, (1.0, 0.0, -1.0))
    unparsed = np.isnan(values) & pd.notna(raw)
    if (bad | unparsed).any():
        row, col = np.argwhere(bad | unparsed)[0]
        raise DataError(f"sentence labels: {path} row {row + 2} column '{CHEXPERT_LABELS[col]}' holds "
                        f"{raw[row, col]!r}; allowed are 1, 0, -1 or blank")
    table: dict[str, list[float]] = {}
    for text, row in zip(frame[text_column].fillna("").tolist(), values.tolist()):
        key = sentence_key(text)
        if key:
            table[key] = row
    if not table:
        raise DataError(f"sentence labels: {path} holds no sentences")
    return table


def write_sentence_labels(path: str | Path, table: Mapping[str, list[float]]) -> None:
    """The table as a gzipped CSV (`Reports` + the 14 labels, blank = NaN), bytes fixed by its content."""
    rows = [{"Reports": text, **dict(zip(CHEXPERT_LABELS, labels))} for text, labels in table.items()]
    frame = pd.DataFrame(rows, columns=["Reports", *CHEXPERT_LABELS])
    data = frame.to_csv(index=False, lineterminator="\n").encode("utf-8")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            gz.write(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def find_source_table(mimic_root: Path) -> Path | None:
    """A MIMIC root's sentence-label table (MedCLIP's name), or None."""
    return next((mimic_root / n for n in SOURCE_NAMES if (mimic_root / n).is_file()), None)


def resolve_sentence_labels(cfg) -> Path | None:
    """The table `cfg.sentence_labels` names: None (off), 'auto' (the prepared table beside the
    dataset file when there is one, else None) or a path (which must exist)."""
    setting = cfg.sentence_labels
    if not setting:
        return None
    if setting == "auto":
        candidate = resolve(cfg.data_path).parent / PREPARED_NAME
        return candidate if candidate.is_file() else None
    path = resolve(setting)
    if not path.is_file():
        raise DataError(f"config key 'sentence_labels': {path} not found")
    return path


def label_tensor_table(table: Mapping[str, list[float]]):
    """The table with its values as float32 tensors (what the dataset hands out)."""
    import torch

    return {k: torch.tensor([math.nan if v is None else float(v) for v in vals], dtype=torch.float32)
            for k, vals in table.items()}
