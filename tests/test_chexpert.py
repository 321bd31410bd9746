"""prepare-chexpert end to end on a phantom CheXpert tree: the records, MedCLIP's 5x200 and its removal
from the training side, one-line errors, and a training run whose unpaired images come from it."""

from __future__ import annotations

import contextlib
import io
import math
import pickle

import numpy as np
import pandas as pd
import pytest

from medclip_nb.cli import main
from medclip_nb.config import from_dict
from medclip_nb.data.five_by_200 import medclip_5x200
from medclip_nb.labels import CHEXPERT_LABELS, COMPETITION_TASKS

pytestmark = pytest.mark.usefixtures("one_thread_no_bars")  # tests/conftest.py


def quiet(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def chexpert(tmp_path_factory) -> dict:
    """A phantom CheXpert tree (`phantom --layout chexpert`) imported with `prepare-chexpert`."""
    root = tmp_path_factory.mktemp("chexpert")
    code, _, err = quiet(["phantom", "--layout", "chexpert", "--out", str(root / "tree"), "--studies", "300",
                          "--size", "32"])
    assert code == 0, err
    code, printed, err = quiet(["prepare-chexpert", "--chexpert-root", str(root / "tree" / "CheXpert-v1.0-small"),
                                "--out", str(root / "prepared"), "--per-class", "4", "--num-workers", "0"])
    assert code == 0, err
    return {"root": root, "tree": root / "tree" / "CheXpert-v1.0-small", "printed": printed,
            "data": pickle.loads((root / "prepared" / "datasets.pkl").read_bytes()),
            "path": root / "prepared" / "datasets.pkl"}


def test_phantom_tree_has_chexperts_layout(chexpert):
    train = pd.read_csv(chexpert["tree"] / "train.csv")
    assert list(train.columns[:5]) == ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"]
    assert set(train.columns[5:]) == set(CHEXPERT_LABELS)
    pattern = r"CheXpert-v1\.0-small/train/patient\d{5}/study\d+/view\d_(frontal|lateral)\.jpg$"
    assert train["Path"].str.match(pattern).all()
    assert (train["Frontal/Lateral"] == "Lateral").any() and train.loc[train["Frontal/Lateral"] == "Lateral",
                                                                         "AP/PA"].isna().all()
    assert set(np.unique(train[list(CHEXPERT_LABELS)].fillna(9).to_numpy())) <= {1.0, 0.0, -1.0, 9.0}
    valid = pd.read_csv(chexpert["tree"] / "valid.csv")
    assert len(valid) and set(np.unique(valid[list(CHEXPERT_LABELS)].to_numpy())) <= {0.0, 1.0}
    first = chexpert["tree"].parent / train["Path"].iloc[0]
    assert first.is_file() and first.stat().st_size > 0


def test_import_holds_medclips_5x200_and_the_rest_as_image_only_records(chexpert):
    data, train = chexpert["data"], pd.read_csv(chexpert["tree"] / "train.csv")
    draw = medclip_5x200(train[list(CHEXPERT_LABELS)].to_numpy(dtype=np.float64), per_class=4)
    five = data["chexpert_5x200"]
    assert [r["row"] for r in five] == draw.rows.tolist()  # MedCLIP's rows, in its order
    assert [r["class"] for r in five] == [COMPETITION_TASKS[c] for c in draw.classes]
    assert [r["chexpert_path"] for r in five] == train["Path"].iloc[draw.rows].tolist()
    images = data["train_images"]
    assert len(images) + len(five) == len(train)
    assert not {r["chexpert_path"] for r in images} & {r["chexpert_path"] for r in five}  # removed by image path
    assert {r["row"] for r in images} >= set(draw.finetune_rows.tolist())  # MedCLIP keeps the other half
    record = images[0]
    assert record["report"] == "" and len(record["labels"]) == 14
    assert (chexpert["path"].parent / record["image_path"]).resolve() == \
        (chexpert["tree"].parent / record["chexpert_path"]).resolve()
    assert {r["view"] for r in images} >= {"LATERAL"} and {r["view"] for r in images} & {"AP", "PA"}
    raw = train[list(CHEXPERT_LABELS)].to_numpy(dtype=np.float64)[record["row"]]
    assert np.array_equal(np.nan_to_num(raw, nan=9), np.nan_to_num(np.array(record["labels"]), nan=9))  # as read
    assert len(data["chexpert_valid"]) == len(pd.read_csv(chexpert["tree"] / "valid.csv"))
    assert "chexpert_5x200 (MedCLIP's rule, seed 42): 20 images" in chexpert["printed"] and not draw.short_pools


def test_import_errors_are_one_line(chexpert, tmp_path):
    code, _, err = quiet(["prepare-chexpert", "--chexpert-root", str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2 and err.count("\n") == 1 and "train.csv" in err
    bad = tmp_path / "bad"
    bad.mkdir()
    table = pd.read_csv(chexpert["tree"] / "train.csv")
    table.loc[3, "Edema"] = 2.0
    table.to_csv(bad / "train.csv", index=False)
    code, _, err = quiet(["prepare-chexpert", "--chexpert-root", str(bad), "--out", str(tmp_path / "o")])
    assert code == 2 and "row 5 column 'Edema' holds" in err and err.count("\n") == 1
    table.drop(columns="AP/PA").to_csv(bad / "train.csv", index=False)
    code, _, err = quiet(["prepare-chexpert", "--chexpert-root", str(bad), "--out", str(tmp_path / "o")])
    assert code == 2 and "lacks column 'AP/PA'" in err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "datasets.pkl").write_bytes(b"not ours")
    code, _, err = quiet(["prepare-chexpert", "--chexpert-root", str(chexpert["tree"]), "--out", str(mine)])
    assert code == 2 and "refusing to overwrite" in err and (mine / "datasets.pkl").read_bytes() == b"not ours"


def test_missing_images_are_dropped_and_counted(chexpert, tmp_path):
    from medclip_nb.data.chexpert import prepare_chexpert

    tree = tmp_path / "CheXpert-v1.0-small"
    tree.mkdir()
    train = pd.read_csv(chexpert["tree"] / "train.csv")
    train.to_csv(tree / "train.csv", index=False)
    for path in train["Path"].iloc[2:]:  # every image but the first two
        target = tmp_path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((chexpert["tree"].parent / path).read_bytes())
    report = prepare_chexpert(tree, tmp_path / "out", per_class=4, num_workers=0, log=lambda *_: None)
    dropped = report["dropped"]
    assert dropped["train_images"]["missing_image"] + dropped["chexpert_5x200"]["missing_image"] == 2
    assert report["kept"]["train_images"] + report["kept"]["chexpert_5x200"] == len(train) - 2
    assert report["medclip_published_sample_matches"] is False and report["rule"]["draw_per_class"] == 8


def test_its_image_only_records_train_with_unpaired_sources(chexpert, tmp_path, monkeypatch):
    """The MIMIC pairs of a tiny phantom plus the imported CheXpert images, each with a prompt sentence of the
    sentence table sampled from its labels (image_only_text: prompt_sentence), MedCLIP's label encodings and its
    EDA view: a short run whose every step has the CheXpert rows as pairs after the MIMIC ones."""
    from medclip_nb.data.mimic import prepare_mimic
    from medclip_nb.model.losses import ContrastiveLoss
    from medclip_nb.phantom import generate_phantom
    from medclip_nb.train import train

    generate_phantom(tmp_path / "mimic", studies=40, size=32)
    with contextlib.redirect_stdout(io.StringIO()):
        prepare_mimic(tmp_path / "mimic", tmp_path / "prepared", num_workers=0)
    seen = []
    compute = ContrastiveLoss.compute

    def recording(self, outputs, labels=None, text_labels=None, num_pairs=None, **kw):
        image_side, _ = self.side_labels(labels, text_labels)
        seen.append((outputs["image_embeds"].shape[0], outputs["text_embeds"].shape[0], num_pairs,
                     float((labels == -1).sum()), float((image_side == -1).sum())))
        return compute(self, outputs, labels, text_labels, num_pairs, **kw)

    monkeypatch.setattr(ContrastiveLoss, "compute", recording)
    lines: list[str] = []
    cfg = from_dict(dict(
        data_path=str(tmp_path / "prepared" / "datasets.pkl"), model_save_path=str(tmp_path / "run"), image_size=32,
        resize_size=32, vision_backbone="small_cnn", text_layers=1, text_width=32, text_heads=2, embed_dim=16,
        vocab_size=200, max_text_tokens=32, batch_size=4, eval_batch_size=8, max_steps=3, num_workers=0,
        log_every=1, eval_steps=1000, save_steps=1000, lr=1e-4, seed=3, loss="medclip", report_sampling="sentence",
        sentence_labels="auto", short_sentence_tokens=4, unpaired_sources=["images"], unpaired_per_batch=3,
        unpaired_data_path=str(chexpert["path"]), image_only_text="prompt_sentence", image_uncertain_labels="zero",
        text_eda_view=True))
    result = train(cfg, log=lines.append)
    assert result.steps == 3 and all(math.isfinite(r["loss"]) for r in result.history if r["split"] == "train")
    train_calls = [s for s in seen if s[2] is not None]
    # 4 MIMIC pairs + 3 CheXpert images with their prompt sentences; the EDA view is a second call of 7 texts
    assert len(train_calls) == 6 and all(s[:3] == (7, 7, 7) for s in train_calls)
    assert sum(s[3] for s in train_calls) > 0 and all(s[4] == 0 for s in train_calls)  # image side: -1 read as 0
    assert any(line.startswith("Sentence labels: ") and "training sentences" in line for line in lines)
    assert any("unpaired: images" in line for line in lines)


def test_the_chexpert_phantom_replaces_only_its_own_files(tmp_path):
    base = ["phantom", "--layout", "chexpert", "--out", str(tmp_path), "--studies", "12", "--size", "16"]
    assert quiet(base)[0] == 0
    tree = tmp_path / "CheXpert-v1.0-small"
    image = sorted(tree.rglob("*.jpg"))[0]
    assert quiet(base)[0] == 0 and image.is_file()  # the same arguments: written again
    code, _, err = quiet([*base[:-1], "20"])  # other arguments: only with --force
    assert code == 2 and err.startswith("error: ") and "--force" in err and "size 16 -> 20" in err
    assert image.is_file()
    notes = image.parent / "notes.txt"  # a file the generator never writes: never deleted
    notes.write_text("mine")
    code, _, err = quiet([*base[:-1], "20", "--force"])
    assert code == 2 and "notes.txt" in err and notes.read_text() == "mine" and image.is_file()
    notes.unlink()
    assert quiet([*base[:-1], "20", "--force"])[0] == 0
    code, _, err = quiet([*base, "--test-studies", "5"])
    assert code == 2 and "--test-studies" in err
