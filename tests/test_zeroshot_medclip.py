"""MedCLIP's zero-shot procedure and the published 5x200 rules (zeroshot_protocols gloria / medclip), piece by piece."""

from __future__ import annotations

import hashlib
import itertools
import json
import random

import numpy as np
import pytest
import torch

from medclip_nb.config import Config
from medclip_nb.data.five_by_200 import select_5x200_gloria
from medclip_nb.errors import ConfigError
from medclip_nb.evaluate.metrics import select_5x200, zero_shot_classify
from medclip_nb.evaluate.report import summary_lines
from medclip_nb.evaluate.run import eval_datasets, evaluate_model
from medclip_nb.evaluate.zeroshot_medclip import (
    PAPER_PROMPT_VOCABULARY,
    logit_class_scores,
    medclip_prompt_draws,
    paper_eval_transform,
    paper_prompt_pool,
)
from medclip_nb.labels import COMPETITION_TASKS, LABEL_INDEX, NUM_LABELS, PROMPT_VOCABULARY

NAN = float("nan")


def row(**values):
    out = [NAN] * NUM_LABELS
    for name, value in values.items():
        out[LABEL_INDEX[name.replace("_", " ")]] = value
    return out


# ---- the 5x200 rule ---------------------------------------------------------------------------------
def test_gloria_5x200_rule_on_a_hand_made_table():
    table = np.array([
        row(Atelectasis=1.0),                                 # 0: qualifies (blanks are 0)
        row(Atelectasis=1.0, Fracture=-1.0),                  # 1: an uncertain other finding: out
        row(Atelectasis=1.0, Support_Devices=1.0),            # 2: a positive non-competition finding: out
        row(Cardiomegaly=1.0, No_Finding=1.0),                # 3: No Finding is free: in
        row(Edema=1.0, Lung_Opacity=0.0, Pneumonia=0.0),      # 4: explicit negatives: in
        row(Edema=1.0, Consolidation=1.0),                    # 5: two competition classes: out
        row(Pleural_Effusion=-1.0),                           # 6: the class itself uncertain: out
        row(Consolidation=1.0),                               # 7: qualifies, but a lateral view
        row(Pleural_Effusion=1.0, Atelectasis=0.0),           # 8: in
    ])
    frontal = np.array([True] * 7 + [False, True])
    rows, classes = select_5x200_gloria(table, per_class=200, seed=0, frontal=frontal)
    assert rows.tolist() == [0, 3, 4, 8]
    assert [COMPETITION_TASKS[c] for c in classes] == ["Atelectasis", "Cardiomegaly", "Edema", "Pleural Effusion"]
    assert select_5x200_gloria(table)[0].tolist() == [0, 3, 4, 7, 8]  # without the view filter
    # Our rule (evaluate.select_5x200) leaves the other nine labels free and ignores the view.
    assert select_5x200(table)[0].tolist() == [0, 1, 2, 3, 4, 7, 8]


def test_gloria_5x200_caps_each_class_reproducibly():
    table = np.array([row(Edema=1.0)] * 30 + [row(Cardiomegaly=1.0)] * 3)
    rows, classes = select_5x200_gloria(table, per_class=10, seed=4)
    assert (classes == COMPETITION_TASKS.index("Edema")).sum() == 10 and (rows >= 30).sum() == 3
    assert np.array_equal(rows, select_5x200_gloria(table, per_class=10, seed=4)[0])
    assert not np.array_equal(rows, select_5x200_gloria(table, per_class=10, seed=5)[0])


# ---- prompts ----------------------------------------------------------------------------------------
def test_paper_vocabulary_is_medclips_spelling_and_ours_is_unchanged():
    assert "apperance of" in PAPER_PROMPT_VOCABULARY["Consolidation"]["severity"]
    assert "at the right uppper lobe" in PAPER_PROMPT_VOCABULARY["Consolidation"]["location"]
    assert "presistent" in PAPER_PROMPT_VOCABULARY["Edema"]["severity"]
    assert PAPER_PROMPT_VOCABULARY["Pleural Effusion"]["subtype"].count("bilateral pleural effusion") == 2
    assert "appearance of" in PROMPT_VOCABULARY["Consolidation"]["severity"]
    assert "persistent" in PROMPT_VOCABULARY["Edema"]["severity"]
    pools = {t: paper_prompt_pool(t) for t in COMPETITION_TASKS}
    assert {t: len(p) for t, p in pools.items()} == {
        "Atelectasis": 210, "Cardiomegaly": 15, "Consolidation": 192, "Edema": 18, "Pleural Effusion": 54,
    }
    assert "apperance of patchy consolidation at the right uppper lobe" in pools["Consolidation"]
    assert "presistent pulmonary edema" in pools["Edema"]
    assert "small left bilateral pleural effusion" in pools["Pleural Effusion"]  # MedCLIP's key order
    assert all(p == p.strip() and "  " not in p for pool in pools.values() for p in pool)


