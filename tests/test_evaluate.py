from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medclip_nb.config import Config
from medclip_nb.errors import DataError
from medclip_nb.evaluate.embeddings import compute_embeddings, encode_texts, model_logit_scale
from medclip_nb.evaluate.evaluation import json_ready
from medclip_nb.evaluate.metrics import (
    DEFAULT_C,
    accuracy,
    auroc_per_label,
    binarize_labels,
    build_5x200,
    confusion,
    linear_probe,
    macro_f1,
    mean_defined,
    multilabel_auroc,
    precision_at_k,
    recall_at_k,
    retrieval_metrics,
    zero_shot_classify,
    zero_shot_multilabel,
)
from medclip_nb.evaluate.report import summary_lines
from medclip_nb.evaluate.run import eval_datasets, evaluate_checkpoint, evaluate_model
from medclip_nb.labels import CHEXPERT_LABELS, COMPETITION_TASKS, LABEL_INDEX
from medclip_nb.prompts import generate_prompts

NAN = math.nan


# ---- metrics, hand-computed ---------------------------------------------------------------------
def test_accuracy_f1_confusion_by_hand():
    y_true, y_pred = [0, 1, 2, 2], [0, 2, 2, 1]
    assert accuracy(y_true, y_pred) == 0.5
    # F1 per class: 0 -> 1.0; 1 -> 0 (no true positive); 2 -> P = R = 1/2 -> 0.5.
    assert macro_f1(y_true, y_pred) == pytest.approx((1.0 + 0.0 + 0.5) / 3)
    # A class absent from truth and predictions counts as 0 only when n_classes asks for it.
    assert macro_f1(y_true, y_pred, n_classes=4) == pytest.approx(1.5 / 4)
    assert confusion(y_true, y_pred, 3).tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]
    assert confusion([0], [0], 3).shape == (3, 3)


def test_auroc_by_counting_pairs():
    y = np.array([[0, 1, 1], [1, 0, 1], [0, 0, 1], [1, 1, 1]])
    s = np.array([[0.1, 0.5, 0.3], [0.3, 0.5, 0.2], [0.35, 0.2, 0.1], [0.8, 0.1, 0.9]])
    result = auroc_per_label(y, s, ["a", "b", "c"])
    # a: positives 0.3, 0.8 vs negatives 0.1, 0.35 -> 3 of 4 pairs ordered.
    assert result["a"] == pytest.approx(3 / 4)
    # b: positives 0.5, 0.1 vs negatives 0.5 (tie = 1/2), 0.2 -> (0.5 + 1 + 0 + 0) / 4.
    assert result["b"] == pytest.approx(1.5 / 4)
    # c: one class only -> undefined, NaN; null in JSON; left out of the mean.
    assert math.isnan(result["c"])
    assert json_ready(result) == {"a": 0.75, "b": 0.375, "c": None}
    assert mean_defined(result.values()) == pytest.approx((0.75 + 0.375) / 2)
    with pytest.raises(ValueError, match="do not match"):
        auroc_per_label(y, s[:, :2], ["a", "b", "c"])


def test_binarize_and_json_ready():
    assert binarize_labels([1.0, 0.0, -1.0, NAN]).tolist() == [1, 0, 0, 0]
    data = json_ready({"x": np.float32(0.123456), "y": [np.int64(3), float("inf")], "z": np.array([0.5, NAN])})
    assert data == {"x": 0.1235, "y": [3, None], "z": [0.5, None]}
    json.dumps(data, allow_nan=False)


SIM = np.array([
    [0.9, 0.1, 0.2, 0.2],
    [0.8, 0.5, 0.1, 0.3],
    [0.3, 0.7, 0.6, 0.0],
    [0.4, 0.4, 0.1, 0.4],
])


