"""The one config object of the study.

Values come, lowest precedence first, from: the defaults below (the seed script's defaults
for its flags), a YAML file (`params/*.yaml`, also a papermill parameter file), then
command-line flags or notebook parameters. Unknown keys, wrong types and impossible values
are refused before any work starts, with one line naming the key and what is allowed.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, get_args, get_origin, get_type_hints

import yaml

from medclip_nb.errors import UserError


class ConfigError(UserError, ValueError):
    """A bad config key, type or value; the message is one line naming the key."""


def _opt(default, help: str, choices=None, check=None, short_help=None, **kw):
    meta = {"help": help, "choices": choices, "check": check}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def _positive(v):
    return v > 0


def _non_negative(v):
    return v >= 0


@dataclass
class Config:
    # ---- data -----------------------------------------------------------------------------
    data_path: str = _opt(
        "/root/autodl-tmp/mimic_cxr/datasets.pkl",
        "dataset file: datasets.pkl (train/val/test lists of dicts), or a .jsonl/.csv manifest",
    )
    image_root: str | None = _opt(
        None, "folder that relative image_path values are taken from (default: the dataset file's folder)"
    )
    image_store: str | None = _opt(
        None, "prepared uint8 image store (from `prepare --store`/`cache`); 'auto' uses one beside the dataset file if present"
    )
    mimic_root: str | None = _opt(None, "MIMIC-CXR-JPG root read by `prepare` (files/, *.csv.gz)")
    frontal_views: list = _opt(["PA", "AP"], "ViewPosition values kept by `prepare`")
    phantom_dir: str = _opt("data/phantom", "where the phantom MIMIC-CXR-JPG tree is written")
    phantom_studies: int = _opt(300, "number of phantom studies", check=_positive)
    phantom_size: int = _opt(256, "phantom image side in pixels (MIMIC-CXR is about 2544 x 3056)", check=_positive)
    phantom_seed: int = _opt(0, "phantom generator seed (same seed, same bytes)")
    image_size: int = _opt(224, "training crop size in pixels", check=_positive)
    resize_size: int = _opt(256, "size images are resized to before cropping", check=_positive)
    augment: str = _opt("seed", "augmentation preset", choices=["seed", "medclip", "none"])
    on_bad_image: str = _opt("skip", "unreadable image: skip it and count it, or stop with an error", choices=["skip", "error"])
    report_sampling: str = _opt(
        "full", "text per training step: the whole cleaned report, or one random sentence (MedCLIP)",
        choices=["full", "sentence"],
    )
    short_sentence_tokens: int = _opt(
        0, "report_sampling sentence: drop sentences of this many words or fewer before sampling one "
        "(MedCLIP: 4; 0 keeps all; a report of only short sentences keeps them)", check=_non_negative,
    )
    sentence_labels: str | None = _opt(
        None, "report_sampling sentence with a medclip loss: a sentence-label table (MedCLIP's sentence-label.csv "
        "format) so a sentence has its own labels; 'auto' uses sentence_labels.csv.gz beside the dataset file "
        "when prepare wrote one; null: a sentence has its study's labels",
    )
    text_eda: float = _opt(
        0.0, "report_sampling sentence: EDA fraction alpha (random swap / deletion / insertion of in-report "
        "words, seeded per sample; 0 is off)", check=lambda v: 0 <= v < 1,
    )
    max_text_tokens: int = _opt(128, "text length in tokens (the simple model always uses 50 characters)", check=_positive)
    vocab_size: int = _opt(4000, "subword vocabulary size learned from the training reports", check=_positive)
    train_fraction: float = _opt(
        1.0, "keep this fraction of the training pairs, whole patients, seeded by train_fraction_seed "
        "(data-efficiency runs; val and test stay whole)", check=lambda v: 0 < v <= 1,
    )
    train_fraction_seed: int = _opt(0, "seed of the train_fraction draw (fixed across training seeds by default)")
    debug_subset: int = _opt(64, "samples per split used with --debug", check=_positive)
    # ---- model ----------------------------------------------------------------------------
    model: str = _opt("medclip", "medclip: torchvision backbone + transformer text encoder; simple: the seed's SimpleMedCLIPModel", choices=["medclip", "simple"])
    vision_backbone: str = _opt(
        "resnet18", "torchvision image backbone",
        choices=["resnet18", "resnet34", "resnet50", "swin_t", "mobilenet_v3_small"],
    )
    vision_pretrained: bool = _opt(False, "load torchvision ImageNet weights from the local torch hub cache (no download)")
    text_encoder: str = _opt("transformer", "text encoder", choices=["transformer", "bert", "precomputed"])
    text_layers: int = _opt(4, "transformer text encoder layers", check=_positive)
    text_width: int = _opt(256, "transformer text encoder width", check=_positive)
    text_heads: int = _opt(4, "transformer text encoder attention heads", check=_positive)
    bert_path: str | None = _opt(None, "local Hugging Face folder of a BERT-family model (text_encoder: bert)")
    text_features_path: str | None = _opt(None, "clip_text_features.json for text_encoder: precomputed")
    embed_dim: int = _opt(512, "shared embedding size", check=_positive)
    loss: str = _opt(
        "clip", "contrastive loss: clip; medclip (MedCLIP's published soft targets); medclip_cosine (ours: "
        "row-normalised cosine of label vectors); siglip",
        choices=["clip", "medclip", "medclip_cosine", "siglip"],
    )
    uncertain_label_value: float = _opt(
        0.5, "loss medclip_cosine: weight of an uncertain (-1) finding in its label vectors (medclip keeps -1)",
        check=lambda v: 0 <= v <= 1,
    )
    medclip_cosine_no_finding: bool = _opt(
        True, "loss medclip_cosine: a study with no positive finding gets 'No Finding' = 1 in its label vector"
    )
    # unpaired data (MedCLIP's decoupled images and texts; medclip_nb/unpaired.py)
    unpaired_sources: list = _opt(
        [], "unpaired data mixed into training batches (loss medclip or medclip_cosine): 'images' (split train_images), "
        "'texts' (split train_texts)"
    )
    unpaired_per_batch: int = _opt(8, "extra unpaired items of each used source per training step", check=_positive)
    # ---- training (the seed script's flags and defaults) ----------------------------------
    batch_size: int = _opt(32, "training batch size (pairs per step, per process)", check=_positive)
    num_epochs: int = _opt(10, "training epochs", check=_positive)
    lr: float = _opt(2e-5, "peak learning rate (AdamW)", check=_positive)
    weight_decay: float = _opt(1e-4, "AdamW weight decay (not applied to biases, norms, temperature)", check=_non_negative)
    warmup: float = _opt(0.1, "linear warmup as a fraction of total steps, in [0, 1)", check=lambda v: 0 <= v < 1)
    eval_batch_size: int = _opt(64, "evaluation batch size", check=_positive)
    eval_steps: int = _opt(1000, "validate every N optimizer steps (and at each epoch end)", check=_positive)
    save_steps: int = _opt(
        1000,
        "write a resumable mid-epoch checkpoint every N steps; the seed's default of 1 wrote one "
        "every step, which costs more than the step itself on a GPU",
        check=_positive,
    )
    num_workers: int = _opt(4, "data loader worker processes", check=_non_negative)
    gpu_id: str = _opt("0", "CUDA device index to use; falls back to CPU with one message when CUDA is absent")
    seed: int = _opt(42, "random seed for weights, data order and augmentation")
    model_save_path: str = _opt("./checkpoints/mimic_cxr_pretrain", "folder for checkpoints and the metrics log")
    resume_from: str | None = _opt(None, "checkpoint to resume from, or 'latest' for the newest complete one in model_save_path")
    use_amp: bool = _opt(True, "mixed precision on GPU (bf16 where supported, else fp16 with a grad scaler); CPU runs fp32")
    debug: bool = _opt(False, "small subset, batch shapes and loss terms printed, anomaly detection on")
    # ---- training extras --------------------------------------------------------------------
    max_steps: int | None = _opt(None, "stop after this many optimizer steps (overrides num_epochs when smaller)")
    grad_clip: float = _opt(1.0, "clip the gradient norm to this value (0 turns it off)", check=_non_negative)
    early_stopping_patience: int = _opt(5, "stop after N validations without a lower val loss (0 turns it off)", check=_non_negative)
    max_nonfinite_steps: int = _opt(10, "stop after N non-finite losses in a row (each one is skipped)", check=_positive)
    log_every: int = _opt(10, "write a metrics row every N steps", check=_positive)
    compile: bool = _opt(False, "torch.compile the model (GPU)")
    channels_last: bool = _opt(True, "channels_last memory format for the image backbone on GPU")
    gpu_augment: bool = _opt(True, "with an image store on GPU: move uint8 batches and augment on the GPU")
    # ---- evaluation ------------------------------------------------------------------------
    zeroshot_per_class: int = _opt(200, "CheXpert-5x200: images per class (up to)", check=_positive)
    zeroshot_protocol: str = _opt(
        "ours", "CheXpert-5x200 protocol: ours (evaluate.py), paper (MedCLIP's rule, prompts, logit mean and "
        "pad-resize image; medclip_nb/zeroshot_paper.py), or both (paper under zero_shot_5x200_paper)",
        choices=["ours", "paper", "both"],
    )
    zeroshot_prompts_n: int = _opt(10, "zeroshot_protocol paper: random prompts per class (MedCLIP: 10)", check=_positive)
    zeroshot_prompt_draws: int = _opt(5, "zeroshot_protocol paper: seeded prompt draws; accuracy is reported as mean and std", check=_positive)
    baselines: bool = _opt(True, "notebook 04: also evaluate the random-init model and train the seed's simple model with the same budget")
    ablation_seeds: list = _opt([], "notebook 04: seeds of the model/loss ablation (empty: no ablation; see `make ablation`)")
    reports_dir: str = _opt("reports", "folder for metrics.json, executed notebooks and figures/ of the study")

    # ------------------------------------------------------------------------------------------
    def __post_init__(self):
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def replace(self, **changes) -> "Config":
        return from_dict({**self.to_dict(), **changes})

    # Paths from the config, resolved from the repository root.
    def path(self, key: str) -> Path | None:
        from medclip_nb.paths import resolve

        return resolve(getattr(self, key))


CONFIG_KEYS = tuple(f.name for f in fields(Config))
_HINTS = get_type_hints(Config)


def _base_type(hint):
    """(python type, optional?) for the annotations used above."""
    if get_origin(hint) is not None and type(None) in get_args(hint):
        inner = [a for a in get_args(hint) if a is not type(None)][0]
        return inner, True
    return hint, False


def _coerce(key: str, value: Any) -> Any:
    typ, optional = _base_type(_HINTS[key])
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key '{key}': must be a {typ.__name__}, got null")
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': must be true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config key '{key}': must be an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}': must be a number, got {value!r}")
        if isinstance(value, str):
            # PyYAML reads 1e-3 (no dot) as a string; accept it rather than fail on a YAML quirk.
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"config key '{key}': must be a number, got {value!r}") from None
        if not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': must be a number, got {value!r}")
        return float(value)
    if typ is str:
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key '{key}': must be a string, got {value!r}")
    if typ is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': must be a list, got {value!r}")
        return list(value)
    return value


def validate(cfg: Config) -> None:
    for f in fields(cfg):
        value = _coerce(f.name, getattr(cfg, f.name))
        object.__setattr__(cfg, f.name, value)
        choices, check = f.metadata.get("choices"), f.metadata.get("check")
        if value is None:
            continue
        if choices and value not in choices:
            raise ConfigError(f"config key '{f.name}': {value!r} is not one of {', '.join(map(str, choices))}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config key '{f.name}': must be finite, got {value!r}")
        if check and not check(value):
            raise ConfigError(f"config key '{f.name}': {value!r} is not allowed ({f.metadata['help']})")
    if not str(cfg.data_path).strip():
        raise ConfigError("config key 'data_path': missing (give --data_path or data_path: in the YAML file)")
    if cfg.image_size > cfg.resize_size:
        raise ConfigError(
            f"config key 'image_size': {cfg.image_size} is larger than resize_size {cfg.resize_size}"
        )
    if cfg.text_width % cfg.text_heads:
        raise ConfigError(f"config key 'text_heads': {cfg.text_heads} does not divide text_width {cfg.text_width}")
    if cfg.text_encoder == "bert" and not cfg.bert_path:
        raise ConfigError("config key 'bert_path': required when text_encoder is 'bert'")
    if cfg.text_encoder == "precomputed" and not cfg.text_features_path:
        raise ConfigError("config key 'text_features_path': required when text_encoder is 'precomputed'")
    if (cfg.short_sentence_tokens or cfg.text_eda) and cfg.report_sampling != "sentence":
        key = "short_sentence_tokens" if cfg.short_sentence_tokens else "text_eda"
        raise ConfigError(f"config key '{key}': applies to report_sampling 'sentence' (report_sampling is "
                          f"{cfg.report_sampling!r})")
    if cfg.sentence_labels and (cfg.report_sampling != "sentence" or cfg.loss not in ("medclip", "medclip_cosine")):
        raise ConfigError(
            "config key 'sentence_labels': needs report_sampling 'sentence' and loss 'medclip' or 'medclip_cosine' "
            f"(got report_sampling {cfg.report_sampling!r}, loss {cfg.loss!r})"
        )
    _validate_unpaired(cfg)


UNPAIRED_SOURCES = ("images", "texts")


def _validate_unpaired(cfg: Config) -> None:
    """unpaired_sources: known, distinct items; only the medclip loss can use unpaired rows."""
    sources = [str(s).strip() for s in cfg.unpaired_sources]
    for source in sources:
        if source not in UNPAIRED_SOURCES:
            raise ConfigError(f"config key 'unpaired_sources': {source!r} is not one of {', '.join(UNPAIRED_SOURCES)}")
    if len(set(sources)) != len(sources):
        raise ConfigError(f"config key 'unpaired_sources': {cfg.unpaired_sources!r} names a source twice")
    object.__setattr__(cfg, "unpaired_sources", sources)
    if sources and cfg.loss not in ("medclip", "medclip_cosine"):
        raise ConfigError(
            f"config key 'unpaired_sources': needs loss 'medclip' or 'medclip_cosine' (label-based targets); loss {cfg.loss!r} "
            "needs image-report pairs"
        )
    if "texts" in sources and cfg.model != "simple" and cfg.text_encoder == "precomputed":
        raise ConfigError(
            "config key 'unpaired_sources': 'texts' needs a text encoder that reads text; "
            "text_encoder 'precomputed' has no feature rows for text-only sentences"
        )


def from_dict(values: Mapping[str, Any], source: str = "config") -> Config:
    unknown = sorted(set(values) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(
            f"{source}: unknown config key '{unknown[0]}' (see `python -m medclip_nb train --help` for the keys)"
        )
    return Config(**dict(values))


def read_yaml(path: str | Path) -> dict[str, Any]:
    from medclip_nb.paths import resolve

    p = resolve(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" line {line + 1}" if line is not None else ""
        raise ConfigError(f"{p}{where}: not valid YAML") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: must hold a mapping of config keys, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Defaults < YAML file < overrides (flags or notebook parameters)."""
    values: dict[str, Any] = {}
    source = "config"
    if path is not None:
        values.update(read_yaml(path))
        source = str(path)
    unknown = sorted(set(values) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown config key '{unknown[0]}'")
    values.update({k: v for k, v in (overrides or {}).items()})
    return from_dict(values, source)


def config_from_namespace(namespace: Mapping[str, Any], config_path: str | None = None) -> Config:
    """For notebooks: every config key defined in the notebook's namespace (the `parameters`
    cell and papermill's injected cell) overrides the YAML file and the defaults."""
    return load_config(config_path, {k: namespace[k] for k in CONFIG_KEYS if k in namespace})


# ---- command line ------------------------------------------------------------------------------
def add_config_arguments(parser: argparse.ArgumentParser, keys: tuple[str, ...] = CONFIG_KEYS) -> None:
    """One `--key` flag per config key, each defaulting to 'not given' so that only flags the
    user typed override the YAML file."""
    parser.add_argument("--config", default=None, help="YAML parameter file (params/*.yaml); flags override it")
    defaults = Config.__dataclass_fields__
    for key in keys:
        f = defaults[key]
        typ, _ = _base_type(_HINTS[key])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata['help']} (default: {default!r})"
        kwargs: dict[str, Any] = {"dest": key, "default": argparse.SUPPRESS, "help": help_text}
        if typ is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = key.upper()
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
            kwargs["type"] = {int: int, float: float, list: str}.get(typ, str)
        parser.add_argument(f"--{key}", **kwargs)


def config_from_args(args: argparse.Namespace, keys: tuple[str, ...] = CONFIG_KEYS) -> Config:
    overrides = {k: getattr(args, k) for k in keys if hasattr(args, k)}
    return load_config(getattr(args, "config", None), overrides)
