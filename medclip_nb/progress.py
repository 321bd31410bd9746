"""One progress display for every long step: training epochs, import, tokenizer, phantom,
store build, embedding, evaluation.

In a Jupyter kernel: tqdm's notebook widget. On a terminal: a tqdm bar. Otherwise (a log file,
a batch job, papermill): a plain line on stderr at most every ``TQDM_MININTERVAL`` seconds
(default 10) and one when the step ends, so a log shows that a step is alive without
carriage-return noise. ``TQDM_DISABLE=1`` (headless runs: `make study`, `make test`) turns the
bars off but keeps the plain lines of long steps: a step prints a line every
``TQDM_MININTERVAL`` seconds of work and its closing line only when it printed one, so a short
step prints nothing (stored notebook outputs stay free of timings) and a long one shows it is
alive. ``TQDM_MININTERVAL=inf`` silences even those. Both are read at each call (tqdm reads
them only once, at import), so a notebook or a test can set them at any time; no notebook sets
them itself.

`working(desc)` covers a step no bar can count (a model fit, t-SNE): while it runs, a line
every interval in which nothing else printed one. Intervals count from the latest line of any
display, so one step ending quietly just before the next begins leaves no longer silence.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

_OFF = ("1", "true", "yes")
_last_line = [0.0]  # time.monotonic() of the latest line any display printed


def progress_disabled() -> bool:
    """Whether the environment turns the bars off (TQDM_DISABLE)."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() in _OFF


def _interval() -> float:
    try:
        return max(0.1, float(os.environ.get("TQDM_MININTERVAL", "10")))
    except ValueError:
        return 10.0


def duration(seconds: float) -> str:
    """'45 s', '12 min', '2.5 h'."""
    if not math.isfinite(seconds):
        return "?"
    if seconds < 100:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 6000 else f"{seconds / 3600:.1f} h"


def say_progress(text: str, stream=None) -> None:
    """Print one progress line on stderr (and note when, for `working`)."""
    _last_line[0] = time.monotonic()
    print(text, file=stream or sys.stderr, flush=True)


class PlainProgress:
    """tqdm's small interface (``update``, ``close``, iteration, ``n``) as periodic lines.

    `silent`: no line at all; `quiet_when_short`: the closing line only after a periodic one;
    `heartbeat`: also a line when an interval passes without an update (a slow batch), from a
    thread that `close()` stops, so the caller must close it (try/finally or `with`)."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, silent: bool = False, stream=None,
                 quiet_when_short: bool = False, heartbeat: bool = False):
        self.iterable, self.desc, self.unit, self.silent = iterable, desc, unit, silent
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.n, self._initial = total, int(initial), int(initial)
        self._stream = stream
        self._start = time.monotonic()
        self._last = _last_line[0] or self._start  # intervals count from the latest line of any display
        self._interval = _interval()
        self._closed = False
        self._quiet_when_short, self._printed = quiet_when_short, False
        self.postfix = ""
        self._stop = threading.Event()
        if heartbeat and not silent and math.isfinite(self._interval):
            threading.Thread(target=self._beat, name=f"progress: {desc}", daemon=True).start()

    def _beat(self) -> None:
        while not self._stop.wait(min(self._interval / 4, 1.0)):
            now = time.monotonic()
            if now - max(self._last, _last_line[0]) >= self._interval:
                self._last = now
                self._line(final=False)

    def _line(self, final: bool) -> None:
        elapsed = time.monotonic() - self._start
        done = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = (self.n - self._initial) / elapsed if elapsed > 0 else 0.0
        if final:
            tail = f"done in {elapsed:.1f} s"
        else:
            tail = f"{elapsed:.0f} s, {rate:.0f} {self.unit}/s" if rate >= 10 else \
                f"{elapsed:.0f} s, {rate:.2g} {self.unit}/s"
            if self.total and rate > 0:
                tail += f", ETA {duration((self.total - self.n) / rate)}"
        extra = f", {self.postfix}" if self.postfix else ""
        self._printed = True
        say_progress(f"{self.desc}: {done} {self.unit}{share}, {tail}{extra}", self._stream)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **values) -> None:
        """tqdm's set_postfix: the values are shown at the end of the next line."""
        items = {**(ordered_dict or {}), **values}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if not self.silent and now - max(self._last, _last_line[0]) >= self._interval:
            self._last = now
            self._line(final=False)

    def close(self) -> None:
        self._stop.set()
        if not self._closed:
            self._closed = True
            if not self.silent and (self._printed or not self._quiet_when_short):
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


@contextmanager
def working(desc: str, *, disable: bool = False):
    """A line whenever `TQDM_MININTERVAL` seconds pass without a line of any display, while the
    body runs: '<desc>: working, 40 s'. For steps no bar can count; nothing when it is short."""
    interval = _interval()
    if disable or not math.isfinite(interval):
        yield
        return
    stop, start = threading.Event(), time.monotonic()
    since = _last_line[0] or start  # intervals count from the latest line of any display

    def beat() -> None:
        while not stop.wait(min(interval / 4, 1.0)):
            now = time.monotonic()
            if now - max(since, _last_line[0]) >= interval:
                say_progress(f"{desc}: working, {duration(now - start)}")

    thread = threading.Thread(target=beat, name=f"progress: {desc}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             initial: int = 0, disable: bool = False, leave: bool = True, heartbeat: bool = False) -> Any:
    """A notebook widget in Jupyter, a tqdm bar on a terminal, else a ``PlainProgress``; with
    ``TQDM_DISABLE`` plain lines of long steps only; silent with ``disable``. Use it like tqdm:
    wrap an iterable, or call ``update(n)``, ``set_postfix(...)`` and ``close()``. `heartbeat`
    (plain lines only): a line per interval even while one update takes longer; close it."""
    if disable or progress_disabled():
        return PlainProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, silent=disable,
                             quiet_when_short=True, heartbeat=heartbeat)
    if _in_notebook() or sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, mininterval=0.5,
                    dynamic_ncols=True, leave=leave, disable=False)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, heartbeat=heartbeat)
