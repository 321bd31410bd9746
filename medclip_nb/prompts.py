"""Text prompts for zero-shot classification.

Two kinds:

- Class prompts (CheXpert-5x200, MedCLIP style): every combination of a class's
  severity, subtype and location words from `labels.PROMPT_VOCABULARY`; the class score is
  the ensemble (mean or max) over its prompts.
- Binary prompt pairs (per-label multi-label zero-shot, CheXzero style): a positive and a
  negative sentence per CheXpert label, compared with a softmax over the pair.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from medclip_nb.labels import CHEXPERT_LABELS, COMPETITION_TASKS, PROMPT_VOCABULARY

PROMPT_PARTS = ("severity", "subtype", "location")

# Labels whose name, lower-cased, is not a phrase a radiologist writes. "Pleural Other" is
# CheXpert's bucket for pleural thickening, plaques and fibrosis: "no pleural other" would
# be a sentence no report contains.
FINDING_PHRASES: dict[str, str] = {
    "Pleural Other": "pleural abnormality",
}

# "No Finding" is itself a negative statement: "{finding}" vs "no {finding}" would pit
# "no finding" against "no no finding" and invert the pair (CheXzero reported an AUROC of
# 0.07 for it). Its positive prompt is the impression radiologists write for a normal film,
# its negative one describes the opposite.
NO_FINDING_PROMPTS: tuple[str, str] = ("no acute cardiopulmonary process", "abnormal findings")


def _normalise(text: str) -> str:
    """Lower case with runs of whitespace collapsed (empty vocabulary words leave gaps)."""
    return " ".join(text.split()).lower()


def generate_prompts(
    task: str,
    vocabulary: Mapping[str, Mapping[str, Sequence[str]]] = PROMPT_VOCABULARY,
    max_prompts: int | None = None,
    seed: int = 0,
) -> list[str]:
    """All prompts of one class: every severity x subtype x location combination.

    The words are joined in the key order of the class's vocabulary entry, as MedCLIP does;
    this is what puts Pleural Effusion's side words before the subtype ("small left
    bilateral pleural effusion"). Prompts are lower case with whitespace collapsed and
    deduplicated, in the order of the nested loops (first key outermost). With
    `max_prompts` smaller than the number of prompts, a seeded sample without replacement
    is returned, still in that order, so the same seed always gives the same list.
    """
    if task not in vocabulary:
        raise ValueError(f"prompt vocabulary has no class {task!r} (classes: {', '.join(vocabulary)})")
    words = vocabulary[task]
    if set(words) != set(PROMPT_PARTS):
        raise ValueError(
            f"prompt vocabulary of {task!r} must have exactly the keys {', '.join(PROMPT_PARTS)}, "
            f"got {', '.join(words)}"
        )
    if max_prompts is not None and max_prompts < 1:
        raise ValueError(f"max_prompts must be at least 1, got {max_prompts}")
    # dict.fromkeys keeps the first occurrence: deduplication that preserves the order.
    prompts = list(dict.fromkeys(_normalise(" ".join(combo)) for combo in itertools.product(*words.values())))
    prompts = [p for p in prompts if p]
    if max_prompts is not None and max_prompts < len(prompts):
        keep = np.random.default_rng(seed).choice(len(prompts), size=max_prompts, replace=False)
        prompts = [prompts[i] for i in sorted(keep)]
    return prompts


def class_prompts(
    tasks: Iterable[str] = COMPETITION_TASKS,
    n: int | None = None,
    vocabulary: Mapping[str, Mapping[str, Sequence[str]]] = PROMPT_VOCABULARY,
    seed: int = 0,
) -> dict[str, list[str]]:
    """Prompts of each class, `{class name: prompts}` in the order of `tasks`; `n` caps the
    prompts per class (a seeded sample, see `generate_prompts`)."""
    return {task: generate_prompts(task, vocabulary, max_prompts=n, seed=seed) for task in tasks}


def finding_phrase(label: str) -> str:
    """The lower-case phrase that names a CheXpert finding in a report."""
    return FINDING_PHRASES.get(label, _normalise(label))


def binary_prompts(label: str) -> tuple[str, str]:
    """(positive, negative) prompt pair for the per-label zero-shot test of `label`.

    Positive = the finding ("pleural effusion"), negative = its negation as reports write
    it ("no pleural effusion"). "No Finding" is the exception: positive "no acute
    cardiopulmonary process", negative "abnormal findings", so that a high positive
    probability still means "this image has no finding" and the AUROC is not inverted.
    """
    if label == "No Finding":
        return NO_FINDING_PROMPTS
    phrase = finding_phrase(label)
    if not phrase:
        raise ValueError("binary_prompts: empty label")
    if phrase.startswith("no "):
        raise ValueError(f"binary_prompts: {label!r} is already a negation; give it a prompt pair in prompts.py")
    return phrase, f"no {phrase}"


def label_prompt_pairs(labels: Iterable[str] = CHEXPERT_LABELS) -> tuple[list[str], list[str]]:
    """Positive and negative prompts of every label, as two lists in the order of `labels`."""
    pairs = [binary_prompts(label) for label in labels]
    return [p for p, _ in pairs], [n for _, n in pairs]
