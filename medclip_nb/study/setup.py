"""Notebook set-up: the Config of a notebook (its `parameters` cell and papermill's values).

The notebooks stay short: they build a Config from their parameters, call `ensure_dataset`
(data/prepare.py: phantom -> import -> store, only what is missing; offered here as
`study.ensure_dataset`), and then the package's training and evaluation functions.

Every notebook's parameters cell declares every config key, so that papermill knows them all
(no "Passed unknown parameter" for a valid key): the keys of `params/tiny.yaml` with its values
(the tiny CPU run nbval executes), every other key as `...` (the package default).
`parameters_cell_source` writes that cell; after adding a config key, rewrite it in every notebook
with `python -c "from medclip_nb.study.setup import write_parameters_cells as w; w()"`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from medclip_nb.config import CONFIG_KEYS, Config
from medclip_nb.config_load import PARAMETERS_CELL_MARKER, config_from_namespace, read_yaml
from medclip_nb.data import ensure_dataset
from medclip_nb.paths import resolve

__all__ = ["ensure_dataset", "notebook_config"]

NOTEBOOK_DEFAULTS = "params/tiny.yaml"


def notebook_config(namespace: Mapping[str, Any]) -> Config:
    """The Config of a notebook: its `parameters` cell and papermill's injected values. A name
    given there that is no config key stops the notebook with the CLI's one line (did you mean)."""
    return config_from_namespace(namespace)


def parameters_cell_source(values: Mapping[str, Any]) -> str:
    """The parameters cell: `values` (the notebook's defaults, in their order) first, then every
    other config key as `...`, in the key table's order."""
    lines = [
        f"{PARAMETERS_CELL_MARKER}: this notebook's defaults are a tiny CPU run (what nbval executes; the same values",
        "# as params/tiny.yaml). papermill sets any key: -p KEY VALUE, or -f params/X.yaml (a key the file leaves",
        "# out keeps the value here). A name that is no config key stops the notebook in the next cell.",
    ]
    lines += [f"{key} = {_literal(value)}" for key, value in values.items()]
    lines += ["# Every other key keeps the package default (`...`); each is listed so that papermill knows it.",
              "# What each one does: `python -m medclip_nb train --help` or docs/configuration.md."]
    lines += [f"{key} = ..." for key in CONFIG_KEYS if key not in values]
    return "\n".join(lines)


def _literal(value: Any) -> str:
    """A YAML value as Python source; strings in double quotes, as papermill writes them."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def write_parameters_cells(notebooks: list[Path] | None = None, defaults: str = NOTEBOOK_DEFAULTS) -> list[Path]:
    """Rewrite the parameters cell of each notebook (default: notebooks/0*.ipynb) from `defaults`;
    outputs, tags and metadata stay. Returns the notebooks changed."""
    import nbformat

    source = parameters_cell_source(read_yaml(defaults))
    changed = []
    for path in notebooks or sorted(resolve("notebooks").glob("0*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        if cell.source != source:
            cell.source = source
            nbformat.write(nb, path)
            changed.append(path)
    return changed