def test_recall_at_k_by_hand():
    # Rows: rank of the diagonal among the others (ties count against) = 0, 1, 1, 2.
    assert recall_at_k(SIM, ks=(1, 2, 3)) == {1: 0.25, 2: 0.75, 3: 1.0}
    # Columns as queries: ranks 0, 1, 0, 0.
    assert recall_at_k(SIM.T, ks=(1, 2)) == {1: 0.75, 2: 1.0}
    # Gallery ids: query 1 also matches gallery item 0 (same report) -> rank 0.
    assert recall_at_k(SIM, ks=(1,), query_ids=[0, 0, 2, 3], gallery_ids=[0, 0, 2, 3]) == {1: 0.5}


def test_precision_at_k_by_hand():
    sim = np.array([[0.9, 0.8, 0.1, 0.7], [0.2, 0.95, 0.9, 0.8], [1.0, 1.0, 1.0, 1.0]])
    gallery = [0, 1, 0, 1]
    # q0 (class 0): g0 g1 g3 -> hits 1, 0, 0; q1 (class 1): g1 g2 g3 -> hits 1, 0, 1; q2 has no class.
    result = precision_at_k(sim, [0, 1, -1], gallery, ks=(1, 2, 3))
    assert result[1] == pytest.approx(1.0)
    assert result[2] == pytest.approx(0.5)
    assert result[3] == pytest.approx((1 / 3 + 2 / 3) / 2)


def _unit(rows):
    return F.normalize(torch.as_tensor(rows, dtype=torch.float32), dim=1).numpy()


def test_retrieval_chunked_equals_unchunked():
    rng = np.random.default_rng(0)
    images, texts = _unit(rng.normal(size=(23, 6))), _unit(rng.normal(size=(23, 6)))
    classes = rng.integers(-1, 3, size=23)
    full = retrieval_metrics(images, texts, ks=(1, 5), chunk=1024, class_ids=classes)
    for chunk in (1, 4, 7):
        chunked = retrieval_metrics(images, texts, ks=(1, 5), chunk=chunk, class_ids=classes)
        for key in ("image_to_text", "text_to_image", "image_to_text_precision"):
            assert chunked[key] == pytest.approx(full[key])
    sim = images @ texts.T
    assert full["image_to_text"] == {f"R@{k}": v for k, v in recall_at_k(sim, (1, 5)).items()}
    assert full["text_to_image"] == {f"R@{k}": v for k, v in recall_at_k(sim.T, (1, 5)).items()}
    expected_precision = precision_at_k(sim, classes, classes, (1, 5))
    assert full["image_to_text_precision"]["P@5"] == pytest.approx(expected_precision[5])
    assert full["n"] == 23


def test_retrieval_shared_reports_and_collapsed_model():
    # Images 0 and 1 come from one study and share its report: both texts are matches.
    texts = _unit([[1, 0, 0], [1, 0, 0], [0, 1, 0]])
    images = _unit([[1, 0.1, 0], [1, 0, 0.1], [0, 1, 0]])
    grouped = retrieval_metrics(images, texts, ks=(1,), pair_ids=[0, 0, 1])
    assert grouped["image_to_text"]["R@1"] == 1.0 and grouped["text_to_image"]["R@1"] == 1.0
    # Without the grouping the duplicate text ties with the true one and counts against it.
    assert retrieval_metrics(images, texts, ks=(1,))["image_to_text"]["R@1"] == pytest.approx(1 / 3)
    # A collapsed model (all embeddings equal) gets no credit from ties.
    same = np.ones((4, 3), dtype=np.float32)
    collapsed = retrieval_metrics(same, same, ks=(1, 3, 4))
    assert collapsed["image_to_text"] == {"R@1": 0.0, "R@3": 0.0, "R@4": 1.0}


# ---- CheXpert-5x200 -----------------------------------------------------------------------------------
def _labels(**values):
    row = [NAN] * 14
    for name, v in values.items():
        row[LABEL_INDEX[name.replace("_", " ")]] = v
    return row


