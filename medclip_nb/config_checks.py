"""What a config value may be: the per-key checks the key table (config.py) names, type
coercion (YAML and flag values to the key's type) and the checks across keys. Every failure is
one ConfigError line naming the key and what is allowed."""

from __future__ import annotations

import math
import re
from dataclasses import fields
from functools import lru_cache
from typing import Any, get_args, get_origin, get_type_hints

from medclip_nb.errors import ConfigError, quote

MAX_STRING = 4096  # paths and names
MAX_LIST = 64
# What gpu_id (and inference's device) may say: a CUDA index, cuda, cuda:N, cpu (or blank: the first GPU).
DEVICE_PATTERN = re.compile(r"|\d{1,4}|cuda(:\d{1,4})?|cpu")
UNPAIRED_SOURCES = ("images", "texts")


# ---- per-key checks (the key table's `check=`) -----------------------------------------------------
def positive(v):
    return v > 0


def non_negative(v):
    return v >= 0


def between(low, high):
    """A range check whose bounds the error message states (absurd sizes fail here, not later
    as a multi-GB allocation)."""

    def check(v):
        return low <= v <= high

    check.allowed = f"must be in {low}..{high}"
    return check


def device_name(v) -> bool:
    return DEVICE_PATTERN.fullmatch(str(v).strip()) is not None


device_name.allowed = "must be a CUDA device index such as 0, cuda:1, or cpu"


def fractions(values) -> bool:
    """A non-empty list of numbers in (0, 1] (YAML numbers, or strings of them from a flag)."""
    try:
        return len(values) > 0 and all(0 < float(v) <= 1 for v in values)
    except (TypeError, ValueError):
        return False


def step_list(values) -> bool:
    """A list of distinct optimizer steps >= 1 (YAML integers, or strings of them from a flag)."""
    try:
        steps = [int(v) for v in values]
    except (TypeError, ValueError):
        return False
    return all(s >= 1 and s == float(v) for s, v in zip(steps, values)) and len(set(steps)) == len(steps)


step_list.allowed = "a list of distinct optimizer steps >= 1"


# ---- types -------------------------------------------------------------------------------------
def base_type(hint):
    """(python type, optional?) for the annotations of the key table."""
    if get_origin(hint) is not None and type(None) in get_args(hint):
        inner = [a for a in get_args(hint) if a is not type(None)][0]
        return inner, True
    return hint, False


@lru_cache(maxsize=None)
def _hints(cls) -> dict[str, Any]:
    return get_type_hints(cls)


def coerce(key: str, value: Any, hint, items: str | None = None) -> Any:
    """`value` as the type `hint` of config key `key`; `items` (int, float, str) for a list's items."""
    typ, optional = base_type(hint)
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
        if items == "float":  # numbers, or strings of numbers from a flag
            try:
                numbers = [float(v) for v in value if not isinstance(v, bool)]
            except (TypeError, ValueError):
                numbers = []
            if len(numbers) != len(value) or not 0 < len(value) <= MAX_LIST:
                raise ConfigError(f"config key '{key}': must be a list of at most {MAX_LIST} numbers, got "
                                  f"{quote(value)}")
            return numbers
        item_type = int if items == "int" else str
        if item_type is int:  # a flag's "10,20" gives strings of digits
            value = [int(v) if isinstance(v, str) and v.isdigit() else v for v in value]
        if len(value) > MAX_LIST or not all(
            isinstance(v, item_type) and not isinstance(v, bool) and (item_type is str or 0 <= v < 2**32)
            for v in value
        ):
            kind = "integers in 0..2**32-1" if item_type is int else "strings"
            raise ConfigError(f"config key '{key}': must be a list of at most {MAX_LIST} {kind}, got {quote(value)}")
        return list(value)
    return value


ZEROSHOT_RULES = ("ours", "gloria", "medclip")
# Keys and values that were renamed: refused with one line that names the new ones (no silent alias).
RETIRED_KEYS = {
    "zeroshot_protocol": "was replaced by 'zeroshot_protocols', a list of 5x200 rules named for their source: ours, "
                         "gloria (the old 'paper'), medclip (MedCLIP's own); the old 'both' is [ours, gloria]",
}
RETIRED_RULES = {"paper": "'gloria' (GLoRIA's rule, the old 'paper')", "both": "the list [ours, gloria]"}


