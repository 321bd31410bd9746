"""The README is a front door, and its quick start works line by line.

Every ```bash block of README.md and its ```python block run, in order, in a copy of this
working tree (what a fresh clone holds), against the notebooks' tiny phantom instead of the
study's: `make study` runs with `PARAMS=params/tiny.yaml`, and the paths `params/debug.yaml`
gives (the phantom, the checkpoints) become those `params/tiny.yaml` gives. A path or a command
that goes stale in the README fails here. `make test` is the command running this test: it is
checked to be in the quick start, not run again.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medclip_nb.paths import repo_root

ROOT = repo_root()
README = ROOT / "README.md"
MAX_LINES = 250


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)]


def shell_commands(block: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and blanks dropped."""
    joined = re.sub(r"\\\n\s*", "", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def tiny_paths() -> dict[str, str]:
    """What params/debug.yaml names (the study's phantom and checkpoints) -> what params/tiny.yaml names."""
    debug = yaml.safe_load((ROOT / "params/debug.yaml").read_text())
    tiny = yaml.safe_load((ROOT / "params/tiny.yaml").read_text())
    return {debug[key].rstrip("/") + "/": tiny[key].rstrip("/") + "/" for key in ("phantom_dir", "model_save_path")}


def on_tiny(command: str) -> str:
    for study_path, tiny_path in tiny_paths().items():
        command = command.replace(study_path, tiny_path)
    return command.replace(".venv/bin/python", sys.executable)


# ---- the front door ----------------------------------------------------------------------------------
def test_readme_is_short_and_links_every_reference_page():
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_LINES, f"README.md has {len(text.splitlines())} lines (at most {MAX_LINES})"
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)", text))
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert pages <= linked, f"docs pages the README does not link: {sorted(pages - linked)}"


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a page's headings."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


@pytest.mark.parametrize("page", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_relative_links_point_to_files_and_headings_that_exist(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"\w+://", target):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        assert path.exists(), f"{page.name}: link to a missing file {target}"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path.read_text()), f"{page.name}: no heading for #{anchor} in {path.name}"


# ---- the quick start, line by line ---------------------------------------------------------------------
def fresh_copy(target: Path) -> Path:
    """The files a clone of this working tree holds (tracked, and new ones git does not ignore)."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        source, dest = ROOT / name, target / name
        if not source.exists() and not source.is_symlink():
            continue  # deleted in the working tree
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            os.symlink(os.readlink(source), dest)
        else:
            shutil.copy2(source, dest)
    return target


def run(command: str, cwd: Path, env: dict, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"README command failed: {command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.skipif(shutil.which("git") is None or shutil.which("make") is None, reason="needs git and make")
def test_quick_start_works_line_by_line(tmp_path):
    blocks = code_blocks(README.read_text())
    shell = [command for lang, code in blocks if lang == "bash" for command in shell_commands(code)]
    python = [code for lang, code in blocks if lang == "python"]
    assert shell[:2] == ["make study", "make test"], shell
    assert any("predict" in c for c in shell) and len(python) == 1

    copy = fresh_copy(tmp_path / "clone")
    venv = Path(sys.executable).parent.parent
    env = {**os.environ, "PYTHONPATH": str(copy), "TQDM_MININTERVAL": "inf", "OMP_NUM_THREADS": "1"}
    env.pop("TQDM_DISABLE", None)
    for command in shell:
        if command == "make test":
            continue  # the command running this test
        if command == "make study":
            # The tiny parameters, and the .venv this test runs in (never reinstalled: -o).
            done = run(f"make -o {venv}/.installed study PARAMS=params/tiny.yaml VENV={venv}", copy, env)
            log = done.stdout + done.stderr
            # No papermill warning about a valid key; the kernel's TCP warning is filtered (the Makefile's
            # filter itself is echoed, so look for the warning's own next words).
            assert "Passed unknown parameter:" not in log and "without encryption. All" not in log, log[-3000:]
            assert "summary written: reports/tiny/summary.md" in done.stdout, done.stdout[-2000:]
            for name in ("01_data_inspection", "04_analysis"):
                assert (copy / "reports" / "tiny" / f"{name}.ipynb").is_file()  # the reports_dir of params/tiny.yaml
                assert (copy / "reports" / "tiny" / f"{name}.html").is_file()
            continue
        done = run(on_tiny(command), copy, env)
        if " predict " in command:  # the table's header: 5-way ends in its prediction, multi-label in the positives
            column = "positive" if "--multi-label" in command else "prediction"
            assert done.stdout.splitlines()[0].split()[-1] == column, done.stdout[:500]
        if " retrieve " in command:
            assert re.search(r"^\s+1\s+-?\d\.\d{4}\s", done.stdout, flags=re.M), done.stdout[:500]
    done = run(f"{sys.executable} - <<'EOF'\n{on_tiny(python[0])}\nEOF", copy, env)
    assert "(4, " in done.stdout, done.stdout
