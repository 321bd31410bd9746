"""MedCLIP's training choices that the config can select, each against a restatement of MedCLIP's code on the
same inputs: EDA (textaugment 1.3.4 as its collator calls it) and the EDA view's loss term, the label encoding
per side, the prompt sentence of an image-only item, the weight-decay exemptions, the NegBio table."""

from __future__ import annotations

import contextlib
import io
import pickle
import random

import numpy as np
import pandas as pd
import pytest
import torch

from medclip_nb.config import Config
from medclip_nb.errors import ConfigError
from medclip_nb.labels import CHEXPERT_LABELS, LABEL_INDEX
from medclip_nb.model.losses import ContrastiveLoss, medclip_loss
from medclip_nb.text.augment import medclip_eda
from medclip_nb.text.prompt_sentences import PromptSentences

pytestmark = pytest.mark.usefixtures("one_thread_no_bars")  # tests/conftest.py


# ---- EDA ------------------------------------------------------------------------------------------------------
def textaugment_random_swap(sentence: str) -> str:
    """textaugment 1.3.4 EDA.random_swap(sentence, n=1), on Python's global random."""
    new_words = sentence.split().copy()
    random_idx_1 = random.randint(0, len(new_words) - 1)
    random_idx_2 = random_idx_1
    counter = 0
    while random_idx_2 == random_idx_1:
        random_idx_2 = random.randint(0, len(new_words) - 1)
        counter += 1
        if counter > 3:
            return " ".join(new_words)
    new_words[random_idx_1], new_words[random_idx_2] = new_words[random_idx_2], new_words[random_idx_1]
    return " ".join(new_words)


def textaugment_random_deletion(sentence: str, p: float = 0.1):
    """textaugment 1.3.4 EDA.random_deletion(sentence, p=0.1); MedCLIP's collator joins a list it returns."""
    words = sentence.split()
    if len(words) == 1:
        return " ".join(words)
    new_words = [word for word in words if random.uniform(0, 1) > p]
    if len(new_words) == 0:
        return words[random.randint(0, len(words) - 1)]
    return " ".join(new_words)


@pytest.mark.parametrize("sentence", ["small left pleural effusion is unchanged", "stable", "mild pulmonary edema",
                                      "no pneumothorax or large effusion is seen today"])
def test_medclip_eda_operations_equal_textaugments_on_the_same_draws(sentence):
    for seed in range(200):
        random.seed(seed)
        expected = textaugment_random_swap(sentence)
        assert medclip_eda(sentence, random.Random(seed), "swap") == expected
        random.seed(seed)
        expected = textaugment_random_deletion(sentence)
        assert medclip_eda(sentence, random.Random(seed), "delete") == expected


def test_medclip_eda_draws_one_operation_and_never_inserts():
    sentence = "moderate right pleural effusion with adjacent atelectasis"
    views = [medclip_eda(sentence, random.Random(seed)) for seed in range(400)]
    words = set(sentence.split())
    assert all(set(v.split()) <= words and len(v.split()) <= len(sentence.split()) for v in views)
    swapped = sum(sorted(v.split()) == sorted(sentence.split()) and v != sentence for v in views)
    assert 120 < swapped < 280  # about half: swap and deletion drawn uniformly
    with pytest.raises(ValueError, match="operation"):
        medclip_eda(sentence, random.Random(0), "insert")


def test_eda_view_loss_is_the_mean_of_both_views_with_the_same_targets():
    """MedCLIP's ImageTextContrastiveLoss with aug_input_ids: (L(text) + L(aug)) / 2, one label_sim for both."""
    from medclip_nb.train.step import TrainStep

    torch.manual_seed(0)
    image, text, aug = (torch.nn.functional.normalize(torch.randn(6, 8), dim=1) for _ in range(3))
    labels = torch.tensor(np.random.default_rng(1).choice([1.0, 0.0, -1.0, np.nan], size=(6, 14)), dtype=torch.float32)
    step = TrainStep.__new__(TrainStep)
    step.criterion = ContrastiveLoss("medclip")
    outputs = {"image_embeds": image, "text_embeds": torch.cat([text, aug]), "logit_scale": torch.tensor(5.0)}
    loss, terms = step.loss(outputs, labels, 6, aug=True)
    expected = (medclip_loss(image, text, 5.0, labels, labels)[0]
                + medclip_loss(image, aug, 5.0, labels, labels)[0]) / 2
    assert torch.allclose(loss, expected, atol=1e-6) and "loss_eda_view" in terms


def test_eda_view_keys_are_checked():
    with pytest.raises(ConfigError, match="'text_eda_view'"):
        Config(text_eda_view=True)  # report_sampling full
    with pytest.raises(ConfigError, match="'text_eda_view'"):
        Config(text_eda_view=True, report_sampling="sentence", text_eda=0.1)


# ---- label encodings per side -----------------------------------------------------------------------------------
def test_medclips_encoding_zeroes_uncertain_image_labels_and_keeps_text_ones():
    torch.manual_seed(1)
    image, text = (torch.nn.functional.normalize(torch.randn(5, 8), dim=1) for _ in range(2))
    labels = torch.tensor(np.random.default_rng(2).choice([1.0, 0.0, -1.0, np.nan], size=(5, 14)), dtype=torch.float32)
    assert (labels == -1).any()
    outputs = {"image_embeds": image, "text_embeds": text, "logit_scale": torch.tensor(4.0)}
    medclip_way = ContrastiveLoss("medclip", image_uncertain="zero", text_uncertain="keep")(outputs, labels)[0]
    # MedCLIP: image labels written with fillna(0) and -1 -> 0; text labels from its sentence table, -1 kept.
    image_vectors = torch.nan_to_num(labels).clone()
    image_vectors[image_vectors == -1] = 0
    text_vectors = torch.nan_to_num(labels)
    logits = 4.0 * image @ text.T
    i2t = -(torch.softmax(image_vectors @ text_vectors.T, 1) * torch.log_softmax(logits, 1)).sum() / 5
    t2i = -(torch.softmax(text_vectors @ image_vectors.T, 1) * torch.log_softmax(logits.T, 1)).sum() / 5
    assert torch.allclose(medclip_way, (i2t + t2i) / 2, atol=1e-6)
    ours = ContrastiveLoss("medclip")(outputs, labels)[0]
    assert not torch.allclose(ours, medclip_way)  # ours keeps -1 on both sides
    with pytest.raises(ConfigError, match="'image_uncertain_labels'"):
        Config(image_uncertain_labels="half")


