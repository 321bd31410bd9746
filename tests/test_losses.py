"""Losses against hand-computed small cases, written out with explicit formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medclip_nb.labels import LABEL_INDEX, NUM_LABELS
from medclip_nb.model.losses import (
    ContrastiveLoss,
    clip_loss,
    gather_features,
    label_vectors,
    medclip_cosine_loss,
    medclip_loss,
    siglip_loss,
    soft_targets,
)

NAN = float("nan")
NO_FINDING = LABEL_INDEX["No Finding"]

# Two unit image and text embeddings in 2-D: similarities [[0.6, 1.0], [0.8, 0.0]].
IMAGE = [[1.0, 0.0], [0.0, 1.0]]
TEXT = [[0.6, 0.8], [1.0, 0.0]]
SCALE = 2.0


def t(values):
    return torch.tensor(values, dtype=torch.float32)


def log_softmax_at(values, index):
    """-log softmax(values)[index], written out."""
    return -(values[index] - math.log(sum(math.exp(v) for v in values)))


def labels_with_positives(*positive_sets):
    """Rows of CheXpert values: 1 at the given label names, 0 elsewhere."""
    rows = np.zeros((len(positive_sets), NUM_LABELS), dtype=np.float32)
    for row, names in zip(rows, positive_sets):
        for name in names:
            row[LABEL_INDEX[name]] = 1.0
    return torch.from_numpy(rows)


# ---- clip ---------------------------------------------------------------------------------------
def test_clip_loss_matches_hand_computed_2x2():
    # logits = 2 * sim = [[1.2, 2.0], [1.6, 0.0]]; targets on the diagonal.
    i2t = (log_softmax_at([1.2, 2.0], 0) + log_softmax_at([1.6, 0.0], 1)) / 2
    t2i = (log_softmax_at([1.2, 1.6], 0) + log_softmax_at([2.0, 0.0], 1)) / 2
    loss, terms = clip_loss(t(IMAGE), t(TEXT), SCALE)
    assert loss.item() == pytest.approx((i2t + t2i) / 2, rel=1e-6)
    assert terms["loss_i2t"].item() == pytest.approx(i2t, rel=1e-6)
    assert terms["loss_t2i"].item() == pytest.approx(t2i, rel=1e-6)
    assert not terms["loss_i2t"].requires_grad


def test_clip_loss_gradient_reaches_embeddings_and_scale():
    image, text = t(IMAGE).requires_grad_(), t(TEXT).requires_grad_()
    scale = torch.tensor(SCALE, requires_grad=True)
    clip_loss(image, text, scale)[0].backward()
    assert image.grad.abs().sum() > 0 and text.grad.abs().sum() > 0 and scale.grad != 0


# ---- label vectors --------------------------------------------------------------------------------
def test_label_vectors_rules():
    raw = torch.full((5, NUM_LABELS), NAN)
    raw[0, :4] = t([1.0, 0.0, -1.0, NAN])  # positive, negative, uncertain, blank
    raw[1, :] = 0.0  # all negative
    # raw[2]: all blank
    raw[3, 0] = -1.0  # only an uncertain finding
    raw[4, NO_FINDING] = 1.0  # 'No Finding' itself positive
    vectors = label_vectors(raw, uncertain_value=0.5)

    expected = np.zeros((5, NUM_LABELS), dtype=np.float32)
    expected[0, 0], expected[0, 2] = 1.0, 0.5  # has a positive: No Finding stays 0
    expected[1, NO_FINDING] = 1.0
    expected[2, NO_FINDING] = 1.0
    expected[3, 0], expected[3, NO_FINDING] = 0.5, 1.0
    expected[4, NO_FINDING] = 1.0
    np.testing.assert_array_equal(vectors.numpy(), expected)
    assert (vectors.abs().sum(1) > 0).all()

    assert label_vectors(raw, uncertain_value=0.0)[0, 2].item() == 0.0


def test_label_vectors_refuses_bad_values_and_shapes():
    bad = torch.zeros(2, NUM_LABELS)
    bad[1, 3] = 2.0
    with pytest.raises(ValueError, match="found 2.0"):
        label_vectors(bad)
    with pytest.raises(ValueError, match=r"\[batch, 14\]"):
        label_vectors(torch.zeros(2, 5))


# ---- medclip_cosine (ours; the published medclip kind: tests/test_losses_published.py) -------------
@pytest.mark.parametrize("batch", [2, 6, NUM_LABELS])
def test_medclip_cosine_equals_clip_with_identity_labels(batch):
    generator = torch.Generator().manual_seed(batch)
    image = torch.nn.functional.normalize(torch.randn(batch, 8, generator=generator), dim=1)
    text = torch.nn.functional.normalize(torch.randn(batch, 8, generator=generator), dim=1)
    identity = torch.eye(batch, NUM_LABELS)  # each sample its own class
    clip, clip_terms = clip_loss(image, text, 14.3)
    med, med_terms = medclip_cosine_loss(image, text, 14.3, identity, identity)
    assert torch.equal(med, clip)
    for key in ("loss_i2t", "loss_t2i"):
        assert torch.equal(med_terms[key], clip_terms[key])


def test_soft_targets_identical_labels_share_weight_equally():
    labels = labels_with_positives(["Edema"], ["Edema"], ["Cardiomegaly"])
    vectors = label_vectors(labels)
    targets = soft_targets(vectors, vectors)
    expected = [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]
    torch.testing.assert_close(targets, t(expected), rtol=0, atol=1e-7)


def test_soft_targets_partial_overlap_is_cosine_row_normalised():
    # {Edema, Effusion} vs {Edema}: cosine 1/sqrt(2).
    vectors = label_vectors(labels_with_positives(["Edema", "Pleural Effusion"], ["Edema"]))
    c = 1 / math.sqrt(2)
    expected = [[1 / (1 + c), c / (1 + c)], [c / (1 + c), 1 / (1 + c)]]
    torch.testing.assert_close(soft_targets(vectors, vectors), t(expected), rtol=1e-6, atol=1e-7)


def test_soft_targets_without_overlap_fall_back_to_own_pair():
    image_vectors = label_vectors(labels_with_positives(["Edema"], ["Fracture"]))
    text_vectors = label_vectors(labels_with_positives(["Cardiomegaly"], ["Fracture"]))
    targets = soft_targets(image_vectors, text_vectors)
    torch.testing.assert_close(targets, t([[1.0, 0.0], [0.0, 1.0]]))


@pytest.mark.parametrize("loss_fn", [medclip_loss, medclip_cosine_loss])
def test_medclip_loss_matches_hand_computed_with_identical_labels(loss_fn):
    # Both pairs share one label vector: targets 0.5 / 0.5 in both directions (either kind).
    labels = labels_with_positives(["Edema"], ["Edema"])
    rows = [[1.2, 2.0], [1.6, 0.0]]  # 2 * sim
    cols = [[1.2, 1.6], [2.0, 0.0]]
    soft = lambda logits: sum(0.5 * log_softmax_at(r, 0) + 0.5 * log_softmax_at(r, 1) for r in logits) / 2
    loss, terms = loss_fn(t(IMAGE), t(TEXT), SCALE, labels, labels)
    assert terms["loss_i2t"].item() == pytest.approx(soft(rows), rel=1e-6)
    assert terms["loss_t2i"].item() == pytest.approx(soft(cols), rel=1e-6)
    assert loss.item() == pytest.approx((soft(rows) + soft(cols)) / 2, rel=1e-6)


# ---- siglip -------------------------------------------------------------------------------------
def test_siglip_loss_matches_hand_computed_2x2():
    bias = -1.0
    logsigmoid = lambda x: -math.log1p(math.exp(-x))
    sim = [[0.6, 1.0], [0.8, 0.0]]
    positive = -sum(logsigmoid(SCALE * sim[i][i] + bias) for i in range(2)) / 2
    negative = -sum(logsigmoid(-(SCALE * sim[i][j] + bias)) for i in range(2) for j in range(2) if i != j) / 2
    loss, terms = siglip_loss(t(IMAGE), t(TEXT), SCALE, bias)
    assert loss.item() == pytest.approx(positive + negative, rel=1e-6)
    assert terms["loss_pos"].item() == pytest.approx(positive, rel=1e-6)
    assert terms["loss_neg"].item() == pytest.approx(negative, rel=1e-6)


# ---- module -------------------------------------------------------------------------------------
def _outputs(bias=None):
    return {"image_embeds": t(IMAGE), "text_embeds": t(TEXT), "logit_scale": torch.tensor(SCALE),
            "logit_bias": None if bias is None else torch.tensor(bias)}


def test_contrastive_loss_module_matches_functions():
    labels = labels_with_positives(["Edema"], ["Edema"])
    assert ContrastiveLoss("clip")(_outputs(), labels)[0] == clip_loss(t(IMAGE), t(TEXT), SCALE)[0]
    assert ContrastiveLoss("medclip")(_outputs(), labels)[0] == medclip_loss(t(IMAGE), t(TEXT), SCALE, labels,
                                                                             labels)[0]
    assert (ContrastiveLoss("medclip_cosine")(_outputs(), labels)[0]
            == medclip_cosine_loss(t(IMAGE), t(TEXT), SCALE, labels, labels)[0])
    assert ContrastiveLoss("siglip")(_outputs(-1.0), labels)[0] == siglip_loss(t(IMAGE), t(TEXT), SCALE, -1.0)[0]


def test_contrastive_loss_runs_in_float32_under_autocast():
    outputs = {k: (v.bfloat16() if torch.is_tensor(v) else v) for k, v in _outputs().items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = ContrastiveLoss("clip")(outputs)
    assert loss.dtype == torch.float32


def test_contrastive_loss_refuses_what_it_cannot_compute():
    with pytest.raises(ValueError, match="not one of"):
        ContrastiveLoss("triplet")
    with pytest.raises(ValueError, match="logit_bias"):
        ContrastiveLoss("siglip")(_outputs())
    with pytest.raises(ValueError, match="labels"):
        ContrastiveLoss("medclip_cosine")(_outputs(), None)


def test_gather_features_is_identity_without_process_group():
    image, text = t(IMAGE), t(TEXT)
    (image_all, text_all), offset = gather_features(image, text)
    assert image_all is image and text_all is text and offset == 0


@pytest.mark.parametrize("kind", ["clip", "medclip", "medclip_cosine"])
def test_chance_is_the_loss_of_scoring_every_pair_alike(kind):
    """ContrastiveLoss.chance (the level metrics.jsonl records): with every similarity equal, each
    softmax direction is uniform over its columns, so the loss is ln(columns), whatever the targets."""
    torch.manual_seed(0)
    images, texts = 6, 6
    same = torch.nn.functional.normalize(torch.ones(1, 4), dim=1)
    outputs = {"image_embeds": same.expand(images, 4), "text_embeds": same.expand(texts, 4),
               "logit_scale": torch.tensor(10.0), "logit_bias": None}
    labels = torch.randint(0, 2, (images, NUM_LABELS)).float()
    loss_fn = ContrastiveLoss(kind)
    loss, _ = loss_fn(outputs, labels)
    assert float(loss) == pytest.approx(loss_fn.chance(images, texts)) == pytest.approx(math.log(6))
    assert loss_fn.chance(4, 16) == pytest.approx((math.log(4) + math.log(16)) / 2)
    assert ContrastiveLoss("siglip").chance(6, 6) is None
