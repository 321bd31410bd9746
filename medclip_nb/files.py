"""Small file helpers: atomic writes that give the new file the user's normal mode.

`tempfile.mkstemp` creates files with mode 0600 whatever the umask, and `os.replace` keeps that
mode, so files written through it could not be read by colleagues on a shared server.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, fsync, give it the umask's mode and rename:
    readers never see half a file, and an error leaves no temporary file behind."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), umask_file_mode())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
