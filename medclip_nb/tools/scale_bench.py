"""Scale benchmark: every data step on a synthetic MIMIC-CXR-JPG tree of a chosen size.

`write_scale_tree(root, studies)` writes the three tables, one report per study and one tiny
JPEG per image, the latter as hard links to a single file (so 378k images cost no disk),
with MIMIC-CXR-JPG's proportions: 227,827 studies, 378,680 images, 64,588 patients at full
size; 1.66 images per study, about 63 % of them frontal (PA/AP). The images' content is not
what is measured, only the number of files, records and report bytes.

`run_scale(root, studies)` then times, on that tree: `prepare`, the safe load + validation of
datasets.pkl, the image store build (`--store-size`, 16 px by default) and a re-check of the
complete store (what `data` does every run), learning the tokenizer, building the datasets,
the first batch, and one epoch of the train split through a DataLoader with
`num_workers` forked workers, after which it reads each worker's private memory (USS:
Private_Clean + Private_Dirty of /proc/<pid>/smaps_rollup). With `compare_old` the same epoch
runs a second time with the records as a list of dicts and no `gc.freeze` in the workers (the
layout before records.py), for the side-by-side figure. Each size runs in its own process, so
its peak RSS is its own.

    python -m medclip_nb bench-scale --sizes 5000,60000,227827 --root /tmp/scale
"""

from __future__ import annotations

import gzip
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from medclip_nb.config import Config
from medclip_nb.data import (
    EpochSampler,
    ImageStore,
    build_datasets,
    build_store,
    find_store,
    load_dataset_file,
    make_collate,
    make_loader,
    prepare_mimic,
    seed_worker,
    validate_dataset,
)
from medclip_nb.labels import CHEXPERT_LABELS
from medclip_nb.text import build_tokenizer

MIMIC_STUDIES, MIMIC_IMAGES, MIMIC_SUBJECTS = 227_827, 378_680, 64_588
MARKER = "scale_tree.json"
LINKS_PER_FILE = 60_000
_FINDINGS = (
    "The lungs are clear without focal consolidation.", "No pleural effusion or pneumothorax is seen.",
    "The cardiomediastinal silhouette is within normal limits.", "Mild pulmonary vascular congestion is present.",
    "There is a small left pleural effusion with adjacent atelectasis.", "Heart size is mildly enlarged.",
    "Degenerative changes are noted in the thoracic spine.", "A right-sided PICC line terminates in the low SVC.",
    "Patchy opacity at the right lung base may reflect aspiration or pneumonia.",
    "Healed left rib fractures are again noted.", "The aorta is tortuous and calcified.",
    "Lung volumes are low, causing crowding of the bronchovascular markings.",
)
_IMPRESSIONS = (
    "No acute cardiopulmonary process.", "Mild pulmonary edema.", "Small left pleural effusion.",
    "Right basilar opacity, possibly pneumonia in the appropriate clinical setting.",
    "Stable cardiomegaly without acute process.", "No pneumothorax.",
)


# ---- the synthetic tree ----------------------------------------------------------------------------------
def _tiny_jpeg(path: Path) -> None:
    from PIL import Image

    ramp = (np.add.outer(np.arange(64), np.arange(53)) * 2 % 256).astype(np.uint8)
    Image.fromarray(ramp, mode="L").save(path, quality=90)


def _report(rng: np.random.Generator) -> str:
    findings = " ".join(rng.choice(_FINDINGS, size=int(rng.integers(3, 8)), replace=False))
    impression = " ".join(rng.choice(_IMPRESSIONS, size=int(rng.integers(1, 3)), replace=False))
    return (f"                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n"
            f" INDICATION:  ___ year old with cough, evaluate for pneumonia.\n\n COMPARISON:  ___\n\n"
            f" FINDINGS:\n \n {findings}\n \n IMPRESSION:\n \n {impression}\n")


