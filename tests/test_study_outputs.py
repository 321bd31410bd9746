"""What a reader of the study sees: progress bars where people wait (and none in headless runs),
every saved figure shown in its notebook cell, and results written by the run (summary.md)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from medclip_nb.paths import repo_root
from medclip_nb.phantom import generate_phantom
from medclip_nb.progress import PlainProgress, progress, progress_disabled
from medclip_nb.study.summary import summary_markdown, write_summary

NOTEBOOKS = sorted((repo_root() / "notebooks").glob("0*.ipynb"))


def read_notebook(path):
    """The notebook as nbformat reads it; the test is skipped where Jupyter's packages are absent (a
    GPU machine's own python: benchmarks/gpu_check.sh runs the suite there)."""
    nbformat = pytest.importorskip("nbformat")
    return nbformat.read(path, as_version=4)


# ---- progress bars ---------------------------------------------------------------------------------
def test_progress_is_on_unless_the_environment_turns_it_off(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert not progress_disabled() and not progress(range(3)).silent  # pytest's stderr: plain lines
    monkeypatch.setenv("TQDM_DISABLE", "1")
    bar = progress(range(3))  # headless: no bar, the plain lines of long steps only
    assert progress_disabled() and isinstance(bar, PlainProgress) and not bar.silent


def test_notebooks_get_the_widget(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.setattr("medclip_nb.progress._in_notebook", lambda: True)
    bar = progress(range(3), desc="epoch")
    assert not isinstance(bar, PlainProgress) and not bar.disable


@pytest.mark.parametrize("bars_off", [False, True])
def test_phantom_generation_shows_a_bar_only_in_interactive_runs(tmp_path, monkeypatch, capsys, bars_off):
    if bars_off:
        monkeypatch.setenv("TQDM_DISABLE", "1")
        monkeypatch.setenv("TQDM_MININTERVAL", "30")  # a short step then prints nothing
    else:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    generate_phantom(tmp_path / "p", studies=6, size=32)
    err = capsys.readouterr().err
    if bars_off:
        assert "phantom" not in err
    else:
        assert re.search(r"phantom: 6/6 study \(100%\), done in", err), err


needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="no make here (a GPU machine's image)")


@needs_make
def test_headless_make_targets_turn_bars_off_from_outside():
    """`make study`, `make test` and `make nbval` run papermill/pytest with TQDM_DISABLE=1 set."""
    run = subprocess.run(["make", "-n", "-B", "study", "test", "nbval", "ablation"], cwd=repo_root(),
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    runners = [line for line in run.stdout.splitlines() if "bin/papermill " in line or "-m pytest" in line]
    assert len(runners) >= 6, run.stdout
    for line in runners:
        assert "TQDM_DISABLE=1" in line, line
    # nbval runs twice in make test: this CPU's kernels, then PyTorch's unvectorised ones.
    assert sum("ATEN_CPU_CAPABILITY=default" in line and "--nbval" in line for line in runners) == 2


def test_no_notebook_turns_bars_off_itself():
    for path in NOTEBOOKS:
        nb = read_notebook(path)
        assert not any("TQDM_DISABLE" in c.source for c in nb.cells), path.name


# ---- figures shown inline ----------------------------------------------------------------------------
def _image_outputs(cell) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_notebooks_show_every_figure_they_save(path):
    nb = read_notebook(path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not any("save_figure(" in c.source for c in code), "save_figure only saves: use study.show_figure"
    for cell in code:
        assert _image_outputs(cell) == cell.source.count("show_figure("), cell.source[:200]
    shown = sum(_image_outputs(c) for c in code)
    assert shown >= (5 if path.stem.startswith("04") else 1)
    assert path.stat().st_size < 2_000_000, f"{path.name} is {path.stat().st_size} bytes"


@needs_make
def test_lab_allows_root():
    run = subprocess.run(["make", "-n", "lab"], cwd=repo_root(), capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "--allow-root" in run.stdout and "id -u" in run.stdout


# ---- summary.md written from metrics.json ---------------------------------------------------------
METRICS = {
    "default": {
        "zero_shot_5x200": {"mean": {"accuracy": 0.8125, "accuracy_ci": [0.78, 0.84], "macro_f1": 0.8},
                            "max": {"accuracy": 0.75},
                            "n_per_class": {"Atelectasis": 200, "Edema": 200}},
        "zero_shot_multilabel": {"auroc_mean": 0.9},
        "retrieval": {"test": {"image_to_text": {"R@1": 0.05, "R@10": 0.25}, "text_to_image": {"R@10": 0.3}}},
        "linear_probe": {"auroc_mean": 0.95},
    },
    "random init": {"zero_shot_5x200": {"mean": {"accuracy": 0.2}}},
    "ablation": {"seeds": [1, 2, 3], "summary": {"clip": {"zs_acc_mean": {"mean": 0.5, "std": 0.04, "n": 3}}}},
}


def test_summary_tables_come_from_metrics_json(tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(METRICS))
    out = write_summary(metrics, tmp_path / "summary.md", wall_seconds=390, params="params/debug.yaml")
    text = out.read_text()
    assert "| default | 0.812 [0.780, 0.840] | 0.750 | 0.800 | 0.900 | 0.050 | 0.250 | 0.300 | – | 0.950 |" in text
    assert "| random init | 0.200 | – |" in text
    assert "(5x200 zero-shot set: 400 images)" in text
    assert "| clip | 0.500 ± 0.040 |" in text and "over 3 seeds" in text
    assert "wall time: 6.5 min" in text and "params/debug.yaml" in text
    import torch

    assert f"torch {torch.__version__}" in text and "PyTorch CPU kernels" in text
    assert re.search(r"date: \d{4}-\d\d-\d\d \d\d:\d\d", text)


def test_summary_gives_chance_both_protocols_probe_fractions_comparisons_and_provenance(tmp_path):
    default = {**METRICS["default"], "n": {"test": 1000},
               "zero_shot_5x200_gloria": {"rule": "gloria", "n": 400, "prompts_per_class": 10,
                                         "mean": {"accuracy": 0.7, "accuracy_std": 0.02, "accuracy_draws": [0.7] * 5},
                                         "max": {"accuracy": 0.65, "accuracy_std": 0.03}},
               "linear_probe_fractions": {"0.01": {"fraction": 0.01, "n_train": 27, "auroc_mean": 0.8,
                                                   "auroc_mean_ci": [0.78, 0.82]},
                                          "1": {"fraction": 1.0, "n_train": 2688, "auroc_mean": 0.95,
                                                "auroc_mean_ci": None}}}
    metrics = {"default": default, "random init": METRICS["random init"],
               "paired_comparisons": [{"reference": "default", "against": "random init",
                                       "metric": "zero-shot accuracy (prompt mean)", "difference": 0.6,
                                       "ci": [0.55, 0.65], "resolved": True, "n": 400}],
               "provenance": {"date": "2026-12-05T10:00:00+00:00", "git": {"commit": "0123456789abcdef", "dirty": True},
                              "config": {"batch_size": 32}}}
    text = summary_markdown(metrics)
    assert "| chance (guessing) | 0.200 | 0.200 | 0.200 | 0.500 | 0.001 | 0.010 | 0.010 | 0.200 | 0.500 |" in text
    assert "test split: 1000 images" in text
    assert "| default | 0.812 [0.780, 0.840] | 0.750 | 0.700 ± 0.020 | 0.650 ± 0.030 |" in text
    assert "5 seeded draws" in text and "GLoRIA's rule: 400 images" in text and "Chance is 0.200 for all" in text
    assert "| default | 0.800 [0.780, 0.820] | 0.950 |" in text and "1% labels (n=27)" in text
    assert ("| default minus random init, zero-shot accuracy (prompt mean) | 0.600 [0.550, 0.650] | "
            "– | resolved: default higher | 400 |") in text  # no Holm p in this entry: shown as –
    assert "git commit 0123456789ab with uncommitted changes" in text
    assert "| provenance |" not in text and "| paired_comparisons |" not in text


def test_summary_without_models_or_ablation_is_still_a_page():
    text = summary_markdown({})
    assert text.startswith("# Results of this study run") and "| model |" not in text


@pytest.mark.parametrize("content, message", [(None, "no metrics.json"), ("{not json", "not valid JSON"),
                                               ("[1, 2]", "must hold a JSON object")])
def test_summary_of_a_bad_metrics_file_is_one_line_exit_2(tmp_path, content, message):
    metrics = tmp_path / "metrics.json"
    if content is not None:
        metrics.write_text(content)
    run = subprocess.run([sys.executable, "-m", "medclip_nb", "summary", "--metrics", str(metrics),
                          "--out", str(tmp_path / "summary.md")], cwd=repo_root(), capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2 and message in run.stderr and str(metrics) in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and not (tmp_path / "summary.md").exists()


def test_record_models_drops_entries_of_baselines_not_evaluated(tmp_path):
    from medclip_nb.config import Config
    from medclip_nb.study import record_models, update_metrics

    cfg = Config(reports_dir=str(tmp_path))
    for key in ("default", "random init", "simple (seed)", "ablation"):
        update_metrics(cfg, key, {"from": "an earlier run"})
    update_metrics(cfg, "paired_comparisons", [{"from": "an earlier run"}])
    path = record_models(cfg, {"default": {"from": "this run"}, "random init": {"from": "this run"}})
    data = json.loads(path.read_text())
    assert set(data.pop("provenance")) >= {"config", "date", "git", "packages"}
    assert data == {"default": {"from": "this run"}, "random init": {"from": "this run"},
                    "ablation": {"from": "an earlier run"}}


def test_metrics_json_records_config_commit_date_and_versions(tmp_path):
    import subprocess as sp

    from medclip_nb.config import Config
    from medclip_nb.study import record_models

    cfg = Config(reports_dir=str(tmp_path), batch_size=12)
    provenance = json.loads(record_models(cfg, {"default": {}}).read_text())["provenance"]
    assert provenance["config"] == json.loads(json.dumps(cfg.to_dict()))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", provenance["date"])
    import numpy

    assert provenance["packages"]["numpy"] == numpy.__version__ and provenance["packages"]["torch"]
    head = sp.run(["git", "-C", str(repo_root()), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode == 0:  # a git checkout (CI's clean clone is one)
        assert provenance["git"]["commit"] == head.stdout.strip() and provenance["git"]["dirty"] in (True, False)
    else:
        assert provenance["git"] == {"commit": None, "dirty": None}
