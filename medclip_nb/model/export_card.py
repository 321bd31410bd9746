"""What an export says about itself: the model's architecture and training in plain keys (for
config.json) and the model card (README.md): data, recipe, metrics with their intervals,
intended use, licence, and a warning where the model learned from the phantom.

Everything here is read from the checkpoint, its config, the `prepare_report.json` beside its
dataset file and, when the export is given one, a metrics.json entry; nothing is typed in.
Paths of the machine that trained the model are reduced to the dataset file's folder and name.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from medclip_nb.data import prepare_record
from medclip_nb.errors import UserError
from medclip_nb.labels import COMPETITION_TASKS
from medclip_nb.paths import resolve

# The config keys of how the model was trained (the card's recipe table, config.json "training").
RECIPE_KEYS = (
    "loss", "batch_size", "num_epochs", "max_steps", "lr", "weight_decay", "warmup", "grad_clip", "seed",
    "augment", "image_size", "resize_size", "use_amp", "vision_pretrained", "report_sampling", "train_fraction",
    "unpaired_sources",
)
PHANTOM_WARNING = (
    "> **⚠ PHANTOM-TRAINED: NOT FOR CLINICAL USE.** This model learned from synthetic chest X-rays and reports "
    "written by this project's phantom generator, not from patients. Its numbers say how well it learned the "
    "phantom and nothing about real radiographs."
)
UNKNOWN_DATA_WARNING = (
    "> **⚠ TRAINING DATA NOT IDENTIFIED: NOT FOR CLINICAL USE.** The export could not read what the dataset "
    "file was prepared from (no prepare_report.json beside it on the exporting machine)."
)


# ---- plain-key descriptions (config.json) ------------------------------------------------------------
def architecture(model, tokenizer, cfg) -> dict[str, Any]:
    """The model in plain keys: encoders, their sizes, the embedding and the similarity head."""
    size = [3, cfg.image_size, cfg.image_size]
    if cfg.model == "simple":
        image = {"type": "seed_cnn", "description": "4 stride-2 conv blocks (32-64-128-256), average pool, linear",
                 "input_size": size}
        text = {"type": "seed_characters", "description": "character codes / 255 through one linear layer",
                "max_tokens": tokenizer.max_length}
    else:
        image = {"type": "torchvision" if cfg.vision_backbone != "small_cnn" else "small_cnn",
                 "backbone": cfg.vision_backbone, "input_size": size}
        text = {"type": cfg.text_encoder}
        if cfg.text_encoder == "transformer":
            text.update(layers=cfg.text_layers, width=cfg.text_width, heads=cfg.text_heads,
                        max_tokens=tokenizer.max_length, vocab_size=tokenizer.vocab_size, pooling="masked mean")
        elif cfg.text_encoder == "bert":
            text.update(bert_folder=Path(str(cfg.bert_path)).name, max_tokens=tokenizer.max_length)
        else:
            text.update(features_file=Path(str(cfg.text_features_path)).name)
    bias = getattr(model, "logit_bias", None)
    with torch.no_grad():
        scale = float(model.logit_multiplier())
    return {
        "model": cfg.model,
        "image_encoder": image,
        "text_encoder": text,
        "embed_dim": cfg.embed_dim,
        "embeddings": "L2-normalised",
        "similarity": "sigmoid(scale x cosine + bias)" if bias is not None else "softmax over scale x cosine",
        "logit_scale": round(scale, 6),
        "logit_bias": None if bias is None else round(float(bias.detach()), 6),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def training_data(cfg) -> dict[str, Any]:
    """What the dataset file was prepared from: 'phantom', 'mimic-cxr-jpg' or 'unknown', with
    the pairs per split that `prepare` kept (from prepare_report.json beside the file)."""
    data_path = resolve(cfg.data_path)
    entry: dict[str, Any] = {"dataset_file": f"{data_path.parent.name}/{data_path.name}", "kind": "unknown"}
    record = prepare_record(data_path)
    if record:
        phantom = record.get("source_phantom")
        entry["kind"] = "phantom" if isinstance(phantom, dict) else "mimic-cxr-jpg"
        if isinstance(phantom, dict):
            entry["phantom"] = {k: phantom.get(k) for k in ("generator", "version", "studies", "size", "seed")}
        for key in ("kept", "frontal_views"):
            if key in record:
                entry[key] = record[key]
    if cfg.train_fraction < 1:
        entry["train_fraction"] = cfg.train_fraction
    return entry


def training_record(cfg, state: dict) -> dict[str, Any]:
    """How far training went (from the checkpoint), the recipe and the data."""
    def number(key: str, digits: int | None = None):  # a checkpoint's counters are data: None unless numbers
        value = state.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        return int(value) if digits is None else round(float(value), digits)

    return {
        "steps": number("step"),
        "epochs_completed": number("epoch"),
        "best_val_loss": number("best_val_loss", 4),
        "train_seconds": number("train_time", 1),
        "processes": number("world_size") or 1,
        "recipe": {k: getattr(cfg, k) for k in RECIPE_KEYS},
        "data": training_data(cfg),
    }


def check_metrics_entry(entry: dict, cfg, checkpoint: Path, source: str | None) -> None:
    """Refuse a metrics.json entry that says it evaluated another checkpoint or another model."""
    named = entry.get("checkpoint")
    if isinstance(named, str) and Path(named).resolve() != Path(checkpoint).resolve():
        raise UserError(f"--metrics-key: the entry '{source}' evaluated {named}, not {checkpoint}")
    for key in ("model", "loss", "vision_backbone", "text_encoder"):
        if entry.get(key) is not None and entry[key] != getattr(cfg, key):
            raise UserError(f"--metrics-key: the entry '{source}' is of a model with {key} {entry[key]!r}; "
                            f"{checkpoint} has {getattr(cfg, key)!r}")


# ---- the model card ---------------------------------------------------------------------------------
def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _with_interval(value, interval) -> str:
    if value is None:
        return "n/a"
    if not interval or None in interval:
        return _num(value)
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def _metric_rows(entry: dict) -> list[str]:
    """Markdown table rows: metric | value [95 % CI] | chance | n."""
    rows = []
    zs = entry.get("zero_shot_5x200") or {}
    if zs.get("mean"):
        n, per_class = zs.get("n") or 0, zs.get("n_per_class") or {}
        largest = max(per_class.values()) / n if per_class and n else None
        chance = f"0.200 (largest class {_num(largest)})" if largest is not None else "0.200"
        protocol = zs.get("rule", zs.get("protocol", "ours"))  # 'protocol': entries written before the rules
        rows.append(f"| zero-shot CheXpert-5x200 accuracy ({protocol}, prompt mean) | "
                    f"{_with_interval(zs['mean'].get('accuracy'), zs['mean'].get('accuracy_ci'))} | {chance} | {n} |")
        rows.append(f"| zero-shot CheXpert-5x200 macro-F1 ({protocol}, prompt mean) | "
                    f"{_with_interval(zs['mean'].get('macro_f1'), zs['mean'].get('macro_f1_ci'))} | - | {n} |")
    # The published rules scored by MedCLIP's procedure ('_paper': GLoRIA's rule, as entries before the rules named it).
    for key, rule in (("zero_shot_5x200_gloria", "GLoRIA's"), ("zero_shot_5x200_medclip", "MedCLIP's"),
                      ("zero_shot_5x200_paper", "GLoRIA's")):
        paper = entry.get(key) or {}
        if (paper.get("mean") or {}).get("accuracy") is not None:
            m = paper["mean"]
            rows.append(f"| zero-shot CheXpert-5x200 accuracy ({rule} 5x200 rule, MedCLIP's procedure, mean ± std over "
                        f"prompt draws) | {m['accuracy']:.3f} ± {_num(m.get('accuracy_std'))} | 0.200 | "
                        f"{paper.get('n', '')} |")
    multilabel = entry.get("zero_shot_multilabel") or {}
    if multilabel.get("auroc_mean") is not None:
        rows.append(f"| zero-shot per-label AUROC (mean over labels) | "
                    f"{_with_interval(multilabel['auroc_mean'], multilabel.get('auroc_mean_ci'))} | 0.500 | "
                    f"{(entry.get('n') or {}).get('test', '')} |")
    test = ((entry.get("retrieval") or {}).get("test")) or {}
    for direction, name in (("image_to_text", "image → report"), ("text_to_image", "report → image")):
        for k in (1, 5, 10):
            value = (test.get(direction) or {}).get(f"R@{k}")
            if value is not None:
                n = test.get("n") or 0
                interval = (test.get(f"{direction}_ci") or {}).get(f"R@{k}")
                rows.append(f"| retrieval {name} R@{k} | {_with_interval(value, interval)} | "
                            f"{_num(min(k / n, 1.0) if n else None)} | {n} |")
    probe = entry.get("linear_probe") or {}
    if probe.get("auroc_mean") is not None:
        rows.append(f"| linear probe AUROC (mean over labels, all training labels) | "
                    f"{_with_interval(probe['auroc_mean'], probe.get('auroc_mean_ci'))} | 0.500 | "
                    f"{probe.get('n_test', '')} |")
    for fraction in (entry.get("linear_probe_fractions") or {}).values():
        if isinstance(fraction, dict) and fraction.get("auroc_mean") is not None and fraction.get("fraction") != 1.0:
            rows.append(f"| linear probe AUROC, {fraction['fraction']:g} of the training labels "
                        f"({fraction.get('n_train')} images) | "
                        f"{_with_interval(fraction['auroc_mean'], fraction.get('auroc_mean_ci'))} | 0.500 | "
                        f"{probe.get('n_test', '')} |")
    return rows


def _interval_words(metrics: dict) -> str:
    """How the entry's intervals were drawn, as its 'intervals' record says (older entries have none)."""
    method = metrics.get("intervals")
    if not isinstance(method, dict):
        return "95 % bootstrap intervals (the entry does not record over what unit)"
    confidence = method.get("confidence")
    share = f"{confidence * 100:g} %" if isinstance(confidence, (int, float)) else "95 %"
    patients = method.get("test_patients")
    unit = f"{method.get('unit', 'image')}s" + (f", {patients} of them" if patients else "")
    return f"{share} {method.get('method', 'bootstrap')} intervals, {method.get('resamples')} resamples of {unit}"


