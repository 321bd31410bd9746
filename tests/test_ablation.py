"""The ablation's statistics, tables and readings on hand-made numbers (no training): Student t
intervals over seeds, differences paired by seed, Holm per table, "resolved", the data-efficiency grid
(end points, learning curves, flattening, steps to reach, MedCLIP's claim)."""

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
from medclip_nb.study.ablation import DATA_EFFICIENCY_ARMS, curve_steps, run_config
from medclip_nb.study.ablation_tables import (
    ablation_report,
    ablation_table,
    comparison_rows,
    curve_rows,
    data_efficiency_table,
    reach_rows,
)
from medclip_nb.study.data_efficiency import first_reach
from medclip_nb.study.figures import ablation_figure, learning_curves_figure
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


STEPS = [20, 40, 60, 80]
# The grid's runs: (arm, fraction, n_train, end-point shift against clip's base, curve shape to the end point).
GRID = [("clip", 1.0, 666, 0.0), ("clip", 0.3, 201, -0.08), ("clip", 0.1, 67, -0.20),
        ("medclip", 1.0, 666, 0.0), ("medclip", 0.3, 201, -0.07), ("medclip", 0.1, 67, -0.19),
        ("medclip+decoupled", 0.3, 201, -0.03), ("medclip+decoupled", 0.1, 67, -0.08)]
NOISE = [0.004, -0.006, 0.002, 0.005, -0.003]  # per seed, per arm: paired differences are not exact


def _grid_run(arm, fraction, n_train, shift, seed):
    end = CLIP[seed] + shift + (0 if arm == "clip" else NOISE[(seed + len(arm)) % 5])
    curve = [end - 0.24, end - 0.10, end - 0.004, end]  # still rising at 40, flat from 60 to 80
    return {**_run(arm, seed, end, fraction, n_train), "n_unpaired_images": 666 - n_train if "+" in arm else 0,
            "n_unpaired_texts": 4 * (666 - n_train) if "+" in arm else 0, "curve_steps": STEPS, "curve": curve}


def data_efficiency_runs() -> list[dict]:
    return [_grid_run(*cell, seed) for cell in GRID for seed in SEEDS]
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
    assert "- medclip - clip: zero-shot accuracy +0.040 [+0.020, +0.060] (Holm p 0.029, resolved: higher)" in text
    assert f"- siglip - clip: zero-shot accuracy +0.002 [-0.025, +0.029] (Holm p 1.000, {NOT_RESOLVED})" in text
    assert "Smallest difference this table could resolve (Holm over its 6 comparisons" in text
    assert "- Resolved: medclip above clip on zero-shot accuracy." in text
    assert "siglip vs clip on zero-shot accuracy" in text.split("Not resolved")[1]
    assert "100 steps of 32 pairs" in text and "5 seeds" in text
    table = ablation_table(entry)
    assert list(table.index) == ["siglip", "medclip", "clip"]
    assert table.loc["medclip", "zero-shot accuracy - clip"] == \
        "+0.040 [+0.020, +0.060] (resolved: higher, Holm p 0.029)"
    assert table.loc["siglip", "zero-shot accuracy - clip"].endswith("(not resolved, Holm p 1.000)")
    assert table.loc["clip", "zero-shot accuracy - clip"] == "(reference)" and table.loc["clip", "seeds"] == "5"


def test_verdict_wording():
    assert verdict({"difference": 0.1, "ci": [0.05, 0.15], "resolved": True}) == "resolved: higher"
    assert verdict({"difference": -0.1, "ci": [-0.15, -0.05], "resolved": True}) == "resolved: lower"
    assert verdict({"difference": 0.01, "ci": [-0.05, 0.07], "resolved": False}) == NOT_RESOLVED
    assert verdict({"difference": 0.01, "ci": None, "resolved": None}).startswith("no interval")


# ---- data efficiency ---------------------------------------------------------------------------------------
def entry_of(runs=None, **cfg):
    return data_efficiency_entry(pd.DataFrame(runs or data_efficiency_runs()),
                                 Config(max_steps=80, **cfg), arms=["clip", "medclip", "medclip+decoupled"])


