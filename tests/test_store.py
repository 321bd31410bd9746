"""uint8 image store: build, open, get, resume, refusal of a mismatched store, failed images."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from medclip_nb.config import Config
from medclip_nb.data import CXRDataset, build_transforms, load_grayscale
from medclip_nb.data import store_build as store_module
from medclip_nb.data.images import build_resize_transform
from medclip_nb.data.store import ImageStore, default_store_dir, find_store
from medclip_nb.data.store_build import build_store
from medclip_nb.errors import DataError

SIZE = 32
NO_LABELS = [None] * 14


def _xray(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth grey image with a bright blob: JPEG keeps it close, so decoding is meaningful."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    cy, cx = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
    blob = 150 * np.exp(-(((yy - cy) / (0.2 * height)) ** 2 + ((xx - cx) / (0.2 * width)) ** 2))
    return np.clip(40 + 60 * xx / width + blob, 0, 255).astype(np.uint8)


def _write_dataset(folder, shapes, extra_records=()):
    """JPEGs of the given (height, width) shapes plus a JSON Lines manifest over train/val/test;
    the last image appears in two splits (deduplicated by the store)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "img").mkdir(exist_ok=True)
    names = []
    for i, (h, w) in enumerate(shapes):
        name = f"img/{i:03d}.jpg"
        Image.fromarray(_xray(h, w, i), mode="L").save(folder / name, quality=95)
        names.append(name)
    splits = ["train"] * (len(names) - 2) + ["val", "test"]
    rows = [{"split": s, "image_path": n, "report": f"report {n}", "labels": NO_LABELS} for s, n in zip(splits, names)]
    rows.append({"split": "train", "image_path": names[-1], "report": "again", "labels": NO_LABELS})
    rows.extend(extra_records)
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return manifest, names


def _direct(path, size=SIZE) -> np.ndarray:
    """What the CPU path makes of a file: draft decode, pad to square, resize."""
    pixels = torch.from_numpy(load_grayscale(path, draft_size=size)).unsqueeze(0)
    return build_resize_transform(size)(pixels)[0].numpy()


SHAPES = [(48, 40), (40, 48), (64, 64), (50, 30), (36, 36), (45, 60)]


@pytest.fixture
def dataset(tmp_path):
    return _write_dataset(tmp_path / "ds", SHAPES)


def test_build_open_get_equals_direct_decode(dataset):
    manifest, names = dataset
    folder = build_store(manifest, size=SIZE, num_workers=0)
    assert folder == manifest.parent / f"image_store_{SIZE}" == default_store_dir(manifest, SIZE)
    store = ImageStore.open(folder, expected_source=manifest, expected_size=SIZE)
    assert len(store) == len(names)  # the duplicated path is stored once
    assert store.size == SIZE and store.failed == {}
    for name in names:
        got = store.get(name)
        assert got.dtype == np.uint8 and got.shape == (SIZE, SIZE)
        np.testing.assert_array_equal(got, _direct(manifest.parent / name))
    assert store.get("img/not-there.jpg") is None
    # Non-square images are padded, centred, with black: a 48x40 image leaves 4 px bars left and right
    # at 48 px, 32 * 4 / 48 = 2.67 px at 32 px, so the outermost columns are black.
    assert store.get(names[0])[:, 0].max() == 0 and store.get(names[0])[:, -1].max() == 0
    index = json.loads((store_module.current_build(folder) / "index.json").read_text())
    assert index["meta"]["source"] == str(manifest) and index["meta"]["count"] == len(names)
    assert index["meta"]["complete"] is True and index["rows"][names[2]] == 2


def test_pool_build_equals_in_process_build(dataset, tmp_path):
    manifest, names = dataset
    serial = ImageStore.open(build_store(manifest, tmp_path / "serial", size=SIZE, num_workers=0))
    pooled = ImageStore.open(build_store(manifest, tmp_path / "pooled", size=SIZE, num_workers=2))
    np.testing.assert_array_equal(np.asarray(serial.images), np.asarray(pooled.images))


def test_interrupted_build_resumes_only_missing_rows(dataset, tmp_path, monkeypatch):
    manifest, names = dataset
    clean = ImageStore.open(build_store(manifest, tmp_path / "clean", size=SIZE, num_workers=0))
    real_decode = store_module.decode_for_store
    decoded: list[str] = []
    stop_after = 2

    def decode_then_crash(path, size):
        if len(decoded) == stop_after:
            raise KeyboardInterrupt  # the user stops the build
        decoded.append(str(path))
        return real_decode(path, size)

    monkeypatch.setattr(store_module, "decode_for_store", decode_then_crash)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        build_store(manifest, out, size=SIZE, num_workers=0)
    (partial,) = (out / "builds").iterdir()
    assert np.load(partial / "done.npy").sum() == stop_after
    with pytest.raises(DataError, match="incomplete"):
        ImageStore.open(out)

    decoded.clear()
    monkeypatch.setattr(store_module, "decode_for_store", lambda path,
                        size: decoded.append(str(path)) or real_decode(path, size))
    build_store(manifest, out, size=SIZE, num_workers=0)
    assert len(decoded) == len(names) - stop_after
    assert set(decoded) == {str(manifest.parent / n) for n in names[stop_after:]}
    resumed = ImageStore.open(out, expected_source=manifest, expected_size=SIZE)
    np.testing.assert_array_equal(np.asarray(resumed.images), np.asarray(clean.images))

    decoded.clear()
    build_store(manifest, out, size=SIZE, num_workers=0)  # complete: nothing to decode
    assert decoded == []


