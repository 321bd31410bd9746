"""End-to-end runs as a user makes them: the CLI from phantom to metrics.json, and papermill
with a parameter file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medclip_nb.paths import repo_root

pytestmark = pytest.mark.slow

ENV = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}


def run(*args, cwd=None):
    result = subprocess.run([sys.executable, "-m", "medclip_nb", *map(str, args)], capture_output=True,
                            text=True, env=ENV, cwd=cwd)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.fixture(scope="module")
def params_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    params = {
        "phantom_dir": str(root / "phantom"), "phantom_studies": 30, "phantom_size": 64, "phantom_seed": 3,
        "data_path": str(root / "phantom" / "datasets.pkl"), "image_store": "auto",
        "reports_dir": str(root / "reports"), "model_save_path": str(root / "run"),
        "image_size": 32, "resize_size": 40, "model": "simple", "batch_size": 4, "num_epochs": 1,
        "lr": 1.0e-3, "num_workers": 0, "eval_batch_size": 16,
    }
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path, params


def test_cli_from_phantom_to_metrics(params_file, tmp_path):
    path, params = params_file
    out = run("data", "--config", path)
    assert "dataset ready" in out and Path(params["data_path"]).is_file()
    assert any(Path(params["data_path"]).parent.glob("image_store_*/current/images.u8"))  # image_store: auto
    out = run("train", "--config", path)
    assert "Model parameters" in out and "checkpoint_epoch_1.pth" in out
    checkpoint = Path(params["model_save_path"]) / "best.pth"
    out = run("evaluate", "--checkpoint", checkpoint, "--data_path", params["data_path"], "--out", tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    (entry,) = metrics.values()
    assert entry["model"] == "simple"
    assert {"zero_shot_5x200", "zero_shot_multilabel", "retrieval", "linear_probe"} <= set(entry)
    recalls = entry["retrieval"]["test"]["image_to_text"]
    assert 0.0 <= recalls["R@1"] <= recalls["R@5"] <= recalls["R@10"] <= 1.0


def test_cli_reports_a_missing_dataset_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "medclip_nb", "train", "--data_path", tmp_path / "nope.pkl",
                             "--num_workers", "0"], capture_output=True, text=True, env=ENV)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "nope.pkl" in lines[0]


def test_papermill_runs_the_data_notebook_with_a_parameter_file(params_file, tmp_path):
    papermill = pytest.importorskip("papermill")
    path, params = params_file
    output = tmp_path / "01.ipynb"
    papermill.execute_notebook(
        str(repo_root() / "notebooks" / "01_data_inspection.ipynb"), str(output),
        parameters=yaml.safe_load(path.read_text()), cwd=str(tmp_path), kernel_name="python3",
        progress_bar=False,
    )
    notebook = json.loads(output.read_text())
    injected = [c for c in notebook["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and params["phantom_dir"] in "".join(injected[0]["source"])
    figures = Path(params["reports_dir"]) / "figures"
    assert {"01_label_prevalence.png", "01_sample_grid.png"} <= {p.name for p in figures.glob("*.png")}
