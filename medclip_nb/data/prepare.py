"""The data a config names, made ready: phantom -> import (prepare) -> image store, building only
what is missing (`python -m medclip_nb data`, `make study`, the notebooks' first cells)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from medclip_nb.config import Config
from medclip_nb.data.iu import is_current, prepare_iu
from medclip_nb.data.mimic import prepare_mimic
from medclip_nb.data.provenance import PREPARE_REPORT, prepare_record, stale_reason
from medclip_nb.data.store_build import build_store
from medclip_nb.errors import ConfigError
from medclip_nb.files import write_text_atomic
from medclip_nb.paths import resolve, shown
from medclip_nb.phantom import generate_phantom, phantom_is_current


def ensure_dataset(cfg: Config, *, log=print, times: dict[str, float] | None = None) -> Path:
    """Return the dataset file of `cfg`, building what is missing; `times`, when given, receives the
    seconds of each phase it ran ("phantom", "prepare" or "prepare (Open-i)", "image store"; `make
    study`'s summary).

    - `data_path` exists and was not written by `prepare` (no prepare_report.json beside it):
      used as it is (real MIMIC-CXR or a hand-made file); nothing else is touched.
    - else `iu_reports` is set: Open-i is imported with `prepare-iu` (data/iu.py) into the dataset
      file's folder, again when it was prepared with other iu_reports / iu_images / phantom_size /
      phantom_seed values.
    - else `mimic_root` is set: the official MIMIC-CXR-JPG tree is imported with `prepare`.
    - else: the phantom is generated in `phantom_dir` unless it is already the same phantom (a
      phantom of other parameters is replaced only with `force`, see provenance.py) and
      imported from there; a dataset prepared from an earlier phantom is prepared again.
    An image store is built beside the dataset file when `image_store` is 'auto' (relative image
    paths taken from `image_root` when set, as training takes them).
    """
    data_path = resolve(cfg.data_path)
    ours = prepare_record(data_path) is not None
    if data_path.exists() and not ours:
        log(f"Using {shown(data_path)} as it is (not written by prepare)")
    elif cfg.iu_reports:
        started = time.perf_counter()
        _ensure_iu(cfg, data_path, log)
        _took(times, "prepare (Open-i)", started)
    elif cfg.mimic_root:
        source = resolve(cfg.mimic_root)
    else:
        source = resolve(cfg.phantom_dir)
        shape = dict(studies=cfg.phantom_studies, size=cfg.phantom_size, seed=cfg.phantom_seed,
                     test_studies=cfg.phantom_test_studies)
        if not phantom_is_current(source, **shape):
            log(f"Generating phantom MIMIC-CXR-JPG in {shown(source)} ({cfg.phantom_studies} studies"
                + (f" + {cfg.phantom_test_studies} test studies" if cfg.phantom_test_studies else "")
                + f", {cfg.phantom_size} px, seed {cfg.phantom_seed})")
            started = time.perf_counter()
            generate_phantom(source, **shape, force=cfg.force)
            _took(times, "phantom", started)
        if data_path.exists() and stale_reason(data_path):
            log(f"Removing {shown(data_path)}: prepared from an earlier phantom")
            data_path.unlink()  # ours: prepare_report.json beside it says so
            (data_path.parent / PREPARE_REPORT).unlink(missing_ok=True)
    record = prepare_record(data_path) if data_path.exists() and ours and not cfg.iu_reports else None
    if record is not None and record.get("label_table", "chexpert") != cfg.mimic_labels:
        log(f"Removing {shown(data_path)}: prepared with the {record.get('label_table', 'chexpert')} labels, "
            f"mimic_labels is {cfg.mimic_labels}")
        data_path.unlink()
        (data_path.parent / PREPARE_REPORT).unlink(missing_ok=True)
    if not data_path.exists() and not cfg.iu_reports:
        log(f"Preparing {shown(source)} -> {shown(data_path.parent)}")
        started = time.perf_counter()
        prepare_mimic(source, data_path.parent, frontal_views=tuple(cfg.frontal_views), labels=cfg.mimic_labels)
        if data_path.name != "datasets.pkl":
            os.replace(data_path.parent / "datasets.pkl", data_path)
        _took(times, "prepare", started)
    if cfg.image_store == "auto":
        started = time.perf_counter()
        build_store(data_path, None, size=cfg.resize_size, image_root=cfg.image_root)
        _took(times, "image store", started)
    return data_path


def _ensure_iu(cfg: Config, data_path: Path, log) -> None:
    """Open-i into data_path's folder, unless it holds the same import already."""
    if not cfg.iu_images:
        raise ConfigError("config key 'iu_images': required with iu_reports: a folder of the Open-i PNGs, or "
                          "'phantom' (one phantom radiograph per report)")
    reports = None if cfg.iu_reports == "installed" else cfg.iu_reports
    if data_path.name != "datasets.pkl":
        raise ConfigError(f"config key 'data_path': Open-i is prepared as datasets.pkl, got {data_path.name}")
    if is_current(data_path, reports, cfg.iu_images, cfg.phantom_size, cfg.phantom_seed):
        log(f"Using {shown(data_path)} (Open-i, {cfg.iu_images} images, prepared with these values)")
        return
    log(f"Preparing Open-i ({cfg.iu_reports} reports, {cfg.iu_images} images) -> {shown(data_path.parent)}")
    prepare_iu(data_path.parent, reports, cfg.iu_images, size=cfg.phantom_size, seed=cfg.phantom_seed, log=log)


def _took(times: dict[str, float] | None, phase: str, started: float) -> None:
    if times is not None:
        times[phase] = time.perf_counter() - started


def append_phase_times(path: str | os.PathLike, times: dict[str, float]) -> Path:
    """Add one 'phase<TAB>seconds' line per entry of `times` to the file at `path` (make study's
    phase times, read by study.summary), rewritten atomically."""
    target = Path(path)
    before = target.read_text(encoding="utf-8") if target.is_file() else ""
    lines = "".join(f"{phase}\t{seconds:.1f}\n" for phase, seconds in times.items())
    return write_text_atomic(target, before + lines, what="--phase-times")
