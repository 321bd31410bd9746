"""Where config values come from: a YAML file (`params/*.yaml`, also a papermill parameter
file), command-line flags (one `--key` per config key) and notebook parameters, each checked as
the key table (config.py) says; flags and parameters override the file."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

from medclip_nb.config import CONFIG_KEYS, Config, from_dict, unknown_keys
from medclip_nb.config_checks import RETIRED_KEYS, base_type, retired_key_message
from medclip_nb.errors import ConfigError, quote
from medclip_nb.paths import resolve


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
    unknown = unknown_keys(values, source)
    if unknown:
        raise ConfigError(retired_key_message(unknown[0], source)
                          or f"{source}: unknown config key {quote(unknown[0])}")
    values.update({k: v for k, v in (overrides or {}).items()})
    return from_dict(values, source)


def config_from_namespace(namespace: Mapping[str, Any], config_path: str | None = None) -> Config:
    """For notebooks: every config key defined in the notebook's namespace (the `parameters`
    cell and papermill's injected cell) overrides the YAML file and the defaults. A renamed key
    (papermill injects whatever a parameter file holds) is refused with the name of the new one."""
    for key in RETIRED_KEYS:
        if key in namespace:
            raise ConfigError(retired_key_message(key, "notebook parameters"))
    return load_config(config_path, {k: namespace[k] for k in CONFIG_KEYS if k in namespace})


# ---- command line ------------------------------------------------------------------------------
def add_config_arguments(parser: argparse.ArgumentParser, keys: tuple[str, ...] = CONFIG_KEYS) -> None:
    """One `--key` flag per config key, each defaulting to 'not given' so that only flags the
    user typed override the YAML file."""
    parser.add_argument("--config", default=None, help="YAML parameter file (params/*.yaml); flags override it")
    defaults = Config.__dataclass_fields__
    hints = typing.get_type_hints(Config)
    for key in keys:
        f = defaults[key]
        typ, _ = base_type(hints[key])
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


def at_least_one(text: str) -> int:
    """argparse type of a count flag: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value