def test_5x200_rule():
    records = [
        {"labels": _labels(Atelectasis=1.0, Cardiomegaly=0.0, Edema=0.0)},  # 0: class 0
        {"labels": _labels(Atelectasis=1.0, Edema=1.0)},  # 1: two competition positives
        {"labels": _labels(Cardiomegaly=1.0, Edema=-1.0)},  # 2: class 1 (uncertain other is fine)
        {"labels": _labels(Pleural_Effusion=1.0, Support_Devices=1.0)},  # 3: class 4
        {"labels": [NAN] * 14},  # 4: nothing positive
        {"labels": _labels(Edema=-1.0)},  # 5: uncertain only
        {"labels": _labels(Consolidation=1.0, Atelectasis=-1.0)},  # 6: class 2
        {"labels": [None] * 9 + [1.0] + [None] * 4},  # 7: JSON nulls, Pleural Effusion -> class 4
        {"labels": _labels(No_Finding=1.0)},  # 8: not a competition class
    ]
    assert build_5x200(records) == [(0, 0), (2, 1), (3, 4), (6, 2), (7, 4)]
    with pytest.raises(DataError, match="record 1: 'labels'"):
        build_5x200([records[0], {"labels": [1.0] * 13}])


def test_5x200_cap_and_determinism():
    edema = _labels(Edema=1.0)
    records = [{"labels": edema} for _ in range(10)] + [{"labels": _labels(Atelectasis=1.0)} for _ in range(2)]
    chosen = build_5x200(records, per_class=3, seed=1)
    assert chosen == build_5x200(records, per_class=3, seed=1)
    assert chosen == sorted(chosen)
    assert sum(c == COMPETITION_TASKS.index("Edema") for _, c in chosen) == 3
    assert [r for r, c in chosen if c == 0] == [10, 11]
    draws = {tuple(build_5x200(records, per_class=3, seed=s)) for s in range(6)}
    assert len(draws) > 1  # the seed matters


# ---- zero-shot -------------------------------------------------------------------------------------------
def test_zero_shot_mean_vs_max():
    image = np.array([[1.0, 0.0]])
    class_a = np.array([[1.0, 0.0], [0.0, 1.0]])  # mean direction (0.707, 0.707)
    class_b = np.array([[0.8, 0.6]])
    mean = zero_shot_classify(image, [class_a, class_b], "mean")
    maximum = zero_shot_classify(image, [class_a, class_b], "max")
    np.testing.assert_allclose(mean, [[math.sqrt(0.5), 0.8]], rtol=1e-6)
    np.testing.assert_allclose(maximum, [[1.0, 0.8]], rtol=1e-6)
    assert mean.argmax() == 1 and maximum.argmax() == 0
    with pytest.raises(ValueError, match="mode"):
        zero_shot_classify(image, [class_a], "median")


def test_zero_shot_multilabel_pair_softmax():
    images = np.array([[1.0, 0.0], [0.0, 1.0]])
    probs = zero_shot_multilabel(images, [[1.0, 0.0]], [[0.0, 1.0]], scale=2.0)
    e = math.exp(2.0)
    np.testing.assert_allclose(probs, [[e / (e + 1)], [1 / (1 + e)]], rtol=1e-6)
    result = multilabel_auroc(np.c_[probs, probs], [[1.0, NAN], [0.0, -1.0]], ["a", "b"])
    assert result["auroc"]["a"] == 1.0 and math.isnan(result["auroc"]["b"])
    assert result["auroc_mean"] == 1.0


