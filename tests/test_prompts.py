from __future__ import annotations

import math

import pytest

from medclip_nb.labels import CHEXPERT_LABELS, COMPETITION_TASKS, PROMPT_VOCABULARY
from medclip_nb.prompts import (
    binary_prompts,
    class_prompts,
    generate_prompts,
    label_prompt_pairs,
)


@pytest.mark.parametrize("task", COMPETITION_TASKS)
def test_every_combination_once(task):
    prompts = generate_prompts(task)
    words = PROMPT_VOCABULARY[task]
    expected = math.prod(len(set(words[part])) for part in ("severity", "subtype", "location"))
    assert len(prompts) == expected
    assert len(set(prompts)) == len(prompts)
    subtypes = [s.lower() for s in words["subtype"]]
    for prompt in prompts:
        assert any(s in prompt for s in subtypes), prompt
        assert prompt == prompt.lower() and prompt == " ".join(prompt.split())


def test_known_counts_and_word_order():
    # 3 x 7 x 10, 15 whole phrases, 4 x 6 x 8, 6 x 3, 6 x 3 x 2
    counts = {t: len(generate_prompts(t)) for t in COMPETITION_TASKS}
    assert counts == {"Atelectasis": 210, "Cardiomegaly": 15, "Consolidation": 192, "Edema": 18,
                      "Pleural Effusion": 36}
    # Words follow the vocabulary's key order (Pleural Effusion: severity, location, subtype).
    assert "small left bilateral pleural effusion" in generate_prompts("Pleural Effusion")
    assert generate_prompts("Atelectasis")[0] == "subsegmental atelectasis at the mid lung zone"
    assert "mild linear atelectasis at the lung bases" in generate_prompts("Atelectasis")


def test_duplicates_after_normalisation_are_dropped():
    vocabulary = {"X": {"severity": ["", "Mild", "mild "], "subtype": ["Effusion", "effusion"], "location": [""]}}
    assert generate_prompts("X", vocabulary) == ["effusion", "mild effusion"]


def test_subsample_is_seeded_and_keeps_order():
    full = generate_prompts("Atelectasis")
    a = generate_prompts("Atelectasis", max_prompts=10, seed=3)
    assert a == generate_prompts("Atelectasis", max_prompts=10, seed=3)
    assert a != generate_prompts("Atelectasis", max_prompts=10, seed=4)
    assert len(a) == 10 and len(set(a)) == 10
    positions = [full.index(p) for p in a]
    assert positions == sorted(positions)
    # A cap above the count returns everything.
    assert generate_prompts("Edema", max_prompts=1000) == generate_prompts("Edema")


def test_class_prompts_and_bad_input():
    prompts = class_prompts(n=5)
    assert list(prompts) == list(COMPETITION_TASKS)
    assert all(len(v) == 5 for v in prompts.values())
    with pytest.raises(ValueError, match="Fracture"):
        generate_prompts("Fracture")
    with pytest.raises(ValueError, match="keys"):
        generate_prompts("X", {"X": {"severity": [""], "subtype": ["a"]}})
    with pytest.raises(ValueError, match="max_prompts"):
        generate_prompts("Edema", max_prompts=0)


def test_binary_prompts_natural_negation():
    assert binary_prompts("Pleural Effusion") == ("pleural effusion", "no pleural effusion")
    assert binary_prompts("Cardiomegaly") == ("cardiomegaly", "no cardiomegaly")
    assert binary_prompts("Pleural Other") == ("pleural abnormality", "no pleural abnormality")


def test_no_finding_pair_is_not_inverted():
    positive, negative = binary_prompts("No Finding")
    # Positive = "this image has no finding": a normal-study sentence; negative = abnormal.
    assert positive == "no acute cardiopulmonary process"
    assert negative == "abnormal findings"
    positives, negatives = label_prompt_pairs(CHEXPERT_LABELS)
    assert len(positives) == len(negatives) == 14
    for p, n in zip(positives, negatives):
        assert "no no" not in p and "no no" not in n and "no finding" not in n
        assert p != n
