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
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, get_args, get_origin, get_type_hints

import yaml

from medclip_nb.errors import UserError, quote
from medclip_nb.paths import resolve


class ConfigError(UserError, ValueError):
    """A bad config key, type or value; the message is one line naming the key."""


def _opt(default, help: str, choices=None, check=None, short_help=None, **kw):
    meta = {"help": help, "choices": choices, "check": check}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def _positive(v):
    return v > 0


def _between(low, high):
    """A range check whose bounds the error message states (absurd sizes fail here, not later
    as a multi-GB allocation)."""

    def check(v):
        return low <= v <= high

    check.allowed = f"must be in {low}..{high}"
    return check


# What gpu_id (and inference's device) may say: a CUDA index, cuda, cuda:N, cpu (or blank: the first GPU).
DEVICE_PATTERN = re.compile(r"|\d{1,4}|cuda(:\d{1,4})?|cpu")


def _device_name(v) -> bool:
    return DEVICE_PATTERN.fullmatch(str(v).strip()) is not None


_device_name.allowed = "must be a CUDA device index such as 0, cuda:1, or cpu"

# Image backbones models.py builds (checked here, before any work starts): torchvision's, and
# small_cnn (models.SmallCNN, the CPU default of params/debug.yaml).
VISION_BACKBONES = ("resnet18", "resnet34", "resnet50", "swin_t", "mobilenet_v3_small", "small_cnn")
# Phantom image sides the generator draws (phantom/); checked here so a bad size stops before any work.
PHANTOM_SIZES = (16, 4096)
_MAX_COUNT = 10**12  # steps, epochs, intervals: beyond any real run


def _non_negative(v):
    return v >= 0


