"""One real ablation run on the tiny phantom: `train_and_score` (what `make ablation` repeats 43
times) and `bench-ablation`, which times it side by side per loader setting."""

from __future__ import annotations

import pytest

from medclip_nb.cli import main
from medclip_nb.config import from_dict
from medclip_nb.config_load import load_config
from medclip_nb.paths import repo_root
from medclip_nb.study.ablation import planned_runs, run_config, train_and_score
from medclip_nb.tools.ablation_bench import format_rows, planned_run_count, time_ablation_run


@pytest.fixture()
def tiny_cfg(tiny_dataset, tmp_path, one_thread_no_bars):
    return from_dict(dict(
        data_path=str(tiny_dataset), model_save_path=str(tmp_path / "runs"), reports_dir=str(tmp_path / "reports"),
        image_size=32, resize_size=48, model="medclip", vision_backbone="small_cnn", text_layers=1, text_width=32,
        text_heads=2, embed_dim=16, vocab_size=200, max_text_tokens=32, batch_size=4, eval_batch_size=8,
        max_steps=3, num_workers=0, log_every=1, eval_steps=1000, save_steps=1000, seed=3, zeroshot_per_class=2,
    ))


def test_one_run_trains_its_budget_scores_it_and_keeps_only_its_log(tiny_cfg, tmp_path):
    folder = tmp_path / "runs" / "clip-f1-seed0"
    numbers = train_and_score(run_config(tiny_cfg, {"loss": "clip"}, 0, 1.0, folder))
    assert numbers["steps"] == 3
    assert numbers["train_seconds"] > 0 and numbers["eval_seconds"] > 0
    assert 0.0 <= numbers["probe_auroc"] <= 1.0
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.jsonl"]  # checkpoints deleted, the log kept


def test_bench_times_each_loader_setting_and_cleans_up(tiny_cfg, tmp_path):
    rows = time_ablation_run(tiny_cfg, workers=(0, 1), rounds=1, folder=tmp_path / "bench")
    assert [r["num_workers"] for r in rows] == [0, 1]
    for r in rows:
        assert r["steps"] == 3 and r["rounds"] == 1
        assert r["run_s"] == pytest.approx(r["train_s"] + r["eval_s"], abs=0.051)
    assert not list((tmp_path / "bench").rglob("*.pth"))
    table = format_rows(rows, runs=43).splitlines()
    assert len(table) == 4 and table[1].split()[5] == "1.00"  # the first setting is the reference
    assert float(table[2].split()[6]) == pytest.approx(43 * rows[1]["run_s"] / 60, abs=0.051)


def test_the_bench_counts_the_runs_make_ablation_trains():
    cfg = load_config(repo_root() / "params" / "ablation.yaml")
    assert planned_run_count(cfg) == 43 == len(planned_runs(cfg.ablation_seeds, {v: {} for v in
                                                              ("simple", "clip", "medclip", "medclip_cosine",
                                                               "siglip")}, cfg.data_efficiency_fractions))


@pytest.mark.parametrize("flag", [["--workers", "two"], ["--workers", "-1"], ["--rounds", "0"]])
def test_bad_bench_flags_exit_2_naming_the_flag(flag, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["bench-ablation", "--config", "params/ablation.yaml", *flag])
    assert stopped.value.code == 2
    assert flag[0] in capsys.readouterr().err
