"""Progress bars (tqdm) that respect TQDM_DISABLE even when it is set after tqdm was imported."""

from __future__ import annotations

import os
import sys

from tqdm import tqdm


def bars_disabled() -> bool:
    """TQDM_DISABLE=1/true/yes in the environment now."""
    return os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")


def progress_bar(iterable=None, *, disable: bool = False, **options) -> tqdm:
    """`tqdm(iterable, **options)` on stderr, redrawn every 0.5 s on a terminal and every 5 s
    into a log file. `disable` is passed only when the bar is off: tqdm reads TQDM_* variables
    once, at import, and an explicit disable=False would override them."""
    options.setdefault("mininterval", 0.5 if sys.stderr.isatty() else 5.0)
    options.setdefault("dynamic_ncols", True)
    if disable or bars_disabled():
        options["disable"] = True
    return tqdm(iterable, **options)