def medclip_script_prompt_draws() -> list[dict[str, list[str]]]:
    """eval_zeroshot_classification.py (commit aad8818): set_random_seed(42) once, then per run
    generate_chexpert_class_prompts(n=10): f"{k0} {k1} {k2}" over each class's word lists in their
    key order, random.sample(pool, 10), classes in order; 5 runs."""
    pools = {t: [f"{a} {b} {c}" for a, b, c in itertools.product(*PAPER_PROMPT_VOCABULARY[t].values())]
             for t in COMPETITION_TASKS}
    random.seed(42)
    return [{t: random.sample(pools[t], 10) for t in COMPETITION_TASKS} for _ in range(5)]


def test_prompt_draws_are_medclips_five_consecutive_draws_after_one_seed():
    script = medclip_script_prompt_draws()
    # The digest of MedCLIP's own draws, computed from its constants.py at aad8818 (notes of issue 24): our
    # verbatim vocabulary builds the same pools in the same order.
    assert hashlib.sha256(json.dumps(script).encode()).hexdigest() == \
        "f19ef6f58250db0e881fd63a9a4500c6ab0ae7f562088d6fd2839fba71d5b3a4"
    assert script[0]["Atelectasis"][0] == "minimal trace atelectasis at the left lung zone"
    ours = medclip_prompt_draws(n=10, draws=5)
    assert ours == [{t: [" ".join(p.split()) for p in d[t]] for t in COMPETITION_TASKS} for d in script]
    assert ours[0] != ours[1] and medclip_prompt_draws(10, 5) == ours
    assert len(medclip_prompt_draws(n=20, draws=1)[0]["Edema"]) == 18  # a pool smaller than n is used whole
    with pytest.raises(ValueError, match="zeroshot_prompts_n"):
        medclip_prompt_draws(n=0)


# ---- class scores -----------------------------------------------------------------------------------
def test_class_score_is_the_mean_of_prompt_logits_not_of_prompt_embeddings():
    image = np.array([[1.0, 0.0, 0.0]])
    class_a = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # logits 1 and 0 (x scale)
    class_b = np.array([[0.6, 0.0, 0.8]])                   # logit 0.6
    scores = logit_class_scores(image, [class_a, class_b], scale=10.0, mode="mean")
    np.testing.assert_allclose(scores, [[5.0, 6.0]], rtol=1e-12)
    np.testing.assert_allclose(logit_class_scores(image, [class_a, class_b], 10.0, "max"), [[10.0, 6.0]])
    # The mean embedding (ours) is (1, 1, 0) / sqrt 2: cosine 0.707 > 0.6, so it picks the other class.
    ours = zero_shot_classify(image, [class_a, class_b], mode="mean")
    assert scores.argmax() == 1 and ours.argmax() == 0


# ---- image ------------------------------------------------------------------------------------------
def test_paper_transform_pads_and_resizes_the_whole_film():
    # A portrait film (64 x 32) with a bright band in its top 3 rows (4.7 %, inside the 6.25 % ours crops).
    image = torch.full((1, 64, 32), 128, dtype=torch.uint8)
    image[:, :3] = 255
    out = paper_eval_transform(224, mean=0.0, std=1.0)(image)
    assert out.shape == (3, 224, 224)
    assert torch.allclose(out[0, :, :50], torch.zeros(224, 50))  # the black padding, left (56 px) ...
    assert torch.allclose(out[0, :, -50:], torch.zeros(224, 50))  # ... and right
    assert out[0, 2, 112].item() == pytest.approx(1.0)  # the top band is kept
    assert out[0, 120, 112].item() == pytest.approx(128 / 255, abs=1e-3)
    # Ours resizes to 256 and crops the centre 224: the band falls outside the crop.
    from medclip_nb.data import AUGMENT_PRESETS, build_transforms

    ours = build_transforms(Config(augment="none", image_size=224, resize_size=256), train=False)(image)
    preset = AUGMENT_PRESETS["none"]
    white, grey = (1.0 - preset["mean"]) / preset["std"], (128 / 255 - preset["mean"]) / preset["std"]
    assert ours.shape == (3, 224, 224)
    assert float(ours[0, :, 112].max()) < (white + grey) / 2  # at most a trace of the band's edge


