"""MedCLIP's text options: the short-sentence filter and the word-list-free parts of EDA."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from medclip_nb.config import Config
from medclip_nb.errors import ConfigError
from medclip_nb.text.augment import drop_short_sentences, eda

TEXT = "small left pleural effusion with adjacent basilar atelectasis is unchanged"


def test_short_sentences_of_four_tokens_or_fewer_are_dropped():
    sentences = ["no effusion.", "heart size is normal.", "the lungs are clear bilaterally.", "a b c d e"]
    assert drop_short_sentences(sentences, 4) == ["the lungs are clear bilaterally.", "a b c d e"]
    assert drop_short_sentences(sentences, 0) == sentences


def test_eda_operations_keep_to_the_texts_own_words():
    words = TEXT.split()
    swapped = eda(TEXT, 0.2, random.Random(0), "swap").split()
    assert sorted(swapped) == sorted(words) and swapped != words
    deleted = eda(TEXT, 0.3, random.Random(0), "delete").split()
    assert 1 <= len(deleted) < len(words) and not Counter(deleted) - Counter(words)
    inserted = eda(TEXT, 0.2, random.Random(0), "insert").split()
    assert len(inserted) == len(words) + 2 and set(inserted) == set(words)  # round(0.2 * 10) copies
    assert eda("effusion", 0.5, random.Random(0)) == "effusion" and eda(TEXT, 0.0, random.Random(0)) == TEXT
    with pytest.raises(ValueError, match="operation"):
        eda(TEXT, 0.2, random.Random(0), "synonym")


def test_eda_is_a_function_of_the_seed():
    draws = {eda(TEXT, 0.2, random.Random(seed)) for seed in range(20)}
    assert eda(TEXT, 0.2, random.Random(5)) == eda(TEXT, 0.2, random.Random(5)) and len(draws) > 5


def test_dataset_applies_the_options_to_its_sentence(tmp_path):
    import numpy as np
    from PIL import Image

    from medclip_nb.data import CXRDataset, build_transforms

    Image.fromarray(np.full((16, 16), 100, dtype=np.uint8)).save(tmp_path / "a.png")
    record = {"image_path": "a.png", "labels": [None] * 14,
              "report": "No effusion. The cardiac silhouette is mildly enlarged today. Lungs clear."}
    cfg = Config(image_size=16, resize_size=16, augment="none")
    make = lambda **kw: CXRDataset([record], root=tmp_path, transform=build_transforms(cfg, False),
                                   on_bad_image="error", report_sampling="sentence", **kw)
    filtered = {make(short_sentence_tokens=4)[(0, seed)]["report"] for seed in range(10)}
    assert filtered == {"the cardiac silhouette is mildly enlarged today."}
    assert len({make()[(0, seed)]["report"] for seed in range(30)}) == 3
    augmented = [make(short_sentence_tokens=4, text_eda=0.3)[(0, seed)]["report"] for seed in range(10)]
    assert augmented == [make(short_sentence_tokens=4, text_eda=0.3)[(0, seed)]["report"] for seed in range(10)]
    assert any(a != "the cardiac silhouette is mildly enlarged today." for a in augmented)


def test_text_options_need_sentence_sampling():
    with pytest.raises(ConfigError, match="'short_sentence_tokens'.*report_sampling"):
        Config(short_sentence_tokens=4)
    with pytest.raises(ConfigError, match="'text_eda'"):
        Config(text_eda=1.5, report_sampling="sentence")
    assert Config(report_sampling="sentence", short_sentence_tokens=4, text_eda=0.1).text_eda == 0.1
