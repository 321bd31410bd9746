"""Shared records (records.py): the Dataset serves the same samples, in the same order for the
same seed, as the list-of-dicts implementation it replaced."""

import math
import random

import numpy as np
import pytest
import torch
from PIL import Image

from medclip_nb.config import Config
from medclip_nb.data import (
    CXRDataset,
    EpochSampler,
    build_transforms,
    load_grayscale,
    make_collate,
    make_loader,
    validate_dataset,
)
from medclip_nb.data.records import SampleRecords
from medclip_nb.text.clean import clean_report, split_sentences
from medclip_nb.text.tokenizers import CharTokenizer

NAN = float("nan")


def _records(root, n=6):
    out = []
    for i in range(n):
        ramp = (np.arange(36)[None, :] * 7 + np.arange(28)[:, None] * (i + 1)) % 256
        Image.fromarray(ramp.astype(np.uint8), mode="L").save(root / f"im{i}.png")
        labels = [1.0, 0.0, -1.0, None, NAN] + [float(i % 2)] * 9
        report = f"Heart size normal {i}. Lungs clear. No pneumothorax, ümlaut \u2013 dash {i * 'x'}."
        out.append({"image_path": f"im{i}.png", "report": report, "labels": labels, "study_id": 100 + i,
                    "clip_indices": [i, i + 1] if i % 3 else i})
    return out


def _old_sample(record, root, transform, key, sentence):
    """What the list-of-dicts CXRDataset.__getitem__ returned (kept here as the reference)."""
    index, seed = key
    pixels = torch.tensor(load_grayscale(root / record["image_path"], draft_size=32), dtype=torch.uint8).unsqueeze(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        pixels = transform(pixels)
    report = clean_report(record["report"])
    if sentence and split_sentences(report):
        report = random.Random(int(seed)).choice(split_sentences(report))
    labels = torch.tensor([math.nan if v is None else float(v) for v in record["labels"]], dtype=torch.float32)
    return pixels, report, labels, record["clip_indices"]


def test_same_samples_same_order_as_list_of_dicts(tmp_path):
    records = _records(tmp_path)
    validate_dataset({"train": records, "val": records[:1], "test": []}, "mem")
    cfg = Config(resize_size=32, image_size=24, augment="medclip", num_workers=0, batch_size=2, seed=5)
    transform = build_transforms(cfg, train=True)
    dataset = CXRDataset(records, root=tmp_path, transform=transform, on_bad_image="error",
                         report_sampling="sentence", resize_size=32)
    sampler = EpochSampler(len(records), seed=5)
    sampler.set_epoch(1)
    keys = list(sampler)
    assert sorted(k[0] for k in keys) == list(range(len(records)))
    for key in keys:
        new = dataset[key]
        pixels, report, labels, clip = _old_sample(records[key[0]], tmp_path, transform, key, sentence=True)
        assert torch.equal(new["pixel_values"], pixels)
        assert new["report"] == report and new["index"] == key[0]
        assert torch.equal(torch.isnan(new["labels"]), torch.isnan(labels))
        assert torch.equal(torch.nan_to_num(new["labels"]), torch.nan_to_num(labels))
        # A single int is served as a one-item list (validate_clip_indices normalises it so anyway).
        assert new["clip_indices"] == (clip if isinstance(clip, list) else [clip])


def test_loader_with_workers_serves_the_same_batches(tmp_path):
    records = _records(tmp_path)
    validate_dataset({"train": records, "val": records[:1], "test": []}, "mem")
    batches = {}
    for workers in (0, 2):
        cfg = Config(resize_size=32, image_size=24, num_workers=workers, batch_size=2, seed=1)
        dataset = CXRDataset(records, root=tmp_path, transform=build_transforms(cfg, train=True),
                             on_bad_image="error", report_sampling="sentence", resize_size=32)
        loader = make_loader(dataset, cfg, train=True, sampler=EpochSampler(len(records), seed=1),
                             collate_fn=make_collate(CharTokenizer()))
        batches[workers] = [(b["pixel_values"], b["index"], b["input_ids"]) for b in loader]
    assert len(batches[0]) == 3
    for a, b in zip(batches[0], batches[2]):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_sample_records_round_trip_fields(tmp_path):
    records = _records(tmp_path)
    records.append({"image_path": "lone\udcff.png", "report": "", "labels": [NAN] * 14})
    packed = SampleRecords(records)
    assert len(packed) == len(records) and SampleRecords.of(packed) is packed
    for i, record in enumerate(records):
        assert packed.image_path(i) == record["image_path"] and packed.report(i) == record["report"]
        expected = np.array([NAN if v is None else v for v in record["labels"]], dtype=np.float32)
        np.testing.assert_array_equal(packed.labels(i), expected)
        if "clip_indices" in record:
            assert packed.clip_indices(i) == list(np.atleast_1d(record["clip_indices"]))
        else:
            assert packed.clip_indices(i) is None and "clip_indices" not in packed[i]
    assert packed[-1]["image_path"] == "lone\udcff.png"
    assert [r["report"] for r in packed] == [r["report"] for r in records]
    with pytest.raises(ValueError):
        packed.labels(0)[0] = 5.0  # the shared arrays are read-only views
    with pytest.raises(IndexError):
        packed[len(records)]
