from __future__ import annotations

import json

import pytest
import torch

from medclip_nb.config import Config
from medclip_nb.errors import CheckpointError
from medclip_nb.text.clean import clean_report, split_sentences
from medclip_nb.text.tokenizers import CharTokenizer, SubwordTokenizer, build_tokenizer, tokenizer_from_json

CORPUS = [
    "No acute cardiopulmonary process.",
    "There is a small left pleural effusion, approx. 2.5 cm. No pneumothorax.",
    "Heart size is normal. The lungs are clear.",
    "Moderate cardiomegaly. Mild pulmonary edema. Small bilateral pleural effusions.",
    "Endotracheal tube tip 4 cm above the carina. Stable right lower lobe atelectasis.",
] * 4


# ---- cleaning ------------------------------------------------------------------------------


def test_clean_report_removes_placeholders_markers_and_case():
    raw = "FINDINGS:\n 1. Small   LEFT effusion.\n2) Dr. ___ was paged at ___.\n\tSize 2.5 cm."
    assert clean_report(raw) == "findings: small left effusion. dr. was paged at. size 2.5 cm."


def test_clean_report_is_idempotent_and_keeps_decimals():
    raw = "IMPRESSION: 1. Effusion measuring 2.5 cm\n2. Compared to ___ , unchanged."
    once = clean_report(raw)
    assert clean_report(once) == once
    assert "2.5 cm" in once
    assert "___" not in once and " ," not in once


def test_numbered_list_without_periods_becomes_separate_sentences():
    raw = "1. Small left pleural effusion\n2. No pneumothorax\n3) Stable cardiomegaly"
    assert split_sentences(raw) == [
        "small left pleural effusion.",
        "no pneumothorax.",
        "stable cardiomegaly",
    ]


def test_split_sentences_keeps_abbreviations_and_decimals_together():
    raw = (
        "Effusion measures approx. 2.5 cm, e.g. on the lateral view. Dr. Smith agrees vs. prior! "
        "Is there a pneumothorax? No."
    )
    assert split_sentences(raw) == [
        "effusion measures approx. 2.5 cm, e.g. on the lateral view.",
        "dr. smith agrees vs. prior!",
        "is there a pneumothorax?",
        "no.",
    ]


def test_split_sentences_drops_placeholder_only_and_empty_pieces():
    raw = "___. Findings discussed with Dr. ___ on ___. . ___ \n\n Lungs clear."
    assert split_sentences(raw) == ["findings discussed with dr. on.", "lungs clear."]
    assert split_sentences("   ") == []
    assert split_sentences("___") == []


# ---- subword tokenizer ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def subword() -> SubwordTokenizer:
    return SubwordTokenizer.train([clean_report(t) for t in CORPUS], vocab_size=120, max_length=12)


def test_subword_special_tokens_padding_and_truncation(subword):
    tok = subword._tokenizer
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    assert subword.pad_id == tok.token_to_id("[PAD]") == 0
    assert 0 < subword.vocab_size <= 120

    short, long = "heart size is normal.", " ".join(["small bilateral pleural effusions."] * 5)
    out = subword.encode([short, long])
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == mask.shape == (2, 12) and ids.dtype == mask.dtype == torch.int64

    n_real = int(mask[0].sum())
    assert n_real == subword.token_lengths([short])[0]
    assert ids[0, 0] == cls_id and ids[0, n_real - 1] == sep_id
    assert torch.all(ids[0, n_real:] == 0) and torch.all(mask[0, n_real:] == 0)
    # The long report is cut to 12 tokens and still ends with [SEP].
    assert subword.token_lengths([long])[0] > 12
    assert mask[1].sum() == 12 and ids[1, 0] == cls_id and ids[1, -1] == sep_id


def test_subword_training_is_deterministic(subword):
    again = SubwordTokenizer.train([clean_report(t) for t in CORPUS], vocab_size=120, max_length=12)
    assert again.to_json() == subword.to_json()


def test_subword_json_round_trip(subword):
    text = subword.to_json()
    assert "model" in json.loads(text)  # the tokenizers library's own format
    restored = tokenizer_from_json(text)
    assert isinstance(restored, SubwordTokenizer)
    assert restored.max_length == 12 and restored.vocab_size == subword.vocab_size
    texts = ["stable right lower lobe atelectasis.", "unseen words zzz ☃"]
    for key in ("input_ids", "attention_mask"):
        assert torch.equal(restored.encode(texts)[key], subword.encode(texts)[key])


def test_encode_empty_batch_has_fixed_length(subword):
    for tokenizer in (subword, CharTokenizer()):
        out = tokenizer.encode([])
        assert out["input_ids"].shape == (0, tokenizer.max_length)
        assert out["attention_mask"].dtype == torch.int64


# ---- character tokenizer -------------------------------------------------------------------


def test_char_tokenizer_codes_mask_and_truncation():
    tok = CharTokenizer()
    out = tok.encode(["Ab é☃", "x" * 80])
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == (2, 50) and tok.max_length == 50 and tok.pad_id == 0
    # ord: A=65, b=98, space=32, é=233; ☃ (9731) is clipped to 255.
    assert ids[0, :5].tolist() == [65, 98, 32, 233, 255]
    assert mask[0].tolist() == [1] * 5 + [0] * 45
    assert torch.all(ids[0, 5:] == 0)
    assert ids[1].tolist() == [ord("x")] * 50 and mask[1].sum() == 50


def test_char_tokenizer_json_round_trip():
    restored = tokenizer_from_json(CharTokenizer(max_length=30).to_json())
    assert isinstance(restored, CharTokenizer) and restored.max_length == 30


def test_tokenizer_from_json_rejects_unknown_payloads():
    with pytest.raises(CheckpointError, match="tokenizer JSON"):
        tokenizer_from_json("not json")
    with pytest.raises(CheckpointError, match="tokenizer JSON"):
        tokenizer_from_json(json.dumps({"something": 1}))
    with pytest.raises(CheckpointError, match="not a BPE vocabulary"):
        tokenizer_from_json(json.dumps({"model": {"type": "nonsense"}}))


# ---- build_tokenizer -----------------------------------------------------------------------


def test_build_tokenizer_follows_config():
    simple = build_tokenizer(Config(model="simple"), CORPUS)
    assert isinstance(simple, CharTokenizer) and simple.max_length == 50

    subword = build_tokenizer(Config(model="medclip", vocab_size=100, max_text_tokens=16), CORPUS)
    assert isinstance(subword, SubwordTokenizer)
    assert subword.max_length == 16 and subword.vocab_size <= 100
    # Trained on cleaned reports: upper-case input is normalised to the same ids.
    assert torch.equal(
        subword.encode(["NO PNEUMOTHORAX."])["input_ids"], subword.encode(["no pneumothorax."])["input_ids"]
    )
