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


def test_evaluation_scores_localisation_of_the_phantoms_regions(run_dir):
    from medclip_nb.evaluate import eval_datasets, evaluate_model
    from medclip_nb.model import load_model

    model, tokenizer, cfg = load_model(run_dir / "best.pth")
    splits, _ = eval_datasets(cfg.replace(localisation_images=6), tokenizer)
    metrics, arrays = evaluate_model(model, tokenizer, splits, cfg.replace(localisation_images=6), "cpu", seed=0,
                                     log=lambda *_a, **_k: None)
    entry = metrics["localisation"]
    assert 0 < entry["images"] <= 6 and entry["pairs"] >= entry["images"]
    for method in ("similarity", "gradcam"):
        every = entry[method]["all"]
        assert every["n"] == entry["pairs"] and 0 <= every["pointing_game"] <= 1 and 0 <= every["iou"] <= 1
        assert 0 < every["chance_pointing_game"] < 1 and len(every["pointing_game_ci"]) == 2
        assert sum(f["n"] for f in entry[method]["per_finding"].values()) == every["n"]
    scored = arrays.localisation
    assert len(scored["pairs"]) == entry["pairs"] and scored["examples"]
    example = scored["examples"][0]
    assert example["mask"].shape == example["maps"]["gradcam"].shape == (cfg.image_size, cfg.image_size)


def test_predict_heatmap_writes_one_overlay_per_image_and_never_replaces_one(run_dir, test_images, tmp_path, capsys):
    out = tmp_path / "maps"
    argv = ["predict", "--checkpoint", str(run_dir / "best.pth"), *map(str, test_images[:2]), "--heatmap", str(out),
            "--num_workers", "0"]
    assert main([*argv, "--heatmap-method", "gradcam"]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"{p.stem}.png" for p in test_images[:2])
    with Image.open(out / written[0]) as png:
        assert png.format == "PNG" and png.width > 200
    before = (out / written[0]).read_bytes()
    capsys.readouterr()
    assert main(argv) == 2  # files there: refused, untouched
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --heatmap") and "--force" in err[0]
    assert (out / written[0]).read_bytes() == before
    assert main([*argv, "--force"]) == 0
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert main([*argv[:-4], "--heatmap", str(a_file)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: --heatmap")
    pngs = tmp_path / "pngs"  # overlays into the folder of PNG inputs: an input is never replaced
    pngs.mkdir()
    with Image.open(test_images[0]) as image:
        image.save(pngs / "scan.png")
    original = (pngs / "scan.png").read_bytes()
    capsys.readouterr()
    assert main([*argv[:3], str(pngs / "scan.png"), "--heatmap", str(pngs), "--force", "--num_workers", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --heatmap") and "input images" in err[0]
    assert (pngs / "scan.png").read_bytes() == original and sorted(pngs.iterdir()) == [pngs / "scan.png"]
    pretrained = load_pretrained(run_dir / "best.pth")
    maps = pretrained.text_maps(test_images[0], ["pleural effusion", "edema"])
    assert maps.shape == (2, pretrained.config.image_size, pretrained.config.image_size)


def test_localisation_reads_boxes_from_a_csv_for_real_data(run_dir, tiny_dataset, tmp_path):
    from medclip_nb.evaluate import eval_datasets
    from medclip_nb.evaluate.localisation import localisation_pairs
    from medclip_nb.model import load_model

    _model, tokenizer, cfg = load_model(run_dir / "best.pth")
    records = load_dataset_file(tiny_dataset)["test"]
    boxes = tmp_path / "boxes.csv"  # MS-CXR's columns; the first image's box in a 1000 x 1000 frame
    boxes.write_text("dicom_id,category_name,label_text,x,y,w,h,image_width,image_height\n"
                     f"{records[0]['dicom_id']},Pneumonia,left lower lobe opacity,500,500,300,300,1000,1000\n"
                     "not-a-test-image,Edema,edema,0,0,10,10,100,100\n")
    splits, _ = eval_datasets(cfg, tokenizer)
    pairs = localisation_pairs(splits["test"], cfg.replace(localisation_boxes=str(boxes)))
    assert pairs.source.startswith("box table") and pairs.images == 1 and pairs.texts == ["left lower lobe opacity"]
    assert 0 < pairs.masks[0].mean() < 0.25 and pairs.masks[0][-cfg.image_size // 4, -cfg.image_size // 4]
    assert main(["evaluate", "--checkpoint", str(run_dir / "best.pth"), "--out", str(tmp_path / "r"),
                 "--localisation_boxes", str(tmp_path / "missing.csv")]) == 2
