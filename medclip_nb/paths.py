"""Repository-root path resolution, so notebooks and the CLI agree wherever they are launched;
atomic file writes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


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


def write_atomic(target: str | os.PathLike, write: Callable[[Path], object], what: str) -> Path:
    """`write(tmp_path)`, then rename onto `target`: a failure or Ctrl-C leaves no half-written
    file. An OSError becomes a one-line UserError naming `what` (a flag such as '--out') and
    the file."""
    from medclip_nb.errors import UserError

    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, target)
    except OSError as e:
        raise UserError(f"{what} {target}: cannot be written ({e.strerror or type(e).__name__})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target
