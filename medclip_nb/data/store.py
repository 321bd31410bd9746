"""A uint8 memory-mapped image store: every image of a dataset decoded and resized ONCE.

Decoding a full-size MIMIC-CXR JPEG (about 2544 x 3056) costs far more than a training step
needs per image: 16 cores decode about 231 images/s, an H100 trains on about 2,800 pairs/s.
`build_store` decodes each image once, pads it to a centred black square, resizes it to
`size x size` and writes it as one row of a single uint8 array that every loader worker can
memory-map; augmentation then runs on the device (`gpu_augment.BatchAugment`).

Layout of a store folder (default `<dataset folder>/image_store_<size>/`):

    current -> builds/<id>   symlink to the finished build in use; a rebuild writes a new
                             builds/<id>/ and then replaces this link atomically (rename), so
                             a job reading the store never sees a half-written one
    builds/<id>/images.u8    raw uint8 array, shape [count, size, size] (C order)
    builds/<id>/index.json   {"meta": {...}, "rows": {image_path: row}, "failed": {image_path: reason}}
    builds/<id>/done.npy     bool [count]: row i holds a decoded image (saved after the rows reach
                             the disk, so an interrupted build RESUMES: only rows not done are decoded)
    builds/<id>/files.npy    int64 [count, 2]: size and mtime (ns) of each image file when decoded
    builds/<id>/hashes.npy   uint64 [count]: BLAKE2b-64 of (image_path, NUL, row pixels) of each done row

Checks on every open (`ImageStore.open`), all read-only and stat-based, no image decoded:
version and size; the dataset file unchanged, or listing the same images; the index (`rows`
a permutation of 0..count-1, in the order of the recorded path list); the size and mtime of
every source image file; and the hashes of `SAMPLE_ROWS` randomly chosen rows (so swapped
rows or overwritten pixels are found; `cache --verify` hashes every row). A store that fails
is refused with one line (`DataError`, exit status 2 from the CLI).

`build_store` on a complete, current store only runs those checks and returns: it never
writes to it. A stale store (the dataset file or some image files changed) gets a new build
that copies the unchanged rows from the current one and decodes only the rest. A store that
fails an integrity check is rebuilt only when asked (`rebuild=True`, `cache --rebuild`).

Memory: a build writes rows with plain `os.pwrite` calls, never through a memory map, so
its resident set stays at the Python process plus the decoded rows in flight (well under
1 GiB at any size); the written data sits in the kernel's page cache, which is not counted in
RSS. Readers memory-map `images.u8` read-only: the pages a job touches count as shared,
file-backed resident memory ("RssFile"), reclaimable by the kernel, at most the file size.
The previous build is kept until the next rebuild replaces it, so a job that opened it
(its workers included) keeps reading consistent pixels.

`image_path` keys are the strings exactly as the dataset file holds them, so a store stays
valid when `image_root` moves. Unreadable images are listed under "failed" with the reason;
their rows are never filled with anything else.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from medclip_nb.data.loading import REQUIRED_SPLITS, load_dataset_file
from medclip_nb.data.validation import validate_dataset
from medclip_nb.errors import DataError
from medclip_nb.paths import resolve
from medclip_nb.progress import progress

STORE_VERSION = 2
CURRENT_LINK = "current"
BUILDS_DIR = "builds"
IMAGES_FILE = "images.u8"
INDEX_FILE = "index.json"
DONE_FILE = "done.npy"
FILES_FILE = "files.npy"
HASHES_FILE = "hashes.npy"
# Files of a version-1 store (flat in the store folder); a rebuild removes them.
V1_FILES = (IMAGES_FILE, INDEX_FILE, DONE_FILE, FILES_FILE)
# Rows decoded per task handed to a pool worker: large enough to amortise the inter-process
# round trip, small enough that an interrupted build loses little work.
CHUNK_ROWS = 32
# Rows written between two saves of the done mask (each save fsyncs the images file first).
CHECKPOINT_ROWS = 2048
# Rows whose hash is checked on every open: 64 rows of 256 px = 4 MiB read.
SAMPLE_ROWS = 64
# Stores of at most this many rows are checked whole on every open (64 MiB read at 256 px).
FULL_CHECK_ROWS = 1024
REBUILD_HINT = "rebuild with `python -m medclip_nb cache --data_path {source} --size {size}`"
TAMPER_HINT = "rebuild it with `python -m medclip_nb cache --data_path {source} --size {size} --rebuild`"


class StoreIntegrityError(DataError):
    """A store whose index or pixels do not match what its build recorded (tampered or damaged)."""


def row_hash(image_path: str, pixels: bytes | memoryview | np.ndarray) -> int:
    """BLAKE2b-64 of the path and the row's bytes: a row moved to another path changes it too."""
    digest = hashlib.blake2b(image_path.encode("utf-8", "surrogatepass") + b"\0", digest_size=8)
    digest.update(memoryview(np.ascontiguousarray(pixels)).cast("B") if isinstance(pixels, np.ndarray) else pixels)
    return int.from_bytes(digest.digest(), "little")


