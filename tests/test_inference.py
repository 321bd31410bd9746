"""Using a trained model: the Python API (load, embed, zero-shot classify), the predict / embed /
export subcommands, the safetensors export round trip and the TensorBoard event file, all on a
tiny model trained here on the tiny phantom (tests/conftest.py)."""

from __future__ import annotations

import importlib.util
import json
import pickle
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medclip_nb.cli import main
from medclip_nb.config import from_dict
from medclip_nb.data import load_dataset_file, load_grayscale
from medclip_nb.errors import CheckpointError, UserError
from medclip_nb.inference.pretrained import load_pretrained, resolve_prompts
from medclip_nb.labels import COMPETITION_TASKS
from medclip_nb.model.export import EXPORT_FILES, export_checkpoint
from medclip_nb.prompts import class_prompts
from medclip_nb.train import train

pytestmark = pytest.mark.usefixtures("one_thread_no_bars")  # tests/conftest.py
HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


@pytest.fixture(scope="module")
def run_dir(tiny_dataset, tmp_path_factory):
    """A MedCLIP-style model (mobilenet + transformer text encoder) trained for 4 steps, with
    TensorBoard on when the package is installed."""
    out = tmp_path_factory.mktemp("inference_run")
    cfg = from_dict(dict(
        data_path=str(tiny_dataset), model_save_path=str(out), image_size=32, resize_size=48,
        model="medclip", vision_backbone="mobilenet_v3_small", text_layers=1, text_width=32, text_heads=2,
        embed_dim=16, vocab_size=200, max_text_tokens=32, batch_size=4, eval_batch_size=8, max_steps=4,
        num_workers=0, log_every=1, eval_steps=2, save_steps=1000, lr=1e-3, seed=3, tensorboard=HAS_TENSORBOARD,
    ))
    train(cfg, log=lambda *_a, **_k: None)
    return out


@pytest.fixture(scope="module")
def test_images(tiny_dataset):
    records = load_dataset_file(tiny_dataset)["test"]
    return [tiny_dataset.parent / r["image_path"] for r in records[:3]]


def test_predict_on_a_folder_skips_and_names_an_unreadable_file(run_dir, test_images, tmp_path, capsys):
    folder = tmp_path / "scans"
    folder.mkdir()
    for image in test_images[:2]:
        shutil.copy(image, folder / image.name)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("not an image suffix: not read")
    csv = tmp_path / "predictions.csv"
    assert main(["predict", "--checkpoint", str(run_dir / "best.pth"), str(folder), "--csv", str(csv),
                 "--num_workers", "0"]) == 0
    out, err = capsys.readouterr()
    assert "Skipped 1 unreadable image" in err and "broken.jpg" in err
    table = pd.read_csv(csv, index_col="image")
    assert sorted(table.index) == sorted(str(folder / p.name) for p in test_images[:2])
    assert list(table.columns) == [*COMPETITION_TASKS, "prediction"]
    probabilities = table[list(COMPETITION_TASKS)].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (table["prediction"] == table[list(COMPETITION_TASKS)].idxmax(axis=1)).all()
    assert all(str(folder / p.name) in out for p in test_images[:2]) and "broken.jpg" not in out


