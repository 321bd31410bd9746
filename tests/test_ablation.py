"""The ablation's statistics, tables and readings on hand-made numbers (no training): Student t
intervals over seeds, differences paired by seed, "resolved", the data-efficiency table."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from scipy import stats

from medclip_nb.config import Config
from medclip_nb.errors import ConfigError
from medclip_nb.evaluate.intervals import bootstrap_off, mean_interval, paired_t_difference, t_interval
from medclip_nb.study import VARIANTS, ablation_entry, data_efficiency_entry, planned_runs
from medclip_nb.study.ablation import run_config
from medclip_nb.study.ablation_tables import ablation_report, ablation_table, data_efficiency_table
from medclip_nb.study.figures import ablation_figure, data_efficiency_figure
from medclip_nb.study.readings import NOT_RESOLVED, ablation_reading, data_efficiency_reading, verdict
from medclip_nb.study.seed_stats import variant_stats
from medclip_nb.study.summary import summary_markdown

SEEDS = [0, 1, 2, 3, 4]
# Seed effects far larger than the variants' differences: only pairing by seed resolves them.
SEED_EFFECT = [0.00, 0.10, -0.08, 0.05, -0.03]
CLIP = [0.60 + e for e in SEED_EFFECT]
MEDCLIP_GAIN = [0.05, 0.03, 0.04, 0.06, 0.02]  # mean 0.04, sample std 0.0158
SIGLIP_GAIN = [0.02, -0.03, 0.01, -0.01, 0.02]  # mean 0.002: not resolved


def _run(variant, seed, acc, fraction=1.0, n_train=666):
    return {"variant": variant, "seed": seed, "train_fraction": fraction, "n_train": n_train, "zs_acc_mean": acc,
            "i2t_R@10": 0.02 + 0.001 * seed, "probe_auroc": 0.85, "n_5x200": 1000}


def hand_made_runs() -> list[dict]:
    runs = [_run("clip", s, a) for s, a in zip(SEEDS, CLIP)]
    runs += [_run("medclip", s, a + g) for s, a, g in zip(SEEDS, CLIP, MEDCLIP_GAIN)]
    runs += [_run("siglip", s, a + g) for s, a, g in zip(SEEDS, CLIP, SIGLIP_GAIN)]
    return runs[::-1]  # order must not matter: pairs are found by seed


def data_efficiency_runs() -> list[dict]:
    runs = []
    for fraction, n_train, clip_drop, medclip_gain in ((0.1, 67, 0.20, 0.08), (0.3, 200, 0.08, 0.03),
                                                       (1.0, 666, 0.0, 0.0)):
        for seed, base in zip(SEEDS[:3], CLIP):
            runs.append(_run("clip", seed, base - clip_drop, fraction, n_train))
            runs.append(_run("medclip", seed, base - clip_drop + medclip_gain + 0.01 * seed, fraction, n_train))
            runs.append(_run("medclip_cosine", seed, base - clip_drop + 0.01 * (seed - 1), fraction, n_train))
    return runs


# ---- intervals over seeds ------------------------------------------------------------------------------
def test_t_interval_has_the_textbook_value():
    low, high = t_interval([1, 2, 3, 4, 5])
    half = stats.t.ppf(0.975, 4) * math.sqrt(2.5) / math.sqrt(5)  # t(0.975, 4) = 2.776; s = sqrt(2.5)
    assert (low, high) == pytest.approx((3 - half, 3 + half)) and half == pytest.approx(1.9632, abs=1e-4)
    assert t_interval([1.0]) is None and t_interval([]) is None
    assert t_interval([0.5, 0.5, 0.5]) == [0.5, 0.5]
    assert t_interval([1, 2, None, float("nan"), 3, 4, 5]) == pytest.approx([low, high])


def test_paired_difference_pairs_and_resolves():
    medclip = [a + g for a, g in zip(CLIP, MEDCLIP_GAIN)]
    paired = paired_t_difference(medclip, CLIP)
    half = stats.t.ppf(0.975, 4) * 0.0158114 / math.sqrt(5)
    assert paired["difference"] == pytest.approx(0.04) and paired["n"] == 5
    assert paired["ci"] == pytest.approx([0.04 - half, 0.04 + half], abs=1e-6) and paired["resolved"] is True
    # The same numbers unpaired: the two means' t intervals overlap (seed noise swamps the gain).
    a, b = t_interval(medclip), t_interval(CLIP)
    assert a[0] < b[1]
    unresolved = paired_t_difference([a + g for a, g in zip(CLIP, SIGLIP_GAIN)], CLIP)
    assert unresolved["ci"][0] < 0 < unresolved["ci"][1] and unresolved["resolved"] is False
    below = paired_t_difference(CLIP, medclip)
    assert below["resolved"] is True and below["difference"] == pytest.approx(-0.04)
    assert paired_t_difference([0.5], [0.4])["resolved"] is None  # one pair: no interval
    with pytest.raises(ValueError):
        paired_t_difference([1, 2], [1])


def test_bootstrap_off_skips_the_per_image_intervals_inside_the_block_only():
    hits = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    with bootstrap_off():
        assert mean_interval(hits) is None
    assert mean_interval(hits) is not None


# ---- the ablation entry ----------------------------------------------------------------------------------
def test_variant_stats_pair_by_seed_on_a_hand_made_table():
    runs = hand_made_runs()
    runs = [r for r in runs if not (r["variant"] == "siglip" and r["seed"] == 4)]  # one siglip run missing
    out = variant_stats(runs, "clip", ["zs_acc_mean"])
    assert list(out["summary"]) == ["siglip", "medclip", "clip"] and "clip" not in out["paired"]
    clip = out["summary"]["clip"]["zs_acc_mean"]
    assert clip["mean"] == pytest.approx(sum(CLIP) / 5) and clip["n"] == 5
    assert clip["ci"] == pytest.approx(t_interval(CLIP))
    medclip = out["paired"]["medclip"]["zs_acc_mean"]
    assert medclip["difference"] == pytest.approx(0.04) and medclip["resolved"] and medclip["seeds"] == SEEDS
    siglip = out["paired"]["siglip"]["zs_acc_mean"]
    assert siglip["seeds"] == [0, 1, 2, 3] and siglip["difference"] == pytest.approx(sum(SIGLIP_GAIN[:4]) / 4)
    assert siglip["resolved"] is False


def test_entry_reading_and_table_say_what_is_resolved():
    entry = ablation_entry(pd.DataFrame(hand_made_runs()), Config(max_steps=100))
    assert entry["budget"]["max_steps"] == 100 and entry["seeds"] == SEEDS and entry["reference"] == "clip"
    text = entry["reading"]
    assert text == ablation_reading(entry)
    assert "- medclip - clip: zero-shot accuracy +0.040 [+0.020, +0.060] (resolved: higher)" in text
    assert f"- siglip - clip: zero-shot accuracy +0.002 [-0.025, +0.029] ({NOT_RESOLVED})" in text
    assert "- Resolved: medclip above clip on zero-shot accuracy." in text
    assert "siglip vs clip on zero-shot accuracy" in text.split("Not resolved")[1]
    assert "100 steps of 32 pairs" in text and "5 seeds" in text
    table = ablation_table(entry)
    assert list(table.index) == ["siglip", "medclip", "clip"]
    assert table.loc["medclip", "zero-shot accuracy - clip"] == "+0.040 [+0.020, +0.060] (resolved: higher)"
    assert table.loc["siglip", "zero-shot accuracy - clip"].endswith("(not resolved)")
    assert table.loc["clip", "zero-shot accuracy - clip"] == "(reference)" and table.loc["clip", "seeds"] == "5"


def test_verdict_wording():
    assert verdict({"difference": 0.1, "ci": [0.05, 0.15], "resolved": True}) == "resolved: higher"
    assert verdict({"difference": -0.1, "ci": [-0.15, -0.05], "resolved": True}) == "resolved: lower"
    assert verdict({"difference": 0.01, "ci": [-0.05, 0.07], "resolved": False}) == NOT_RESOLVED
    assert verdict({"difference": 0.01, "ci": None, "resolved": None}).startswith("no interval")


# ---- data efficiency ---------------------------------------------------------------------------------------
def test_data_efficiency_table_has_a_row_per_loss_and_a_column_per_fraction():
    entry = data_efficiency_entry(pd.DataFrame(data_efficiency_runs()), Config(max_steps=100))
    assert entry["fractions"] == [0.1, 0.3, 1.0] and entry["seeds"] == [0, 1, 2]
    assert list(entry["table"]) == ["clip", "medclip", "medclip_cosine"]
    assert all(list(row) == ["0.1", "0.3", "1"] for row in entry["table"].values())
    assert entry["table"]["clip"]["0.1"]["n_train"] == 67 and entry["table"]["clip"]["0.1"]["n"] == 3
    gain = entry["paired"]["medclip"]["0.1"]
    assert gain["difference"] == pytest.approx(0.09) and gain["resolved"]
    assert entry["fraction_effect"]["clip"]["difference"] == pytest.approx(-0.20)
    assert entry["gap_change"]["medclip"]["difference"] == pytest.approx(0.08)
    table = data_efficiency_table(entry)
    assert table.shape == (5, 3)
    assert list(table.index) == ["clip", "medclip", "medclip_cosine", "medclip - clip", "medclip_cosine - clip"]
    assert list(table.columns) == ["10% (67 pairs)", "30% (200 pairs)", "100% (666 pairs)"]
    text = entry["reading"]
    assert "- medclip - clip: at 10% +0.090" in text and "as MedCLIP claims" in text
    assert "medclip_cosine: its gap to clip changes by +0.000" in text
    assert "cannot tell whether less data favours medclip_cosine" in text


def test_only_seeds_trained_at_every_fraction_count():
    runs = data_efficiency_runs() + [_run("clip", 3, 0.7), _run("medclip", 3, 0.7)]  # seed 3: fraction 1 only
    entry = data_efficiency_entry(pd.DataFrame(runs), Config(max_steps=100))
    assert entry["seeds"] == [0, 1, 2] and entry["table"]["clip"]["1"]["n"] == 3


def test_figures_and_markdown_come_from_the_entries(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    ablation = ablation_entry(pd.DataFrame(hand_made_runs()), Config(max_steps=100))
    efficiency = data_efficiency_entry(pd.DataFrame(data_efficiency_runs()), Config(max_steps=100))
    for figure in (ablation_figure(ablation), data_efficiency_figure(efficiency)):
        figure.savefig(tmp_path / "f.png")
    metrics = {"ablation": ablation, "data_efficiency": efficiency}
    report = ablation_report(metrics)
    assert "| medclip | 5 | 0.648 [0.557, 0.739] |" in report and "(resolved: higher)" in report
    assert "| loss | 10% (67 pairs) | 30% (200 pairs) | 100% (666 pairs) |" in report
    page = summary_markdown(metrics)
    assert "## Ablation (5 seeds, 100 steps each" in page and "## Data efficiency" in page
    assert "## Models" not in page  # the two entries are not models


def test_entries_read_back_from_metrics_json_keep_their_order_and_reading():
    ablation = ablation_entry(pd.DataFrame(hand_made_runs()), Config(max_steps=100))
    efficiency = data_efficiency_entry(pd.DataFrame(data_efficiency_runs()), Config(max_steps=100))
    stored = json.loads(json.dumps({"ablation": ablation, "data_efficiency": efficiency}, sort_keys=True))
    assert ablation_reading(stored["ablation"]) == ablation["reading"]
    assert data_efficiency_reading(stored["data_efficiency"]) == efficiency["reading"]
    assert list(ablation_table(stored["ablation"]).index) == ["siglip", "medclip", "clip"]
    assert ablation_report(stored) == ablation_report({"ablation": ablation, "data_efficiency": efficiency})


# ---- the plan and the budget -------------------------------------------------------------------------------
def test_plan_trains_each_run_once_and_reuses_the_full_fraction():
    plan = planned_runs(SEEDS, VARIANTS, fractions=[0.1, 0.3, 1.0], fraction_seeds=3)
    assert len(plan) == len(set(plan)) == 5 * 5 + 3 * 2 * 3
    assert sum(f == 1.0 for _, _, f in plan) == 25
    assert {(v, s) for v, s, f in plan if f == 0.1} == {(v, s) for v in ("clip", "medclip", "medclip_cosine")
                                                         for s in (0, 1, 2)}


def test_every_run_has_the_same_step_budget(tmp_path):
    cfg = Config(max_steps=120, num_epochs=3, early_stopping_patience=5)
    run = run_config(cfg, {"loss": "siglip"}, 4, 0.1, tmp_path / "r")
    assert (run.max_steps, run.num_epochs, run.early_stopping_patience) == (120, 120, 0)
    assert (run.loss, run.seed, run.train_fraction, run.resume_from) == ("siglip", 4, 0.1, None)
    with pytest.raises(ConfigError, match="'max_steps'"):
        run_config(Config(), {}, 0, 1.0, tmp_path / "r")