def _fractions(values) -> bool:
    """A non-empty list of numbers in (0, 1] (YAML numbers, or strings of them from a flag)."""
    try:
        return len(values) > 0 and all(0 < float(v) <= 1 for v in values)
    except (TypeError, ValueError):
        return False


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
        None, "prepared uint8 image store (from `prepare --store`/`cache`); 'auto' uses one beside the dataset file if "
              "present"
    )
    mimic_root: str | None = _opt(None, "MIMIC-CXR-JPG root read by `prepare` (files/, *.csv.gz)")
    frontal_views: list = _opt(["PA", "AP"], "ViewPosition values kept by `prepare`")
    phantom_dir: str = _opt("data/phantom", "where the phantom MIMIC-CXR-JPG tree is written")
    phantom_studies: int = _opt(300, "number of phantom studies", check=_between(1, 1_000_000))
    phantom_size: int = _opt(256, "phantom image side in pixels (MIMIC-CXR is about 2544 x 3056)",
                             check=_between(*PHANTOM_SIZES))
    phantom_test_studies: int = _opt(
        0, "extra test-only phantom studies of new patients: evaluation sets big enough for intervals",
        check=_between(0, 1_000_000)
    )
    phantom_seed: int = _opt(0, "phantom generator seed (same seed, same bytes)", check=_between(0, 2**32 - 1))
    force: bool = _opt(False, "data/phantom: replace a phantom of other parameters (and the datasets prepared from "
                       "it); train: start fresh over checkpoints that resume_from 'latest' could not read")
    image_size: int = _opt(224, "training crop size in pixels", check=_between(1, 4096))
    resize_size: int = _opt(256, "size images are resized to before cropping", check=_between(1, 4096))
    augment: str = _opt("seed", "augmentation preset", choices=["seed", "medclip", "none"])
    on_bad_image: str = _opt("skip", "unreadable image: skip it and count it, or stop with an error",
                             choices=["skip", "error"])
    report_sampling: str = _opt(
        "full", "text per training step: the whole cleaned report, or one random sentence (MedCLIP)",
        choices=["full", "sentence"],
    )
    short_sentence_tokens: int = _opt(
        0, "report_sampling sentence: drop sentences of this many words or fewer before sampling one "
        "(MedCLIP: 4; 0 keeps all; a report of only short sentences keeps them)", check=_between(0, 1000),
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
    max_text_tokens: int = _opt(128, "text length in tokens (the simple model always uses 50 characters)",
                                check=_between(1, 8192))
    vocab_size: int = _opt(4000, "subword vocabulary size learned from the training reports",
                           check=_between(1, 1_000_000))
    train_fraction: float = _opt(
        1.0, "keep this fraction of the training pairs, whole patients, seeded by train_fraction_seed "
        "(data-efficiency runs; val and test stay whole)", check=lambda v: 0 < v <= 1,
    )
    train_fraction_seed: int = _opt(0, "seed of the train_fraction draw (fixed across training seeds by default)",
                                   check=_between(0, 2**32 - 1))
    debug_subset: int = _opt(64, "samples per split used with --debug", check=_between(1, _MAX_COUNT))
    # ---- model ----------------------------------------------------------------------------
    model: str = _opt("medclip", "medclip: torchvision backbone + transformer text encoder; simple: the seed's "
                                 "SimpleMedCLIPModel", choices=["medclip", "simple"])
    vision_backbone: str = _opt(
        "resnet18", "image backbone: a torchvision model, or small_cnn (4 stride-2 conv stages, 256 features)",
        choices=list(VISION_BACKBONES),
    )
    vision_pretrained: bool = _opt(False, "load torchvision ImageNet weights from the local torch hub cache (no "
                                          "download)")
    text_encoder: str = _opt("transformer", "text encoder", choices=["transformer", "bert", "precomputed"])
    text_layers: int = _opt(4, "transformer text encoder layers", check=_between(1, 128))
    text_width: int = _opt(256, "transformer text encoder width", check=_between(1, 16384))
    text_heads: int = _opt(4, "transformer text encoder attention heads", check=_between(1, 1024))
    bert_path: str | None = _opt(None, "local Hugging Face folder of a BERT-family model (text_encoder: bert)")
    text_features_path: str | None = _opt(None, "clip_text_features.json for text_encoder: precomputed")
    embed_dim: int = _opt(512, "shared embedding size", check=_between(1, 16384))
    loss: str = _opt(
        "clip", "contrastive loss: clip; medclip (MedCLIP's published soft targets); medclip_cosine (ours: "
        "row-normalised cosine of label vectors); siglip",
        choices=["clip", "medclip", "medclip_cosine", "siglip"],
    )
    siglip_bias_init: str = _opt(
        "batch_prior", "initial SigLIP bias: 'batch_prior' = -ln(pairs per step - 1), the log-odds of a positive "
        "pair (-3.4 at batch 32); 'paper' = -10, which is that prior at the paper's batch of ~32k",
        choices=["batch_prior", "paper"],
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
        [], "unpaired data mixed into training batches (loss medclip or medclip_cosine): 'images' (split "
            "train_images), "
        "'texts' (split train_texts)"
    )
    unpaired_per_batch: int = _opt(8, "extra unpaired items of each used source per training step",
                                   check=_between(1, 65536))
    # ---- training (the seed script's flags and defaults) ----------------------------------
    batch_size: int = _opt(
        32, "training batch size (pairs per step, per process; a contrastive step needs at least 2)",
        check=_between(2, 65536),
    )
    num_epochs: int = _opt(10, "training epochs", check=_between(1, _MAX_COUNT))
    lr: float = _opt(2e-5, "peak learning rate (AdamW)", check=_positive)
    weight_decay: float = _opt(1e-4, "AdamW weight decay (not applied to biases, norms, temperature)",
                               check=_non_negative)
    warmup: float = _opt(0.1, "linear warmup as a fraction of total steps, in [0, 1)", check=lambda v: 0 <= v < 1)
    eval_batch_size: int = _opt(64, "evaluation batch size (a validation batch needs at least 2 pairs)",
                                check=_between(1, 65536))
    eval_steps: int = _opt(1000, "validate every N optimizer steps (and at each epoch end)",
                           check=_between(1, _MAX_COUNT))
    save_steps: int = _opt(
        1000,
        "write a resumable mid-epoch checkpoint every N steps; the seed's default of 1 wrote one "
        "every step, which costs more than the step itself on a GPU",
        check=_between(1, _MAX_COUNT),
    )
    num_workers: int = _opt(4, "data loader worker processes", check=_between(0, 256))
    gpu_id: str = _opt("0", "CUDA device index to use (or cpu); falls back to CPU with one message when CUDA is absent",
                       check=_device_name)
    seed: int = _opt(42, "random seed for weights, data order and augmentation", check=_between(0, 2**32 - 1))
    model_save_path: str = _opt("./checkpoints/mimic_cxr_pretrain", "folder for checkpoints and the metrics log")
    resume_from: str | None = _opt(None, "checkpoint to resume from, or 'latest' for the newest complete one in "
                                         "model_save_path")
    use_amp: bool = _opt(True, "mixed precision on GPU (bf16 where supported, else fp16 with a grad scaler); CPU runs "
                               "fp32")
    debug: bool = _opt(False, "small subset, batch shapes and loss terms printed, anomaly detection on")
    # ---- training extras --------------------------------------------------------------------
    max_steps: int | None = _opt(None, "stop after this many optimizer steps (overrides num_epochs when smaller)",
                                 check=_between(1, _MAX_COUNT))
    grad_clip: float = _opt(1.0, "clip the gradient norm to this value (0 turns it off)", check=_non_negative)
    early_stopping_patience: int = _opt(5, "stop after N validations without a lower val loss (0 turns it off)",
                                        check=_between(0, _MAX_COUNT))
    max_nonfinite_steps: int = _opt(10, "stop after N non-finite losses in a row (each one is skipped)",
                                    check=_between(1, _MAX_COUNT))
    log_every: int = _opt(10, "write a metrics row every N steps", check=_between(1, _MAX_COUNT))
    tensorboard: bool = _opt(
        False, "also write the metrics rows (loss, lr, temperature, pairs/s) as TensorBoard events under "
        "model_save_path/tensorboard (optional package: pip install -e .[tensorboard])"
    )
    compile: bool = _opt(False, "torch.compile the model (GPU)")
    channels_last: bool = _opt(True, "channels_last memory format for the image backbone on GPU")
    gpu_augment: bool = _opt(True, "with an image store on GPU: move uint8 batches and augment on the GPU")
    # ---- evaluation ------------------------------------------------------------------------
    zeroshot_per_class: int = _opt(200, "CheXpert-5x200: images per class (up to)", check=_between(1, 10**9))
    probe_label_fractions: list = _opt(
        [0.01, 0.1, 1.0], "linear probe: fractions of the training labels it is fitted on (seeded subsets), "
        "the low-label protocol of this literature", check=_fractions
    )
    zeroshot_protocol: str = _opt(
        "ours", "CheXpert-5x200 protocol: ours (evaluate/metrics.py), paper (MedCLIP's rule, prompts, logit mean and "
        "pad-resize image; medclip_nb/evaluate/zeroshot_paper.py), or both (paper under zero_shot_5x200_paper)",
        choices=["ours", "paper", "both"],
    )
    zeroshot_prompts_n: int = _opt(10, "zeroshot_protocol paper: random prompts per class (MedCLIP: 10)",
                                   check=_between(1, 10_000))
    zeroshot_prompt_draws: int = _opt(5, "zeroshot_protocol paper: seeded prompt draws; accuracy is reported as mean "
                                         "and std", check=_between(1, 10_000))
    baselines: list = _opt(["random_init", "simple"], "notebook 04's baselines: random_init (the same architecture, "
                           "untrained), simple (the seed's model, trained with the same settings)",
                           check=lambda v: set(v) <= {"random_init", "simple"})
    ablation_seeds: list = _opt([], "notebook 04: seeds of the model/loss ablation (empty: no ablation; see `make "
                                    "ablation`)")
    data_efficiency_fractions: list = _opt([0.1, 0.3, 1.0], "notebook 04 with ablation_seeds: train_fraction values "
                                           "of the data-efficiency runs (clip, medclip, medclip_cosine; the first 3 "
                                           "ablation seeds; [1.0]: none)", check=_fractions)
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
        return resolve(getattr(self, key))


CONFIG_KEYS = tuple(f.name for f in fields(Config))
_HINTS = get_type_hints(Config)


def _base_type(hint):
    """(python type, optional?) for the annotations used above."""
    if get_origin(hint) is not None and type(None) in get_args(hint):
        inner = [a for a in get_args(hint) if a is not type(None)][0]
        return inner, True
    return hint, False


MAX_STRING = 4096  # paths and names
MAX_LIST = 64
_INT_LISTS = ("ablation_seeds",)
_FLOAT_LISTS = {"probe_label_fractions", "data_efficiency_fractions"}


def _coerce(key: str, value: Any) -> Any:
    typ, optional = _base_type(_HINTS[key])
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key '{key}': must be a {typ.__name__}, got null")
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': must be true or false, got {quote(value)}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"config key '{key}': must be an integer, got {quote(value)}")
        return value
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}': must be a number, got {quote(value)}")
        if isinstance(value, str):
            # PyYAML reads 1e-3 (no dot) as a string; accept it rather than fail on a YAML quirk.
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"config key '{key}': must be a number, got {quote(value)}") from None
        if not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': must be a number, got {quote(value)}")
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(f"config key '{key}': {quote(value)} is too large") from None
    if typ is str:
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            value = str(value)
            if len(value) > MAX_STRING or "\x00" in value:
                raise ConfigError(f"config key '{key}': {quote(value)} is too long or holds a NUL character")
            return value
        raise ConfigError(f"config key '{key}': must be a string, got {quote(value)}")
    if typ is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': must be a list, got {quote(value)}")
        if key in _FLOAT_LISTS:  # numbers, or strings of numbers from a flag
            try:
                numbers = [float(v) for v in value if not isinstance(v, bool)]
            except (TypeError, ValueError):
                numbers = []
            if len(numbers) != len(value) or not 0 < len(value) <= MAX_LIST:
                raise ConfigError(f"config key '{key}': must be a list of at most {MAX_LIST} numbers, got "
                                  f"{quote(value)}")
            return numbers
        item_type = int if key in _INT_LISTS else str
        if len(value) > MAX_LIST or not all(
            isinstance(v, item_type) and not isinstance(v, bool) and (item_type is str or 0 <= v < 2**32)
            for v in value
        ):
            kind = "seeds (integers in 0..2**32-1)" if item_type is int else "strings"
            raise ConfigError(f"config key '{key}': must be a list of at most {MAX_LIST} {kind}, got {quote(value)}")
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
            raise ConfigError(f"config key '{f.name}': {quote(value)} is not one of {', '.join(map(str, choices))}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config key '{f.name}': must be finite, got {quote(value)}")
        if check and not check(value):
            reason = getattr(check, "allowed", None) or f.metadata["help"]
            raise ConfigError(f"config key '{f.name}': {quote(value)} is not allowed ({reason})")
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
            raise ConfigError(f"config key 'unpaired_sources': {quote(source)} is not one of "
                              f"{', '.join(UNPAIRED_SOURCES)}")
    if len(set(sources)) != len(sources):
        raise ConfigError(f"config key 'unpaired_sources': {quote(cfg.unpaired_sources)} names a source twice")
    object.__setattr__(cfg, "unpaired_sources", sources)
    if sources and cfg.loss not in ("medclip", "medclip_cosine"):
        raise ConfigError(
            "config key 'unpaired_sources': needs loss 'medclip' or 'medclip_cosine' (label-based targets); loss "
            f"{cfg.loss!r} "
            "needs image-report pairs"
        )
    if "texts" in sources and cfg.model != "simple" and cfg.text_encoder == "precomputed":
        raise ConfigError(
            "config key 'unpaired_sources': 'texts' needs a text encoder that reads text; "
            "text_encoder 'precomputed' has no feature rows for text-only sentences"
        )