# ---- dataset file ----------------------------------------------------------------------------------
def dataset_image_paths(data_path: Path) -> list[str]:
    """Unique image_path strings over all splits, in first-seen order (train, val, test)."""
    splits = load_dataset_file(data_path)
    validate_dataset(splits, data_path)  # a malformed record fails here, naming the file and key
    seen: dict[str, None] = {}
    for split in REQUIRED_SPLITS:
        for record in splits[split]:
            seen.setdefault(record["image_path"], None)
    return list(seen)


def _resolve_image(image_path: str, base: Path) -> Path:
    p = Path(os.path.expanduser(image_path))
    return p if p.is_absolute() else base / p


def paths_hash(image_paths: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for p in image_paths:
        digest.update(p.encode("utf-8", "surrogatepass"))
        digest.update(b"\n")
    return digest.hexdigest()


def image_files(image_paths: list[str], base: Path) -> list[str]:
    """The file of each image_path (relative ones under `base`), as plain strings: this runs
    for every image on every open, so it avoids building Path objects."""
    prefix = str(base).rstrip(os.sep) + os.sep
    return [str(_resolve_image(p, base)) if p.startswith("~") else (p if os.path.isabs(p) else prefix + p)
            for p in image_paths]


def file_stats(files: list[str]) -> np.ndarray:
    """int64 [N, 2]: (size, mtime in ns) of each file, (-1, -1) where it cannot be read."""
    stat, flat = os.stat, []
    append = flat.extend
    for file in files:
        try:
            st = stat(file)
        except OSError:
            append((-1, -1))
            continue
        append((st.st_size, st.st_mtime_ns))
    return np.array(flat, dtype=np.int64).reshape(len(files), 2)


def default_store_dir(data_path: str | os.PathLike, size: int) -> Path:
    """`<dataset folder>/image_store_<size>/`."""
    return resolve(data_path).parent / f"image_store_{size}"


def current_build(folder: str | os.PathLike) -> Path | None:
    """The build folder `folder/current` points to, or None when there is no finished build."""
    link = Path(folder) / CURRENT_LINK
    if not link.is_symlink() and not link.is_dir():
        return None
    try:
        target = link.resolve(strict=True)
    except FileNotFoundError:
        return None
    except (OSError, RuntimeError):  # a link loop (RuntimeError before Python 3.13)
        raise StoreIntegrityError(f"image store {folder}: its '{CURRENT_LINK}' link leads nowhere (a loop): "
                                  f"rebuild it with `python -m medclip_nb cache ... --rebuild`") from None
    return target if target.is_dir() else None


def _read_index(build: Path, where: Path) -> dict:
    try:
        index = json.loads((build / INDEX_FILE).read_text())
    except FileNotFoundError:
        raise DataError(f"image store {where}: no {INDEX_FILE} (not an image store, or its build never "
                        f"started)") from None
    except (ValueError, UnicodeDecodeError, OSError, RecursionError):
        raise StoreIntegrityError(f"image store {where}: {INDEX_FILE} is not valid JSON") from None
    if not isinstance(index, dict) or not isinstance(index.get("meta"), dict):
        raise StoreIntegrityError(f"image store {where}: {INDEX_FILE} has no 'meta' object")
    meta = index["meta"]
    if not isinstance(meta.get("source"), str) or not isinstance(meta.get("image_root", ""), (str, type(None))):
        raise StoreIntegrityError(f"image store {where}: {INDEX_FILE} meta 'source' / 'image_root' are not paths")
    return index


def _load_array(build: Path, name: str, where: Path, shape: tuple, dtype) -> np.ndarray:
    try:
        array = np.load(build / name, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        raise StoreIntegrityError(f"image store {where}: {name} missing or unreadable") from None
    if array.shape != shape or array.dtype != np.dtype(dtype):
        raise StoreIntegrityError(f"image store {where}: {name} holds {array.dtype} {array.shape}, "
                                  f"expected {np.dtype(dtype)} {shape}")
    return array


# ---- checking ----------------------------------------------------------------------------------------
def _validated_rows(index: dict, count: int, where: Path) -> dict[str, int]:
    """`rows` must map count distinct paths onto a permutation of 0..count-1."""
    rows = index.get("rows")
    if not isinstance(rows, dict) or len(rows) != count:
        raise StoreIntegrityError(f"image store {where}: {INDEX_FILE} 'rows' must map {count} image paths to rows")
    values = list(rows.values())
    if not all(type(v) is int for v in values):
        raise StoreIntegrityError(f"image store {where}: {INDEX_FILE} 'rows' holds a value that is not an integer row")
    order = np.sort(np.array(values, dtype=np.int64))
    if count and (order[0] != 0 or order[-1] != count - 1 or (np.diff(order) != 1).any()):
        raise StoreIntegrityError(f"image store {where}: {INDEX_FILE} 'rows' is not a permutation of rows "
                                  f"0..{count - 1} (a row repeats, is negative or out of range)")
    return rows


def _paths_in_row_order(rows: dict[str, int]) -> list[str]:
    ordered = [""] * len(rows)
    for path, row in rows.items():
        ordered[row] = path
    return ordered


class StoreBuild:
    """One build folder's files, checked for consistency (not yet against the sources)."""

    def __init__(self, build: Path, where: Path):
        self.path, self.where = build, where
        self.meta: dict = {}
        try:
            self._load()
        except StoreIntegrityError as e:
            raise StoreIntegrityError(f"{e}: {self.hint(tampered=True)}") from None

    def _load(self) -> None:
        build, where = self.path, self.where
        index = _read_index(build, where)
        self.meta, self.failed = index["meta"], index.get("failed", {})
        size, count = self.meta.get("size"), self.meta.get("count")
        if self.meta.get("version") != STORE_VERSION:
            raise DataError(f"image store {where}: version {self.meta.get('version')}, this code reads "
                            f"{STORE_VERSION}: {self.hint()}")
        if type(size) is not int or type(count) is not int or size <= 0 or count <= 0:
            raise StoreIntegrityError(f"image store {where}: {INDEX_FILE} meta 'size'/'count' must be positive "
                                      "integers")
        self.size, self.count = size, count
        self.rows = _validated_rows(index, count, where)
        self.paths = _paths_in_row_order(self.rows)
        if paths_hash(self.paths) != self.meta.get("paths_sha256"):
            raise StoreIntegrityError(f"image store {where}: {INDEX_FILE} 'rows' do not list the image paths in "
                                      f"the order the build recorded (rows swapped or renamed)")
        if not isinstance(self.failed, dict) or not set(self.failed) <= set(self.rows):
            raise StoreIntegrityError(f"image store {where}: {INDEX_FILE} 'failed' names paths that have no row")
        self.done = _load_array(build, DONE_FILE, where, (count,), bool)
        self.stats = _load_array(build, FILES_FILE, where, (count, 2), np.int64)
        self.hashes = _load_array(build, HASHES_FILE, where, (count,), np.uint64)
        images = build / IMAGES_FILE
        if not images.is_file() or images.stat().st_size != count * size * size:
            raise StoreIntegrityError(f"image store {where}: {IMAGES_FILE} does not hold {count} images of "
                                      f"{size}x{size}")
        if any(self.done[self.rows[p]] for p in self.failed):
            raise StoreIntegrityError(f"image store {where}: a row listed as failed is marked done")

    def hint(self, tampered: bool = False) -> str:
        return (TAMPER_HINT if tampered else REBUILD_HINT).format(source=self.meta.get("source"),
                                                                  size=self.meta.get("size"))

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete")) and int(self.done.sum()) + len(self.failed) == self.count

    def check_sample(self, rows: np.ndarray | None = None) -> None:
        """Hash `rows` (default: SAMPLE_ROWS random done rows) and compare with the recorded hashes."""
        done_rows = np.flatnonzero(self.done)
        if rows is None and len(done_rows) <= FULL_CHECK_ROWS:
            rows = done_rows  # a small store is checked whole: a sample would miss a changed row
        if rows is None:
            rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))
            rows = rng.choice(done_rows, size=min(SAMPLE_ROWS, len(done_rows)), replace=False)
        row_bytes = self.size * self.size
        bad = []
        with open(self.path / IMAGES_FILE, "rb") as f:
            for row in progress(np.sort(rows), desc=f"image store {self.where}: hashing rows", unit="row") \
                    if len(rows) > 10 * SAMPLE_ROWS else np.sort(rows):
                pixels = os.pread(f.fileno(), row_bytes, int(row) * row_bytes)
                if row_hash(self.paths[row], pixels) != int(self.hashes[row]):
                    bad.append(int(row))
        if bad:
            raise StoreIntegrityError(f"image store {self.where}: {len(bad)} of {len(rows)} checked rows differ from "
                                      f"what the build wrote (e.g. row {bad[0]}, {self.paths[bad[0]]}): "
                                      f"{self.hint(tampered=True)}")

    def changed_files(self, base: Path) -> np.ndarray:
        """bool [count]: the source image file's size or mtime differs from what was recorded."""
        now = file_stats(image_files(self.paths, base))
        return (now != self.stats).any(axis=1)


