"""loss 'medclip' against an independent restatement of MedCLIP's published formula.

The reference below is written from the paper code's description (REFERENCE.md, "MedCLIP's
published code, precisely"), in float64 NumPy: blank -> 0 with 1 / 0 / -1 kept, targets =
softmax of the raw label dot products (rows for image->text, the transpose for text->image),
each direction -(targets * log_softmax(logits)).sum() / rows, the two averaged.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medclip_nb.labels import LABEL_INDEX, NUM_LABELS
from medclip_nb.model.losses import (
    ContrastiveLoss,
    clip_loss,
    medclip_label_vectors,
    medclip_loss,
    published_soft_targets,
)

NAN = float("nan")


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _log_softmax(x):
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def published_reference(image, text, scale, image_labels, text_labels):
    image_vec = np.where(np.isnan(image_labels), 0.0, image_labels)
    text_vec = np.where(np.isnan(text_labels), 0.0, text_labels)
    logits = scale * image @ text.T
    label_sim = image_vec @ text_vec.T
    i2t = -(_softmax(label_sim) * _log_softmax(logits)).sum() / logits.shape[0]
    t2i = -(_softmax(label_sim.T) * _log_softmax(logits.T)).sum() / logits.shape[1]
    return (i2t + t2i) / 2, i2t, t2i


def random_case(seed, rows_i, rows_t, dim=16):
    rng = np.random.default_rng(seed)
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
    image, text = unit(rng.normal(size=(rows_i, dim))), unit(rng.normal(size=(rows_t, dim)))
    values = np.array([1.0, 0.0, -1.0, NAN])
    # CheXpert-like: mostly blank, some positive / negative / uncertain.
    draw = lambda n: rng.choice(values, size=(n, NUM_LABELS), p=[0.15, 0.15, 0.1, 0.6])
    return image, text, draw(rows_i), draw(rows_t)


def as_tensors(*arrays):
    return [torch.tensor(a, dtype=torch.float32) for a in arrays]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_medclip_loss_equals_the_published_formula(seed):
    image, text, labels, _ = random_case(seed, 12, 12)
    scale = 14.3
    expected, i2t, t2i = published_reference(image, text, scale, labels, labels)
    loss, terms = medclip_loss(*as_tensors(image, text), scale, *as_tensors(labels, labels))
    assert loss.item() == pytest.approx(expected, abs=1e-6, rel=1e-6)
    assert terms["loss_i2t"].item() == pytest.approx(i2t, abs=1e-6, rel=1e-6)
    assert terms["loss_t2i"].item() == pytest.approx(t2i, abs=1e-6, rel=1e-6)
    module_loss, _ = ContrastiveLoss("medclip")(
        {"image_embeds": torch.tensor(image, dtype=torch.float32),
         "text_embeds": torch.tensor(text, dtype=torch.float32),
         "logit_scale": torch.tensor(scale), "logit_bias": None},
        torch.tensor(labels, dtype=torch.float32),
    )
    assert module_loss.item() == pytest.approx(expected, abs=1e-6, rel=1e-6)


def test_medclip_loss_with_unpaired_rows_equals_the_published_formula():
    # 8 images (6 paired + 2 image-only) and 9 texts (6 paired + 3 text-only), own label rows each.
    image, text, image_labels, text_labels = random_case(7, 8, 9)
    expected, _, _ = published_reference(image, text, 10.0, image_labels, text_labels)
    loss, _ = medclip_loss(*as_tensors(image, text), 10.0, *as_tensors(image_labels, text_labels), num_pairs=6)
    assert loss.item() == pytest.approx(expected, abs=1e-6, rel=1e-6)


def test_published_label_encoding_and_targets():
    labels = torch.full((3, NUM_LABELS), NAN)
    cardio = LABEL_INDEX["Cardiomegaly"]
    labels[0, cardio], labels[1, cardio], labels[2, cardio] = 1.0, -1.0, 0.0
    vectors = medclip_label_vectors(labels)
    assert vectors[:, cardio].tolist() == [1.0, -1.0, 0.0]
    assert vectors.sum().item() == 0.0  # blanks are 0 and No Finding is not forced
    # Uncertain x positive = -1: an uncertain cardiomegaly repels a positive one.
    targets = published_soft_targets(vectors, vectors)
    e = np.e
    torch.testing.assert_close(targets[0], torch.tensor([e, 1 / e, 1.0]) / (e + 1 / e + 1))
    torch.testing.assert_close(targets[2], torch.full((3,), 1 / 3))
    with pytest.raises(ValueError, match="1, 0, -1 or NaN"):
        medclip_label_vectors(torch.full((1, NUM_LABELS), 2.0))


def test_medclip_without_labels_is_clip_and_refuses_cosine_only_keys():
    image, text, labels, _ = random_case(3, 5, 5)
    image_t, text_t = as_tensors(image, text)
    assert torch.equal(medclip_loss(image_t, text_t, 3.0, None, None)[0], clip_loss(image_t, text_t, 3.0)[0])
    outputs = {"image_embeds": image_t, "text_embeds": text_t, "logit_scale": torch.tensor(3.0), "logit_bias": None}
    assert torch.equal(ContrastiveLoss("medclip")(outputs, None)[0], clip_loss(image_t, text_t, 3.0)[0])
    with pytest.raises(ValueError, match="uncertain_value"):
        medclip_loss(image_t, text_t, 3.0, *as_tensors(labels, labels), 0.5)


def test_medclip_cosine_keys_reach_its_label_vectors():
    from medclip_nb.model.losses import label_vectors

    labels = torch.full((1, NUM_LABELS), NAN)
    labels[0, LABEL_INDEX["Edema"]] = -1.0
    with_rule = label_vectors(labels, uncertain_value=0.25)
    without = label_vectors(labels, uncertain_value=0.25, no_finding_rule=False)
    assert with_rule[0, LABEL_INDEX["No Finding"]].item() == 1.0
    assert without[0, LABEL_INDEX["No Finding"]].item() == 0.0
    assert without[0, LABEL_INDEX["Edema"]].item() == 0.25
    criterion = ContrastiveLoss("medclip_cosine", 0.25, no_finding_rule=False)
    assert "no_finding_rule=False" in repr(criterion)
