"""MedCLIP's training-text handling, as options of the sentence sampling (`report_sampling: sentence`).

- Short-sentence filter (`short_sentence_tokens`): MedCLIP drops report sentences of 4 tokens or
  fewer ("no effusion.", "heart normal.") before it samples one. Tokens here are whitespace words.
- EDA (`text_eda`, the fraction alpha): the parts of Wei & Zou's easy data augmentation that need no
  word list: random swap of two words, random deletion of words, random insertion of a copy of a word
  that the text already has ("in-report words"). Synonym replacement needs a thesaurus (WordNet in
  MedCLIP) and is left out. One of the three operations, drawn at random, changes about alpha of the
  words (at least one). The generator comes from the sample's seed, so a resumed run sees the same text.
- MedCLIP's EDA (`text_eda_view`, `medclip_eda`): its collator (medclip/dataset.py,
  ImageTextContrastiveCollator) applies one of textaugment 1.3.4's synonym_replacement(n=1),
  random_swap(n=1) and random_deletion(p=0.1), drawn uniformly per sentence, to make a second text
  view. Swap and deletion here are those functions restated; synonym replacement is left out: no
  package installed here ships WordNet for offline use cleanly (docs/fidelity.md), so the draw is
  between swap and deletion.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

EDA_OPERATIONS = ("swap", "delete", "insert")


def drop_short_sentences(sentences: Sequence[str], max_dropped_tokens: int) -> list[str]:
    """The sentences with more than `max_dropped_tokens` whitespace tokens (0 keeps all)."""
    if max_dropped_tokens <= 0:
        return list(sentences)
    return [s for s in sentences if len(s.split()) > max_dropped_tokens]


def eda(text: str, alpha: float, rng: random.Random, operation: str | None = None) -> str:
    """`text` with one EDA operation applied to about `alpha` of its words (at least one change).

    swap: that many random pairs of positions exchange their words; delete: each word is dropped
    with probability alpha (one word always stays); insert: that many copies of words of the text
    go to random positions. `operation` None draws one of EDA_OPERATIONS from `rng`.
    """
    words = text.split()
    if alpha <= 0 or len(words) < 2:
        return text
    operation = operation or rng.choice(EDA_OPERATIONS)
    changes = max(1, round(alpha * len(words)))
    if operation == "swap":
        for _ in range(changes):
            i, j = rng.sample(range(len(words)), 2)
            words[i], words[j] = words[j], words[i]
    elif operation == "delete":
        kept = [w for w in words if rng.random() >= alpha]
        words = kept or [rng.choice(words)]
    elif operation == "insert":
        for _ in range(changes):
            words.insert(rng.randrange(len(words) + 1), rng.choice(words))
    else:
        raise ValueError(f"eda: operation must be one of {', '.join(EDA_OPERATIONS)}, got {operation!r}")
    return " ".join(words)


# MedCLIP draws among synonym replacement, swap and deletion; synonyms need WordNet (none here).
MEDCLIP_EDA_OPERATIONS = ("swap", "delete")


def medclip_eda(text: str, rng: random.Random, operation: str | None = None) -> str:
    """MedCLIP's EDA view of `text`: `operation` (None: one of MEDCLIP_EDA_OPERATIONS drawn with
    `rng.choice`) as textaugment 1.3.4 does it with MedCLIP's arguments. swap: two positions drawn
    with `randint`, up to 4 tries for a second one that differs, else unchanged; delete: each word
    kept when `uniform(0, 1) > 0.1`, one random word when none is; a one-word text is unchanged."""
    operation = operation or rng.choice(MEDCLIP_EDA_OPERATIONS)
    words = text.split()
    if not words:
        return text
    if operation == "swap":
        i = j = rng.randint(0, len(words) - 1)
        tries = 0
        while j == i:
            j = rng.randint(0, len(words) - 1)
            tries += 1
            if tries > 3:
                return " ".join(words)
        words[i], words[j] = words[j], words[i]
        return " ".join(words)
    if operation == "delete":
        if len(words) == 1:
            return words[0]
        kept = [w for w in words if rng.uniform(0, 1) > 0.1]
        return " ".join(kept) if kept else words[rng.randint(0, len(words) - 1)]
    raise ValueError(f"medclip_eda: operation must be one of {', '.join(MEDCLIP_EDA_OPERATIONS)}, got {operation!r}")
