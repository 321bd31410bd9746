"""Building the uint8 image store (store.py describes its layout and checks): each image decoded
once, padded to a square and resized, written row by row with `os.pwrite` (never through a memory
map), resumable, and swapped in atomically through the `current` link.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from multiprocessing import Pool
from pathlib import Path
from typing import Iterator

import numpy as np

from medclip_nb.data.images import BadImageError, build_resize_transform, load_grayscale
from medclip_nb.data.store import (
    BUILDS_DIR,
    CHECKPOINT_ROWS,
    CHUNK_ROWS,
    CURRENT_LINK,
    DONE_FILE,
    FILES_FILE,
    HASHES_FILE,
    IMAGES_FILE,
    INDEX_FILE,
    STORE_VERSION,
    V1_FILES,
    StoreBuild,
    StoreIntegrityError,
    current_build,
    dataset_image_paths,
    default_store_dir,
    file_stats,
    image_files,
    paths_hash,
    row_hash,
)
from medclip_nb.errors import DataError
from medclip_nb.files import write_atomic, write_json_atomic
from medclip_nb.paths import resolve, shown
from medclip_nb.progress import progress


# ---- image geometry ------------------------------------------------------------------------------
def decode_for_store(path: str | os.PathLike, size: int) -> np.ndarray:
    """Decode one image the way the store holds it: JPEG draft-mode decoding at (at least)
    `size`, grayscale, padded to a centred black square and resized (antialiased) to
    size x size with the very transform the CPU data path uses (data.build_resize_transform),
    so a stored image equals what the JPEG path feeds its augmentation.
    Raises data.BadImageError for an unreadable file."""
    import torch


    pixels = torch.from_numpy(load_grayscale(path, draft_size=size)).unsqueeze(0)
    return build_resize_transform(size)(pixels)[0].numpy()


def _init_decoder_process() -> None:
    import torch

    torch.set_num_threads(1)  # one thread per decoding process: the pool already uses every core


def _source_meta(data_path: Path, image_paths: list[str]) -> dict:
    stat = data_path.stat()
    return {
        "source": str(data_path),
        "source_bytes": stat.st_size,
        "source_mtime": stat.st_mtime,
        "paths_sha256": paths_hash(image_paths),
    }


# ---- small file helpers ------------------------------------------------------------------------------
def _write_npy(path: Path, array: np.ndarray) -> None:
    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to a path
            np.save(f, array)

    write_atomic(path, save, error=DataError)


# ---- building --------------------------------------------------------------------------------------
def _decode_rows(tasks: list[tuple[int, str]], size: int) -> list[tuple[int, np.ndarray | None, str | None]]:
    """Pool worker: decode (row, file) pairs; an unreadable image becomes (row, None, reason)."""
    out = []
    for row, file in tasks:
        try:
            out.append((row, decode_for_store(file, size), None))
        except BadImageError as e:
            out.append((row, None, str(e)))
    return out


def _decode_one_chunk(args: tuple[list[tuple[int, str]], int]):
    tasks, size = args
    return _decode_rows(tasks, size)


def _chunks(tasks: list[tuple[int, str]], n: int) -> Iterator[list[tuple[int, str]]]:
    for start in range(0, len(tasks), n):
        yield tasks[start:start + n]


def _same_build_key(meta: dict, want: dict) -> bool:
    keys = ("version", "size", "count", "source", "paths_sha256", "image_root")
    return all(meta.get(k) == want.get(k) for k in keys)


def _find_partial_build(store_dir: Path, want: dict) -> Path | None:
    """An unfinished build of the same image list at the same size, to resume."""
    builds = store_dir / BUILDS_DIR
    current = current_build(store_dir)
    for build in sorted(builds.glob("*")) if builds.is_dir() else ():
        if build == current or not (build / INDEX_FILE).is_file():
            continue
        try:
            meta = json.loads((build / INDEX_FILE).read_text())["meta"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not meta.get("complete") and _same_build_key(meta, want):
            return build
    return None


class _RowWriter:
    """Writes rows of a build with plain pwrite calls (no memory map: RSS stays small) and saves
    the done mask and hashes only after the rows are on disk."""

    def __init__(self, build: Path, count: int, size: int, done: np.ndarray, hashes: np.ndarray, paths: list[str]):
        self.build, self.size, self.done, self.hashes, self.paths = build, size, done, hashes, paths
        self.row_bytes = size * size
        self.fd = os.open(build / IMAGES_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        os.ftruncate(self.fd, count * self.row_bytes)
        self.since_checkpoint = 0

    def write(self, row: int, pixels: bytes | np.ndarray) -> None:
        data = pixels if isinstance(pixels, bytes) else np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
        os.pwrite(self.fd, data, row * self.row_bytes)
        self.hashes[row] = row_hash(self.paths[row], data)
        self.done[row] = True
        self.since_checkpoint += 1
        if self.since_checkpoint >= CHECKPOINT_ROWS:
            self.checkpoint()

    def checkpoint(self) -> None:
        os.fdatasync(self.fd)  # rows reach the disk before the mask says they are there
        _write_npy(self.build / HASHES_FILE, self.hashes)
        _write_npy(self.build / DONE_FILE, self.done)
        self.since_checkpoint = 0

    def close(self) -> None:
        try:
            self.checkpoint()
        finally:
            os.close(self.fd)


def _copy_unchanged_rows(previous: StoreBuild, writer: _RowWriter, paths: list[str], stats: np.ndarray) -> int:
    """Copy the rows of `previous` whose path and file stats are unchanged; return how many."""
    copied = 0
    with open(previous.path / IMAGES_FILE, "rb") as f:
        for row, path in enumerate(paths):
            old = previous.rows.get(path)
            if old is None or writer.done[row] or not previous.done[old] or (previous.stats[old] != stats[row]).any():
                continue
            writer.write(row, os.pread(f.fileno(), writer.row_bytes, old * writer.row_bytes))
            copied += 1
    return copied


def _open_current(store_dir: Path) -> StoreBuild | None:
    build = current_build(store_dir)
    return StoreBuild(build, store_dir) if build is not None else None


def build_store(
    data_path: str | os.PathLike,
    out: str | os.PathLike | None = None,
    size: int = 256,
    num_workers: int | None = None,
    image_root: str | os.PathLike | None = None,
    rebuild: bool = False,
) -> Path:
    """Make the uint8 store of every image the dataset file references (all splits, each path
    once) complete and current, and return the store folder.

    A complete, current store is only checked (read-only, see the module docstring). Otherwise a
    new build is written to `builds/<id>/` and swapped in: rows unchanged since the current
    build are copied, the rest decoded on `num_workers` processes (default: all cores; 0 decodes
    in this process). An interrupted build resumes. A store that fails its integrity checks is
    refused (StoreIntegrityError) unless `rebuild`, which also forces decoding every image
    again. Relative image paths are taken from `image_root`, else the dataset file's folder.
    Unreadable images are recorded under "failed" in index.json and left out.
    """
    if size <= 0:
        raise DataError(f"image store size must be positive, got {size}")
    data_file = resolve(data_path)
    if not data_file.is_file():
        raise DataError(f"dataset file not found: {data_file}")
    store_dir = resolve(out) if out is not None else default_store_dir(data_file, size)
    base = resolve(image_root) if image_root is not None else data_file.parent

    previous = None if rebuild else _current_if_usable(store_dir)
    if previous is not None and previous.complete and _built_from_this_file(previous.meta, data_file, size, base):
        # The dataset file is the very one the store was built from: its image list need not be read.
        changed = previous.changed_files(base)
        if not changed.any():
            print(f"image store {shown(store_dir)}: complete and current ({previous.count} images at {size}x{size}), "
                  f"nothing to do")
            return store_dir
    image_paths = dataset_image_paths(data_file)
    count = len(image_paths)
    if count == 0:
        raise DataError(f"{data_file}: no image_path in any split, nothing to store")
    want = {"version": STORE_VERSION, "size": size, "count": count, "complete": False,
            **_source_meta(data_file, image_paths), "image_root": str(base)}
    if previous is not None and previous.complete and _same_build_key(previous.meta, want):
        changed = previous.changed_files(base)
        if not changed.any():
            print(f"image store {shown(store_dir)}: complete and current ({count} images at {size}x{size}), "
                  "nothing to do")
            return store_dir
        print(f"image store {shown(store_dir)}: {int(changed.sum())} image files changed since they were stored: "
              f"a new build decodes them again")
    return _build_new(store_dir, data_file, image_paths, want, base, num_workers, previous, rebuild)


def _built_from_this_file(meta: dict, data_file: Path, size: int, base: Path) -> bool:
    stat = data_file.stat()
    return (meta.get("source") == str(data_file) and meta.get("size") == size and meta.get("image_root") == str(base)
            and meta.get("source_bytes") == stat.st_size and meta.get("source_mtime") == stat.st_mtime)


def _current_if_usable(store_dir: Path) -> StoreBuild | None:
    """The current build, integrity-checked (StoreIntegrityError when it fails), or None when
    there is none or it is from another version (a new build replaces it)."""
    try:
        previous = _open_current(store_dir)
    except StoreIntegrityError:
        raise
    except DataError as e:  # another version: replaced by the new build
        print(f"{e}; building a new one")
        return None
    if previous is not None:
        previous.check_sample()
    return previous


def _new_build_dir(store_dir: Path) -> Path:
    """A fresh builds/<time>-<pid>-<n>/ (names sort by creation time)."""
    (store_dir / BUILDS_DIR).mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    for n in range(1000):
        try:
            (store_dir / BUILDS_DIR / f"{stem}-{n}").mkdir()
            return store_dir / BUILDS_DIR / f"{stem}-{n}"
        except FileExistsError:
            continue
    raise DataError(f"image store {store_dir}: cannot create a new build folder in {store_dir / BUILDS_DIR}")


def _build_new(store_dir: Path, data_file: Path, image_paths: list[str], want: dict, base: Path,
               num_workers: int | None, previous: StoreBuild | None, rebuild: bool) -> Path:
    count, size = want["count"], want["size"]
    partial = None if rebuild else _find_partial_build(store_dir, want)
    files = image_files(image_paths, base)
    stats = file_stats(files)  # taken before decoding: a file changed meanwhile differs next time
    if partial is not None:
        build = partial
        done = np.load(build / DONE_FILE) if (build / DONE_FILE).is_file() else np.zeros(count, dtype=bool)
        hashes = np.load(build / HASHES_FILE) if (build / HASHES_FILE).is_file() else np.zeros(count, np.uint64)
        recorded = np.load(build / FILES_FILE)
        done = done.astype(bool) & ~(recorded != stats).any(axis=1)  # changed meanwhile: decode again
        print(f"image store {shown(store_dir)}: resuming, {int(done.sum())} of {count} images already decoded")
    else:
        build = _new_build_dir(store_dir)
        done, hashes = np.zeros(count, dtype=bool), np.zeros(count, dtype=np.uint64)
    rows = {p: i for i, p in enumerate(image_paths)}
    write_json_atomic(build / INDEX_FILE, {"meta": want, "rows": rows, "failed": {}}, indent=1, error=DataError)
    _write_npy(build / FILES_FILE, stats)
    writer = _RowWriter(build, count, size, done, hashes, image_paths)
    failed: dict[str, str] = {}
    started = time.perf_counter()
    try:
        if previous is not None and previous.size == size:
            copied = _copy_unchanged_rows(previous, writer, image_paths, stats)
            if copied:
                print(f"image store {shown(store_dir)}: {copied} unchanged rows copied from the current build")
        _decode_missing(writer, files, failed, num_workers, size)
    finally:
        writer.close()
    if not done.any():  # a store of nothing is no store: stop rather than report success
        path, reason = next(iter(failed.items()), ("", ""))
        raise DataError(f"image store {store_dir}: none of the {count} images could be decoded "
                        f"(first: {reason or path}); "
                        f"relative image paths are taken from {base}")
    meta = dict(want, complete=True, failed_count=len(failed), built_seconds=round(time.perf_counter() - started, 3))
    write_json_atomic(build / INDEX_FILE, {"meta": meta, "rows": rows, "failed": failed}, indent=1, error=DataError)
    _swap_in(store_dir, build)
    print(f"image store {shown(store_dir)}: {int(done.sum())} images at {size}x{size}"
          + (f", {len(failed)} unreadable (listed in {INDEX_FILE})" if failed else ""))
    return store_dir


def _decode_missing(writer: _RowWriter, files: list[str], failed: dict[str, str], num_workers: int | None,
                    size: int) -> None:
    todo = [(row, files[row]) for row in range(len(files)) if not writer.done[row]]
    workers = (os.cpu_count() or 1) if num_workers is None else num_workers
    bar = progress(total=len(files), initial=len(files) - len(todo), desc=f"image store {size}px", unit="img")

    def record(results: list[tuple[int, np.ndarray | None, str | None]]) -> None:
        for row, pixels, reason in results:
            if pixels is None:
                failed[writer.paths[row]] = reason
            else:
                writer.write(row, pixels)
        bar.update(len(results))

    try:
        if workers <= 0 or len(todo) <= CHUNK_ROWS:
            for task in todo:
                record(_decode_rows([task], size))
        else:
            with Pool(processes=min(workers, max(1, len(todo))), initializer=_init_decoder_process) as pool:
                for results in pool.imap_unordered(_decode_one_chunk, [(c, size) for c in _chunks(todo, CHUNK_ROWS)]):
                    record(results)
    finally:
        bar.close()


def _swap_in(store_dir: Path, build: Path) -> None:
    """Point `current` at `build` with one rename; keep the build it replaces (a running job may
    use it) and remove older builds and the files of a version-1 store."""
    old = current_build(store_dir)
    link = store_dir / CURRENT_LINK
    tmp = store_dir / f".{CURRENT_LINK}.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(build, store_dir), tmp)
    os.replace(tmp, link)
    for other in (store_dir / BUILDS_DIR).iterdir():
        if other.is_dir() and other not in (build, old) and (other / INDEX_FILE).is_file():
            try:
                meta = json.loads((other / INDEX_FILE).read_text()).get("meta", {})
            except (OSError, ValueError):
                continue
            if meta.get("complete"):  # a finished build older than the one kept; partial ones may be resumed
                shutil.rmtree(other, ignore_errors=True)
    try:
        v1 = json.loads((store_dir / INDEX_FILE).read_text()).get("meta", {}).get("version")
    except (OSError, ValueError, AttributeError):
        v1 = None
    if v1 == 1:  # a flat store this code wrote in its first version
        for name in V1_FILES:
            (store_dir / name).unlink(missing_ok=True)
