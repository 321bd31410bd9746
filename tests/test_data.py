from __future__ import annotations

import json
import math
import os
import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from medclip_nb.config import Config
from medclip_nb.data import (
    AUGMENT_PRESETS,
    BadImageError,
    BadImageWarning,
    CXRDataset,
    EpochSampler,
    SkippedSample,
    build_datasets,
    build_transforms,
    load_dataset_file,
    load_grayscale,
    make_collate,
    make_loader,
    validate_dataset,
)
from medclip_nb.data.images import _to_grayscale_uint8
from medclip_nb.errors import DataError
from medclip_nb.text.tokenizers import CharTokenizer

NAN = float("nan")


def labels(*values):
    """14 labels: the given leading values, the rest blank (NaN)."""
    return list(values) + [NAN] * (14 - len(values))


def record(path, report="No acute process.", lab=None):
    return {"image_path": path, "report": report, "labels": lab if lab is not None else labels(1.0, 0.0, -1.0)}


def save_gray(path, value=128, size=(40, 30)):
    """A small grayscale JPEG/PNG whose pixels vary, so flips and crops change it."""
    width, height = size
    ramp = (np.arange(width)[None, :] * 255 // max(width - 1, 1) + np.zeros((height, 1), dtype=int)) % 256
    array = ((ramp + value) % 256).astype(np.uint8)
    Image.fromarray(array, mode="L").save(path)
    return array


def small_cfg(**kw):
    base = dict(resize_size=32, image_size=24, augment="medclip", num_workers=0, batch_size=2, eval_batch_size=2)
    base.update(kw)
    return Config(**base)


# ---- dataset files -------------------------------------------------------------------------


class _OpenFileOnLoad:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


class _RunShellOnLoad:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("payload_cls, function", [(_OpenFileOnLoad, open), (_RunShellOnLoad, os.system)])
def test_pickle_with_code_is_refused_before_it_runs(tmp_path, payload_cls, function):
    global_name = f"'{function.__module__}.{function.__name__}'"  # 'io.open', 'posix.system'
    target = tmp_path / "created_by_pickle"
    data_file = tmp_path / "datasets.pkl"
    data_file.write_bytes(pickle.dumps({"train": [payload_cls(str(target))], "val": [], "test": []}))
    with pytest.raises(DataError) as excinfo:
        load_dataset_file(data_file)
    message = str(excinfo.value)
    assert "datasets.pkl" in message and "forbidden global" in message and global_name in message
    assert "\n" not in message
    assert not target.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickle_with_numpy_arrays_loads_and_validates_to_plain_data(tmp_path, protocol):
    lab = np.array([1, 0, -1, np.nan] + [np.nan] * 10, dtype=np.float32)
    data = {
        "train": [{"image_path": "a.jpg", "report": np.str_("Effusion."), "labels": lab, "study_id": np.int64(5)}],
        "val": [{"image_path": "b.jpg", "report": "Clear.", "labels": lab.tolist()}],
        "test": [],
    }
    data_file = tmp_path / "datasets.pkl"
    data_file.write_bytes(pickle.dumps(data, protocol=protocol))
    loaded = load_dataset_file(data_file)
    assert np.array_equal(loaded["train"][0]["labels"], lab, equal_nan=True)
    warns = validate_dataset(loaded, data_file)
    first = loaded["train"][0]
    assert type(first["labels"]) is list and all(type(v) is float for v in first["labels"])
    assert first["labels"][:3] == [1.0, 0.0, -1.0] and math.isnan(first["labels"][3])
    assert type(first["study_id"]) is int and type(first["report"]) is str
    assert any("'test' is empty" in w for w in warns)


def test_pickle_written_by_numpy_1_loads(tmp_path):
    # NumPy 1.x names its pickling helpers numpy.core.*; NumPy 2 moved them to numpy._core.
    blob = pickle.dumps({"train": [np.arange(3.0)], "val": [], "test": []}, protocol=2)
    old_style = blob.replace(b"numpy._core.", b"numpy.core.")
    assert b"numpy.core.multiarray" in old_style
    data_file = tmp_path / "old.pkl"
    data_file.write_bytes(old_style)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NumPy deprecation shim involved
        assert load_dataset_file(data_file)["train"][0].tolist() == [0.0, 1.0, 2.0]


def test_missing_and_broken_dataset_files(tmp_path):
    with pytest.raises(DataError, match="nope.pkl: dataset file not found"):
        load_dataset_file(tmp_path / "nope.pkl")
    broken = tmp_path / "broken.pkl"
    broken.write_bytes(pickle.dumps({"train": []})[:-3])
    with pytest.raises(DataError, match="broken.pkl: not a readable dataset pickle"):
        load_dataset_file(broken)


def test_jsonl_manifest_loads(tmp_path):
    lines = [
        {"split": "train", "image_path": "a.jpg", "report": "One.", "labels": [1, None] + [0] * 12},
        {"split": "validate", "image_path": "b.jpg", "report": "Two.", "labels": [None] * 14},
        {"split": "test", "image_path": "c.jpg", "report": "Three.", "labels": [-1] * 14},
    ]
    manifest = tmp_path / "data.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    splits = load_dataset_file(manifest)
    assert sorted(splits) == ["test", "train", "val"]
    assert validate_dataset(splits, manifest) == []
    assert splits["train"][0]["labels"][0] == 1.0 and math.isnan(splits["train"][0]["labels"][1])
    assert "split" not in splits["train"][0]

    manifest.write_text(json.dumps(lines[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"data.jsonl:2: invalid JSON"):
        load_dataset_file(manifest)


def test_csv_manifest_loads(tmp_path):
    manifest = tmp_path / "data.csv"
    manifest.write_text(
        "split,image_path,report,labels,study_id\n"
        'train,a.jpg,"Small effusion, stable.",1;0;-1;;;;;;;;;;;,50000001\n'
        "val,b.jpg,Clear.,;;;;;;;;;;;;;,\n"
        "test,c.jpg,Clear.,0;0;0;0;0;0;0;0;1;0;0;0;0;0,\n"
    )
    splits = load_dataset_file(manifest)
    validate_dataset(splits, manifest)
    train = splits["train"][0]
    assert train["report"] == "Small effusion, stable."
    assert train["labels"][:3] == [1.0, 0.0, -1.0] and all(math.isnan(v) for v in train["labels"][3:])
    assert train["study_id"] == 50000001 and "study_id" not in splits["val"][0]

    manifest.write_text("split,image_path,report,labels\ntrain,a.jpg,x,1;zero\n")
    with pytest.raises(DataError, match=r"data.csv: line 2: key 'labels': 'zero' is not a number"):
        load_dataset_file(manifest)
    manifest.write_text("split,image_path,report\ntrain,a.jpg,x\n")
    with pytest.raises(DataError, match="missing column"):
        load_dataset_file(manifest)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d["val"][1].pop("report"), r"src.pkl: val\[1\]: key 'report' is missing"),
        (lambda d: d["train"][0].update(image_path=3), r"train\[0\]: key 'image_path' must be a non-empty string"),
        (lambda d: d["train"][1].update(labels=[0.0] * 13), r"train\[1\]: key 'labels' has 13 values, expected 14"),
        (lambda d: d["test"][0]["labels"].__setitem__(4, 2.0), r"test\[0\]: key 'labels'\[4\]: 2.0 is not 1, 0, -1"),
        (lambda d: d["test"][0]["labels"].__setitem__(2, "1"), r"test\[0\]: key 'labels'\[2\]: '1' is not a number"),
        (lambda d: d.pop("test"), r"split 'test' is missing"),
        (lambda d: d.update(val=[]), r"split 'val' is empty"),
    ],
)
def test_validation_errors_name_split_index_and_key(mutate, expected):
    data = {split: [record(f"{split}{i}.jpg") for i in range(2)] for split in ("train", "val", "test")}
    mutate(data)
    with pytest.raises(DataError, match=expected):
        validate_dataset(data, "src.pkl")


