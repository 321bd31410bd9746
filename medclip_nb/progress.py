"""One progress display for every long step: training epochs, import, tokenizer, phantom,
store build, embedding.

In a Jupyter kernel: tqdm's notebook widget. On a terminal: a tqdm bar. Otherwise (a log file,
a batch job, papermill): a plain line on stderr at most every ``TQDM_MININTERVAL`` seconds
(default 10) and one when the step ends, so a log shows that a step is alive without
carriage-return noise. ``TQDM_DISABLE=1`` turns both off; it is read at each call (tqdm itself
reads it only once, at import), so a notebook or a test can set it at any time. Headless runs
(`make study`, `make test`) set it from outside; no notebook sets it itself.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator

_OFF = ("1", "true", "yes")


def progress_disabled() -> bool:
    return os.environ.get("TQDM_DISABLE", "").strip().lower() in _OFF


def _interval() -> float:
    try:
        return max(0.1, float(os.environ.get("TQDM_MININTERVAL", "10")))
    except ValueError:
        return 10.0


class PlainProgress:
    """tqdm's small interface (``update``, ``close``, iteration, ``n``) as periodic lines."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, silent: bool = False, stream=None):
        self.iterable, self.desc, self.unit, self.silent = iterable, desc, unit, silent
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self._initial = total, int(initial), int(initial)
        self._stream = stream or sys.stderr
        self._start = self._last = time.monotonic()
        self._interval = _interval()
        self._closed = False
        self.postfix = ""

    def _line(self, final: bool) -> None:
        elapsed = time.monotonic() - self._start
        done = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = (self.n - self._initial) / elapsed if elapsed > 0 else 0.0
        tail = f"done in {elapsed:.1f} s" if final else f"{elapsed:.0f} s, {rate:.0f} {self.unit}/s"
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {done} {self.unit}{share}, {tail}{extra}", file=self._stream, flush=True)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **values) -> None:
        """tqdm's set_postfix: the values are shown at the end of the next line."""
        items = {**(ordered_dict or {}), **values}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if not self.silent and now - self._last >= self._interval:
            self._last = now
            self._line(final=False)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if not self.silent:
                self._line(final=True)

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             initial: int = 0, disable: bool = False, leave: bool = True) -> Any:
    """A notebook widget in Jupyter, a tqdm bar on a terminal, else a ``PlainProgress``; silent
    with ``disable`` or ``TQDM_DISABLE``. Use it like tqdm: wrap an iterable, or call
    ``update(n)``, ``set_postfix(...)`` and ``close()``."""
    if disable or progress_disabled():
        return PlainProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, silent=True)
    if _in_notebook() or sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, mininterval=0.5,
                    dynamic_ncols=True, leave=leave, disable=False)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, initial=initial)