def _metrics_section(metrics: dict | None, source: str | None) -> list[str]:
    lines = ["## Evaluation", ""]
    rows = _metric_rows(metrics) if metrics else []
    if not rows:
        return lines + ["No evaluation was attached to this export. `python -m medclip_nb export --metrics "
                        "reports/metrics.json --metrics-key KEY` adds an entry of metrics.json (written by "
                        "`evaluate` or notebook 04) with its 95 % intervals.", ""]
    lines += [f"From the entry `{source}`: the test split, {_interval_words(metrics)}; CheXpert competition "
              f"classes: {', '.join(COMPETITION_TASKS)}. *Chance* is what a model that ignores the image scores: "
              f"a uniform guess for accuracy, 0.5 for AUROC, K/n for R@K.", "",
              "| metric | value [95 % CI] | chance | n |", "| --- | --- | --- | --- |", *rows, ""]
    return lines


def _data_section(data: dict) -> list[str]:
    kind = data.get("kind")
    what = {"phantom": "the phantom: synthetic radiographs and reports in the MIMIC-CXR-JPG layout, written by "
                       "`medclip_nb.phantom`",
            "mimic-cxr-jpg": "MIMIC-CXR-JPG, imported by `python -m medclip_nb prepare` (frontal views, FINDINGS + "
                             "IMPRESSION text)",
            }.get(kind, "not identified (a dataset file without prepare_report.json)")
    lines = ["## Training data", "", f"- Source: {what}.", f"- Dataset file: `{data.get('dataset_file')}`."]
    if data.get("phantom"):
        p = data["phantom"]
        lines.append(f"- Phantom: {p.get('studies')} studies, {p.get('size')} px, seed {p.get('seed')} "
                     f"(generator version {p.get('version')}).")
    if data.get("kept"):
        lines.append("- Image–report pairs per split: " + ", ".join(f"{k} {v}" for k, v in data["kept"].items()) + ".")
    if data.get("train_fraction"):
        lines.append(f"- Trained on a seeded {data['train_fraction']:g} share of the training patients.")
    return lines + [""]


