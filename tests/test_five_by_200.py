"""MedCLIP's own 5x200 rule (data/five_by_200.py) against a restatement of its script
(examples/process_chexpert.py, commit f8599d2) that makes the same pandas calls, on a
CheXpert-shaped label table the test writes; and, when present, on CheXpert's real train table."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medclip_nb.data.five_by_200 import medclip_5x200, select_5x200_gloria, select_5x200_medclip
from medclip_nb.labels import CHEXPERT_LABELS, COMPETITION_TASKS

# CheXpert's own column order (Lung Opacity before Lung Lesion), as train.csv has it.
CHEXPERT_CSV_LABELS = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
                       "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
                       "Pleural Other", "Fracture", "Support Devices"]
# MedCLIP's CHEXPERT_TASKS order, which its index vector follows (index[6] = No Finding is never tested).
MEDCLIP_TASKS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion",
                 "Enlarged Cardiomediastinum", "No Finding", "Lung Lesion", "Lung Opacity", "Pneumonia",
                 "Pneumothorax", "Pleural Other", "Fracture", "Support Devices"]


def chexpert_table(n: int, seed: int) -> pd.DataFrame:
    """A train.csv-shaped table: Path, Sex, Age, Frontal/Lateral, AP/PA and the 14 findings with
    1 / 0 / -1 / blank, rich in single-finding rows so every pool has more than 400 rows."""
    rng = np.random.default_rng(seed)
    values = rng.choice([np.nan, 0.0, -1.0], size=(n, 14), p=[0.6, 0.3, 0.1])
    single = rng.random(n) < 0.75
    values[single] = np.where(rng.random((single.sum(), 14)) < 0.2, -1.0, np.nan)
    for row in np.flatnonzero(single):
        values[row, CHEXPERT_CSV_LABELS.index(COMPETITION_TASKS[rng.integers(5)])] = 1.0
    lateral = rng.random(n) < 0.2
    frame = pd.DataFrame(values, columns=CHEXPERT_CSV_LABELS)
    frame.insert(0, "Path", [f"CheXpert-v1.0-small/train/patient{i:05d}/study1/view{1 + int(lat)}_"
                             f"{'lateral' if lat else 'frontal'}.jpg" for i, lat in enumerate(lateral)])
    frame.insert(1, "Sex", np.where(rng.random(n) < 0.5, "Female", "Male"))
    frame.insert(2, "Age", rng.integers(18, 90, n))
    frame.insert(3, "Frontal/Lateral", np.where(lateral, "Lateral", "Frontal"))
    frame.insert(4, "AP/PA", np.where(lateral, None, np.where(rng.random(n) < 0.7, "AP", "PA")))
    return frame


def medclip_script(train_csv: Path) -> tuple[list[int], list[int]]:
    """process_chexpert.py's selection, line by line: seed, fillna(0), -1 -> 0, the 13-column
    mask per class, sample(n=400), concat, sample(frac=0.5); the row numbers of train.csv of
    the 5x200 and of the finetune half, in the files' order."""
    np.random.seed(42)
    df = pd.read_csv(train_csv)
    df = df.fillna(0)
    df = df.replace({-1: 0})
    task_dfs = []
    for i in range(len(COMPETITION_TASKS)):
        index = np.zeros(14)
        index[i] = 1
        mask = np.ones(len(df), dtype=bool)
        for position, name in enumerate(MEDCLIP_TASKS):
            if position != 6:
                mask &= df[name].to_numpy() == index[position]
        task_dfs.append(df[mask].sample(n=400))
    df_400 = pd.concat(task_dfs)
    df_200 = df_400.sample(frac=0.5)
    finetune = df_400[~df_400["Path"].isin(df_200["Path"])]
    return df_200.index.tolist(), finetune.index.tolist()


def ours_on(train_csv: Path):
    table = pd.read_csv(train_csv)
    return medclip_5x200(table[list(CHEXPERT_LABELS)].to_numpy(dtype=np.float64))


def test_medclip_rule_gives_the_rows_of_medclips_script_in_its_order(tmp_path):
    train_csv = tmp_path / "train.csv"
    chexpert_table(6000, seed=3).to_csv(train_csv, index=False)
    rows, finetune = medclip_script(train_csv)
    draw = ours_on(train_csv)
    assert len(rows) == 1000 and draw.short_pools == []
    assert draw.rows.tolist() == rows
    assert draw.finetune_rows.tolist() == finetune
    table = pd.read_csv(train_csv)
    expected = [COMPETITION_TASKS.index(next(t for t in COMPETITION_TASKS if table.loc[r, t] == 1)) for r in rows]
    assert draw.classes.tolist() == expected
    # What makes it MedCLIP's: laterals are in, and a -1 elsewhere does not disqualify a row.
    assert (table.loc[rows, "Frontal/Lateral"] == "Lateral").any()
    assert (table.loc[rows, list(CHEXPERT_LABELS)] == -1).any(axis=1).any()
    assert select_5x200_medclip(table[list(CHEXPERT_LABELS)].to_numpy())[0].tolist() == rows


