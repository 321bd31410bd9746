"""Notebook set-up: the Config of a notebook (its `parameters` cell and papermill's values).

The notebooks stay short: they build a Config from their parameters, call `ensure_dataset`
(prepare.py: phantom -> import -> store, only what is missing), and then the package's
training and evaluation functions.
"""

from __future__ import annotations

from typing import Any, Mapping

from medclip_nb.config import Config, config_from_namespace


def notebook_config(namespace: Mapping[str, Any]) -> Config:
    """The Config of a notebook: its `parameters` cell and papermill's injected values."""
    return config_from_namespace(namespace)