# ---- linear probe ----------------------------------------------------------------------------------------
def test_linear_probe_separable():
    rng = np.random.default_rng(0)

    def split(n):
        x = rng.normal(size=(n, 6))
        y = np.zeros((n, 3))
        y[:, 0] = np.where(x[:, 0] > 0, 1.0, rng.choice([0.0, -1.0, NAN], size=n))  # -1/NaN negative
        y[:, 1] = np.where(x[:, 1] + x[:, 2] > 0, 1.0, 0.0)
        return x, y  # column 2 never positive

    (xt, yt), (xv, yv), (xs, ys) = split(200), split(80), split(80)
    result = linear_probe(xt, yt, xs, ys, xv, yv, Cs=(0.1, 10.0), names=["a", "b", "never"])
    assert result["auroc"]["a"] > 0.99 and result["auroc"]["b"] > 0.99
    assert math.isnan(result["auroc"]["never"]) and result["C"]["never"] is None
    assert result["C"]["a"] in (0.1, 10.0)
    assert result["auroc_mean"] == pytest.approx((result["auroc"]["a"] + result["auroc"]["b"]) / 2)
    assert (result["n_train"], result["n_val"], result["n_test"]) == (200, 80, 80)
    no_val = linear_probe(xt, yt, xs, ys, names=["a", "b", "never"])
    assert no_val["C"]["a"] == DEFAULT_C and no_val["auroc"]["a"] > 0.99


# ---- model-facing parts with a fake model that follows docs/architecture.md ------------------------------
MAX_TOKENS = 16


class FakeTokenizer:
    """Word-level tokenizer: ids assigned on first sight, 0 = padding."""

    max_length = MAX_TOKENS

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def encode(self, texts):
        ids = torch.zeros(len(texts), MAX_TOKENS, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, text in enumerate(texts):
            words = text.lower().replace(",", " ").replace(".", " ").split()[:MAX_TOKENS]
            for j, word in enumerate(words):
                ids[i, j] = self.vocab.setdefault(word, len(self.vocab) + 1)
            mask[i, : len(words)] = 1
        return {"input_ids": ids, "attention_mask": mask}


class FakeModel(torch.nn.Module):
    """Bag-of-words text encoder; an 'image' carries its report's token ids in channel 0 and
    their mask in channel 1, so each image embeds exactly like its own report."""

    def __init__(self, vocab_size=600, dim=12):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(vocab_size, dim, generator=torch.Generator().manual_seed(0)))
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))
        self.calls: list[tuple[bool, bool]] = []  # (training, grad enabled) per image batch

    def encode_text(self, input_ids, attention_mask):
        m = attention_mask.unsqueeze(-1).float()
        return F.normalize((self.table[input_ids] * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)

    def encode_image(self, pixel_values):
        self.calls.append((self.training, torch.is_grad_enabled()))
        ids = pixel_values[:, 0].flatten(1)[:, :MAX_TOKENS].round().long()
        mask = pixel_values[:, 1].flatten(1)[:, :MAX_TOKENS].round().long()
        return self.encode_text(ids, mask)


def make_batches(tokenizer, reports, labels, batch_size=4, start=0):
    batches = []
    for s in range(0, len(reports), batch_size):
        enc = tokenizer.encode(reports[s : s + batch_size])
        b = len(enc["input_ids"])
        pixels = torch.zeros(b, 3, 4, 4)
        pixels[:, 0] = enc["input_ids"].float().view(b, 4, 4)
        pixels[:, 1] = enc["attention_mask"].float().view(b, 4, 4)
        batches.append({
            **enc,
            "pixel_values": pixels,
            "labels": torch.tensor(labels[s : s + batch_size], dtype=torch.float32),
            "index": torch.arange(start + s, start + s + b),
            "n_skipped": 0,
            "skipped_paths": [],
        })
    return batches


def test_compute_embeddings_eval_mode_no_grad_and_groups():
    tokenizer, model = FakeTokenizer(), FakeModel()
    reports = ["small effusion", "small effusion", "clear lungs", "mild edema", "large effusion"]
    batches = make_batches(tokenizer, reports, [[0.0] * 14] * 5, batch_size=2)
    empty = {**batches[0], "pixel_values": torch.zeros(0, 3, 4, 4), "input_ids": torch.zeros(0, 16, dtype=torch.long),
             "attention_mask": torch.zeros(0, 16, dtype=torch.long), "labels": torch.zeros(0, 14),
             "index": torch.zeros(0, dtype=torch.long), "n_skipped": 3, "skipped_paths": ["a", "b", "c"]}
    batches[1]["n_skipped"] = 1
    model.train()
    out = compute_embeddings(model, batches + [empty], "cpu")
    assert model.training  # mode restored
    assert all(call == (False, False) for call in model.calls)
    assert out["image"].shape == out["text"].shape == (5, 12) and out["labels"].shape == (5, 14)
    assert out["index"].tolist() == [0, 1, 2, 3, 4] and out["n_skipped"] == 4
    np.testing.assert_allclose(out["image"], out["text"], atol=1e-6)
    assert out["text_group"].tolist() == [0, 0, 1, 2, 3]
    images_only = compute_embeddings(model, batches, "cpu", with_text=False)
    assert images_only["text"] is None and images_only["image"].shape == (5, 12)
    raw = [{**batches[0], "pixel_values": batches[0]["pixel_values"].to(torch.uint8)}]
    with pytest.raises(ValueError, match="uint8"):
        compute_embeddings(model, raw, "cpu")


def test_encode_texts_batches_and_scale():
    tokenizer, model = FakeTokenizer(), FakeModel()
    texts = [f"word{i} effusion" for i in range(7)]
    out = encode_texts(model, tokenizer, texts, "cpu", batch_size=3)
    enc = tokenizer.encode(texts)
    np.testing.assert_allclose(out, model.encode_text(enc["input_ids"], enc["attention_mask"]).detach(), atol=1e-6)
    assert model_logit_scale(model) == pytest.approx(10.0)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)  # clamped to ln 100
    assert model_logit_scale(model) == pytest.approx(100.0)