def test_leakage_between_splits_is_warned():
    data = {
        "train": [record("p10/a.jpg"), record("p10/b.jpg"), record("p10/c.jpg")],
        "val": [record("p10/./a.jpg")],
        "test": [record("p10/b.jpg"), record("p11/d.jpg")],
    }
    warns = validate_dataset(data, "src.pkl")
    leak = [w for w in warns if "leakage" in w]
    assert len(leak) == 1
    assert "2 image path(s)" in leak[0] and "'p10/./a.jpg' in train and val" in leak[0]


# ---- images --------------------------------------------------------------------------------


def test_rgb_rgba_palette_and_1bit_convert_to_gray(tmp_path):
    rgb = np.zeros((2, 3, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (255, 255, 255)
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "rgb.png")
    gray = load_grayscale(tmp_path / "rgb.png")
    assert gray.dtype == np.uint8 and gray.shape == (2, 3)
    assert gray[0, 0] == 76 and gray[0, 1] == 255 and gray[1, 0] == 0  # ITU-R 601 luma of red: 76

    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 200, 200, 255)  # opaque
    rgba[0, 1] = (200, 200, 200, 0)  # transparent -> black
    rgba[0, 2] = (200, 200, 200, 128)  # half -> about half
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    assert load_grayscale(tmp_path / "rgba.png").tolist()[0][:2] == [200, 0]
    assert abs(int(load_grayscale(tmp_path / "rgba.png")[0, 2]) - 100) <= 1

    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "palette.png")
    # 10*0.299 + 20*0.587 + 30*0.114 = 18.1
    assert load_grayscale(tmp_path / "palette.png").tolist() == [[0, 18]]

    Image.fromarray(np.array([[0, 1]], dtype=bool)).save(tmp_path / "bits.png")
    assert load_grayscale(tmp_path / "bits.png").tolist() == [[0, 255]]


