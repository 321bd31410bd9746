"""Notebook set-up: the Config of a notebook (its `parameters` cell and papermill's values).

The notebooks stay short: they build a Config from their parameters, call `ensure_dataset`
(data/prepare.py: phantom -> import -> store, only what is missing; offered here as
`study.ensure_dataset`), and then the package's training and evaluation functions.
"""

from __future__ import annotations

from typing import Any, Mapping

from medclip_nb.config import Config
from medclip_nb.config_load import config_from_namespace
from medclip_nb.data import ensure_dataset

__all__ = ["ensure_dataset", "notebook_config"]


def notebook_config(namespace: Mapping[str, Any]) -> Config:
    """The Config of a notebook: its `parameters` cell and papermill's injected values."""
    return config_from_namespace(namespace)