def test_open_refuses_other_size_or_source(dataset, tmp_path):
    manifest, names = dataset
    folder = build_store(manifest, size=SIZE, num_workers=0)
    with pytest.raises(DataError, match=f"built from .*manifest.jsonl at {SIZE} px, not .* at 24 px: rebuild"):
        ImageStore.open(folder, expected_source=manifest, expected_size=24)
    other, _ = _write_dataset(tmp_path / "other", SHAPES[:3])
    with pytest.raises(DataError, match="other/manifest.jsonl at 32 px"):
        ImageStore.open(folder, expected_source=other, expected_size=SIZE)
    with pytest.raises(DataError, match="image store not found"):
        ImageStore.open(tmp_path / "nowhere")


def test_open_refuses_store_older_than_a_changed_dataset(dataset):
    manifest, names = dataset
    folder = build_store(manifest, size=SIZE, num_workers=0)
    # Rewritten with the same images (a prepare re-run): still valid.
    text = manifest.read_text()
    manifest.write_text(text)
    os.utime(manifest, (1, 1))
    ImageStore.open(folder, expected_source=manifest, expected_size=SIZE)
    # Rewritten with one image fewer: refused, naming the dataset file.
    manifest.write_text("\n".join(line for line in text.splitlines() if names[1] not in line) + "\n")
    with pytest.raises(DataError, match="older than .*manifest.jsonl, which now lists other images"):
        ImageStore.open(folder, expected_source=manifest, expected_size=SIZE)


def test_unreadable_images_are_recorded_not_written(tmp_path):
    broken = [{"split": "train", "image_path": "img/corrupt.jpg", "report": "r", "labels": NO_LABELS},
              {"split": "train", "image_path": "img/missing.jpg", "report": "r", "labels": NO_LABELS}]
    manifest, names = _write_dataset(tmp_path / "ds", SHAPES[:3], extra_records=broken)
    (manifest.parent / "img" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    folder = build_store(manifest, size=SIZE, num_workers=0)
    store = ImageStore.open(folder, expected_source=manifest, expected_size=SIZE)
    assert set(store.failed) == {"img/corrupt.jpg", "img/missing.jpg"}
    assert "not found" in store.failed["img/missing.jpg"]
    assert "corrupt.jpg" in store.failed["img/corrupt.jpg"]
    assert store.get("img/corrupt.jpg") is None and "img/missing.jpg" not in store
    failed_rows = [store.rows[p] for p in store.failed]
    assert not np.asarray(store.images)[failed_rows].any()  # rows left empty, nothing substituted
    for name in names:
        np.testing.assert_array_equal(store.get(name), _direct(manifest.parent / name))


def test_find_store_follows_the_config(dataset, tmp_path):
    manifest, _ = dataset
    cfg = Config(data_path=str(manifest), image_store="auto", image_size=SIZE, resize_size=SIZE)
    assert find_store(cfg) is None  # 'auto' and none built yet
    assert find_store(cfg.replace(image_store=None)) is None
    build_store(manifest, size=SIZE, num_workers=0)
    assert find_store(cfg).size == SIZE
    explicit = build_store(manifest, tmp_path / "explicit", size=24, num_workers=0)
    with pytest.raises(DataError, match="at 24 px, not .* at 32 px"):
        find_store(cfg.replace(image_store=str(explicit)))


def test_dataset_reads_the_same_pixels_from_the_store(dataset):
    manifest, names = dataset
    store = ImageStore.open(build_store(manifest, size=SIZE, num_workers=0))
    cfg = Config(data_path=str(manifest), image_size=28, resize_size=SIZE)
    records = [{"image_path": n, "report": "r", "labels": NO_LABELS} for n in names]
    kwargs = dict(root=manifest.parent, transform=build_transforms(cfg, train=False), on_bad_image="error",
                  resize_size=SIZE)
    from_jpeg, from_store = CXRDataset(records, **kwargs), CXRDataset(records, store=store, **kwargs)
    for i in range(len(records)):
        torch.testing.assert_close(from_store[i]["pixel_values"], from_jpeg[i]["pixel_values"], rtol=0, atol=0)


def test_changed_image_files_are_decoded_again_and_refused_until_then(dataset, monkeypatch):
    manifest, names = dataset
    folder = build_store(manifest, size=SIZE, num_workers=0)
    changed = manifest.parent / names[3]
    Image.fromarray(255 - _xray(50, 30, 3), mode="L").save(changed, quality=95)  # same path, new image
    os.utime(changed, ns=(10**18, 10**18))
    manifest.write_text(manifest.read_text())  # a prepare re-run rewrites the dataset file too
    with pytest.raises(DataError, match="1 of its image files changed since they were stored: rebuild"):
        ImageStore.open(folder, expected_source=manifest, expected_size=SIZE)

    real_decode = store_module.decode_for_store
    decoded: list[str] = []
    monkeypatch.setattr(store_module, "decode_for_store", lambda path,
                        size: decoded.append(str(path)) or real_decode(path, size))
    build_store(manifest, size=SIZE, num_workers=0)
    assert decoded == [str(changed)]
    store = ImageStore.open(folder, expected_source=manifest, expected_size=SIZE)
    np.testing.assert_array_equal(store.get(names[3]), _direct(changed))
