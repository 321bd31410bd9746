"""medclip-nb: notebook-first MedCLIP-style pretraining on chest X-rays (MIMIC-CXR)."""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable

__version__ = "0.1.0"


def lazy_exports(package: str, public: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` (PEP 562) for a facade whose names load on first use: `public`
    maps each name to the submodule that defines it. The data and text facades use it, so that
    importing one light submodule's names (the MIMIC importer, text cleaning) does not import torch."""

    def __getattr__(name: str) -> Any:
        if name not in public:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(public[name]), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(public))

    return __getattr__, __dir__