def _check_current_against(build: StoreBuild, source: Path, hint: str) -> None:
    """The dataset file must be the one the store was built from, or list the same images; every
    source image file must have the size and mtime it had when it was decoded."""
    if not source.is_file():
        raise DataError(f"image store {build.where}: its dataset file {source} no longer exists: {hint}")
    stat = source.stat()
    if stat.st_size != build.meta.get("source_bytes") or stat.st_mtime != build.meta.get("source_mtime"):
        if paths_hash(dataset_image_paths(source)) != build.meta.get("paths_sha256"):
            raise DataError(f"image store {build.where} is older than {source}, which now lists other images: {hint}")
    base = Path(build.meta.get("image_root") or source.parent)
    changed = int(build.changed_files(base).sum())
    if changed:
        raise DataError(f"image store {build.where}: {changed} of its image files changed since they were "
                        f"stored: {hint}")


# ---- reading -----------------------------------------------------------------------------------------
class ImageStore:
    """A finished image store, memory-mapped read-only; `get(image_path)` returns a view."""

    def __init__(self, folder: Path, build: StoreBuild):
        self.folder = folder
        self.build_dir = build.path
        self.meta = build.meta
        self.rows = build.rows
        self.failed = build.failed
        self._done = build.done
        self._images: np.ndarray | None = None
        self._map()  # now: a later rebuild may remove this build's files; the mapping stays valid

    @classmethod
    def open(cls, path: str | os.PathLike, expected_source: str | os.PathLike | None = None,
             expected_size: int | None = None) -> "ImageStore":
        """Open a complete store after the checks of the module docstring; DataError (one line)
        when it is incomplete, stale, tampered, or built from another dataset file or at another
        size than expected."""
        folder = resolve(path)
        if not folder.is_dir():
            raise DataError(f"image store not found: {folder}")
        build_dir = current_build(folder)
        if build_dir is None:
            if (folder / INDEX_FILE).is_file():
                raise DataError(f"image store {folder}: version 1 (an older layout), this code reads "
                                f"{STORE_VERSION}: {REBUILD_HINT.format(source=expected_source, size=expected_size)}")
            raise DataError(f"image store {folder} is incomplete (no finished build): build or resume it with "
                            f"`python -m medclip_nb cache --data_path {expected_source} --size {expected_size}`")
        build = StoreBuild(build_dir, folder)
        source, size = build.meta.get("source"), build.size
        hint = REBUILD_HINT.format(source=expected_source or source, size=expected_size or size)
        if expected_source is not None or expected_size is not None:
            want_source = str(resolve(expected_source)) if expected_source is not None else source
            want_size = expected_size if expected_size is not None else size
            if want_source != source or want_size != size:
                raise DataError(f"image store {folder} was built from {source} at {size} px, "
                                f"not {want_source} at {want_size} px: {hint}")
        if not build.complete:
            raise DataError(f"image store {folder} is incomplete ({int(build.done.sum())} of {build.count} images "
                            f"decoded): resume it with `python -m medclip_nb cache --data_path {source} --size {size}`")
        _check_current_against(build, Path(source), hint)
        build.check_sample()
        return cls(folder, build)

    def verify(self) -> None:
        """Hash every stored row (StoreIntegrityError naming the first bad one)."""
        StoreBuild(self.build_dir, self.folder).check_sample(np.flatnonzero(self._done))

    @property
    def size(self) -> int:
        """Side of the stored square images in pixels."""
        return int(self.meta["size"])

    def _map(self) -> np.ndarray:
        if self._images is None:
            self._images = np.memmap(self.build_dir / IMAGES_FILE, dtype=np.uint8, mode="r",
                                     shape=(len(self._done), self.size, self.size))
        return self._images

    @property
    def images(self) -> np.ndarray:
        """The whole uint8 array [count, size, size], memory-mapped read-only."""
        return self._map()

    def __len__(self) -> int:
        return len(self._done)

    def __contains__(self, image_path: str) -> bool:
        row = self.rows.get(str(image_path))
        return row is not None and bool(self._done[row])

    def rows_of(self, image_paths: Iterable[str]) -> np.ndarray:
        """int64 row of each path, -1 where the store has no image for it (a Dataset looks its
        rows up once, so loader workers never touch the `rows` dict)."""
        get, done = self.rows.get, self._done
        out = np.fromiter((get(str(p), -1) for p in image_paths), dtype=np.int64)
        out[out >= 0] = np.where(done[out[out >= 0]], out[out >= 0], -1)
        return out

    def row(self, row: int) -> np.ndarray | None:
        """Row `row` (a read-only view), or None for -1 (see `rows_of`)."""
        return None if row < 0 else self._map()[row]

    def get(self, image_path: str) -> np.ndarray | None:
        """The stored size x size uint8 image (a read-only view into the memmap), or None when the
        path is not in the store or its image was unreadable (see `failed`)."""
        row = self.rows.get(str(image_path))
        if row is None or not self._done[row]:
            return None
        return self._map()[row]

    def __getstate__(self):
        # Spawned workers re-map the file themselves instead of pickling the array.
        state = dict(self.__dict__)
        state["_images"] = None
        return state

    def __repr__(self) -> str:
        return f"ImageStore({str(self.folder)!r}, {len(self)} images, {self.size}px)"


def find_store(cfg) -> ImageStore | None:
    """The image store a config asks for: None when cfg.image_store is unset (or 'auto' and no
    store sits beside the dataset file at cfg.resize_size); else the opened store, checked
    against cfg.data_path and cfg.resize_size (DataError when it does not match)."""
    setting = cfg.image_store
    if setting is None or str(setting).strip() == "":
        return None
    if str(setting) == "auto":
        folder = default_store_dir(cfg.data_path, cfg.resize_size)
        if not any((folder / name).exists() or (folder / name).is_symlink()
                   for name in (CURRENT_LINK, BUILDS_DIR, INDEX_FILE)):
            return None  # none built yet; a started build is opened below and refused as incomplete
    else:
        folder = resolve(setting)
    return ImageStore.open(folder, expected_source=cfg.data_path, expected_size=cfg.resize_size)