def _toy_splits(tokenizer):
    """Test: three images per competition class whose report is one of the class's prompts,
    two images of one study sharing a report, and one image with two competition findings."""
    reports, labels = [], []
    for c, task in enumerate(COMPETITION_TASKS):
        for prompt in generate_prompts(task, max_prompts=3, seed=c):
            reports.append(prompt)
            row = [0.0] * 14
            row[LABEL_INDEX[task]] = 1.0
            labels.append(row)
    reports.append(reports[0])  # the second image of study 0
    labels.append(labels[0])
    reports.append("atelectasis and edema")
    labels.append(_labels(Atelectasis=1.0, Edema=1.0, No_Finding=0.0))
    rng = np.random.default_rng(1)

    def random_split(n):
        words = ["effusion", "edema", "clear", "heart", "base", "left", "right", "mild"]
        texts = [" ".join(rng.choice(words, size=3)) for _ in range(n)]
        rows = [[1.0 if ("edema" in t) == (j % 2 == 0) else 0.0 for j in range(14)] for t in texts]
        return make_batches(tokenizer, texts, rows, batch_size=8)

    return {"train": random_split(40), "val": random_split(16), "test": make_batches(tokenizer, reports, labels)}


def _all_floats(obj):
    if isinstance(obj, dict):
        return [f for v in obj.values() for f in _all_floats(v)]
    if isinstance(obj, list):
        return [f for v in obj for f in _all_floats(v)]
    return [obj] if isinstance(obj, float) else []