def test_predict_bad_input_is_one_line_and_exit_2(run_dir, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"")
    for argv in ([str(tmp_path / "missing.jpg")], [str(broken)], [str(broken), "--classes", "Edema"]):
        assert main(["predict", "--checkpoint", str(run_dir / "best.pth"), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and len([line for line in err if line.startswith("error")]) == 1
    assert main(["predict", "--checkpoint", str(tmp_path / "nope.pth"), str(broken)]) == 2
    assert main(["embed", "--checkpoint", str(run_dir / "best.pth"), "--data_path", str(broken),
                 "--out", str(tmp_path / "emb.txt")]) == 2
    assert "must end in .npz" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(run_dir / "best.pth"), "--out", str(broken)]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_classify_accepts_paths_pil_images_and_tensors(run_dir, test_images):
    pretrained = load_pretrained(run_dir / "best.pth")
    path = test_images[0]
    raw = torch.from_numpy(load_grayscale(path))
    inputs = [path, Image.open(path), raw, raw.unsqueeze(0), pretrained.transform(raw.unsqueeze(0))]
    table = pretrained.classify(inputs)
    assert list(table.columns) == list(COMPETITION_TASKS) and len(table) == len(inputs)
    assert table.index[0] == str(path) and table.index[2] == "image_2"
    assert np.allclose(table.to_numpy(), table.to_numpy()[:1], atol=1e-6)  # one image, five ways
    assert table.attrs["prompts"] == class_prompts(COMPETITION_TASKS) and table.attrs["skipped"] == []


def test_classify_with_user_classes_and_prompts_by_hand(run_dir, test_images):
    pretrained = load_pretrained(run_dir / "best.pth")
    classes, prompts = ["Pneumothorax", "Edema"], {"Edema": ["pulmonary edema"]}
    assert resolve_prompts(classes, prompts) == {"Pneumothorax": ["pneumothorax"], "Edema": ["pulmonary edema"]}
    table = pretrained.classify(test_images, classes, prompts=prompts)
    # One prompt per class: softmax over the classes of logit_scale x cosine(image, prompt).
    images = pretrained.embed_images(test_images).embeddings
    texts = pretrained.embed_texts(["pneumothorax", "pulmonary edema"])
    expected = torch.from_numpy(images @ texts.T * pretrained.logit_scale).softmax(dim=1).numpy()
    assert np.allclose(table.to_numpy(), expected, atol=1e-5)
    with pytest.raises(UserError, match="not among the classes"):
        pretrained.classify(test_images, classes, prompts={"Atelectasis": ["x"]})


def test_embed_writes_shapes_and_ids(run_dir, tiny_dataset, tmp_path, capsys):
    records = load_dataset_file(tiny_dataset)
    # One test record points at an unreadable file: skipped, counted and named, as in training.
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    records["test"][1] = {**records["test"][1], "image_path": str(broken)}
    data_path = tmp_path / "datasets.pkl"
    data_path.write_bytes(pickle.dumps(records))
    out = tmp_path / "emb.npz"
    assert main(["embed", "--checkpoint", str(run_dir / "best.pth"), "--data_path", str(data_path),
                 "--image_root", str(tiny_dataset.parent), "--out", str(out), "--splits", "val,test",
                 "--num_workers", "0"]) == 0
    assert "Skipped 1 unreadable images in split 'test'" in capsys.readouterr().err
    arrays = np.load(out, allow_pickle=False)
    n_val, n_test = len(records["val"]), len(records["test"]) - 1
    n = n_val + n_test
    assert arrays["image"].shape == arrays["text"].shape == (n, 16) and arrays["labels"].shape == (n, 14)
    assert np.allclose(np.linalg.norm(arrays["image"], axis=1), 1.0, atol=1e-5)
    assert arrays["split"].tolist() == ["val"] * n_val + ["test"] * n_test
    kept_test = [i for i in range(len(records["test"])) if i != 1]
    assert arrays["index"].tolist() == list(range(n_val)) + kept_test
    expected_paths = [r["image_path"] for r in records["val"]] + [records["test"][i]["image_path"] for i in kept_test]
    assert arrays["image_path"].tolist() == expected_paths
    assert arrays["study_id"].tolist() == [r["study_id"] for r in records["val"]] + \
        [records["test"][i]["study_id"] for i in kept_test]
    # Rows of one study share its report, hence its text group and text embedding.
    same_study = arrays["study_id"][:, None] == arrays["study_id"][None, :]
    assert ((arrays["text_group"][:, None] == arrays["text_group"][None, :]) == same_study).all()


def test_export_round_trip_gives_identical_embeddings(run_dir, test_images, tmp_path, monkeypatch, capsys):
    export_dir = tmp_path / "export"
    assert main(["export", "--checkpoint", str(run_dir / "best.pth"), "--out", str(export_dir)]) == 0
    assert sorted(p.name for p in export_dir.iterdir()) == sorted([*EXPORT_FILES, "SHA256SUMS"])
    assert json.loads((export_dir / "config.json").read_text())["config"]["vision_backbone"] == "mobilenet_v3_small"
    original = load_pretrained(run_dir / "best.pth")

    def no_pickle(*_args, **_kwargs):
        raise AssertionError("loading an export must not unpickle")

    monkeypatch.setattr(torch, "load", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    exported = load_pretrained(export_dir)
    monkeypatch.undo()
    texts = ["small left pleural effusion", "no acute cardiopulmonary process"]
    assert torch.equal(torch.from_numpy(original.embed_images(test_images).embeddings),
                       torch.from_numpy(exported.embed_images(test_images).embeddings))
    assert torch.equal(torch.from_numpy(original.embed_texts(texts)), torch.from_numpy(exported.embed_texts(texts)))
    assert exported.logit_scale == original.logit_scale
    # Exporting again into the same folder is fine; a folder with other files is refused.
    export_checkpoint(run_dir / "best.pth", export_dir)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="keep.txt"):
        export_checkpoint(run_dir / "best.pth", tmp_path / "other")
    assert (tmp_path / "other" / "keep.txt").read_text() == "mine"


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard is not installed (pip install -e .[tensorboard])")
def test_tensorboard_events_hold_the_metrics_rows(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))  # the run's own folder: `--logdir checkpoints/` names it
    events.Reload()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tags = {"train/loss", "train/lr", "train/temperature", "train/pairs_per_s", "val/loss", "val/pairs_per_s",
            "val/image_to_text_R@1", "val/image_to_text_R@10", "val/text_to_image_R@5"}
    assert tags <= set(events.Tags()["scalars"])
    for tag in tags:
        split, key = tag.split("/")
        expected = [(r["step"], r[key]) for r in rows if r["split"] == split]
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in expected] and len(expected) >= 2
        assert np.allclose([v for _, v in got], [v for _, v in expected], rtol=1e-6)  # stored as float32


def test_tensorboard_without_the_package_is_one_line(tiny_dataset, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    cfg = from_dict(dict(data_path=str(tiny_dataset), model_save_path=str(tmp_path / "run"), model="simple",
                         num_workers=0, tensorboard=True))
    with pytest.raises(UserError, match=r"config key 'tensorboard'.*pip install") as info:
        train(cfg, log=lambda *_a, **_k: None)
    assert "\n" not in str(info.value) and not (tmp_path / "run").exists()
