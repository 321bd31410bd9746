"""Errors caused by the user's input. Each carries one line that names the file, key or flag;
the CLI prints it without a traceback and exits with status 2."""

import re


class UserError(Exception):
    """Base class: bad input from the user (a file, a key, a flag)."""

    def _render_traceback_(self) -> list[str]:
        """What IPython shows instead of a traceback: in a notebook cell (and in papermill's
        error), the same one line as the CLI's."""
        return [f"error: {one_line(self, 1000)}"]


class DataError(UserError):
    """A dataset file, manifest, image or MIMIC-CXR table that cannot be used."""


class CheckpointError(UserError):
    """A checkpoint that is missing, incomplete or not safe to load."""


class ConfigError(UserError, ValueError):
    """A bad config key, type or value; the message is one line naming the key."""


class TrainingError(UserError):
    """A run that had to stop (for example, too many non-finite losses in a row)."""


def one_line(value: object, limit: int = 300) -> str:
    """`value` (an exception or any text) as one line of at most `limit` characters.

    An exception re-raised by a DataLoader worker carries the worker's whole traceback
    ("Caught X in DataLoader worker process 0. Original Traceback ... X: message"): its own
    message is the traceback's last line, without the exception's name."""
    text = str(value) if not isinstance(value, BaseException) else (str(value).strip() or type(value).__name__)
    if isinstance(value, BaseException) and text.startswith("Caught ") and "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        name, sep, message = last.partition(": ")
        text = message if sep and re.fullmatch(r"[\w.]+", name) else last
    first = text.strip().splitlines()[0] if text.strip() else ""
    return first if len(first) <= limit else first[: limit - 3] + "..."


def os_error_reason(error: OSError) -> str:
    """A short reason for a failed write or read; 'no space left on device' when that is it."""
    import errno

    if getattr(error, "errno", None) == errno.ENOSPC:
        return "no space left on device"
    if getattr(error, "errno", None) == errno.EDQUOT:
        return "disk quota exceeded"
    return one_line(getattr(error, "strerror", None) or error)


def quote(value: object, limit: int = 80) -> str:
    """`repr(value)` for an error message, capped: a YAML alias bomb or a 10 MB string costs
    microseconds here (reprlib stops at a few items per level), not a 300 MB line."""
    import reprlib

    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother, short.maxlong = 3, limit, limit, 40
    try:
        text = short.repr(value)
    except Exception:  # noqa: BLE001 - a repr that fails must not hide the real error
        text = f"<{type(value).__name__}>"
    return one_line(text, limit)


def is_native_panic(error: BaseException) -> bool:
    """A panic of a Rust library through pyo3 (the tokenizers library's): `PanicException`
    derives from BaseException, not Exception, so `except Exception` lets it through."""
    return type(error).__name__ == "PanicException"