def test_evaluate_model_end_to_end():
    tokenizer, model = FakeTokenizer(), FakeModel()
    cfg = Config(eval_batch_size=8)
    metrics, arrays = evaluate_model(model, tokenizer, _toy_splits(tokenizer), cfg, "cpu", log=lambda *_: None)
    json.dumps(metrics, allow_nan=False)
    assert all(round(f, 4) == f for f in _all_floats(metrics))
    assert metrics["n"] == {"test": 17, "test_5x200": 16, "train": 40, "val": 16}

    zs = metrics["zero_shot_5x200"]
    assert zs["n"] == 16 and zs["n_per_class"]["Atelectasis"] == 4
    # Each image equals one of its class's prompts: max over prompts is exact.
    assert zs["max"]["accuracy"] == 1.0 and zs["max"]["macro_f1"] == 1.0
    assert np.trace(np.array(zs["max"]["confusion"])) == 16
    assert np.array(zs["mean"]["confusion"]).sum() == 16
    assert arrays.zero_shot_scores["mean"].shape == (16, 5)
    assert arrays.five_x_200_rows.tolist() == list(range(16))

    ml = metrics["zero_shot_multilabel"]
    assert set(ml["auroc"]) == set(CHEXPERT_LABELS)
    assert ml["auroc"]["Fracture"] is None  # never positive in the test split
    assert arrays.multilabel_probabilities.shape == (17, 14)

    # Images embed exactly like their reports; the shared report counts for both images.
    assert metrics["retrieval"]["test"]["image_to_text"]["R@1"] == 1.0
    assert metrics["retrieval"]["test"]["text_to_image"]["R@1"] == 1.0
    assert metrics["retrieval"]["test_5x200"]["image_to_text_precision"]["P@1"] == 1.0

    probe = metrics["linear_probe"]
    assert set(probe["auroc"]) == set(CHEXPERT_LABELS) and probe["n_train"] == 40

    lines = summary_lines(metrics)
    assert any("accuracy (max, n=16)" in line and "1.0000" in line for line in lines)

    # Every headline number carries its 95 % bootstrap interval, which holds the number itself.
    from medclip_nb.study.tables import headline, headline_intervals

    values, intervals = headline(metrics), headline_intervals(metrics)
    for key, value in values.items():
        if key == "P@10" or value is None:
            continue
        low, high = intervals[key]
        assert low <= value + 1e-4 and value - 1e-4 <= high, (key, value, intervals[key])
    assert zs["max"]["accuracy_ci"] == [1.0, 1.0]  # every image right: every resample is right
    assert 0 <= zs["mean"]["accuracy_ci"][0] <= zs["mean"]["accuracy"] <= zs["mean"]["accuracy_ci"][1]

    # The low-label probes: seeded subsets of the 40 training images; 100 % is the full probe.
    fractions = metrics["linear_probe_fractions"]
    assert list(fractions) == ["0.01", "0.1", "1"]
    assert [f["n_train"] for f in fractions.values()] == [2, 4, 40]
    assert fractions["1"]["auroc_mean"] == probe["auroc_mean"]


def test_precomputed_text_features_skip_prompts():
    tokenizer, model = FakeTokenizer(), FakeModel()
    splits = {"test": _toy_splits(tokenizer)["test"]}
    cfg = Config(text_encoder="precomputed", text_features_path="features.json")
    metrics, _ = evaluate_model(model, tokenizer, splits, cfg, "cpu", log=lambda *_: None)
    assert "precomputed" in metrics["zero_shot_5x200"]["skipped"]
    assert metrics["retrieval"]["test"]["image_to_text"]["R@1"] == 1.0
    assert metrics["linear_probe"] is None
    assert not any("zero-shot" in line for line in summary_lines(metrics))


