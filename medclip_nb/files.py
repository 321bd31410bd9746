"""The one atomic file write: readers never see half a file, a failure leaves no temporary file
and the previous file untouched, and the new file gets the user's normal mode.

`tempfile.mkstemp` creates files with mode 0600 whatever the umask, and `os.replace` keeps that
mode, so files written through it could not be read by colleagues on a shared server; here the
temporary file is given the umask's mode before the rename.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from medclip_nb.errors import UserError, os_error_reason

# Temporary files are named ".<name>.tmp-<pid>" beside the target, so a crashed writer's leftovers
# can be recognised (and removed) by the module that owns the folder.
TEMP_INFIX = ".tmp-"


def umask_file_mode() -> int:
    """0o666 with the process umask applied: the mode `open(path, "w")` would give a new file."""
    try:  # Linux >= 4.7 reports the umask without changing it
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it (and put it back at once)
    os.umask(mask)
    return 0o666 & ~mask


def temp_path(target: Path) -> Path:
    return target.with_name(f".{target.name}{TEMP_INFIX}{os.getpid()}")


def fsync_path(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk; a file system that cannot is not an error."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(target: str | os.PathLike, write: Callable[[Path], object], *, what: str = "",
                 error: type[UserError] = UserError) -> Path:
    """`write(tmp)` into a temporary file beside `target`, then fsync, the umask's mode and a
    rename onto `target`. Any failure, Ctrl-C included, removes the temporary file and leaves
    `target` as it was; an OSError becomes one line of `error`, naming `what` (a flag such as
    '--out', or a kind of file) and the file. Returns `target`."""
    target = Path(target)
    tmp = temp_path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            raise IsADirectoryError(21, "it is a folder")
        write(tmp)
        os.chmod(tmp, umask_file_mode())
        fsync_path(tmp)
        os.replace(tmp, target)
        fsync_path(target.parent)
    except OSError as e:
        previous = "the previous file is intact" if target.exists() else "no previous file existed"
        label = f"{what} " if what else ""
        raise error(f"{label}{target}: cannot be written ({os_error_reason(e)}); {previous}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def write_bytes_atomic(target: str | os.PathLike, data: bytes, **kw: Any) -> Path:
    return write_atomic(target, lambda tmp: tmp.write_bytes(data), **kw)


def write_text_atomic(target: str | os.PathLike, text: str, **kw: Any) -> Path:
    return write_atomic(target, lambda tmp: tmp.write_text(text, encoding="utf-8"), **kw)


def write_json_atomic(target: str | os.PathLike, data: Any, *, indent: int = 2, sort_keys: bool = False,
                      **kw: Any) -> Path:
    return write_text_atomic(target, json.dumps(data, indent=indent, sort_keys=sort_keys) + "\n", **kw)
