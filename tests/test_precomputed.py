"""text_encoder 'precomputed': records' clip_indices through collate, trainer, checkpoints and
evaluation, against a fixed clip_text_features.json; malformed or mismatched files give one-line
errors naming the file (and the split and index for a record)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medclip_nb.config import from_dict
from medclip_nb.data import build_datasets
from medclip_nb.data.dataset import BatchCollator
from medclip_nb.errors import DataError
from medclip_nb.evaluate import evaluate_checkpoint
from medclip_nb.labels import CHEXPERT_LABELS, NUM_LABELS
from medclip_nb.model import encoders as models
from medclip_nb.model.checkpoint import load_checkpoint, load_model
from medclip_nb.text.tokenizers import ClipIndexTokenizer, build_tokenizer, tokenizer_from_json
from medclip_nb.train import loop as train_loop
from medclip_nb.train import train

SPLIT_SIZES = {"train": 12, "val": 4, "test": 4}
FEATURE_ROWS, FEATURE_DIM = 10, 8


pytestmark = pytest.mark.usefixtures("one_thread_no_bars")  # tests/conftest.py


def write_features(path: Path, rows: int = FEATURE_ROWS, dim: int = FEATURE_DIM, seed: int = 0) -> Path:
    features = np.random.default_rng(seed).normal(size=(rows, dim)).round(4)
    path.write_text(json.dumps({"features": features.tolist()}))
    return path


def write_manifest(path: Path, records: dict[str, list[dict]]) -> Path:
    lines = [json.dumps({"split": split, **record}) for split, items in records.items() for record in items]
    path.write_text("\n".join(lines) + "\n")
    return path


def make_records(folder: Path) -> dict[str, list[dict]]:
    """20 small PNGs with label 0 alternating positive/negative in every split (so the linear
    probe has both classes) and clip_indices given as lists and as single ints."""
    rng = np.random.default_rng(1)
    records: dict[str, list[dict]] = {}
    number = 0
    for split, size in SPLIT_SIZES.items():
        records[split] = []
        for i in range(size):
            name = f"img_{number}.png"
            Image.fromarray(rng.integers(0, 256, (40, 36), dtype=np.uint8), mode="L").save(folder / name)
            labels: list[float | None] = [None] * NUM_LABELS
            labels[0] = float(i % 2)
            indices = number % FEATURE_ROWS if number % 3 == 0 else [number % FEATURE_ROWS, (number + 3) % FEATURE_ROWS]
            records[split].append({"image_path": name, "report": f"report {number}.", "labels": labels,
                                   "clip_indices": indices})
            number += 1
    return records


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("precomputed")
    records = make_records(folder)
    return {
        "folder": folder,
        "records": records,
        "manifest": write_manifest(folder / "manifest.jsonl", records),
        "features": write_features(folder / "clip_text_features.json"),
    }


def config(manifest: Path, features: Path, out: Path, **overrides):
    values = dict(
        data_path=str(manifest), text_features_path=str(features), model_save_path=str(out),
        model="medclip", text_encoder="precomputed", vision_backbone="resnet18", embed_dim=16,
        image_size=32, resize_size=32, batch_size=4, eval_batch_size=4, num_epochs=1, max_steps=3,
        num_workers=0, log_every=1, eval_steps=1000, save_steps=1000, lr=1e-3, warmup=0.0, seed=3,
    )
    values.update(overrides)
    return from_dict(values)


def quiet(*_args, **_kwargs) -> None:
    pass


def assert_one_line_naming(error: pytest.ExceptionInfo, *parts) -> None:
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert str(part) in message, (part, message)


# ---- the tokenizer slot and collate ---------------------------------------------------------------
def test_collate_pads_clip_indices_with_minus_one():
    tokenizer = ClipIndexTokenizer()
    samples = [
        {"pixel_values": torch.zeros(3, 4, 4), "labels": torch.zeros(NUM_LABELS), "index": 7, "report": "a",
         "clip_indices": [2, 0]},
        {"pixel_values": torch.ones(3, 4, 4), "labels": torch.zeros(NUM_LABELS), "index": 9, "report": "b",
         "clip_indices": 5},  # a single int is one row
        {"pixel_values": torch.ones(3, 4, 4), "labels": torch.zeros(NUM_LABELS), "index": 4, "report": "c",
         "clip_indices": [1, 3, 4]},
    ]
    batch = BatchCollator(tokenizer)(samples)
    assert batch["input_ids"].tolist() == [[2, 0, -1], [5, -1, -1], [1, 3, 4]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0], [1, 0, 0], [1, 1, 1]]
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.int64
    assert batch["index"].tolist() == [7, 9, 4]

    del samples[1]["clip_indices"]
    with pytest.raises(DataError, match="dataset sample 9: no 'clip_indices'") as error:
        BatchCollator(tokenizer)(samples)
    assert_one_line_naming(error)


def test_tokenizer_is_built_for_the_mode_and_survives_json(dataset, tmp_path):
    cfg = config(dataset["manifest"], dataset["features"], tmp_path)
    tokenizer = build_tokenizer(cfg, ["a report."])
    assert isinstance(tokenizer, ClipIndexTokenizer)
    assert json.loads(tokenizer.to_json())["kind"] == "clip_indices"
    assert isinstance(tokenizer_from_json(tokenizer.to_json()), ClipIndexTokenizer)
    with pytest.raises(TypeError, match="clip_indices"):
        tokenizer.encode(["no pleural effusion"])

    # The dataset hands each sample's indices to the collate function, single ints as lists.
    datasets, _, _ = build_datasets(cfg, tokenizer)
    batch = BatchCollator(tokenizer)([datasets["train"][i] for i in (0, 1)])
    assert batch["input_ids"].tolist() == [[0, -1], [1, 4]]


# ---- training, checkpoints, evaluation ------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory):
    """A 3-step run; the model train() built is captured with its initial weights."""
    out = tmp_path_factory.mktemp("run")
    captured: dict = {}
    build = models.build_model

    def capturing_build_model(cfg, tokenizer=None):
        model = build(cfg, tokenizer)
        captured["model"] = model
        captured["initial"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        captured["features"] = model.text_encoder.features.clone()
        return model

    patch = pytest.MonkeyPatch()
    patch.setattr(train_loop, "build_model", capturing_build_model)  # the name train() calls
    try:
        cfg = config(dataset["manifest"], dataset["features"], out)
        result = train(cfg, log=quiet)
    finally:
        patch.undo()
    return {"cfg": cfg, "out": out, "result": result, **captured}


def test_training_runs_and_saves(trained):
    result, out = trained["result"], trained["out"]
    assert result.steps == 3
    for name in ("last.pth", "best.pth", "checkpoint_epoch_1.pth", "metrics.jsonl"):
        assert (out / name).is_file(), name
    train_losses = [row["loss"] for row in result.history if row["split"] == "train"]
    assert len(train_losses) == 3 and all(np.isfinite(train_losses))
    state = load_checkpoint(out / "last.pth")
    assert json.loads(state["tokenizer"])["kind"] == "clip_indices"
    assert not any(key.endswith("features") for key in state["model"])  # re-read from the file, not saved


def test_text_features_stay_fixed_while_the_image_side_learns(trained, dataset):
    model, initial = trained["model"], trained["initial"]
    features = model.text_encoder.features
    assert not features.requires_grad
    torch.testing.assert_close(features, trained["features"], rtol=0, atol=0)
    on_file = json.loads(dataset["features"].read_text())["features"]
    torch.testing.assert_close(features, torch.tensor(on_file, dtype=torch.float32), rtol=0, atol=0)

    after = model.state_dict()
    changed = {name for name in initial if not torch.equal(initial[name], after[name])}
    assert "vision_projection.weight" in changed
    assert any(name.startswith("vision.") and name.endswith(".weight") for name in changed)


def test_checkpoint_loads_the_trained_model(trained, dataset):
    model, tokenizer, cfg = load_model(trained["out"] / "last.pth")
    assert isinstance(tokenizer, ClipIndexTokenizer) and cfg.text_encoder == "precomputed"
    datasets, _, _ = build_datasets(cfg, tokenizer)
    batch = BatchCollator(tokenizer)([datasets["test"][i] for i in range(4)])
    trained_model = trained["model"].eval()
    with torch.no_grad():
        expected = trained_model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        loaded = model(batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
    for key in ("image_embeds", "text_embeds", "logit_scale"):
        torch.testing.assert_close(loaded[key], expected[key])


def test_evaluation_runs_retrieval_and_linear_probe(trained, dataset, tmp_path):
    entry = evaluate_checkpoint(trained["out"] / "last.pth", tmp_path / "reports",
                                {"data_path": str(dataset["manifest"])}, log=quiet)
    assert "precomputed" in entry["zero_shot_5x200"]["skipped"]
    retrieval = entry["retrieval"]["test"]["image_to_text"]
    assert 0.0 <= retrieval["R@1"] <= 1.0
    probe = entry["linear_probe"]
    assert (probe["n_train"], probe["n_val"], probe["n_test"]) == (12, 4, 4)
    assert probe["auroc"][CHEXPERT_LABELS[0]] is not None  # label 0 has both classes everywhere
    assert json.loads((tmp_path / "reports" / "metrics.json").read_text())


# ---- malformed and mismatched files ---------------------------------------------------------------
@pytest.mark.parametrize(
    "content, problem",
    [(None, "cannot be read"), ("{not json", "not valid JSON"), ("[[1.0, 2.0], [3.0]]", "different lengths")],
    ids=["missing", "not-json", "ragged"],
)
def test_bad_features_file_stops_training(dataset, tmp_path, content, problem):
    features = tmp_path / "clip_text_features.json"
    if content is not None:
        features.write_text(content)
    with pytest.raises(DataError, match=problem) as error:
        train(config(dataset["manifest"], features, tmp_path / "run"), log=quiet)
    assert_one_line_naming(error, features)
    assert not list((tmp_path / "run").glob("*.pth"))


def test_clip_index_out_of_range_names_the_split_and_index(dataset, tmp_path):
    records = json.loads(json.dumps(dataset["records"]))
    records["test"][2]["clip_indices"] = [1, FEATURE_ROWS + 5]
    manifest = write_manifest(dataset["folder"] / "out_of_range.jsonl", records)
    with pytest.raises(DataError, match=rf"test\[2\]: clip index {FEATURE_ROWS + 5} is out of range") as error:
        train(config(manifest, dataset["features"], tmp_path / "run"), log=quiet)
    assert_one_line_naming(error, manifest, dataset["features"], f"{FEATURE_ROWS} feature rows")


@pytest.mark.parametrize(
    "value, problem",
    [(None, "key 'clip_indices' is missing"), ([], "is empty"), ([0, -2], "-2 is negative"),
     (["3"], "'3' is not an integer")],
    ids=["missing", "empty", "negative", "string"],
)
def test_bad_clip_indices_name_the_file_split_and_index(dataset, tmp_path, value, problem):
    records = json.loads(json.dumps(dataset["records"]))
    if value is None:
        del records["val"][1]["clip_indices"]
    else:
        records["val"][1]["clip_indices"] = value
    manifest = write_manifest(dataset["folder"] / "bad_indices.jsonl", records)
    with pytest.raises(DataError, match=problem) as error:
        train(config(manifest, dataset["features"], tmp_path / "run"), log=quiet)
    assert_one_line_naming(error, f"{manifest}: val[1]")


def test_feature_dimension_mismatch_with_the_checkpoint(trained, dataset, tmp_path):
    # Same rows, another feature width: the checkpoint's text projection cannot read them.
    features = write_features(tmp_path / "clip_text_features.json", dim=FEATURE_DIM - 2)
    checkpoint = load_checkpoint(trained["out"] / "last.pth")
    checkpoint["config"]["text_features_path"] = str(features)
    moved = tmp_path / "moved.pth"
    torch.save(checkpoint, moved)
    with pytest.raises(DataError, match=f"rows have {FEATURE_DIM - 2} values.*trained on {FEATURE_DIM}") as error:
        load_model(moved)
    assert_one_line_naming(error, features)
