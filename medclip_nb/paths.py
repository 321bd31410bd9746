"""Repository-root path resolution, so notebooks and the CLI agree wherever they are launched."""

from __future__ import annotations

import os
from pathlib import Path


def repo_root() -> Path:
    """The folder holding pyproject.toml above this package (a source checkout),
    else the current working directory (an installed package)."""
    env = os.environ.get("MEDCLIP_NB_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").is_file() and (here / "medclip_nb").is_dir():
        return here
    return Path.cwd().resolve()


def resolve(path: str | os.PathLike | None) -> Path | None:
    """Absolute paths stay; relative ones are taken from the repository root."""
    if path is None:
        return None
    p = Path(os.path.expanduser(str(path)))
    return p if p.is_absolute() else repo_root() / p