def retired_key_message(key, source: str) -> str | None:
    """The one-line refusal of a renamed config key, or None for a key that never existed."""
    return f"{source}: config key '{key}' {RETIRED_KEYS[key]}" if key in RETIRED_KEYS else None


def zeroshot_rules(values) -> bool:
    """zeroshot_protocols: distinct rules of ZEROSHOT_RULES; a retired value names its new one."""
    for value in values:
        if value in RETIRED_RULES:
            raise ConfigError(f"config key 'zeroshot_protocols': {quote(value)} is now {RETIRED_RULES[value]}")
    return set(values) <= set(ZEROSHOT_RULES) and len(set(values)) == len(values)


zeroshot_rules.allowed = f"a list of distinct rules among {', '.join(ZEROSHOT_RULES)}"


def validate(cfg) -> None:
    """Coerce and check every key of `cfg` (a config.Config) in place, then the checks across keys."""
    hints = _hints(type(cfg))
    for f in fields(cfg):
        value = coerce(f.name, getattr(cfg, f.name), hints[f.name], f.metadata.get("items"))
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
    decoupled_texts = cfg.unpaired_pool == "train_fraction_rest" and "texts" in cfg.unpaired_sources
    if cfg.sentence_labels and ((cfg.report_sampling != "sentence" and not decoupled_texts)
                                or cfg.loss not in ("medclip", "medclip_cosine")):
        raise ConfigError(
            "config key 'sentence_labels': needs report_sampling 'sentence' (or unpaired_pool 'train_fraction_rest' "
            "with 'texts') and loss 'medclip' or 'medclip_cosine' "
            f"(got report_sampling {cfg.report_sampling!r}, loss {cfg.loss!r})"
        )
    if cfg.text_eda_view and cfg.report_sampling != "sentence":
        raise ConfigError("config key 'text_eda_view': applies to report_sampling 'sentence' (report_sampling is "
                          f"{cfg.report_sampling!r})")
    if cfg.text_eda_view and cfg.text_eda:
        raise ConfigError("config key 'text_eda_view': MedCLIP's second view and text_eda (ours, one view) exclude "
                          "each other; set text_eda: 0")
    if cfg.text_eda_view and (cfg.loss not in ("medclip", "medclip_cosine", "clip") or cfg.model == "simple"
                              or cfg.text_encoder == "precomputed"):
        raise ConfigError("config key 'text_eda_view': needs loss clip, medclip or medclip_cosine and a text encoder "
                          f"that reads text (got loss {cfg.loss!r}, model {cfg.model!r}, text_encoder "
                          f"{cfg.text_encoder!r})")
    _validate_unpaired(cfg)


def _validate_unpaired(cfg) -> None:
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
    if cfg.unpaired_pool == "train_fraction_rest" and not sources:
        raise ConfigError("config key 'unpaired_pool': 'train_fraction_rest' needs unpaired_sources (images, texts "
                          "or both: what the left-out patients give)")
    if cfg.unpaired_pool == "train_fraction_rest" and "texts" in sources and not cfg.sentence_labels:
        raise ConfigError("config key 'unpaired_pool': 'train_fraction_rest' with 'texts' needs sentence_labels (each "
                          "text-only sentence has its own labels; 'auto': the table prepare wrote)")
    if cfg.unpaired_data_path and cfg.unpaired_pool != "splits":
        raise ConfigError("config key 'unpaired_data_path': its splits are the unpaired pool; unpaired_pool "
                          f"{cfg.unpaired_pool!r} makes its own (set unpaired_pool: splits)")
    if cfg.image_only_text == "prompt_sentence" and ("images" not in sources or not cfg.sentence_labels):
        raise ConfigError("config key 'image_only_text': prompt_sentence needs unpaired_sources with 'images' and a "
                          "sentence_labels table (the prompt sentences come from it)")
    if "texts" in sources and cfg.model != "simple" and cfg.text_encoder == "precomputed":
        raise ConfigError(
            "config key 'unpaired_sources': 'texts' needs a text encoder that reads text; "
            "text_encoder 'precomputed' has no feature rows for text-only sentences"
        )