def test_evaluate_checkpoint_writes_and_merges(tmp_path, monkeypatch, capsys):
    tokenizer, model = FakeTokenizer(), FakeModel()
    splits = _toy_splits(tokenizer)
    del splits["train"], splits["val"]  # zero-shot and retrieval only
    seen = {}

    def load_model(path, device):
        seen["path"] = path
        return model, tokenizer, Config(model="simple", eval_batch_size=4)

    def eval_datasets(cfg, tok):
        seen["cfg"] = cfg
        return splits, ["2 images appear in two splits"]

    import medclip_nb.evaluate.run as run  # where evaluate_checkpoint looks both names up

    monkeypatch.setattr(run, "load_model", load_model)
    monkeypatch.setattr(run, "eval_datasets", eval_datasets)
    out = tmp_path / "reports"
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps({"other/best": {"keep": 1}}))

    entry = evaluate_checkpoint(tmp_path / "run1" / "best.pth", out, overrides={"eval_batch_size": 8,
                                                                                 "data_path": "toy.jsonl"})
    assert seen["cfg"].eval_batch_size == 8 and seen["path"].name == "best.pth"
    stored = json.loads((out / "metrics.json").read_text())
    assert stored["other/best"] == {"keep": 1}
    assert stored["run1/best"] == entry and entry["model"] == "simple" and entry["linear_probe"] is None
    assert (out / "figures" / "zeroshot_confusion_run1_best.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "5x200 zero-shot accuracy (max, n=16)" in printed and "warning: 2 images" in printed

    (out / "metrics.json").write_text("{not json")
    with pytest.raises(DataError, match="metrics.json: not valid JSON"):
        evaluate_checkpoint(tmp_path / "run1" / "best.pth", out, {"data_path": "toy.jsonl"}, log=lambda *_: None)
    assert (out / "metrics.json").read_text() == "{not json"


# ---- the real modules together: a tiny dataset, model and checkpoint ---------------------------------
def test_evaluate_checkpoint_with_real_modules(tmp_path):
    from PIL import Image

    from medclip_nb.model.checkpoint import save_checkpoint
    from medclip_nb.model.encoders import build_model
    from medclip_nb.text.tokenizers import build_tokenizer

    rng = np.random.default_rng(0)
    reports = ["Small left pleural effusion.", "Mild pulmonary edema.", "Bibasilar atelectasis.",
               "Stable cardiomegaly.", "Patchy consolidation at the right lung base.", "No acute process."]
    lines = []
    for i in range(24):
        c = i % 6
        Image.fromarray(rng.integers(0, 256, size=(40, 36), dtype=np.uint8)).save(tmp_path / f"img{i}.png")
        labels = [None] * 14
        if c < 5:
            labels[LABEL_INDEX[("Pleural Effusion", "Edema", "Atelectasis", "Cardiomegaly", "Consolidation")[c]]] = 1.0
        else:
            labels[LABEL_INDEX["No Finding"]] = 1.0
        split = "train" if i < 12 else "val" if i < 18 else "test"
        lines.append(json.dumps({"split": split, "image_path": f"img{i}.png", "report": reports[c], "labels": labels}))
    manifest = tmp_path / "data.jsonl"
    manifest.write_text("\n".join(lines) + "\n")

    cfg = Config(data_path=str(manifest), image_size=32, resize_size=32, text_layers=1, text_width=32,
                 text_heads=2, embed_dim=16, vocab_size=120, max_text_tokens=24, num_workers=0,
                 eval_batch_size=4, augment="medclip")
    tokenizer = build_tokenizer(cfg, reports)
    torch.manual_seed(0)
    model = build_model(cfg, tokenizer)
    checkpoint = save_checkpoint({"model": model.state_dict(), "config": cfg.to_dict(),
                                  "tokenizer": tokenizer.to_json()}, tmp_path / "run" / "last.pth")

    splits, _ = eval_datasets(cfg, tokenizer)
    a, b = splits["train"][0]["pixel_values"], splits["train"][0]["pixel_values"]
    assert torch.equal(a, b)  # no random augmentation on the probe's training images

    out = tmp_path / "reports"
    entry = evaluate_checkpoint(checkpoint, out, overrides={"eval_batch_size": 5, "data_path": str(manifest)},
                                log=lambda *_: None)
    assert entry["n"] == {"test": 6, "test_5x200": 5, "train": 12, "val": 6}
    assert entry["zero_shot_5x200"]["max"]["accuracy"] is not None
    assert set(entry["linear_probe"]["auroc"]) == set(CHEXPERT_LABELS)
    assert json.loads((out / "metrics.json").read_text())["run/last"] == entry
    assert (out / "figures" / "zeroshot_confusion_run_last.png").is_file()