# ---- the evaluation end to end, with the real modules ---------------------------------------------------
@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    from PIL import Image

    from medclip_nb.model.encoders import build_model
    from medclip_nb.text.tokenizers import build_tokenizer

    root = tmp_path_factory.mktemp("paper_zs")
    rng = np.random.default_rng(0)
    reports = ["Small left pleural effusion.", "Mild pulmonary edema.", "Bibasilar atelectasis.",
               "Stable cardiomegaly.", "Patchy consolidation at the right lung base.", "No acute process."]
    names = ("Pleural Effusion", "Edema", "Atelectasis", "Cardiomegaly", "Consolidation")
    lines = []
    for i in range(18):
        c = i % 6
        Image.fromarray(rng.integers(0, 256, size=(40, 32), dtype=np.uint8)).save(root / f"img{i}.png")
        labels = [None] * 14
        labels[LABEL_INDEX[names[c]] if c < 5 else LABEL_INDEX["No Finding"]] = 1.0
        if i == 13:  # an uncertain fracture: in our 5x200, not in the paper's
            labels[LABEL_INDEX["Fracture"]] = -1.0
        split = "train" if i < 6 else "val" if i < 12 else "test"
        lines.append(json.dumps({"split": split, "image_path": f"img{i}.png", "report": reports[c], "labels": labels}))
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    cfg = Config(data_path=str(root / "data.jsonl"), image_size=32, resize_size=36, text_layers=1, text_width=32,
                 text_heads=2, embed_dim=16, vocab_size=120, max_text_tokens=24, num_workers=0, eval_batch_size=4,
                 augment="medclip", zeroshot_protocols=["ours", "gloria", "medclip"], zeroshot_prompts_n=3,
                 zeroshot_prompt_draws=4)
    tokenizer = build_tokenizer(cfg, reports)
    torch.manual_seed(0)
    return cfg, tokenizer, build_model(cfg, tokenizer)


def test_each_rule_is_recorded_under_its_own_key_with_its_name(tiny_study):
    cfg, tokenizer, model = tiny_study
    splits, _ = eval_datasets(cfg, tokenizer)
    splits = {"test": splits["test"]}
    metrics, _ = evaluate_model(model, tokenizer, splits, cfg, "cpu", log=lambda *_: None)
    json.dumps(metrics, allow_nan=False)
    ours, gloria, medclip = (metrics[k] for k in ("zero_shot_5x200", "zero_shot_5x200_gloria",
                                                  "zero_shot_5x200_medclip"))
    assert (ours["rule"], gloria["rule"], medclip["rule"]) == ("ours", "gloria", "medclip")
    assert ours["n"] == 5 and gloria["n"] == 4  # the uncertain fracture fails GLoRIA's rule ...
    assert medclip["n"] == 2 and medclip["short_pools"] == list(COMPETITION_TASKS)  # ... not MedCLIP's (-1 -> 0)
    assert sum(medclip["pool_sizes"].values()) == 5
    assert gloria["prompts_per_class"] == 3 and gloria["prompt_draws"] == 4
    for mode in ("mean", "max"):
        draws = gloria[mode]["accuracy_draws"]
        assert len(draws) == 4 and all(0.0 <= a <= 1.0 for a in draws)
        assert gloria[mode]["accuracy"] == pytest.approx(np.mean(draws), abs=1e-4)
        assert gloria[mode]["accuracy_std"] == pytest.approx(np.std(draws, ddof=0), abs=1e-4)  # as MedCLIP prints
        assert np.array(gloria[mode]["confusion"]).sum() == 4
    lines = summary_lines(metrics)
    assert any(line.startswith("5x200 zero-shot accuracy (gloria rule, mean, n=4)") for line in lines)
    assert any(line.startswith("5x200 zero-shot accuracy (medclip rule, mean, n=2)") for line in lines)
    from medclip_nb.study.tables import headline

    row = headline(metrics)
    assert row["zs_acc_mean_gloria"] == gloria["mean"]["accuracy"] and row["zs_acc_mean"] == ours["mean"]["accuracy"]
    assert row["zs_acc_mean_medclip_std"] == medclip["mean"]["accuracy_std"]

    only_gloria, _ = evaluate_model(model, tokenizer, splits, cfg.replace(zeroshot_protocols=["gloria"]), "cpu",
                                    log=lambda *_: None)
    assert only_gloria["zero_shot_5x200_gloria"] == gloria and "zero_shot_5x200" not in only_gloria


def test_rule_keys_are_checked_and_the_old_key_names_the_new_one():
    from medclip_nb.config import from_dict
    from medclip_nb.config_load import config_from_namespace

    with pytest.raises(ConfigError, match="'zeroshot_protocol' was replaced by 'zeroshot_protocols'.*gloria"):
        from_dict({"zeroshot_protocol": "paper"})
    with pytest.raises(ConfigError, match="'zeroshot_protocols'"):
        config_from_namespace({"zeroshot_protocol": "both"})
    with pytest.raises(ConfigError, match="'paper' is now 'gloria'"):
        Config(zeroshot_protocols=["paper"])
    with pytest.raises(ConfigError, match="'both' is now the list"):
        Config(zeroshot_protocols=["both"])
    with pytest.raises(ConfigError, match="'zeroshot_protocols'"):
        Config(zeroshot_protocols=["ours", "ours"])
    with pytest.raises(ConfigError, match="'zeroshot_prompts_n'"):
        Config(zeroshot_prompts_n=0)
    assert Config().zeroshot_protocols == ["ours"] and Config().zeroshot_prompts_n == 10
