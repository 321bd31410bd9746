"""train_fraction: a seeded share of the training patients, nested across fractions."""

from __future__ import annotations

import pytest

from medclip_nb.config import Config
from medclip_nb.data.train_fraction import keep_train_fraction
from medclip_nb.errors import ConfigError


def records(patients=20, images_each=(1, 2, 3)):
    out = []
    for p in range(patients):
        for k in range(images_each[p % len(images_each)]):
            out.append({"subject_id": p, "study_id": 1000 + p, "image_path": f"p{p}_{k}.jpg"})
    return out


def test_whole_patients_about_the_fraction_and_seeded():
    data = records()
    kept = keep_train_fraction(data, 0.3, seed=1)
    patients = {r["subject_id"] for r in kept}
    assert all(sum(r["subject_id"] == p for r in kept) == sum(r["subject_id"] == p for r in data) for p in patients)
    assert 0.3 * len(data) <= len(kept) < 0.3 * len(data) + 3  # overshoot: at most one patient
    assert kept == keep_train_fraction(data, 0.3, seed=1) and kept != keep_train_fraction(data, 0.3, seed=2)
    assert [r for r in data if r in kept] == kept  # original order


def test_fractions_are_nested_and_one_keeps_everything():
    data = records()
    small, large = keep_train_fraction(data, 0.1, 3), keep_train_fraction(data, 0.5, 3)
    assert small and all(r in large for r in small)
    assert keep_train_fraction(data, 1.0, 3) == data
    no_ids = [{"image_path": f"{i}.jpg"} for i in range(10)]
    assert len(keep_train_fraction(no_ids, 0.3, 0)) == 3


def test_train_fraction_key_is_checked():
    with pytest.raises(ConfigError, match="'train_fraction'"):
        Config(train_fraction=0.0)
    with pytest.raises(ConfigError, match="'train_fraction'"):
        Config(train_fraction=1.5)


def test_build_datasets_keeps_the_fraction_of_train_only(tmp_path):
    import json

    from medclip_nb.data import build_datasets

    lines = [json.dumps({"split": s, "image_path": f"{s}{i}.png", "report": "Heart normal.", "labels": [None] * 14,
                         "subject_id": i // 2})
             for s, n in (("train", 20), ("val", 4), ("test", 4)) for i in range(n)]
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    cfg = Config(data_path=str(tmp_path / "data.jsonl"), train_fraction=0.3, num_workers=0)
    splits, _, _ = build_datasets(cfg)
    assert len(splits["train"]) == 6 and splits["train"].full_size == 20
    assert len(splits["val"]) == 4 and len(splits["test"]) == 4
