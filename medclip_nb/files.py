"""The one atomic file write: readers never see half a file, a failure leaves no temporary file
and the previous file untouched, and the new file gets the user's normal mode. Also the checks
around it: `check_output` (an output path, before the work that fills it: never a user's file
without `--force`, never an input) and `read_limited` (the one bounded read of a user's or a
model's file: a regular file under a size limit, never a FIFO or a device).

`tempfile.mkstemp` creates files with mode 0600 whatever the umask, and `os.replace` keeps that
mode, so files written through it could not be read by colleagues on a shared server; here the
temporary file is given the umask's mode before the rename.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
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
        previous = "the previous file is intact" if _exists(target) else "no previous file existed"
        label = f"{what} " if what else ""
        raise error(f"{label}{target}: cannot be written ({os_error_reason(e)}); {previous}") from None
    finally:
        try:  # never masks the real error (the folder may not exist, or be a file)
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
    return target


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return False


def write_bytes_atomic(target: str | os.PathLike, data: bytes, **kw: Any) -> Path:
    return write_atomic(target, lambda tmp: tmp.write_bytes(data), **kw)


def write_text_atomic(target: str | os.PathLike, text: str, **kw: Any) -> Path:
    return write_atomic(target, lambda tmp: tmp.write_text(text, encoding="utf-8"), **kw)


def write_json_atomic(target: str | os.PathLike, data: Any, *, indent: int = 2, sort_keys: bool = False,
                      **kw: Any) -> Path:
    return write_text_atomic(target, json.dumps(data, indent=indent, sort_keys=sort_keys) + "\n", **kw)


# ---- outputs, checked before the work that fills them ------------------------------------------------
def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except (OSError, RuntimeError):
        return False


def check_output(target: str | os.PathLike, *, flag: str, force: bool = False, inputs=(), ours=None,
                 error: type[UserError] = UserError) -> Path:
    """Refuse an output path before any work: one of the command's `inputs` (always), a folder, a
    path under a file, or an existing file unless `force` or `ours(target)` says this project
    wrote it. Returns `target` as a Path."""
    target = Path(target)
    for source in inputs:
        if source is not None and _same_file(target, Path(source)):
            raise error(f"{flag} {target}: is the command's input {source}; choose another name")
    ancestor = target.parent
    while not _exists(ancestor) and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if _exists(ancestor) and not ancestor.is_dir():
        raise error(f"{flag} {target}: {ancestor} is a file, not a folder")
    if target.is_dir():
        raise error(f"{flag} {target}: is a folder; give a file name")
    if (_exists(target) or target.is_symlink()) and not force and not (ours is not None and ours(target)):
        raise error(f"{flag} {target}: exists and is not replaced without --force")
    return target


# ---- the one bounded read -------------------------------------------------------------------------
def format_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def read_limited(path: str | os.PathLike, limit: int, *, what: str = "", error: type[UserError] = UserError) -> bytes:
    """The bytes of `path`, a regular file of at most `limit` bytes; anything else is one line of
    `error` naming `what` (a flag or a config key) and the file. The file is opened without
    blocking and checked on its descriptor, so a FIFO never hangs and /dev/zero is never read."""
    path = Path(path)
    label = f"{what} " if what else ""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except (OSError, ValueError) as e:
        reason = os_error_reason(e) if isinstance(e, OSError) else "a NUL in its name"
        raise error(f"{label}{path}: cannot be read ({reason})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{label}{path}: is {_kind(info.st_mode)}, not a regular file")
        if info.st_size > limit:
            raise error(f"{label}{path}: {format_bytes(info.st_size)} is over the limit of {format_bytes(limit)} "
                        f"for this kind of file")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise error(f"{label}{path}: grew past the limit of {format_bytes(limit)} while it was read")
        return b"".join(chunks)
    except OSError as e:
        raise error(f"{label}{path}: cannot be read ({os_error_reason(e)})") from None
    finally:
        os.close(fd)


def read_text_limited(path: str | os.PathLike, limit: int, *, what: str = "",
                      error: type[UserError] = UserError) -> str:
    """`read_limited` as UTF-8 text; text in another encoding is one line naming the byte."""
    data = read_limited(path, limit, what=what, error=error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        label = f"{what} " if what else ""
        raise error(f"{label}{path}: not UTF-8 text (byte {e.start})") from None


# ---- hashes and the processes that hold files ---------------------------------------------------
def sha256_file(path: str | os.PathLike, *, error: type[UserError] = UserError) -> str:
    """SHA-256 of a regular file, read in chunks and opened without blocking (a FIFO or device is
    one line of `error`, never waited on)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise error(f"{path}: not a regular file")
        digest = hashlib.sha256()
        while chunk := os.read(fd, 1 << 22):
            digest.update(chunk)
        return digest.hexdigest()
    finally:
        os.close(fd)


def process_alive(pid: int) -> bool:
    """Whether process `pid` exists: False only when the system says there is none (a process of
    another user, or one not ours to judge, counts as alive: its files are left alone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True
