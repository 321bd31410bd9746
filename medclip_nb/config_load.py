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

from medclip_nb.config import CONFIG_KEYS, Config, from_dict, unknown_key_error, unknown_keys
from medclip_nb.config_checks import RETIRED_KEYS, base_type
from medclip_nb.errors import ConfigError, UserError
from medclip_nb.files import read_text_limited
from medclip_nb.paths import from_cwd, resolve

# A parameter file is a few KiB; PyYAML takes minutes over tens of MiB. Prompt files share the cap.
MAX_YAML_BYTES = 1 << 20


def parse_yaml_file(path: Path, *, what: str = "", error: type[UserError] = ConfigError,
                    limit: int = MAX_YAML_BYTES) -> Any:
    """The YAML (or JSON) document in `path`, read with every protection a user's file needs: a
    regular file under `limit` bytes (never a FIFO or a device), UTF-8, `yaml.safe_load` (no
    tags that build objects; aliases stay shared references), and any failure inside the parser,
    deep nesting included, as one line of `error` naming `what` and the file."""
    label = f"{what} " if what else ""
    text = read_text_limited(path, limit, what=what, error=error)
    try:
        return yaml.safe_load(text)
    except RecursionError:
        raise error(f"{label}{path}: nested too deeply") from None
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" line {line + 1}" if line is not None else ""
        raise error(f"{label}{path}{where}: not valid YAML") from None
    except (ValueError, TypeError, OverflowError, AttributeError) as e:  # a timestamp or number PyYAML cannot build
        raise error(f"{label}{path}: not a usable YAML file ({type(e).__name__})") from None


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = resolve(path)
    if not p.exists() and not p.is_symlink():
        raise ConfigError(f"config file not found: {p}")
    data = parse_yaml_file(p) or {}
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
        raise unknown_key_error(unknown[0], source)
    values.update({k: v for k, v in (overrides or {}).items()})
    return from_dict(values, source)


# Notebook parameters. The parameters cell (its first line starts with PARAMETERS_CELL_MARKER)
# declares every config key, so papermill knows them all; `...` there means "the package default".
# papermill writes the values it is given into a cell of its own after it (first line
# PAPERMILL_HEADER). Both cells are read back from the kernel's input history, so a name in
# them that is no config key stops the notebook as an unknown flag stops the CLI.
PARAMETERS_CELL_MARKER = "# Config keys"
PAPERMILL_HEADER = "# Parameters"


def parameter_cell_names(source: str) -> list[str]:
    """The names a cell assigns at its top level (`name = value`, `name: type = value`)."""
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    names = []
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) else []
        names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def given_parameters(history: list[str]) -> list[str]:
    """Names assigned by the last run of the parameters cell and by papermill's cell after it,
    found in a kernel's input history (IPython's `In`)."""
    cells = [c for c in history if isinstance(c, str)]
    starts = [i for i, c in enumerate(cells) if c.lstrip().startswith(PARAMETERS_CELL_MARKER)]
    first = starts[-1] if starts else 0
    chosen = [c for i, c in enumerate(cells) if i >= first and (
        (starts and i == first) or c.strip().split("\n", 1)[0].strip() == PAPERMILL_HEADER)]
    return [name for cell in chosen for name in parameter_cell_names(cell)]


def config_from_namespace(namespace: Mapping[str, Any], config_path: str | None = None) -> Config:
    """For notebooks: every config key defined in the notebook's namespace (the `parameters`
    cell and papermill's injected cell) overrides the YAML file and the defaults; a value of
    `...` keeps the default. A name those cells assign that is no config key (a typo given to
    `papermill -p`, a key in a `-f` file) is refused with the CLI's one line; a renamed key
    (papermill injects whatever a parameter file holds) with the name of the new one."""
    for key in RETIRED_KEYS:
        if key in namespace:
            raise unknown_key_error(key, "notebook parameters")
    for name in given_parameters(list(namespace.get("In") or [])):
        if name not in CONFIG_KEYS:
            raise unknown_key_error(name, "notebook parameter")
    values = {k: namespace[k] for k in CONFIG_KEYS if k in namespace and namespace[k] is not Ellipsis}
    return load_config(config_path, values)


# ---- command line ------------------------------------------------------------------------------
def add_config_arguments(parser: argparse.ArgumentParser, keys: tuple[str, ...] = CONFIG_KEYS) -> None:
    """One `--key` flag per config key, each defaulting to 'not given' so that only flags the
    user typed override the YAML file. A path flag is taken from the current folder (from_cwd);
    paths inside a YAML file are taken from the repository root."""
    parser.add_argument("--config", default=None, type=from_cwd,
                        help="YAML parameter file (params/*.yaml); flags override it")
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
            kwargs["type"] = from_cwd if f.metadata.get("path") else {int: int, float: float, list: str}.get(typ, str)
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