def write_scale_tree(root: str | os.PathLike, studies: int, seed: int = 0) -> dict[str, Any]:
    """Write (or reuse, when its marker says the same size and seed) a synthetic MIMIC-CXR-JPG
    tree of `studies` studies under `root`; return its summary (counts, seconds, bytes)."""
    root = Path(root)
    wanted = {"studies": studies, "seed": seed, "version": 1}
    marker = root / MARKER
    if marker.is_file():
        summary = json.loads(marker.read_text())
        if all(summary.get(k) == v for k, v in wanted.items()):
            return {**summary, "reused": True}
    if root.exists():
        if not marker.is_file():
            raise SystemExit(f"{root} exists and is not a scale tree ({MARKER} missing): choose another --root")
        shutil.rmtree(root)
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    subjects = max(1, round(studies * MIMIC_SUBJECTS / MIMIC_STUDIES))
    subject_ids = 10_000_000 + np.sort(rng.choice(90_000_000, size=subjects, replace=False))
    study_subject = np.sort(np.concatenate([subject_ids, rng.choice(subject_ids, size=studies - subjects)]))
    study_ids = 50_000_000 + rng.choice(10_000_000, size=studies, replace=False)
    # 1.66 images per study: 1, 2 or 3 images.
    per_study = rng.choice([1, 2, 3], size=studies, p=[0.45, 0.44, 0.11])
    subject_split = dict(zip(subject_ids.tolist(), rng.choice(["train", "validate", "test"], size=subjects,
                                                              p=[0.978, 0.008, 0.014]).tolist()))
    files = root / "files"
    files.mkdir(parents=True)
    marker.write_text(json.dumps({"partial": True}))  # a tree cut short is recognised and replaced
    sources: list[Path] = []
    split_rows, meta_rows, label_rows = [], [], []
    dicom_counter = 0
    for study, subject, count in zip(study_ids.tolist(), study_subject.tolist(), per_study.tolist()):
        folder = files / f"p{str(subject)[:2]}" / f"p{subject}" / f"s{study}"
        folder.mkdir(parents=True)
        (folder.parent / f"s{study}.txt").write_text(_report(rng))
        views = rng.choice(["PA", "AP", "LATERAL", "LL", ""], size=count, p=[0.33, 0.30, 0.30, 0.05, 0.02])
        for view in views.tolist():
            dicom = f"{dicom_counter:08x}-{study:08d}"
            if dicom_counter % LINKS_PER_FILE == 0:  # ext4 allows 65,000 links to one file
                sources.append(root / f"tiny_{len(sources)}.jpg")
                _tiny_jpeg(sources[-1])
            dicom_counter += 1
            os.link(sources[-1], folder / f"{dicom}.jpg")
            split_rows.append(f"{dicom},{study},{subject},{subject_split[subject]}")
            meta_rows.append(f"{dicom},{subject},{study},CHEST,{view},3056,2544,21800101,120000.0,Chest,"
                             f"{'postero-anterior' if view == 'PA' else view},Erect")
        values = rng.choice(["", "1.0", "0.0", "-1.0"], size=len(CHEXPERT_LABELS), p=[0.8, 0.1, 0.07, 0.03])
        label_rows.append(f"{subject},{study}," + ",".join(values.tolist()))
    tables = {
        "mimic-cxr-2.0.0-split.csv.gz": ("dicom_id,study_id,subject_id,split", split_rows),
        "mimic-cxr-2.0.0-metadata.csv.gz": ("dicom_id,subject_id,study_id,PerformedProcedureStepDescription,"
                                            "ViewPosition,Rows,Columns,StudyDate,StudyTime,"
                                            "ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
                                            "PatientOrientationCodeSequence_CodeMeaning", meta_rows),
        "mimic-cxr-2.0.0-chexpert.csv.gz": ("subject_id,study_id," + ",".join(CHEXPERT_LABELS), label_rows),
    }
    for name, (header, rows) in tables.items():
        with gzip.open(root / name, "wt", compresslevel=1) as f:
            f.write(header + "\n" + "\n".join(rows) + "\n")
    summary = {**wanted, "images": dicom_counter, "subjects": subjects,
               "seconds": round(time.perf_counter() - started, 1)}
    marker.write_text(json.dumps(summary))
    return {**summary, "reused": False}