# ---- the prompt sentence of an image-only item --------------------------------------------------------------------
MEDCLIP_LABELS = ["No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Lesion", "Lung Opacity", "Edema",
                  "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                  "Fracture", "Support Devices"]


def medclip_candidates(table: pd.DataFrame, row: pd.Series) -> set[str]:
    """sample_sent_prompts (medclip/dataset.py, f8599d2) up to its .sample(): the sentences it draws from (the
    pool is the whole table here: fewer than 200 sentences per finding)."""
    if (row[MEDCLIP_LABELS] == 0).all():
        return set(table[table["No Finding"] > 0]["report"])
    bool_sent_label = table[MEDCLIP_LABELS] * row[MEDCLIP_LABELS]
    bool_sent_label[bool_sent_label < 0] = 0
    sents = table.loc[~(bool_sent_label.iloc[:, 1:] == 0).all(1)]
    if len(sents) == 0:
        return set(table[table["No Finding"] == 1]["report"])
    return set(sents["report"])


def test_prompt_sentence_candidates_are_medclips():
    rng = np.random.default_rng(5)
    values = rng.choice([1.0, 0.0, -1.0, np.nan], size=(40, 14), p=[0.15, 0.25, 0.05, 0.55])
    values[:5] = np.nan
    values[:5, LABEL_INDEX["No Finding"]] = 1.0
    table = {f"sentence number {i} of the table": row.tolist() for i, row in enumerate(values)}
    prompts = PromptSentences(table)
    frame = pd.DataFrame(np.nan_to_num(values), columns=list(CHEXPERT_LABELS))  # read with fillna(0), as MedCLIP's
    frame["report"] = list(table)
    for image in rng.choice([1.0, 0.0], size=(60, 14), p=[0.1, 0.9]).tolist() + [[0.0] * 14]:
        row = pd.Series(dict(zip(CHEXPERT_LABELS, image)))
        ours = {prompts.sentences[i] for i in prompts.candidates(image)}
        assert ours == medclip_candidates(frame, row)
        sentence, labels = prompts.sample(image, random.Random(3))
        assert sentence in ours and labels == np.nan_to_num(np.array(table[sentence])).tolist()


# ---- weight decay ------------------------------------------------------------------------------------------------
def test_medclip_no_decay_rule_is_its_substring_test():
    from medclip_nb.model.encoders import build_model
    from medclip_nb.text.tokenizers import CharTokenizer
    from medclip_nb.train.step import param_groups

    model = build_model(Config(model="medclip", vision_backbone="resnet18", text_layers=1, text_width=32,
                               text_heads=2, embed_dim=16), CharTokenizer())
    decay, no_decay = param_groups(model, 0.1, rule="medclip")
    exempt = {n for n, _ in model.named_parameters() if any(nd in n for nd in ["bias", "LayerNorm.bias",
                                                                                "LayerNorm.weight"])}
    assert set(no_decay["names"]) == exempt and not set(decay["names"]) & exempt
    assert any("bn1.weight" in n for n in decay["names"])  # BatchNorm weights decay under MedCLIP's rule
    ours = param_groups(model, 0.1)[1]["names"]
    assert any("bn1.weight" in n for n in ours)  # ours exempts every 1-D parameter


# ---- NegBio -----------------------------------------------------------------------------------------------------
def test_prepare_reads_the_negbio_table_when_asked(tmp_path):
    from medclip_nb.cli import main
    from medclip_nb.data.mimic import NEGBIO_TABLE
    from medclip_nb.phantom import generate_phantom

    root = tmp_path / "mimic"
    generate_phantom(root, studies=20, size=32)
    negbio = pd.read_csv(root / NEGBIO_TABLE)
    edema = negbio.columns.get_loc("Edema")
    negbio.iloc[:, edema] = 1.0  # a table that differs from the CheXpert labeler's
    negbio.to_csv(root / NEGBIO_TABLE, index=False, compression="gzip")
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["prepare", "--mimic-root", str(root), "--out", str(tmp_path / "n"), "--labels", "negbio",
                     "--num-workers", "0"]) == 0
        assert main(["prepare", "--mimic-root", str(root), "--out", str(tmp_path / "c"), "--num-workers", "0"]) == 0
    read = lambda name: pickle.loads((tmp_path / name / "datasets.pkl").read_bytes())["train"]
    assert all(r["labels"][LABEL_INDEX["Edema"]] == 1.0 for r in read("n"))
    assert not all(r["labels"][LABEL_INDEX["Edema"]] == 1.0 for r in read("c"))
    report = (tmp_path / "n" / "prepare_report.json").read_text()
    assert '"label_table": "negbio"' in report
    (root / NEGBIO_TABLE).unlink()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["prepare", "--mimic-root", str(root), "--out", str(tmp_path / "m"), "--labels", "negbio"]) == 2
    assert NEGBIO_TABLE in err.getvalue() and err.getvalue().count("\n") == 1
