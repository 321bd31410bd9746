"""Where paths are taken from: a config value (a params YAML file, a notebook parameter) from the
repository root, wherever the notebook or command runs (`resolve`); a path typed on the command
line from the current folder, as every CLI does (`from_cwd`, applied by the CLI's parsers). Messages
and notebooks show paths inside the repository relative to its root (`shown`)."""

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


PATH_WORDS = ("auto", "latest", "installed", "phantom")


def from_cwd(path: str) -> str:
    """A path typed on the command line, taken from the current folder as every CLI takes it.

    It comes back absolute when the current folder is not the repository root (where `resolve`
    would otherwise take it from), unchanged when it is; the config words of path keys
    (PATH_WORDS: image_store 'auto', resume_from 'latest', iu_reports 'installed', iu_images
    'phantom') stay words."""
    if path in PATH_WORDS or os.path.isabs(os.path.expanduser(path)):
        return path
    if Path.cwd().resolve() == repo_root():
        return path
    return str(Path.cwd().resolve() / os.path.expanduser(path))


def shown(path: str | os.PathLike) -> str:
    """A path for a message or a notebook: relative to the repository root when it lies inside
    it (the same text on every machine, as a params file names it), else as it is."""
    p = Path(path)
    if p.is_absolute():
        try:
            return str(p.relative_to(repo_root()))
        except ValueError:
            return str(p)
    return str(p)