def test_medclip_rule_per_class_and_short_pools():
    table = chexpert_table(600, seed=1)[list(CHEXPERT_LABELS)].to_numpy(dtype=np.float64)
    small = medclip_5x200(table, per_class=10)
    assert len(small.rows) == 50 and len(small.finetune_rows) == 50 and small.short_pools == []
    assert sorted(set(small.rows) & set(small.finetune_rows)) == []
    whole = medclip_5x200(table, per_class=200)  # ~90 rows per pool: each taken whole, the stream unchanged
    assert whole.short_pools == list(COMPETITION_TASKS)
    assert len(whole.rows) == round(0.5 * sum(whole.pool_sizes.values()))
    with pytest.raises(ValueError, match="per_class"):
        medclip_5x200(table, per_class=0)


def test_gloria_and_medclip_rules_differ_where_the_issue_says():
    # row 0: Atelectasis with a -1 elsewhere; row 1: a lateral Edema; row 2: a clean frontal Effusion.
    labels = np.full((3, 14), np.nan)
    labels[0, CHEXPERT_LABELS.index("Atelectasis")] = 1
    labels[0, CHEXPERT_LABELS.index("Pneumonia")] = -1
    labels[1, CHEXPERT_LABELS.index("Edema")] = 1
    labels[2, CHEXPERT_LABELS.index("Pleural Effusion")] = 1
    frontal = np.array([True, False, True])
    assert select_5x200_gloria(labels, frontal=frontal)[0].tolist() == [2]
    assert sorted(medclip_5x200(labels, per_class=1).rows.tolist() + medclip_5x200(labels, per_class=1)
                  .finetune_rows.tolist()) == [0, 1, 2]


# ---- CheXpert's real train table (public, in the torchxrayvision wheel; never committed) ----------------------
# The first rows of MedCLIP's shipped local_data/chexpert-5x200-val-meta.csv (commit 0c33a61): row number in
# train.csv, path under CheXpert-v1.0-small/train/, and the class.
MEDCLIP_SHIPPED_ROWS = [
    (205469, "patient52284/study5/view2_lateral.jpg", "Atelectasis"),
    (133942, "patient32146/study3/view1_frontal.jpg", "Edema"),
    (14551, "patient03615/study1/view2_lateral.jpg", "Cardiomegaly"),
    (28058, "patient06853/study1/view1_frontal.jpg", "Pleural Effusion"),
    (21701, "patient05285/study1/view1_frontal.jpg", "Edema"),
    (192691, "patient46560/study1/view1_frontal.jpg", "Atelectasis"),
    (203179, "patient51010/study3/view1_frontal.jpg", "Pleural Effusion"),
    (71946, "patient17251/study3/view1_frontal.jpg", "Edema"),
    (170810, "patient39826/study6/view1_frontal.jpg", "Pleural Effusion"),
]


def real_chexpert_train_table() -> Path | None:
    """CheXpert's train.csv: $CHEXPERT_TRAIN_CSV, or torchxrayvision's copy when it is installed."""
    if os.environ.get("CHEXPERT_TRAIN_CSV"):
        return Path(os.environ["CHEXPERT_TRAIN_CSV"])
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "chexpert_train.csv.gz"
    return path if path.is_file() else None


@pytest.mark.skipif(real_chexpert_train_table() is None,
                    reason="CheXpert's train table is absent (set CHEXPERT_TRAIN_CSV or install torchxrayvision)")
def test_medclip_rule_rebuilds_medclips_published_chexpert_5x200_from_the_real_table():
    path = real_chexpert_train_table()
    table = pd.read_csv(path, compression="gzip" if path.suffix == ".gz" else None)
    assert len(table) == 223414
    draw = medclip_5x200(table[list(CHEXPERT_LABELS)].to_numpy(dtype=np.float64))
    shipped = [(int(r), str(table.loc[r, "Path"]).split("/train/")[1], COMPETITION_TASKS[c])
               for r, c in zip(draw.rows[:9], draw.classes[:9])]
    assert shipped == MEDCLIP_SHIPPED_ROWS
    digest = hashlib.sha256(",".join(str(i) for i in draw.rows).encode()).hexdigest()
    assert digest == "d118a5fdd723de0c6dcf961a4c4efee18948fdef20c9eba9cf054fd9489008ef"
    assert np.bincount(draw.classes).tolist() == [215, 197, 200, 188, 200]
    with gzip.open(path, "rt") if path.suffix == ".gz" else open(path) as f:
        assert f.readline().startswith("Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding")