def test_end_points_and_curves_per_arm_and_fraction():
    entry = entry_of()
    assert entry["fractions"] == [0.1, 0.3, 1.0] and entry["seeds"] == SEEDS
    assert entry["arms"] == ["clip", "medclip", "medclip+decoupled"] and entry["decoupled"] == ["medclip+decoupled"]
    clip = entry["table"]["clip"]
    assert clip["0.1"]["n_train"] == 67 and clip["0.1"]["n"] == 5
    assert clip["1"]["mean"] == pytest.approx(sum(CLIP) / 5, abs=1e-4)  # metrics.json keeps 4 digits
    assert clip["1"]["ci"] == pytest.approx(t_interval(CLIP), abs=1e-4)
    # On all the pairs the decoupled arm is medclip's own runs (nothing left out to decouple).
    assert entry["table"]["medclip+decoupled"]["1"] == entry["table"]["medclip"]["1"]
    assert entry["same_at_full"] == {"medclip+decoupled": "medclip"}
    assert entry["table"]["medclip+decoupled"]["0.1"]["n_unpaired_images"] == 599
    cell = entry["curves"]["clip"]["1"]
    assert cell["steps"] == STEPS and cell["points"][-1]["mean"] == pytest.approx(clip["1"]["mean"])
    assert cell["points"][0]["mean"] == pytest.approx(sum(CLIP) / 5 - 0.24, abs=1e-4)
    assert entry["budget"]["compared_at"] == "equal steps" and entry["budget"]["max_steps"] == 80


def test_each_table_is_one_holm_family():
    entry = entry_of()
    endpoint, claims = entry["endpoint_comparisons"], entry["claim_comparisons"]
    # Each arm minus clip at each fraction, the decoupled arm not again on all the pairs.
    assert [(c["comparison"], c["fraction"]) for c in endpoint] == [
        ("medclip - clip", "0.1"), ("medclip+decoupled - clip", "0.1"), ("medclip - clip", "0.3"),
        ("medclip+decoupled - clip", "0.3"), ("medclip - clip", "1")]
    assert [c["kind"] for c in claims] == ["what the decoupled items add"] * 2 + ["gap change with fewer pairs"] * 2
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    for family in (endpoint, claims):
        assert all(c["m"] == len(family) for c in family)
        expected = multitest.multipletests([c["p"] for c in family], method="holm")[1]
        assert [c["p_holm"] for c in family] == pytest.approx(list(expected), abs=1e-3)  # from p at 4 digits
        assert [c["resolved"] for c in family] == [bool(q < 0.05) for q in expected]
        assert all(c["smallest_resolvable"] is not None and c["smallest_resolvable"] >= 0 for c in family)
    decoupled_gain = next(c for c in endpoint
                          if c["comparison"] == "medclip+decoupled - clip" and c["fraction"] == "0.1")
    assert decoupled_gain["difference"] == pytest.approx(0.12, abs=0.01) and decoupled_gain["resolved"] is True
    gap = claims[-1]
    assert gap["comparison"] == "(medclip+decoupled - clip) at 10% minus at 100%" and gap["resolved"] is True
    assert gap["difference"] == pytest.approx(0.12, abs=0.01)


def test_flattening_and_steps_to_reach():
    entry = entry_of()
    flat = entry["flattened"]
    assert flat["steps"] == [60, 80] and flat["flattened"] is True  # 0.004 apart, intervals of +-0.1
    assert first_reach([20, 40, 60], [0.3, 0.5, 0.6], 0.4) == pytest.approx(30.0)
    assert first_reach([20, 40], [0.5, 0.6], 0.4) == 20.0 and first_reach([20, 40], [0.1, 0.2], 0.4) is None
    target = entry["target_accuracy"]
    assert target == pytest.approx(round(0.9 * sum(CLIP) / 5, 3))
    assert entry["target_source"] == "90% of clip's end point on 100% of the pairs"
    clip_full = entry["steps_to_reach"]["clip"]["1"]
    assert clip_full["reached"] == 4 and 40 < clip_full["median"] < 60  # seed 2 ends at 0.52, below 0.547
    assert entry["steps_to_reach"]["clip"]["0.1"]["reached"] < 5  # 0.20 below: most seeds never get there
    fixed = entry_of(ablation_target_accuracy=0.5)
    assert fixed["target_accuracy"] == 0.5 and fixed["target_source"] == "ablation_target_accuracy"
    unflat = [dict(r, curve=[*r["curve"][:3], r["curve"][3] + 0.3]) if r["variant"] == "clip" and
              r["train_fraction"] == 1.0 else r for r in data_efficiency_runs()]
    assert entry_of(unflat)["flattened"]["flattened"] is False
    assert "has NOT flattened" in entry_of(unflat)["reading"]


