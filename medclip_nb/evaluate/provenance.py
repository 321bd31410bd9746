"""What a metrics.json entry was computed with: the config, the code's git commit (when the
package runs from a git checkout), the date, the machine and the versions of the packages whose
kernels and defaults shape the numbers. `make study`'s summary.md prints them from the file."""

from __future__ import annotations

import datetime as dt
import platform
import subprocess
from importlib import metadata
from typing import Any

from medclip_nb.paths import repo_root

PACKAGES = ("medclip-nb", "torch", "torchvision", "numpy", "scipy", "scikit-learn", "pandas", "tokenizers",
            "safetensors", "Pillow")


def git_commit() -> dict[str, Any]:
    """{"commit": sha or None, "dirty": whether tracked files differ from it (None without git)}."""
    def git(*args: str) -> str | None:
        try:
            run = subprocess.run(["git", "-C", str(repo_root()), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return run.stdout.strip() if run.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def run_provenance(cfg=None) -> dict[str, Any]:
    """The provenance record: date (local, ISO 8601), git commit, Python, machine, package versions
    and, given a Config, its every key."""
    import torch

    record: dict[str, Any] = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git": git_commit(),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, torch CPU kernels {torch.backends.cpu.get_cpu_capability()}",
        "packages": package_versions(),
    }
    if cfg is not None:
        record["config"] = cfg.to_dict()
    return record
