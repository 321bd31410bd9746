"""Glue for the notebooks and `make study`: make sure the dataset exists, save figures, show tables.

The notebooks stay short: they build a Config from their parameters, call `ensure_dataset`,
and then the package's training and evaluation functions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from medclip_nb.config import Config, config_from_namespace
from medclip_nb.paths import resolve


def notebook_config(namespace: Mapping[str, Any]) -> Config:
    """The Config of a notebook: its `parameters` cell and papermill's injected values."""
    return config_from_namespace(namespace)


def ensure_dataset(cfg: Config, *, log=print) -> Path:
    """Return the dataset file of `cfg`, building what is missing.

    - `data_path` exists: used as it is (real MIMIC-CXR or a hand-made file).
    - else `mimic_root` is set: the official MIMIC-CXR-JPG tree is imported with `prepare`.
    - else: the phantom is generated in `phantom_dir` (unless it is already the same phantom)
      and imported from there.
    An image store is built beside the dataset file when `image_store` is 'auto'.
    """
    from medclip_nb.mimic import prepare_mimic
    from medclip_nb.phantom import generate_phantom, phantom_is_current

    data_path = resolve(cfg.data_path)
    if cfg.mimic_root:
        source = resolve(cfg.mimic_root)
    else:
        source = resolve(cfg.phantom_dir)
        if not phantom_is_current(source, cfg.phantom_studies, cfg.phantom_size, cfg.phantom_seed):
            log(f"Generating phantom MIMIC-CXR-JPG in {source} ({cfg.phantom_studies} studies, "
                f"{cfg.phantom_size} px, seed {cfg.phantom_seed})")
            generate_phantom(source, studies=cfg.phantom_studies, size=cfg.phantom_size, seed=cfg.phantom_seed)
            if data_path.exists():
                data_path.unlink()  # prepared from an older phantom
    if not data_path.exists():
        log(f"Preparing {source} -> {data_path.parent}")
        prepare_mimic(source, data_path.parent, frontal_views=tuple(cfg.frontal_views))
        if data_path.name != "datasets.pkl":
            os.replace(data_path.parent / "datasets.pkl", data_path)
    if cfg.image_store == "auto":
        from medclip_nb.store import build_store

        build_store(data_path, None, size=cfg.resize_size)
    return data_path


def figures_dir(cfg: Config) -> Path:
    path = resolve(cfg.reports_dir) / "figures"
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_figure(fig, cfg: Config, name: str) -> Path:
    """Save a matplotlib figure as reports_dir/figures/<name>.png (fixed dpi, no timestamp)."""
    path = figures_dir(cfg) / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    return path


def update_metrics(cfg: Config, key: str, value: Any) -> Path:
    """Merge one entry into reports_dir/metrics.json, keeping the others."""
    path = resolve(cfg.reports_dir) / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


def read_metrics_log(path: str | Path):
    """metrics.jsonl of a run as a pandas DataFrame."""
    import pandas as pd

    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return pd.DataFrame(rows)


# ---- data inspection (notebook 01) ----------------------------------------------------------
def split_counts(splits: Mapping[str, list]) -> "pd.DataFrame":
    """Images, studies and patients per split."""
    import pandas as pd

    rows = []
    for name, records in splits.items():
        rows.append({
            "split": name,
            "images": len(records),
            "studies": len({r.get("study_id") for r in records}),
            "patients": len({r.get("subject_id") for r in records}),
        })
    return pd.DataFrame(rows).set_index("split")


def label_prevalence(splits: Mapping[str, list]) -> "pd.DataFrame":
    """Share of images positive (1.0) for each CheXpert label, per split."""
    import numpy as np
    import pandas as pd

    from medclip_nb.labels import CHEXPERT_LABELS

    table = {}
    for name, records in splits.items():
        labels = np.array([r["labels"] for r in records], dtype=float).reshape(-1, len(CHEXPERT_LABELS))
        table[name] = (labels == 1.0).mean(axis=0) if len(labels) else np.zeros(len(CHEXPERT_LABELS))
    return pd.DataFrame(table, index=list(CHEXPERT_LABELS)).round(3)


def report_lengths(splits: Mapping[str, list]) -> "pd.DataFrame":
    """Words per report, per split: count, mean, quartiles."""
    import pandas as pd

    rows = [{"split": name, "words": len(r["report"].split())} for name, recs in splits.items() for r in recs]
    return pd.DataFrame(rows).groupby("split")["words"].describe().round(1)
