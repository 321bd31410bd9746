"""Notebook parameters are config keys, checked like flags: every parameters cell declares every
key (papermill warns about no valid one), a typo stops the notebook with the CLI's one line, the
usage line works from inside notebooks/, and no stored output holds a path of the writing machine."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

import nbformat
import pytest

from medclip_nb.config import CONFIG_KEYS
from medclip_nb.config_load import PARAMETERS_CELL_MARKER, read_yaml
from medclip_nb.paths import repo_root
from medclip_nb.study.setup import NOTEBOOK_DEFAULTS, parameters_cell_source

NOTEBOOKS = sorted((repo_root() / "notebooks").glob("0*.ipynb"))
REWRITE = 'python -c "from medclip_nb.study.setup import write_parameters_cells as w; w()"'


def parameters_cell(nb):
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1
    return cells[0]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_declares_every_config_key(path):
    cell = parameters_cell(nbformat.read(path, as_version=4))
    assert cell.source.startswith(PARAMETERS_CELL_MARKER)
    names = [t.id for node in ast.parse(cell.source).body for t in node.targets]
    assert sorted(names) == sorted(CONFIG_KEYS), f"{path.name}: rewrite the parameters cells with {REWRITE}"
    assert cell.source == parameters_cell_source(read_yaml(NOTEBOOK_DEFAULTS)), \
        f"{path.name}: its parameters cell is not the one {NOTEBOOK_DEFAULTS} gives; rewrite it with {REWRITE}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_knows_every_config_key(path):
    """papermill's own reading of the cell: 'Passed unknown parameter' never for a valid key."""
    import papermill

    assert set(papermill.inspect_notebook(str(path))) == set(CONFIG_KEYS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_cell_reads_a_parameter_by_its_bare_name(path):
    """After the config cell, values come from `cfg` (a bare name may be `...`, the package default)."""
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code" or "parameters" in cell.metadata.get("tags", []):
            continue
        names = {n.id for n in ast.walk(ast.parse(cell.source)) if isinstance(n, ast.Name)}
        assert not names & set(CONFIG_KEYS), f"{path.name}: {sorted(names & set(CONFIG_KEYS))} in\n{cell.source}"


def test_notebooks_params_is_params():
    link = repo_root() / "notebooks" / "params"
    assert link.is_symlink() and os.readlink(link) == "../params" and (link / "full.yaml").is_file()


def test_usage_line_from_notebooks_with_a_typo_stops_in_the_first_cell(tmp_path):
    """`papermill 03_pretrain.ipynb out.ipynb -f params/X.yaml` from inside notebooks/ finds the file, warns
    about the typo only, and the notebook stops in its config cell with the CLI's one line."""
    out = tmp_path / "out.ipynb"
    run = subprocess.run([sys.executable, "-m", "papermill", "03_pretrain.ipynb", str(out), "-f",
                          "params/tiny.yaml", "-p", "batch_sise", "8", "-k", "python3", "--no-progress-bar"],
                         cwd=repo_root() / "notebooks", capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TQDM_DISABLE": "1"})
    assert run.returncode != 0
    assert re.findall(r"Passed unknown parameter: (\w+)", run.stderr) == ["batch_sise"], run.stderr
    line = "error: notebook parameter: unknown config key 'batch_sise' (did you mean 'batch_size'?)"
    assert run.stderr.strip().splitlines()[-1] == line, run.stderr[-2000:]
    executed = nbformat.read(out, as_version=4)
    failed = [c for c in executed.cells if any(o.output_type == "error" for o in c.get("outputs", []))]
    assert len(failed) == 1 and "notebook_config" in failed[0].source
    assert failed[0].outputs[-1].traceback == [line]


# Where an absolute path of the writing machine would start (POSIX homes and workspaces, Windows drives).
ABSOLUTE = re.compile(r"(?<![\w.~-])(/(home|Users|root|work|tmp|mnt|opt|srv|var|data|private)/|[A-Z]:\\\\)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_outputs_hold_no_absolute_path(path):
    nb = nbformat.read(path, as_version=4)
    root = str(repo_root())
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            texts = [output.get("text", "")] + [v for k, v in output.get("data", {}).items()
                                                if k.startswith("text/") and isinstance(v, str)]
            texts += output.get("traceback", [])
            for text in texts:
                assert root not in text and not ABSOLUTE.search(text), f"{path.name}: {text[:300]}"
