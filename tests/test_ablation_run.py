"""Real ablation runs on the tiny phantom: `train_and_score` (what `make ablation` repeats for every
run), its learning-curve checkpoints, and `bench-ablation`, which times one run of each kind."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from medclip_nb.cli import main
from medclip_nb.config import from_dict
from medclip_nb.config_load import load_config
from medclip_nb.evaluate import ZeroShotPoints
from medclip_nb.evaluate.intervals import bootstrap_off
from medclip_nb.evaluate.run import eval_datasets, evaluate_model
from medclip_nb.model import load_model
from medclip_nb.paths import repo_root
from medclip_nb.study.ablation import DATA_EFFICIENCY_ARMS, VARIANTS, planned_runs, run_config, train_and_score
from medclip_nb.tools.ablation_bench import format_rows, plan_counts, planned_run_count, time_ablation_run


@pytest.fixture()
def tiny_cfg(tiny_dataset, tmp_path, one_thread_no_bars):
    return from_dict(dict(
        data_path=str(tiny_dataset), model_save_path=str(tmp_path / "runs"), reports_dir=str(tmp_path / "reports"),
        image_size=32, resize_size=48, model="medclip", vision_backbone="small_cnn", text_layers=1, text_width=32,
        text_heads=2, embed_dim=16, vocab_size=200, max_text_tokens=32, batch_size=4, eval_batch_size=8,
        max_steps=4, num_workers=0, log_every=1, eval_steps=1000, save_steps=1000, seed=3, zeroshot_per_class=2,
        ablation_curve_points=[0.5, 1.0], data_efficiency_fractions=[0.5, 1.0], ablation_seeds=[0],
        ablation_variants=["clip"],
    ))


def test_one_run_trains_its_budget_scores_its_curve_and_keeps_only_its_log(tiny_cfg, tmp_path):
    folder = tmp_path / "runs" / "clip-f1-seed0"
    numbers = train_and_score(run_config(tiny_cfg, {"loss": "clip"}, 0, 1.0, folder))
    assert numbers["steps"] == 4 and numbers["curve_steps"] == [2, 4]
    assert numbers["curve"][-1] == numbers["zs_acc_mean"] and 0 <= numbers["curve"][0] <= 1
    assert numbers["train_seconds"] > 0 and numbers["eval_seconds"] > 0
    assert 0.0 <= numbers["probe_auroc"] <= 1.0
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.jsonl"]  # checkpoints deleted, the log kept
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "val"] == [4]  # one validation: nothing reads it


def test_a_curve_point_is_the_full_evaluations_zero_shot_accuracy(tiny_cfg, tmp_path):
    folder = tmp_path / "runs" / "kept"
    numbers = train_and_score(run_config(tiny_cfg, {"loss": "medclip"}, 1, 0.5, folder), full_evaluation=False,
                              keep_checkpoints=True)
    assert numbers["probe_auroc"] is None and numbers["i2t_R@10"] is None  # zero-shot only below all the pairs
    assert sorted(p.name for p in folder.glob("*.pth")) == ["best.pth", "last.pth", "step_2.pth"]
    model, tokenizer, cfg = load_model(folder / "step_2.pth")
    cfg = cfg.replace(train_fraction=1.0)
    splits, _ = eval_datasets(cfg, tokenizer)
    with bootstrap_off():
        metrics, _ = evaluate_model(model, tokenizer, splits, cfg, "cpu", log=lambda *a: None)
    assert numbers["curve"][0] == metrics["zero_shot_5x200"]["mean"]["accuracy"]
    assert ZeroShotPoints(cfg, tokenizer).accuracy(folder / "step_2.pth")["max"] == \
        pytest.approx(metrics["zero_shot_5x200"]["max"]["accuracy"], abs=5e-5)  # metrics.json keeps 4 digits


def test_the_ablation_trains_the_plan_and_each_decoupled_run_gets_the_left_out_patients(tiny_cfg):
    from medclip_nb.study import ablation

    runs = ablation(tiny_cfg, [0], fractions=[0.5, 1.0], arms=["clip", "medclip+decoupled"], log=lambda *a: None)
    assert [(r.variant, r.train_fraction) for r in runs.itertuples()] == \
        [("clip", 1.0), ("clip", 0.5), ("medclip+decoupled", 0.5)]
    decoupled = runs.iloc[2]
    assert decoupled.n_unpaired_images == runs.iloc[0].n_train - decoupled.n_train and decoupled.n_unpaired_texts > 0
    assert runs.iloc[1].n_unpaired_images == 0 and list(decoupled.curve_steps) == [2, 4]
    assert all(0.2 <= share <= 1.0 for share in runs.zs_top_share)  # 5 classes: at least a fifth
    # Two runs at once, each in its own process with one thread (as this process has): the same rows.
    parallel = ablation(tiny_cfg.replace(ablation_jobs=2), [0], fractions=[0.5, 1.0],
                        arms=["clip", "medclip+decoupled"], log=lambda *a: None)
    timing = ["train_seconds", "eval_seconds", "curve_seconds"]
    pd.testing.assert_frame_equal(parallel.drop(columns=timing), runs.drop(columns=timing))


def test_bench_times_each_kind_and_cleans_up(tiny_cfg, tmp_path):
    rows = time_ablation_run(tiny_cfg, workers=(0,), rounds=1, folder=tmp_path / "bench")
    assert [r["kind"] for r in rows] == ["all pairs", "fewer pairs", "decoupled"]
    assert [r["planned"] for r in rows] == [3, 3, 2]  # medclip and medclip_cosine on all pairs are arms here
    for r in rows:
        assert r["steps"] == 4 and r["rounds"] == 1
        assert r["run_s"] == pytest.approx(r["train_s"] + r["score_s"], abs=0.051)
    assert not list((tmp_path / "bench").rglob("*.pth"))
    table = format_rows(rows).splitlines()
    assert len(table) == 6 and table[1].split()[-3] == "1.00"  # the first kind is the reference
    total = sum(r["planned"] * r["run_s"] for r in rows) / 60
    assert table[4] == f"num_workers 0: the plan's 8 runs come to {total:.1f} min"


def test_the_bench_counts_the_runs_make_ablation_trains():
    cfg = load_config(repo_root() / "params" / "ablation.yaml")
    variants = {v: VARIANTS[v] for v in cfg.ablation_variants}
    plan = planned_runs(cfg.ablation_seeds, variants, cfg.data_efficiency_fractions, DATA_EFFICIENCY_ARMS)
    assert planned_run_count(cfg) == len(plan) == 65  # 13 cells x 5 seeds
    assert plan_counts(cfg) == {"all pairs": 15, "fewer pairs": 30, "decoupled": 20}
    assert len(cfg.ablation_seeds) >= 5 and len(cfg.ablation_curve_points) >= 3


@pytest.mark.parametrize("flag", [["--workers", "two"], ["--workers", "-1"], ["--rounds", "0"]])
def test_bad_bench_flags_exit_2_naming_the_flag(flag, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["bench-ablation", "--config", "params/ablation.yaml", *flag])
    assert stopped.value.code == 2
    assert flag[0] in capsys.readouterr().err