def _recipe_section(arch: dict, training: dict) -> list[str]:
    recipe = training.get("recipe") or {}
    rows = [f"| {k} | {v} |" for k, v in recipe.items() if v not in (None, [], "")]
    minutes = (training.get("train_seconds") or 0) / 60
    image = arch["image_encoder"].get("backbone") or arch["image_encoder"]["type"]
    return ["## Training recipe", "",
            f"{training.get('steps')} optimizer steps ({training.get('epochs_completed')} complete epochs) on "
            f"{training.get('processes')} process(es), {minutes:.1f} min of training; best validation loss "
            f"{_num(training.get('best_val_loss'), 4)}. Image encoder: `{image}`, "
            f"text encoder: `{arch['text_encoder']['type']}`, {arch['parameters']:,} parameters, "
            f"{arch['embed_dim']}-d embeddings, learned logit scale {arch['logit_scale']:.2f}.", "",
            "| setting | value |", "| --- | --- |", *rows, ""]


def _licence_section(kind: str) -> list[str]:
    if kind == "phantom":
        text = ("The code is MIT-licensed (medclip-nb); the phantom it learned from is generated by that code, so "
                "these weights carry no data licence beyond it.")
    elif kind == "mimic-cxr-jpg":
        text = ("The code is MIT-licensed (medclip-nb). The weights were learned from MIMIC-CXR-JPG, which is "
                "released under the PhysioNet Credentialed Health Data License 1.5.0 and its data use agreement: "
                "check those terms before sharing these weights with anyone who is not a credentialed user.")
    else:
        text = ("The code is MIT-licensed (medclip-nb). The training data could not be identified here; its "
                "licence governs these weights.")
    return ["## Licence", "", text, ""]