# ---- measurements ----------------------------------------------------------------------------------------
def worker_private_mib(pid: int) -> float:
    """USS of a process: Private_Clean + Private_Dirty from /proc/<pid>/smaps_rollup, in MiB."""
    total_kb = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total_kb += int(line.split()[1])
    return total_kb / 1024


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _old_layout_worker_init(worker_id: int) -> None:
    """`data.seed_worker` as it was before records.py: no gc.freeze."""
    import random

    import torch

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _epoch_worker_memory(dataset, cfg, tokenizer, old_layout: bool) -> dict[str, float]:
    """One epoch of `dataset` through `cfg.num_workers` forked workers; each worker's USS after
    its first batch and after the epoch (MiB), and the epoch's seconds."""
    from torch.utils.data import DataLoader


    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=EpochSampler(len(dataset), seed=cfg.seed),
                        num_workers=cfg.num_workers, persistent_workers=True, collate_fn=make_collate(tokenizer),
                        worker_init_fn=_old_layout_worker_init if old_layout else seed_worker,
                        multiprocessing_context="fork")
    started = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    pids = [w.pid for w in iterator._workers]
    first = [worker_private_mib(pid) for pid in pids]
    for _ in iterator:
        pass
    seconds = time.perf_counter() - started
    after = [worker_private_mib(pid) for pid in pids]
    del iterator, loader
    return {"first_batch_mib": max(first), "epoch_mib": max(after), "epoch_s": seconds}


class _DictRecords:
    """The records as they were before records.py: the list of dicts itself (for the comparison)."""

    def __init__(self, records: list[dict]):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, index: int) -> str:
        return self.records[index]["image_path"]

    def report(self, index: int) -> str:
        return self.records[index]["report"]

    def labels(self, index: int) -> list:
        return [np.nan if v is None else float(v) for v in self.records[index]["labels"]]

    def has_clip_indices(self, index: int) -> bool:
        return "clip_indices" in self.records[index]

    def clip_indices(self, index: int):
        return self.records[index].get("clip_indices")

    def image_paths(self) -> list[str]:
        return [r["image_path"] for r in self.records]


def run_scale(root: str | os.PathLike, studies: int, *, store_size: int = 16, num_workers: int = 2,
              batch_size: int = 256, compare_old: bool = True) -> dict[str, Any]:
    """Time every data step at one size (see the module docstring); return the figures."""
    os.environ.setdefault("TQDM_MININTERVAL", "10")
    root = Path(root)
    result: dict[str, Any] = {"studies": studies}
    tree = write_scale_tree(root / "mimic", studies)
    result.update(images=tree["images"], generate_s=0.0 if tree["reused"] else tree["seconds"])
    out = root / "prepared"

    def timed(name: str, func):
        started = time.perf_counter()
        value = func()
        result[f"{name}_s"] = round(time.perf_counter() - started, 2)
        result[f"{name}_peak_rss_mib"] = round(_peak_rss_mib())
        print(f"[{studies} studies] {name}: {result[f'{name}_s']} s", file=sys.stderr, flush=True)
        return value

    report = timed("prepare", lambda: prepare_mimic(root / "mimic", out, num_workers=num_workers))
    result["records"] = report["kept_total"]
    data_path = out / "datasets.pkl"

    timed("load", lambda: validate_dataset(load_dataset_file(data_path), data_path))

    store_dir = out / f"image_store_{store_size}"
    timed("store_build", lambda: build_store(data_path, store_dir, size=store_size, num_workers=num_workers))
    timed("store_check", lambda: build_store(data_path, store_dir, size=store_size, num_workers=num_workers))
    timed("store_open", lambda: ImageStore.open(store_dir, expected_source=data_path, expected_size=store_size))
    cfg = Config(data_path=str(data_path), image_store=str(store_dir), resize_size=store_size,
                 image_size=store_size, num_workers=num_workers, batch_size=batch_size, seed=0,
                 vocab_size=2000, max_text_tokens=64)

    store = find_store(cfg)
    datasets, records, _ = timed("datasets", lambda: build_datasets(cfg, store=store, raw_uint8=True))
    tokenizer = timed("tokenizer", lambda: build_tokenizer(cfg, [r["report"] for r in records["train"]]))
    train = datasets["train"]
    result["train_records"] = len(train)
    result["records_mib"] = round(train.records.nbytes() / 2**20, 1)

    def first_batch():
        loader = make_loader(train, cfg, train=True, sampler=EpochSampler(len(train), seed=0),
                             collate_fn=make_collate(tokenizer))
        next(iter(loader))

    timed("first_batch", first_batch)
    new = _epoch_worker_memory(train, cfg, tokenizer, old_layout=False)
    result.update({f"new_{k}": round(v, 1) for k, v in new.items()})
    if compare_old:
        train.records = _DictRecords(records["train"])
        train._store_rows = None  # and the store's rows dict looked up per sample, as before
        old = _epoch_worker_memory(train, cfg, tokenizer, old_layout=True)
        result.update({f"old_{k}": round(v, 1) for k, v in old.items()})
    result["peak_rss_mib"] = round(_peak_rss_mib())
    return result


