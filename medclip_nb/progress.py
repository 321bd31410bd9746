"""Progress bars for the long steps: training epochs, embedding, phantom generation, store build.

tqdm's notebook widgets in Jupyter, a text bar on a terminal. Headless runs (`make study`,
`make test`) set TQDM_DISABLE=1 in the environment, so the bars are off there and stored
notebook outputs stay the same from run to run; no notebook turns them off itself.
"""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress_disabled() -> bool:
    """True when the environment turns progress bars off (TQDM_DISABLE=1/true/yes).

    Read at each call: tqdm reads its TQDM_* variables once, when it is imported, so a
    variable set or cleared later (a notebook, a test) would otherwise be missed.
    """
    return os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes")


def progress_bar(iterable=None, *, disable: bool = False, **options) -> tqdm:
    """A tqdm bar (widget in a notebook), off when `disable` or the environment says so."""
    options.setdefault("mininterval", 0.5 if sys.stderr.isatty() else 5.0)
    options.setdefault("dynamic_ncols", True)
    # Always passed: tqdm's own default came from TQDM_DISABLE as it was when tqdm was imported.
    options["disable"] = disable or progress_disabled()
    return tqdm(iterable, **options)