def test_the_reading_says_what_was_tested_and_whether_the_claim_holds():
    text = entry_of()["reading"]
    assert "medclip+decoupled: the pairs + the left-out patients' images (image-only)" in text
    assert ("- Decoupled data: medclip+decoupled at 10%, 30% of the pairs (at 10% 599 image-only and 2396 "
            "text-only") in text
    assert "80 optimizer steps of 32 pairs" in text and "compared at equal steps" in text and "5 seeds" in text
    assert "clip on all the pairs has flattened" in text
    assert ("MedCLIP's claim for medclip+decoupled (decoupled soft targets beat clip, more so with fewer pairs): "
            "beats clip at 10%: holds; more so than on all the pairs: holds; overall: holds") in text
    assert "Not tested here: MIMIC-CXR or CheXpert images" in text
    # The same runs with the decoupled arm below clip at 10 %: the claim fails.
    worse = [dict(r, zs_acc_mean=r["zs_acc_mean"] - 0.25) if r["variant"] == "medclip+decoupled" and
             r["train_fraction"] == 0.1 else r for r in data_efficiency_runs()]
    assert "beats clip at 10%: fails" in entry_of(worse)["reading"] and "overall: fails" in entry_of(worse)["reading"]
    # A gain that changes sign from seed to seed: not resolved, and the reading says so.
    swing = [dict(r, zs_acc_mean=r["zs_acc_mean"] - 0.12 + (0.1 if r["seed"] % 2 else -0.1))
             if r["variant"] == "medclip+decoupled" and r["train_fraction"] == 0.1 else r
             for r in data_efficiency_runs()]
    assert "overall: unresolved at this power (smallest resolvable differences" in entry_of(swing)["reading"]


def test_collapsed_runs_are_counted_per_cell_and_named_in_the_reading():
    from medclip_nb.evaluate import top_class_share

    assert top_class_share([[2, 0], [0, 2]]) == 0.5 and top_class_share([[2, 0], [2, 0]]) == 1.0
    assert top_class_share([[0, 0], [0, 0]]) is None and top_class_share(None) is None
    # Without the share (older runs) nothing is said; with it, each cell counts its collapsed seeds.
    assert entry_of()["table"]["medclip"]["1"]["collapsed"] is None and "Collapse" not in entry_of()["reading"]
    shared = [dict(r, zs_top_share=0.97 if r["variant"] == "medclip" and r["seed"] < 3 else 0.25)
              for r in data_efficiency_runs()]
    entry = entry_of(shared)
    assert entry["table"]["medclip"]["0.1"]["collapsed"] == 3 and entry["table"]["clip"]["1"]["collapsed"] == 0
    assert entry["table"]["medclip+decoupled"]["1"]["collapsed"] == 3  # medclip's own runs on all the pairs
    assert "- Collapse: medclip at 10% (3/5 seeds); medclip at 30% (3/5 seeds); medclip at 100% (3/5 seeds); " \
        "medclip+decoupled at 100% (3/5 seeds) gave one class" in entry["reading"]
    calm = entry_of([dict(r, zs_top_share=0.25) for r in data_efficiency_runs()])
    assert "- Collapse: no run collapsed" in calm["reading"]
    assert "medclip+decoupled (decoupled soft targets beat clip, more so with fewer pairs): beats clip at 10%: " \
        "holds; more so than on all the pairs: holds; overall: holds" in calm["reading"]
    # The claim's "more so than on all the pairs" compares with the plain arm's runs on all the pairs: when
    # those collapsed, that part is not decided, and neither is the claim.
    full_collapsed = [dict(r, zs_top_share=0.97 if r["variant"] == "medclip" and r["train_fraction"] == 1.0 else 0.25)
                      for r in data_efficiency_runs()]
    text = entry_of(full_collapsed)["reading"]
    assert "beats clip at 10%: holds; more so than on all the pairs: holds on paper, not decided: it rests on " \
        "collapsed runs (medclip+decoupled at 100%); overall: not decided: a part rests on collapsed runs" in text


