"""`make paper`: MedCLIP's protocol on CheXpert-5x200 and MIMIC-5x200, our numbers beside the paper's.

What it runs (`python -m medclip_nb paper --config params/paper.yaml`):

1. Data. CheXpert: `chexpert_root` (the user's CheXpert-v1.0(-small), imported by prepare-chexpert)
   or else a phantom CheXpert tree in `chexpert_phantom_dir`, imported to `unpaired_data_path`'s
   folder. MIMIC-CXR: `data` as `make study` makes it (`mimic_root`, else the phantom).
2. Training: the config's model with MedCLIP's choices that params/paper.yaml sets (its loss,
   one sentence per step with its sentence labels, CheXpert images as unpaired items with prompt
   sentences, -1 -> 0 on the image side, its EDA view, NegBio labels, its weight-decay rule) for
   `max_steps`; the last step is scored (MedCLIP's scripts pick the checkpoint by zero-shot accuracy
   on the 5x200 test set itself, which this does not copy).
3. Zero-shot by MedCLIP's procedure (evaluate/zeroshot_medclip.py): on the imported
   chexpert_5x200 split (MedCLIP's rule on train.csv) and on the MIMIC test split's 5x200 by
   MedCLIP's rule (`zero_shot_5x200_medclip`). MedCLIP drew its MIMIC-5x200 from every split and
   removed it from pretraining; here it is drawn from the test split, so no training image is in it.
4. The table, our numbers beside the paper's: the paper's tables could not be read from here, so
   its column says so (PAPER_NUMBERS is empty until they are transcribed with their source).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medclip_nb.config import Config
from medclip_nb.data import CXRDataset, build_transforms, ensure_dataset, load_dataset_file, prepare_chexpert
from medclip_nb.evaluate import eval_datasets, json_ready, zero_shot_5x200_medclip
from medclip_nb.files import write_json_atomic
from medclip_nb.labels import COMPETITION_TASKS
from medclip_nb.model import load_model
from medclip_nb.paths import resolve
from medclip_nb.phantom import chexpert_phantom_is_current, generate_chexpert_phantom
from medclip_nb.runtime import pick_device
from medclip_nb.train import train

# The paper's numbers, each {"value": ..., "source": "Wang et al. 2022, Table N, page P"}; empty: not transcribed.
PAPER_NUMBERS: dict[str, dict[str, Any]] = {}
NOT_TRANSCRIBED = "not transcribed (source not reachable here)"


def chexpert_data(cfg: Config, log=print) -> Path:
    """The prepared CheXpert dataset file (`unpaired_data_path`): imported from `chexpert_root`, or from a
    phantom CheXpert tree written to `chexpert_phantom_dir`; prepared again when its source changed."""
    out = resolve(cfg.unpaired_data_path).parent
    if cfg.chexpert_root:
        root = resolve(cfg.chexpert_root)
    else:
        tree = resolve(cfg.chexpert_phantom_dir)
        shape = dict(studies=cfg.phantom_studies, size=cfg.phantom_size, seed=cfg.phantom_seed)
        if not chexpert_phantom_is_current(tree, **shape):
            generate_chexpert_phantom(tree, **shape, force=cfg.force, log=log)
            (out / "datasets.pkl").unlink(missing_ok=True)
        root = tree / "CheXpert-v1.0-small"
    try:
        made = json.loads((out / "prepare_report.json").read_text())
    except (OSError, ValueError):
        made = {}
    if not (out / "datasets.pkl").is_file() or made.get("chexpert_root") != str(root) \
            or (made.get("rule") or {}).get("per_class") != cfg.zeroshot_per_class:
        prepare_chexpert(root, out, per_class=cfg.zeroshot_per_class, log=log)
    return out / "datasets.pkl"


def chexpert_5x200(cfg: Config, path: Path) -> tuple[CXRDataset, np.ndarray]:
    """The imported chexpert_5x200 split as an evaluation dataset, and each image's class."""
    records = load_dataset_file(path)["chexpert_5x200"]
    dataset = CXRDataset(records, root=path.parent, transform=build_transforms(cfg, train=False),
                         on_bad_image=cfg.on_bad_image, resize_size=cfg.resize_size)
    return dataset, np.array([COMPETITION_TASKS.index(r["class"]) for r in records], dtype=np.int64)


def run_paper(cfg: Config, log=print) -> dict[str, Any]:
    """Steps 1-4 of the module docstring; returns the entries (also in reports_dir/paper.json)."""
    chexpert = chexpert_data(cfg, log)
    ensure_dataset(cfg, log=log)
    log(f"Training {cfg.vision_backbone} + {cfg.text_encoder} text encoder, loss {cfg.loss}, {cfg.max_steps} steps")
    result = train(cfg, log=log)
    model, tokenizer, saved = load_model(result.last_checkpoint, pick_device(cfg.gpu_id))
    device = next(model.parameters()).device
    entries: dict[str, Any] = {"trained": {"steps": result.steps, "checkpoint": str(result.last_checkpoint)}}
    with torch.no_grad():
        dataset, classes = chexpert_5x200(saved, chexpert)
        entries["CheXpert-5x200"] = zero_shot_5x200_medclip(model, tokenizer, dataset, saved, device, rule="medclip",
                                                            rows=np.arange(len(classes)), classes=classes, log=log)
        splits, _ = eval_datasets(saved, tokenizer)
        entries["MIMIC-5x200"] = zero_shot_5x200_medclip(model, tokenizer, splits["test"], saved, device,
                                                         rule="medclip", log=log)
    entries = json_ready(entries)
    write_json_atomic(resolve(cfg.reports_dir) / "paper.json", entries)
    log(paper_table(entries, real_chexpert=bool(cfg.chexpert_root), real_mimic=bool(cfg.mimic_root)))
    return entries


def paper_table(entries: dict[str, Any], *, real_chexpert: bool, real_mimic: bool) -> str:
    """Our zero-shot accuracy by MedCLIP's protocol beside the paper's (a markdown table)."""
    lines = ["", "Zero-shot, MedCLIP's protocol (its 5x200 rule and prompt procedure; mean ± population std over its "
             "prompt draws; last training step):", "",
             "| set | data | images | accuracy (ours) | macro-F1 (ours) | paper (Wang et al. 2022) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, real in (("CheXpert-5x200", real_chexpert), ("MIMIC-5x200", real_mimic)):
        entry = entries[name]
        mean = entry.get("mean") or {}
        cell = lambda key, mean=mean: "n/a" if mean.get(key) is None else f"{mean[key]:.3f} ± {mean[f'{key}_std']:.3f}"
        paper = PAPER_NUMBERS.get(name)
        paper_cell = f"{paper['value']} ({paper['source']})" if paper else NOT_TRANSCRIBED
        lines.append(f"| {name} | {'yours' if real else 'phantom'} | {entry.get('n')} | {cell('accuracy')} | "
                     f"{cell('macro_f1')} | {paper_cell} |")
    lines += ["", "The paper's linear-probe / fine-tune table and its retrieval P@K: " + NOT_TRANSCRIBED + "; "
              "docs/fidelity.md says what was tried."]
    return "\n".join(lines)