def test_16bit_images_scale_by_full_range_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "i16.png")
    # v * 255 / 65535: 257 -> 1, 32768 -> 127.5 -> 128, 65535 -> 255.
    assert load_grayscale(tmp_path / "i16.png").tolist() == [[0, 1, 128, 255]]
    big_endian = Image.frombytes("I;16B", (4, 1), values.astype(">u2").tobytes())
    assert _to_grayscale_uint8(big_endian, tmp_path / "x").tolist() == [[0, 1, 128, 255]]
    # 32-bit mode "I": out-of-range values are clipped into 0..65535 before scaling.
    mode_i = Image.fromarray(np.array([[-5, 70000, 65535, 32768]], dtype=np.int32))
    assert mode_i.mode == "I"
    assert _to_grayscale_uint8(mode_i, tmp_path / "x").tolist() == [[0, 255, 255, 128]]
    # Only JPEG and PNG files are decoded: a TIFF (or any other format PIL knows) is a bad image.
    big_endian.save(tmp_path / "i16b.tiff")
    with pytest.raises(BadImageError, match="i16b.tiff: not an image file in a format decoded here"):
        load_grayscale(tmp_path / "i16b.tiff")


def test_bad_image_kinds_raise_with_file_and_reason(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is a report, not an image\n")
    save_gray(tmp_path / "full.jpg", size=(64, 64))
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    cases = {
        "missing.jpg": "image file not found",
        "empty.jpg": "empty image file",
        "text.jpg": "not an image file",
        "truncated.jpg": "truncated or corrupt",
    }
    for name, reason in cases.items():
        with pytest.raises(BadImageError) as excinfo:
            load_grayscale(tmp_path / name)
        assert name in str(excinfo.value) and reason in str(excinfo.value)
        assert isinstance(excinfo.value, DataError)


def test_jpeg_draft_decodes_smaller_but_not_below_target(tmp_path):
    save_gray(tmp_path / "big.jpg", size=(800, 600))
    assert load_grayscale(tmp_path / "big.jpg").shape == (600, 800)
    drafted = load_grayscale(tmp_path / "big.jpg", draft_size=128)
    assert drafted.shape == (150, 200)  # 1/4 scale: the smallest power of two keeping both sides >= 128


# ---- dataset, transforms -------------------------------------------------------------------


@pytest.fixture()
def image_dir(tmp_path):
    for i in range(4):
        save_gray(tmp_path / f"img{i}.jpg", value=40 * i, size=(40, 30))
    return tmp_path


def make_dataset(root, cfg, train=True, paths=None, **kw):
    paths = paths or [f"img{i}.jpg" for i in range(4)]
    reports = ["First sentence. Second one here. Third: approx. 2.5 cm."] * len(paths)
    records = [record(p, report=r) for p, r in zip(paths, reports)]
    validate_dataset({"train": records, "val": records[:1], "test": []}, "mem")
    kw.setdefault("on_bad_image", "skip")
    return CXRDataset(records, root=root, transform=build_transforms(cfg, train=train), **kw)


def test_transform_output_shapes_dtypes_and_presets(image_dir):
    cfg = small_cfg()
    for train in (True, False):
        sample = make_dataset(image_dir, cfg, train=train)[0]
        assert sample["pixel_values"].shape == (3, 24, 24) and sample["pixel_values"].dtype == torch.float32
        assert torch.equal(sample["pixel_values"][0], sample["pixel_values"][2])
        assert sample["labels"].dtype == torch.float32 and sample["labels"].shape == (14,)
        assert sample["index"] == 0
    assert AUGMENT_PRESETS["medclip"]["mean"] == 0.5862785803043838
    assert AUGMENT_PRESETS["seed"]["std"] == 0.226 and not AUGMENT_PRESETS["none"]["random"]

    # A uniform image of value v normalises to (v/255 - mean) / std under eval transforms.
    Image.new("L", (30, 30), 200).save(image_dir / "flat.png")
    for preset in ("medclip", "seed"):
        ds = make_dataset(image_dir, small_cfg(augment=preset), train=False, paths=["flat.png"])
        mean, std = AUGMENT_PRESETS[preset]["mean"], AUGMENT_PRESETS[preset]["std"]
        assert torch.allclose(ds[0]["pixel_values"], torch.tensor((200 / 255 - mean) / std), atol=1e-5)


def test_sample_seed_fixes_augmentation_and_sentence(image_dir):
    ds = make_dataset(image_dir, small_cfg(), train=True, report_sampling="sentence")
    a, b = ds[(1, 12345)], ds[(1, 12345)]
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and a["report"] == b["report"]
    assert a["report"] in ("first sentence.", "second one here.", "third: approx. 2.5 cm.")
    others = [ds[(1, seed)] for seed in range(8)]
    assert any(not torch.equal(o["pixel_values"], a["pixel_values"]) for o in others)
    assert len({o["report"] for o in others}) > 1
    # The process's global RNG is left as it was.
    state = torch.get_rng_state()
    ds[(2, 99)]
    assert torch.equal(state, torch.get_rng_state())


def test_no_random_preset_and_raw_uint8(image_dir):
    cfg = small_cfg(augment="none")
    train_ds, eval_ds = make_dataset(image_dir, cfg, train=True), make_dataset(image_dir, cfg, train=False)
    assert torch.equal(train_ds[(0, 1)]["pixel_values"], eval_ds[0]["pixel_values"])

    raw = make_dataset(image_dir, cfg, raw_uint8=True, resize_size=32)
    pixels = raw[(0, 1)]["pixel_values"]
    assert pixels.dtype == torch.uint8 and pixels.shape == (1, 32, 32)
    # 40x30 padded to 40x40 with black rows above and below.
    assert pixels[0, 0].max() == 0 and pixels[0, 16].max() > 0


def test_store_is_used_before_decoding():
    class FakeStore:
        def get(self, key):
            return np.full((32, 32), 7, dtype=np.uint8) if key == "stored.jpg" else None

    ds = CXRDataset(
        [record("stored.jpg"), record("not_stored.jpg")], root="/nonexistent", store=FakeStore(),
        transform=None, on_bad_image="skip", raw_uint8=True, resize_size=32,
    )
    assert torch.all(ds[0]["pixel_values"] == 7)
    with pytest.warns(BadImageWarning):
        assert isinstance(ds[1], SkippedSample)


def test_bad_images_skip_count_and_error_modes(image_dir):
    (image_dir / "empty.jpg").write_bytes(b"")
    (image_dir / "text.jpg").write_text("not an image")
    good = (image_dir / "img0.jpg").read_bytes()
    (image_dir / "truncated.jpg").write_bytes(good[: len(good) // 2])
    paths = ["img0.jpg", "missing.jpg", "empty.jpg", "text.jpg", "truncated.jpg", "img1.jpg"]
    cfg = small_cfg()
    ds = make_dataset(image_dir, cfg, train=False, paths=paths)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        samples = [ds[i] for i in range(len(paths))] + [ds[1]]  # missing.jpg twice: one warning
    assert len([w for w in caught if issubclass(w.category, BadImageWarning)]) == 4

    batch = make_collate(CharTokenizer())(samples)
    assert batch["n_skipped"] == 5
    assert [os.path.basename(p) for p in batch["skipped_paths"]] == [
        "missing.jpg", "empty.jpg", "text.jpg", "truncated.jpg", "missing.jpg",
    ]
    assert batch["index"].tolist() == [0, 5]

    strict = make_dataset(image_dir, cfg, train=False, paths=paths, on_bad_image="error")
    for i in range(1, 5):
        with pytest.raises(BadImageError, match=paths[i]):
            strict[i]


def test_collate_shapes_and_all_skipped_batch(image_dir):
    ds = make_dataset(image_dir, small_cfg(), train=True)
    collate = make_collate(CharTokenizer())
    batch = collate([ds[(i, i)] for i in range(3)])
    assert batch["pixel_values"].shape == (3, 3, 24, 24) and batch["pixel_values"].dtype == torch.float32
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (3, 50)
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == torch.int64
    assert batch["labels"].shape == (3, 14) and batch["labels"].dtype == torch.float32
    assert torch.isnan(batch["labels"][0, 3]) and batch["labels"][0, 2] == -1.0
    assert batch["index"].tolist() == [0, 1, 2] and batch["index"].dtype == torch.int64
    assert batch["n_skipped"] == 0 and batch["skipped_paths"] == []

    empty = collate([SkippedSample("a.jpg", "gone"), None])
    assert empty["n_skipped"] == 2 and empty["skipped_paths"] == ["a.jpg"]
    assert empty["pixel_values"].shape[0] == 0 and empty["input_ids"].shape == (0, 50)
    assert empty["labels"].shape == (0, 14) and empty["index"].shape == (0,)


# ---- sampler -------------------------------------------------------------------------------


def test_sampler_is_deterministic_and_epochs_differ():
    first, second = EpochSampler(50, seed=3), EpochSampler(50, seed=3)
    assert list(first) == list(second)
    epoch0 = list(first)
    assert sorted(i for i, _ in epoch0) == list(range(50))
    seeds = [s for _, s in epoch0]
    assert len(set(seeds)) == 50 and all(0 <= s < 2**63 for s in seeds)
    first.set_epoch(1)
    epoch1 = list(first)
    assert [i for i, _ in epoch1] != [i for i, _ in epoch0]
    assert not set(seeds) & {s for _, s in epoch1}
    assert list(EpochSampler(50, seed=4)) != epoch0
    assert [i for i, _ in EpochSampler(5, seed=3, shuffle=False)] == [0, 1, 2, 3, 4]


def test_set_start_resumes_exactly_the_tail_once():
    sampler = EpochSampler(20, seed=7)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_start(12)
    assert len(sampler) == 8
    assert list(sampler) == full[12:]
    assert len(sampler) == 20 and list(sampler) == full  # applies once
    with pytest.raises(ValueError, match="start 21"):
        sampler.set_start(21)


def test_shards_are_disjoint_equal_and_cover():
    n, world = 10, 3
    shards = [list(EpochSampler(n, seed=1, rank=r, world_size=world)) for r in range(world)]
    assert [len(s) for s in shards] == [4, 4, 4]
    assert {i for shard in shards for i, _ in shard} == set(range(n))
    # Padding repeats two samples, but every (position) seed is distinct.
    all_seeds = [s for shard in shards for _, s in shard]
    assert len(set(all_seeds)) == 12
    # The shards interleave the one global order of the epoch.
    global_order = EpochSampler(n, seed=1).global_order().tolist()
    assert [i for i, _ in shards[0]][:3] == global_order[0:9:3]

    dropped = [list(EpochSampler(n, seed=1, rank=r, world_size=world, drop_last=True)) for r in range(world)]
    indices = [i for shard in dropped for i, _ in shard]
    assert [len(s) for s in dropped] == [3, 3, 3] and len(set(indices)) == 9


# ---- loaders and build_datasets ------------------------------------------------------------


def test_loader_batches_do_not_depend_on_worker_count(image_dir):
    ds = make_dataset(image_dir, small_cfg(), train=True, report_sampling="sentence")
    batches = {}
    for workers in (0, 2):
        cfg = small_cfg(num_workers=workers)
        sampler = EpochSampler(len(ds), seed=cfg.seed)
        loader = make_loader(ds, cfg, train=True, sampler=sampler, collate_fn=make_collate(CharTokenizer()))
        batches[workers] = list(loader)
    assert len(batches[0]) == 2
    for a, b in zip(batches[0], batches[2]):
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["input_ids"], b["input_ids"])


def test_build_datasets_from_manifest(image_dir):
    manifest = image_dir / "manifest.jsonl"
    rows = [
        {"split": split, "image_path": f"img{i}.jpg", "report": "Left effusion. No pneumothorax.", "labels": [0] * 14}
        for split, i in [("train", 0), ("train", 1), ("train", 2), ("val", 3), ("test", 3)]
    ]
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = small_cfg(data_path=str(manifest), debug=True, debug_subset=2, max_text_tokens=8)
    datasets, records, warns = build_datasets(cfg, tokenizer=CharTokenizer(max_length=8))
    assert {k: len(v) for k, v in datasets.items()} == {"train": 2, "val": 1, "test": 1}
    assert len(records["train"]) == 2
    assert any("leakage" in w for w in warns) and any("truncated" in w for w in warns)
    assert datasets["val"][0]["report"] == "left effusion. no pneumothorax."
    assert datasets["train"].root == image_dir