def test_tables_markdown_and_figure_come_from_the_entry(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    entry = entry_of()
    table = data_efficiency_table(entry)
    assert list(table.index) == ["clip", "medclip", "medclip+decoupled"]
    assert list(table.columns) == ["10% (67 pairs)", "30% (201 pairs)", "100% (666 pairs)"]
    rows = comparison_rows(entry["endpoint_comparisons"])
    assert list(rows)[1] == "medclip+decoupled - clip @ 10%" and "Holm p (m=5)" in rows["medclip - clip @ 10%"]
    assert "medclip+decoupled @ 100%" not in curve_rows(entry) and list(curve_rows(entry)["clip @ 10%"]) == \
        ["step 20", "step 40", "step 60", "step 80"]
    assert reach_rows(entry)["clip"]["100% (666 pairs)"].endswith("(4/5)")
    figure = learning_curves_figure(entry)
    axes = figure.axes
    assert len(axes) == 3 and axes[0].get_ylabel().startswith("zero-shot accuracy") and axes[0].get_xlabel()
    assert any(list(line.get_ydata()) == [0.2, 0.2] for line in axes[0].get_lines())  # the chance line
    figure.savefig(tmp_path / "f.png")
    ablation = ablation_entry(pd.DataFrame(hand_made_runs()), Config(max_steps=100))
    ablation_figure(ablation).savefig(tmp_path / "a.png")
    report = ablation_report({"ablation": ablation, "data_efficiency": entry})
    assert "| medclip | 5 | 0.648 [0.557, 0.739] |" in report and "(resolved: higher, Holm p" in report
    assert "## Data efficiency: end points" in report and "### Learning curves" in report
    assert "### MedCLIP's claim" in report and "### Steps to reach" in report
    page = summary_markdown({"ablation": ablation, "data_efficiency": entry})
    assert "## Ablation (5 seeds, 100 steps each" in page and "## Data efficiency" in page
    assert "## Models" not in page  # the two entries are not models


def test_entries_read_back_from_metrics_json_keep_their_order_and_reading():
    ablation = ablation_entry(pd.DataFrame(hand_made_runs()), Config(max_steps=100))
    efficiency = entry_of()
    stored = json.loads(json.dumps({"ablation": ablation, "data_efficiency": efficiency}, sort_keys=True))
    assert ablation_reading(stored["ablation"]) == ablation["reading"]
    assert data_efficiency_reading(stored["data_efficiency"]) == efficiency["reading"]
    assert list(ablation_table(stored["ablation"]).index) == ["siglip", "medclip", "clip"]
    assert ablation_report(stored) == ablation_report({"ablation": ablation, "data_efficiency": efficiency})


# ---- the plan and the budget -------------------------------------------------------------------------------
def test_plan_trains_each_run_once_and_the_decoupled_arms_below_all_the_pairs():
    variants = {v: VARIANTS[v] for v in ("clip", "medclip", "medclip_cosine")}
    plan = planned_runs(SEEDS, variants, fractions=[0.1, 0.3, 1.0], arms=DATA_EFFICIENCY_ARMS)
    assert len(plan) == len(set(plan)) == 3 * 5 + 5 * 2 * 5  # 13 cells x 5 seeds
    assert {(v, f) for v, _, f in plan} == {*((v, 1.0) for v in variants),
                                            *((a, f) for a in DATA_EFFICIENCY_ARMS for f in (0.1, 0.3))}
    assert all(len([p for p in plan if p[0] == v and p[2] == f]) == 5 for v, _, f in plan)
    with_variants = planned_runs(SEEDS, VARIANTS, fractions=[0.1, 0.3, 1.0])
    assert len(with_variants) == 5 * 5 + 5 * 2 * 5 and planned_runs(SEEDS, VARIANTS) == \
        [(v, s, 1.0) for v in VARIANTS for s in SEEDS]


def test_every_run_has_the_same_step_budget_and_its_curve_points(tmp_path):
    cfg = Config(max_steps=120, num_epochs=3, early_stopping_patience=5, ablation_curve_points=[0.25, 0.5])
    assert curve_steps(cfg) == [30, 60, 120]
    run = run_config(cfg, {"loss": "siglip"}, 4, 0.1, tmp_path / "r")
    assert (run.max_steps, run.num_epochs, run.early_stopping_patience) == (120, 120, 0)
    assert (run.loss, run.seed, run.train_fraction, run.resume_from) == ("siglip", 4, 0.1, None)
    assert (run.checkpoint_steps, run.epoch_checkpoints, run.epoch_validation) == ([30, 60], False, False)
    with pytest.raises(ConfigError, match="'max_steps'"):
        run_config(Config(), {}, 0, 1.0, tmp_path / "r")


def test_the_grid_keys_are_checked_before_any_run():
    from medclip_nb.config import from_dict

    assert from_dict({"checkpoint_steps": "10,20"}).checkpoint_steps == [10, 20]  # a flag's list
    for bad in ({"checkpoint_steps": [0]}, {"checkpoint_steps": [5, 5]}, {"ablation_variants": ["siglip"]},
                {"ablation_variants": ["clip", "bert"]}, {"ablation_curve_points": [0.5, 1.5]},
                {"ablation_target_accuracy": 1.2}):
        with pytest.raises(ConfigError, match=f"'{next(iter(bad))}'"):
            from_dict(bad)
