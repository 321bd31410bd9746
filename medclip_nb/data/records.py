"""Per-sample fields of one split in a few NumPy arrays, shared by forked loader workers.

A Python list of dicts is the natural shape of `datasets.pkl`, but a forked DataLoader
worker that reads it writes to it: every access changes reference counts, and the cyclic
garbage collector writes to the header of every dict and list it scans. Each written page is
copied into the worker (copy-on-write), so over one epoch each worker ends up with its own copy
of the whole dataset (measured at MIMIC-CXR size: 29 -> 385 MiB per worker; see
benchmarks/README.md). `SampleRecords` holds only what the loader reads, as a handful of
arrays whose pages are only ever read:

    image paths, reports, one uint8 buffer of UTF-8 bytes each + int64 offsets [n + 1]
    region files          (the optional `regions` field, "" where a record has none)
    labels                float32 [n, 14] (NaN = blank)
    clip_indices          int64 buffer + offsets, and a bool mask of the records having them

`freeze_inherited_objects` (called in each worker by `data.seed_worker`) keeps the garbage
collector away from the objects the worker inherited (the parent's list of dicts included).
"""

from __future__ import annotations

import gc
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from medclip_nb.labels import NUM_LABELS

_TEXT_ERRORS = "surrogatepass"  # round-trips any Python str, even a lone surrogate


def _pack_strings(values: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [value.encode("utf-8", _TEXT_ERRORS) for value in values]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def _unpack_string(buffer: np.ndarray, offsets: np.ndarray, index: int) -> str:
    return buffer[offsets[index]:offsets[index + 1]].tobytes().decode("utf-8", _TEXT_ERRORS)


def _subject_id(record: Mapping[str, Any]) -> int:
    """A record's patient id as an int in 0..2**62, else -1 (absent or unusable: the record is its own patient)."""
    value = record.get("subject_id")
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value < 2**62:
        return int(value)
    return -1


class SampleRecords:
    """The loader's view of a split's records: ``image_path(i)``, ``report(i)``, ``labels(i)``
    (a float32 view), ``clip_indices(i)`` (a list of ints, or None when the record has none),
    ``regions(i)`` (the finding-region file, or None),
    and ``subject_ids()``, the patient of each record (-1 where a record names none), which
    evaluation resamples for its intervals.

    ``records[i]`` returns a fresh dict with those keys, for code that reads records as dicts
    (figures, evaluation sets); changing it does not change the records.
    """

    def __init__(self, records: Sequence[Mapping[str, Any]]):
        n = len(records)
        self._paths, self._path_offsets = _pack_strings([str(r.get("image_path") or "") for r in records])
        self._reports, self._report_offsets = _pack_strings([str(r.get("report") or "") for r in records])
        self._regions, self._region_offsets = _pack_strings([str(r.get("regions") or "") for r in records])
        labels = np.full((n, NUM_LABELS), np.nan, dtype=np.float32)
        for row, record in enumerate(records):
            labels[row] = [np.nan if v is None else float(v) for v in record["labels"]]
        self._labels = labels
        has_clip = np.fromiter(("clip_indices" in r for r in records), dtype=bool, count=n)
        lists = [list(np.atleast_1d(np.asarray(r["clip_indices"], dtype=np.int64))) if has_clip[i] else []
                 for i, r in enumerate(records)]
        self._clip_offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.fromiter((len(x) for x in lists), dtype=np.int64, count=n), out=self._clip_offsets[1:])
        self._clip = np.fromiter((v for x in lists for v in x), dtype=np.int64, count=int(self._clip_offsets[-1]))
        self._has_clip = has_clip
        self._subjects = np.fromiter((_subject_id(r) for r in records), dtype=np.int64, count=n)

    @classmethod
    def of(cls, records: "SampleRecords | Sequence[Mapping[str, Any]]") -> "SampleRecords":
        """``records`` itself when it is already a ``SampleRecords``, else packed."""
        return records if isinstance(records, SampleRecords) else cls(records)

    def __len__(self) -> int:
        return len(self._labels)

    def image_path(self, index: int) -> str:
        return _unpack_string(self._paths, self._path_offsets, index)

    def report(self, index: int) -> str:
        return _unpack_string(self._reports, self._report_offsets, index)

    def regions(self, index: int) -> str | None:
        """The record's finding-region file (data/regions.py), as written in the dataset; None without one."""
        return _unpack_string(self._regions, self._region_offsets, index) or None

    def labels(self, index: int) -> np.ndarray:
        """float32 [14], a read-only view (NaN = blank)."""
        view = self._labels[index]
        view.flags.writeable = False
        return view

    def has_clip_indices(self, index: int) -> bool:
        return bool(self._has_clip[index])

    def clip_indices(self, index: int) -> list[int] | None:
        if not self._has_clip[index]:
            return None
        return self._clip[self._clip_offsets[index]:self._clip_offsets[index + 1]].tolist()

    def subject_ids(self) -> np.ndarray:
        """int64 [N]: each record's subject_id (its patient), -1 where it has none."""
        return self._subjects.copy()

    def image_paths(self) -> list[str]:
        return [self.image_path(i) for i in range(len(self))]

    def reports(self) -> list[str]:
        return [self.report(i) for i in range(len(self))]

    def nbytes(self) -> int:
        """Bytes held by the arrays."""
        arrays = (self._paths, self._path_offsets, self._reports, self._report_offsets, self._regions,
                  self._region_offsets, self._labels,
                  self._clip, self._clip_offsets, self._has_clip, self._subjects)
        return int(sum(a.nbytes for a in arrays))

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"record {index} out of range ({len(self)} records)")
        index %= len(self)
        record: dict[str, Any] = {
            "image_path": self.image_path(index),
            "report": self.report(index),
            "labels": self._labels[index].astype(np.float64).tolist(),
        }
        if self._has_clip[index]:
            record["clip_indices"] = self.clip_indices(index)
        if self.regions(index):
            record["regions"] = self.regions(index)
        if self._subjects[index] >= 0:
            record["subject_id"] = int(self._subjects[index])
        return record

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[i] for i in range(len(self)))


def freeze_inherited_objects() -> None:
    """In a forked worker: move every object inherited from the parent into the collector's
    permanent generation, so collections never write to (and so never copy) their pages.
    Only the list heads are relinked: this touches no inherited object."""
    gc.freeze()
