"""A uint8 memory-mapped image store: every image of a dataset decoded and resized ONCE.

Decoding a full-size MIMIC-CXR JPEG (about 2544 x 3056) costs far more than a training step
needs per image: 16 cores decode about 231 images/s, an H100 trains on about 2,800 pairs/s.
`build_store` decodes each image once, pads it to a centred black square, resizes it to
`size x size` and writes it as one row of a single uint8 array that every loader worker can
memory-map; augmentation then runs on the device (`gpu_augment.BatchAugment`).

Layout of a store folder (default `<dataset folder>/image_store_<size>/`):

    images.u8   raw uint8 array, shape [count, size, size] (np.memmap, C order)
    index.json  {"meta": {...}, "rows": {image_path: row}, "failed": {image_path: reason}}
    done.npy    bool [count]: row i holds a decoded image (written after the rows are flushed,
                so a build that stops half way RESUMES: only rows not done are decoded again)
    files.npy   int64 [count, 2]: size and mtime (ns) of each image file when it was decoded;
                a file changed since then is decoded again by the next build, and a store
                whose dataset file was rewritten is only accepted if no image file changed

`image_path` keys are the strings exactly as the dataset file holds them, so a store stays
valid when `image_root` moves. Unreadable images are listed under "failed" with the reason;
their rows are never filled with anything else.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from multiprocessing import Pool
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from medclip_nb.errors import DataError
from medclip_nb.paths import resolve
from medclip_nb.progress import progress_bar

STORE_VERSION = 1
IMAGES_FILE = "images.u8"
INDEX_FILE = "index.json"
DONE_FILE = "done.npy"
FILES_FILE = "files.npy"
# Rows decoded per task handed to a pool worker: large enough to amortise the inter-process
# round trip, small enough that an interrupted build loses little work.
CHUNK_ROWS = 32
REBUILD_HINT = "rebuild with `python -m medclip_nb cache --data_path {source} --size {size}`"


# ---- image geometry ------------------------------------------------------------------------------
def decode_for_store(path: str | os.PathLike, size: int) -> np.ndarray:
    """Decode one image the way the store holds it: JPEG draft-mode decoding at (at least)
    `size`, grayscale, padded to a centred black square and resized (antialiased) to
    size x size with the very transform the CPU data path uses (data.build_resize_transform),
    so a stored image equals what the JPEG path feeds its augmentation.
    Raises data.BadImageError for an unreadable file."""
    from medclip_nb.data import build_resize_transform, load_grayscale

    pixels = torch.from_numpy(load_grayscale(path, draft_size=size)).unsqueeze(0)
    return build_resize_transform(size)(pixels)[0].numpy()


def _init_decoder_process() -> None:
    # One thread per decoding process: the pool already uses every core.
    torch.set_num_threads(1)


# ---- dataset file ----------------------------------------------------------------------------------
def _dataset_image_paths(data_path: Path) -> list[str]:
    """Unique image_path strings over all splits, in first-seen order (train, val, test)."""
    from medclip_nb.data import REQUIRED_SPLITS, load_dataset_file, validate_dataset

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


def _paths_hash(image_paths: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for p in image_paths:
        digest.update(p.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def _file_stats(files: list[str]) -> np.ndarray:
    """int64 [N, 2]: (size, mtime in ns) of each file, (-1, -1) where it cannot be read."""
    stats = np.full((len(files), 2), -1, dtype=np.int64)
    for i, file in enumerate(files):
        try:
            st = os.stat(file)
        except OSError:
            continue
        stats[i] = (st.st_size, st.st_mtime_ns)
    return stats


def _source_meta(data_path: Path, image_paths: list[str]) -> dict:
    stat = data_path.stat()
    return {
        "source": str(data_path),
        "source_bytes": stat.st_size,
        "source_mtime": stat.st_mtime,
        "paths_sha256": _paths_hash(image_paths),
    }


def default_store_dir(data_path: str | os.PathLike, size: int) -> Path:
    """`<dataset folder>/image_store_<size>/`."""
    return resolve(data_path).parent / f"image_store_{size}"


# ---- small file helpers ------------------------------------------------------------------------------
def _write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def _read_index(folder: Path) -> dict:
    index_file = folder / INDEX_FILE
    try:
        return json.loads(index_file.read_text())
    except FileNotFoundError:
        raise DataError(f"image store {folder}: no {INDEX_FILE} (not an image store, or its build never started)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(f"image store {folder}: {INDEX_FILE} is not valid JSON: delete the folder and rebuild") from None


# ---- building --------------------------------------------------------------------------------------
def _decode_rows(tasks: list[tuple[int, str]], size: int) -> list[tuple[int, np.ndarray | None, str | None]]:
    """Pool worker: decode (row, file) pairs; an unreadable image becomes (row, None, reason)."""
    from medclip_nb.data import BadImageError

    out = []
    for row, file in tasks:
        try:
            out.append((row, decode_for_store(file, size), None))
        except BadImageError as e:
            out.append((row, None, str(e)))
    return out


def _chunks(tasks: list[tuple[int, str]], n: int) -> Iterator[list[tuple[int, str]]]:
    for start in range(0, len(tasks), n):
        yield tasks[start:start + n]


def _open_for_build(out: Path, meta: dict, count: int, size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """(done mask, recorded file stats): those of a partial or complete build of the same
    image list at the same size, else an empty mask and None (and the old files removed)."""
    images_file, done_file, files_file = out / IMAGES_FILE, out / DONE_FILE, out / FILES_FILE
    if all(f.is_file() for f in (out / INDEX_FILE, images_file, done_file, files_file)):
        try:
            old = json.loads((out / INDEX_FILE).read_text())["meta"]
            done, stats = np.load(done_file), np.load(files_file)
        except (ValueError, KeyError, OSError, json.JSONDecodeError):
            old = done = stats = None
        same = old is not None and all(
            old.get(k) == v for k, v in (("version", STORE_VERSION), ("size", size), ("count", count),
                                          ("source", meta["source"]), ("paths_sha256", meta["paths_sha256"]))
        )
        if (same and done.shape == (count,) and stats.shape == (count, 2)
                and images_file.stat().st_size == count * size * size):
            return done.astype(bool), stats
    if (out / INDEX_FILE).is_file():
        print(f"image store {out}: built from another dataset file, size or version: starting over")
    for f in (images_file, done_file, files_file, out / INDEX_FILE):
        f.unlink(missing_ok=True)
    return np.zeros(count, dtype=bool), None


def build_store(
    data_path: str | os.PathLike,
    out: str | os.PathLike | None = None,
    size: int = 256,
    num_workers: int | None = None,
    image_root: str | os.PathLike | None = None,
) -> Path:
    """Decode every image referenced by the dataset file (all splits, each path once) into a
    uint8 store of size x size images and return the store folder.

    Decoding runs on `num_workers` processes (default: all cores; 0 decodes in this process).
    A build that was interrupted resumes: only rows not yet marked done are decoded. Relative
    image paths are taken from `image_root`, else the dataset file's folder. Unreadable images
    are recorded under "failed" in index.json and left out.
    """
    if size <= 0:
        raise DataError(f"image store size must be positive, got {size}")
    data_file = resolve(data_path)
    if not data_file.is_file():
        raise DataError(f"dataset file not found: {data_file}")
    out_dir = resolve(out) if out is not None else default_store_dir(data_file, size)
    base = resolve(image_root) if image_root is not None else data_file.parent

    image_paths = _dataset_image_paths(data_file)
    count = len(image_paths)
    if count == 0:
        raise DataError(f"{data_file}: no image_path in any split, nothing to store")
    meta = {"version": STORE_VERSION, "size": size, "count": count, "complete": False,
            **_source_meta(data_file, image_paths), "image_root": str(base)}
    out_dir.mkdir(parents=True, exist_ok=True)
    done, recorded_stats = _open_for_build(out_dir, meta, count, size)
    resumed = recorded_stats is not None
    files = [str(_resolve_image(p, base)) for p in image_paths]
    stats = _file_stats(files)  # taken before decoding: a file changed meanwhile differs next time
    if resumed:
        changed = done & (recorded_stats != stats).any(axis=1)
        if changed.any():
            print(f"image store {out_dir}: {int(changed.sum())} image files changed since they were stored: decoding them again")
            done[changed] = False
    images = np.memmap(out_dir / IMAGES_FILE, dtype=np.uint8, mode="r+" if resumed else "w+",
                       shape=(count, size, size))
    rows = {p: i for i, p in enumerate(image_paths)}
    _write_json_atomic(out_dir / INDEX_FILE, {"meta": meta, "rows": rows, "failed": {}})
    _save_npy_atomic(out_dir / FILES_FILE, stats)

    todo = [(row, files[row]) for row in range(count) if not done[row]]
    failed: dict[str, str] = {}
    workers = (os.cpu_count() or 1) if num_workers is None else num_workers
    started = time.perf_counter()
    if resumed:
        print(f"image store {out_dir}: resuming, {count - len(todo)} of {count} images already decoded")
    progress = progress_bar(total=count, initial=count - len(todo), desc=f"image store {size}px", unit="img")

    def record(results: list[tuple[int, np.ndarray | None, str | None]]) -> None:
        for row, pixels, reason in results:
            if pixels is None:
                failed[image_paths[row]] = reason
            else:
                images[row] = pixels
                done[row] = True
        progress.update(len(results))

    def checkpoint() -> None:
        images.flush()  # rows reach the file before the mask says they are there
        _save_npy_atomic(out_dir / DONE_FILE, done)

    try:
        if workers <= 0:
            for task in todo:
                record(_decode_rows([task], size))
                if progress.n % CHUNK_ROWS == 0:
                    checkpoint()
        else:
            with Pool(processes=min(workers, max(1, len(todo))), initializer=_init_decoder_process) as pool:
                batches = pool.imap_unordered(_decode_one_chunk, [(c, size) for c in _chunks(todo, CHUNK_ROWS)])
                for i, results in enumerate(batches):
                    record(results)
                    if i % 8 == 7:
                        checkpoint()
    finally:
        progress.close()
        checkpoint()
        del images

    meta.update(complete=True, failed_count=len(failed), built_seconds=round(time.perf_counter() - started, 3))
    _write_json_atomic(out_dir / INDEX_FILE, {"meta": meta, "rows": rows, "failed": failed})
    print(f"image store {out_dir}: {int(done.sum())} images at {size}x{size}"
          + (f", {len(failed)} unreadable (listed in {INDEX_FILE})" if failed else ""))
    return out_dir


def _decode_one_chunk(args: tuple[list[tuple[int, str]], int]):
    tasks, size = args
    return _decode_rows(tasks, size)


# ---- reading -----------------------------------------------------------------------------------------
class ImageStore:
    """A finished image store, memory-mapped read-only; `get(image_path)` returns a view."""

    def __init__(self, folder: Path, meta: dict, rows: dict[str, int], failed: dict[str, str], done: np.ndarray):
        self.folder = folder
        self.meta = meta
        self.rows = rows
        self.failed = failed
        self._done = done
        self._images: np.ndarray | None = None  # mapped lazily: cheap to pickle into loader workers

    @classmethod
    def open(cls, path: str | os.PathLike, expected_source: str | os.PathLike | None = None,
             expected_size: int | None = None) -> "ImageStore":
        """Open a complete store; DataError (one line) when it is incomplete or was built from
        another dataset file or at another size than expected."""
        folder = resolve(path)
        if not folder.is_dir():
            raise DataError(f"image store not found: {folder}")
        index = _read_index(folder)
        meta = index.get("meta", {})
        size, source = meta.get("size"), meta.get("source")
        hint = REBUILD_HINT.format(source=expected_source or source, size=expected_size or size)
        if meta.get("version") != STORE_VERSION:
            raise DataError(f"image store {folder}: version {meta.get('version')}, this code reads {STORE_VERSION}: {hint}")
        if expected_source is not None or expected_size is not None:
            want_source = str(resolve(expected_source)) if expected_source is not None else source
            want_size = expected_size if expected_size is not None else size
            if want_source != source or want_size != size:
                raise DataError(f"image store {folder} was built from {source} at {size} px, "
                                f"not {want_source} at {want_size} px: {hint}")
            if expected_source is not None:
                _check_source_current(folder, meta, hint)
        try:
            done = np.load(folder / DONE_FILE).astype(bool)
        except (FileNotFoundError, ValueError, OSError):
            raise DataError(f"image store {folder}: {DONE_FILE} missing or unreadable (build interrupted?): {hint}") from None
        count = meta.get("count")
        expected_bytes = (count or 0) * (size or 0) ** 2
        images_file = folder / IMAGES_FILE
        if not images_file.is_file() or images_file.stat().st_size != expected_bytes or done.shape != (count,):
            raise DataError(f"image store {folder}: {IMAGES_FILE} does not hold {count} images of {size}x{size}: {hint}")
        failed = index.get("failed", {})
        missing = count - int(done.sum()) - len(failed)
        if not meta.get("complete") or missing > 0:
            raise DataError(f"image store {folder} is incomplete ({int(done.sum())} of {count} images decoded): "
                            f"resume it with `python -m medclip_nb cache --data_path {source} --size {size}`")
        return cls(folder, meta, index.get("rows", {}), failed, done)

    @property
    def size(self) -> int:
        """Side of the stored square images in pixels."""
        return int(self.meta["size"])

    @property
    def images(self) -> np.ndarray:
        """The whole uint8 array [count, size, size], memory-mapped read-only."""
        if self._images is None:
            self._images = np.memmap(self.folder / IMAGES_FILE, dtype=np.uint8, mode="r",
                                     shape=(len(self._done), self.size, self.size))
        return self._images

    def __len__(self) -> int:
        return len(self._done)

    def __contains__(self, image_path: str) -> bool:
        row = self.rows.get(str(image_path))
        return row is not None and bool(self._done[row])

    def get(self, image_path: str) -> np.ndarray | None:
        """The stored size x size uint8 image (a read-only view into the memmap), or None when the
        path is not in the store or its image was unreadable (see `failed`)."""
        row = self.rows.get(str(image_path))
        if row is None or not self._done[row]:
            return None
        return self.images[row]

    def __getstate__(self):
        # Loader workers re-map the file themselves instead of pickling the array.
        state = dict(self.__dict__)
        state["_images"] = None
        return state

    def __repr__(self) -> str:
        return f"ImageStore({str(self.folder)!r}, {len(self)} images, {self.size}px)"


def _check_source_current(folder: Path, meta: dict, hint: str) -> None:
    """Refuse a store older than its dataset file, unless that file lists the same images and
    none of the image files changed since they were stored (a `prepare` re-run)."""
    source = Path(meta["source"])
    if not source.is_file():
        raise DataError(f"image store {folder}: its dataset file {source} no longer exists: {hint}")
    stat = source.stat()
    if stat.st_size == meta.get("source_bytes") and stat.st_mtime == meta.get("source_mtime"):
        return
    image_paths = _dataset_image_paths(source)
    if _paths_hash(image_paths) != meta.get("paths_sha256"):
        raise DataError(f"image store {folder} is older than {source}, which now lists other images: {hint}")
    base = Path(meta.get("image_root") or source.parent)
    try:
        recorded = np.load(folder / FILES_FILE)
    except (OSError, ValueError):
        raise DataError(f"image store {folder}: {FILES_FILE} missing or unreadable: {hint}") from None
    now = _file_stats([str(_resolve_image(p, base)) for p in image_paths])
    changed = int((recorded != now).any(axis=1).sum()) if recorded.shape == now.shape else len(image_paths)
    if changed:
        raise DataError(f"image store {folder} is older than {source} and {changed} of its image files "
                        f"changed since: {hint}")


def find_store(cfg) -> ImageStore | None:
    """The image store a config asks for: None when cfg.image_store is unset (or 'auto' and no
    store sits beside the dataset file at cfg.resize_size); else the opened store, checked
    against cfg.data_path and cfg.resize_size (DataError when it does not match)."""
    setting = cfg.image_store
    if setting is None or str(setting).strip() == "":
        return None
    if str(setting) == "auto":
        folder = default_store_dir(cfg.data_path, cfg.resize_size)
        if not (folder / INDEX_FILE).is_file():
            return None
    else:
        folder = resolve(setting)
    return ImageStore.open(folder, expected_source=cfg.data_path, expected_size=cfg.resize_size)