def _unknown_keys(values: Mapping[Any, Any], source: str) -> list[str]:
    """Keys of `values` that are no config key; a key that is not a string is an error itself
    (YAML reads `1: x` as an int key, and sorting mixed keys would fail)."""
    for key in values:
        if not isinstance(key, str):
            raise ConfigError(f"{source}: config key {quote(key)} is not a string")
    return sorted(set(values) - set(CONFIG_KEYS))


def from_dict(values: Mapping[str, Any], source: str = "config") -> Config:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: config must be a mapping of keys, got {type(values).__name__}")
    unknown = _unknown_keys(values, source)
    if unknown:
        raise ConfigError(
            f"{source}: unknown config key {quote(unknown[0])} (see `python -m medclip_nb train --help` for the keys)"
        )
    return Config(**dict(values))


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = resolve(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read ({e.strerror or e})") from None
    except RecursionError:
        raise ConfigError(f"{p}: nested too deeply to be a config file") from None
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" line {line + 1}" if line is not None else ""
        raise ConfigError(f"{p}{where}: not valid YAML") from None
    except (ValueError, TypeError, OverflowError) as e:  # e.g. a timestamp or number PyYAML cannot build
        raise ConfigError(f"{p}: not a usable YAML config ({type(e).__name__})") from None
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
    unknown = _unknown_keys(values, source)
    if unknown:
        raise ConfigError(f"{source}: unknown config key {quote(unknown[0])}")
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
