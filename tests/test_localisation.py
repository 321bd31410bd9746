"""Localisation (issue 28): the scores (pointing game, CNR, IoU) on maps with known answers, their
summary with patient-level intervals, and the maps (similarity split of the cosine, Grad-CAM) on tiny models."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medclip_nb.config import Config
from medclip_nb.evaluate.localisation import area_iou, contrast_to_noise, pointing_game, score_map, summarise
from medclip_nb.model import build_model
from medclip_nb.model.maps import gradcam_maps, similarity_maps, spatial_layer


# ---- scores on maps with known answers ---------------------------------------------------------------------
def test_pointing_game_and_iou_on_known_maps():
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:4, 2:7] = True  # 10 pixels
    inside, outside = np.zeros((10, 10)), np.zeros((10, 10))
    inside[3, 3] = 1.0
    outside[8, 8] = 1.0
    assert pointing_game(inside, mask) == 1.0 and pointing_game(outside, mask) == 0.0
    assert pointing_game(np.ones((10, 10)), mask) == pytest.approx(0.1)  # flat map: the region's share
    assert area_iou(mask.astype(float), mask) == 1.0
    other = np.zeros((10, 10))
    other[6:8, 2:7] = 1.0  # as many pixels, none of them in the region
    assert area_iou(other, mask) == 0.0
    half = np.zeros((10, 10))
    half[3:5, 2:7] = 1.0  # 5 of its 10 top pixels inside: IoU 5 / 15
    assert area_iou(half, mask) == pytest.approx(5 / 15)
    # scored on the image's own pixels only: a maximum in the padding does not count
    area = np.ones((10, 10), dtype=bool)
    area[:, 8:] = False  # padding on the right
    padded = inside.copy()
    padded[5, 9] = 5.0
    assert pointing_game(padded, mask) == 0.0 and pointing_game(padded, mask, area) == 1.0
    assert contrast_to_noise(padded, mask, area) == pytest.approx(contrast_to_noise(inside[:, :8], mask[:, :8]))
    assert area_iou(padded, mask, area) == area_iou(inside[:, :8], mask[:, :8])


def test_cnr_is_ms_cxrs_contrast_to_noise_ratio():
    mask = np.array([True, True, False, False, False, False])
    heatmap = np.array([1.0, 3.0, 0.0, 0.0, 2.0, 2.0])  # inside: mean 2, var 1; outside: mean 1, var 1
    assert contrast_to_noise(heatmap, mask) == pytest.approx(1 / np.sqrt(2))
    same_means = np.array([1.0, 3.0, 0.0, 4.0, 2.0, 2.0])  # inside and outside both average 2
    assert contrast_to_noise(same_means, mask) == pytest.approx(0.0)
    assert contrast_to_noise(np.full(6, 0.3), mask) == 0.0  # a flat map tells nothing
    assert np.isnan(contrast_to_noise(heatmap, np.zeros(6, dtype=bool)))
    assert set(score_map(heatmap.reshape(2, 3), mask.reshape(2, 3))) == {"pointing_game", "cnr", "iou"}


def test_summary_means_with_patient_intervals_and_chance():
    rng = np.random.default_rng(0)
    n = 40
    masks = [np.eye(4, dtype=bool)] * n  # each region a quarter of its map
    values = {"pointing_game": (rng.random(n) < 0.75).astype(float), "cnr": rng.normal(1.0, 0.2, n),
              "iou": rng.random(n)}
    values["cnr"][0] = np.nan  # undefined: left out
    groups = np.repeat(np.arange(20), 2)
    entry = summarise(values, np.array([m.mean() for m in masks]), np.ones(n, dtype=bool), groups, seed=0)
    assert entry["n"] == n and entry["patients"] == 20
    assert entry["chance_pointing_game"] == pytest.approx(0.25) and entry["chance_iou"] == pytest.approx(0.25 / 1.75)
    assert entry["pointing_game"] == pytest.approx(values["pointing_game"].mean())
    assert entry["cnr"] == pytest.approx(np.nanmean(values["cnr"]))
    low, high = entry["pointing_game_ci"]
    assert low < entry["pointing_game"] < high


# ---- the maps ------------------------------------------------------------------------------------------------
def _tiny_model(backbone: str):
    torch.manual_seed(0)
    cfg = Config(model="medclip", vision_backbone=backbone, loss="clip", text_width=32, text_layers=1,
                 text_heads=2, embed_dim=16)
    return build_model(cfg, SimpleNamespace(vocab_size=50, pad_id=0, max_length=16)).eval()


@pytest.mark.parametrize("backbone", ["small_cnn", "resnet18"])
def test_similarity_map_splits_the_cosine_similarity_over_the_image(backbone):
    model = _tiny_model(backbone)
    pixels = torch.randn(2, 3, 64, 48)
    texts = F.normalize(torch.randn(2, 16), dim=-1)
    with torch.no_grad():
        cosine = (F.normalize(model.encode_image(pixels).float(), dim=-1) * texts).sum(dim=-1)
    grid = similarity_maps(model, pixels, texts, grid=True)
    assert torch.allclose(grid.mean(dim=(1, 2)), cosine, atol=1e-5)
    assert similarity_maps(model, pixels, texts).shape == (2, 64, 48)


def test_gradcam_on_a_tiny_model_returns_a_map_of_input_size():
    model = _tiny_model("small_cnn")
    assert spatial_layer(model) == "vision.features"
    pixels, texts = torch.randn(3, 3, 40, 56), F.normalize(torch.randn(3, 16), dim=-1)
    maps = gradcam_maps(model, pixels, texts)
    assert maps.shape == (3, 40, 56) and maps.dtype == torch.float32
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0 + 1e-6
    assert not model.training and all(p.grad is None for p in model.parameters())


def test_comparison_pairs_models_on_the_same_regions_and_holm_corrects_each_table():
    from medclip_nb.study.localisation import localisation_comparison, localisation_comparison_table

    rng = np.random.default_rng(1)
    n = 60
    pairs = SimpleNamespace(rows=list(range(n)), findings=["Edema", "Pleural Effusion"] * (n // 2))
    base_scores = {"pointing_game": np.ones(n), "cnr": rng.normal(1.0, 0.1, n), "iou": rng.random(n)}
    other_scores = {"pointing_game": np.zeros(n), "cnr": base_scores["cnr"] - 0.001, "iou": base_scores["iou"]}

    def arrays(scores):
        return SimpleNamespace(localisation={"pairs": pairs, "readable": np.ones(n, dtype=bool),
                                             "groups": np.arange(n) // 2, "scores": {"similarity": scores}})

    out = localisation_comparison({"default": arrays(base_scores), "random init": arrays(other_scores)})
    table = out["random init"]["similarity"]
    assert set(table) == {"all", "Edema", "Pleural Effusion"}
    assert table["all"]["pointing_game"]["difference"] == pytest.approx(1.0)
    assert table["all"]["pointing_game"]["resolved"] is True
    assert table["all"]["iou"]["difference"] == pytest.approx(0.0) and table["all"]["iou"]["resolved"] is False
    ps = [d["p"] for scores in table.values() for d in scores.values() if d["p"] is not None]
    holms = [d["p_holm"] for scores in table.values() for d in scores.values() if d["p_holm"] is not None]
    assert len(holms) == len(ps) and all(h >= p for h, p in zip(holms, ps))  # Holm never lowers a p-value
    assert "resolved (Holm)" in localisation_comparison_table(out).to_string()