def model_card(arch: dict, training: dict, files: list[str], metrics: dict | None = None,
               metrics_source: str | None = None) -> str:
    """README.md of an export (Markdown with the YAML header model hubs read)."""
    data = training.get("data") or {}
    kind = data.get("kind", "unknown")
    warning = {"phantom": PHANTOM_WARNING, "unknown": UNKNOWN_DATA_WARNING}.get(kind)
    image = arch["image_encoder"].get("backbone") or arch["image_encoder"]["type"]
    recipe = training.get("recipe") or {}
    lines = ["---", f"license: {'mit' if kind == 'phantom' else 'other'}",
             "tags: [chest-x-ray, image-text, contrastive, medclip-nb]", "---", "",
             f"# medclip-nb {arch['model']} model: {image} + {arch['text_encoder']['type']} text encoder, "
             f"{recipe.get('loss')} loss", ""]
    if warning:
        lines += [warning, ""]
    lines += [
        "An image–report dual encoder in the style of MedCLIP / CLIP: a chest X-ray and a report each map to an "
        f"L2-normalised {arch['embed_dim']}-d embedding; their cosine similarity times the learned scale ranks "
        "reports for an image and images for a report, and zero-shot classification compares an image with prompts.",
        "", "## Files", "", "| file | what |", "| --- | --- |",
        *[f"| `{name}` | {FILE_ROLES.get(name, '')} |" for name in files], "",
        "## Use", "", "```python", "from medclip_nb.inference import load_pretrained",
        "model = load_pretrained(\"path/to/this/folder\")           # no pickle: JSON and safetensors only",
        "pixels = model.preprocess(\"scan.jpg\").unsqueeze(0)        # the evaluation transform",
        "image = model.encode_image(pixels)                         # [1, D], L2-normalised",
        "text = model.encode_text([\"small left pleural effusion\"])  # [1, D]",
        "model.classify([\"scan.jpg\"])                              # 5-way zero-shot",
        "model.classify_multilabel([\"scan.jpg\"])                   # per finding: positive vs negative prompt",
        "```", "",
        "`python -m medclip_nb predict --checkpoint FOLDER scan.jpg [--multi-label]` and `python -m medclip_nb "
        "retrieve --checkpoint FOLDER --reports datasets.pkl scan.jpg` do the same from a shell. `tokenizer.json` "
        "also loads with `tokenizers.Tokenizer.from_file` and, with `tokenizer_config.json`, with "
        "`transformers.AutoTokenizer.from_pretrained(folder)` (call it with `padding=\"max_length\", truncation=True` "
        "for the model's fixed length); `preprocessor_config.json` lists the image steps.", "",
    ]
    lines += _data_section(data) + _recipe_section(arch, training) + _metrics_section(metrics, metrics_source)
    lines += ["## Intended use and limits", "",
              "- For research on image–report pretraining: embeddings, zero-shot classification and retrieval to "
              "compare training recipes, as in the medclip-nb study.",
              "- **Not for clinical use**: not a medical device, not validated on patients, no diagnostic claim. "
              "Zero-shot probabilities are similarities turned into numbers, not calibrated risks.",
              "- It saw frontal views only, resized to "
              f"{recipe.get('image_size')} px; other views, modalities or body parts are out of scope.", ""]
    lines += _licence_section(kind)
    return "\n".join(lines)


FILE_ROLES = {
    "model.safetensors": "the weights (safetensors: tensors only, nothing to execute)",
    "config.json": "the architecture in plain keys, the training record, and the config keys that rebuild the model",
    "tokenizer.json": "the tokenizer (Hugging Face `tokenizers`)",
    "tokenizer_config.json": "what `transformers.AutoTokenizer` needs to read tokenizer.json",
    "preprocessor_config.json": "the image preprocessing: pad, resize, crop, mean and std",
    "README.md": "this model card",
}