# ---- several sizes, a table ----------------------------------------------------------------------------
ROWS = (
    ("images", "images in the tree", "{:,}"), ("records", "records kept by prepare", "{:,}"),
    ("generate_s", "generate tree (s)", "{}"), ("prepare_s", "prepare (s)", "{}"),
    ("prepare_peak_rss_mib", "peak RSS after prepare (MiB)", "{}"), ("load_s", "load + validate (s)", "{}"),
    ("store_build_s", "store build (s)", "{}"), ("store_check_s", "store check, complete store (s)", "{}"),
    ("store_open_s", "store open with checks (s)", "{}"), ("datasets_s", "dataset build (s)", "{}"),
    ("tokenizer_s", "tokenizer training (s)", "{}"), ("first_batch_s", "first batch (s)", "{}"),
    ("records_mib", "train records arrays (MiB)", "{}"),
    ("new_first_batch_mib", "worker USS after 1st batch, arrays (MiB)", "{}"),
    ("new_epoch_mib", "worker USS after epoch, arrays (MiB)", "{}"), ("new_epoch_s", "epoch, arrays (s)", "{}"),
    ("old_first_batch_mib", "worker USS after 1st batch, list of dicts (MiB)", "{}"),
    ("old_epoch_mib", "worker USS after epoch, list of dicts (MiB)", "{}"),
    ("old_epoch_s", "epoch, list of dicts (s)", "{}"), ("peak_rss_mib", "peak RSS of the run (MiB)", "{}"),
)


def format_table(results: list[dict[str, Any]]) -> str:
    """A Markdown table: one column per size, and the growth from the first to the last size."""
    header = ["step"] + [f"{r['studies']:,} studies" for r in results]
    if len(results) > 1:
        header.append(f"growth x{results[-1]['studies'] / results[0]['studies']:.0f}")
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for key, label, fmt in ROWS:
        if not any(key in r for r in results):
            continue
        cells = [fmt.format(r[key]) if key in r else "" for r in results]
        if len(results) > 1:
            first, last = results[0].get(key), results[-1].get(key)
            cells.append(f"x{last / first:.1f}" if first and last is not None else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main_scale(sizes: list[int], root: str, *, store_size: int, num_workers: int, compare_old: bool,
               keep: bool, out_json: str | None) -> list[dict[str, Any]]:
    """Run each size in a child process (own peak RSS), print the table, remove the trees unless `keep`."""
    results = []
    base = Path(root)
    base.mkdir(parents=True, exist_ok=True)
    for studies in sizes:
        folder = base / f"scale_{studies}"
        result_file = folder / "result.json"
        folder.mkdir(parents=True, exist_ok=True)
        code = ("import json, sys; from medclip_nb.tools.scale_bench import run_scale; "
                f"r = run_scale({str(folder)!r}, {studies}, store_size={store_size}, num_workers={num_workers}, "
                f"compare_old={compare_old}); open({str(result_file)!r}, 'w').write(json.dumps(r))")
        if subprocess.run([sys.executable, "-c", code]).returncode != 0:
            raise SystemExit(f"bench-scale: the run at {studies} studies failed (its output is above)")
        results.append(json.loads(result_file.read_text()))
        if not keep:
            shutil.rmtree(folder)
    table = format_table(results)
    print(table)
    if out_json:
        Path(out_json).write_text(json.dumps(results, indent=1) + "\n")
    return results
