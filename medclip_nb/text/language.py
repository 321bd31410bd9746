"""How varied a corpus of reports is: the report-language figures notebook 01 prints.

    figures = language_figures(reports)   # reports: FINDINGS + IMPRESSION texts

Definitions (docs/datasets.md quotes them with the numbers):
- sentences: `clean.split_sentences` of each report (lower-cased);
- word types: distinct `[a-z]+` tokens (a run of `x`, the de-identification mark, is one type);
- sentence template: a sentence lower-cased, runs of two or more `x` -> `X`, digit runs -> `0`,
  whitespace collapsed, final `. ; : ,` stripped; `templates` counts the distinct ones;
- finding sentence: one with a finding mention (`mentions.find_mentions`); negated share: of
  finding sentences, those whose every mention is negated;
- prompt verbatim: a report holds one of the MedCLIP 5x200 prompts (every severity x subtype x
  location combination of `labels.PROMPT_VOCABULARY`) as a whole-word substring of a sentence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from medclip_nb.labels import COMPETITION_TASKS
from medclip_nb.prompts import generate_prompts
from medclip_nb.text.clean import split_sentences
from medclip_nb.text.mentions import find_mentions

_WORD = re.compile(r"[a-z]+")
_DEID = re.compile(r"x{2,}")
_DIGITS = re.compile(r"\d+")
_SPACE = re.compile(r"\s+")


def sentence_template(sentence: str) -> str:
    """A sentence's template (see the module docstring)."""
    text = _DIGITS.sub("0", _DEID.sub("X", sentence.lower()))
    return _SPACE.sub(" ", text).strip().rstrip(".;:, ")


def prompt_pattern(prompts: Iterable[str] | None = None) -> re.Pattern:
    """One regex matching any of `prompts` (default: the 5x200 prompts of the five competition
    classes) as whole words, longest first."""
    if prompts is None:
        prompts = [p for task in COMPETITION_TASKS for p in generate_prompts(task)]
    words = sorted({" ".join(p.lower().split()) for p in prompts if p.strip()}, key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b")


def language_figures(reports: Sequence[str], prompts: Iterable[str] | None = None) -> dict[str, Any]:
    """Counts and shares of a corpus of report texts (see the module docstring)."""
    pattern = prompt_pattern(prompts)
    types: set[str] = set()
    templates: set[str] = set()
    distinct: set[str] = set()
    n_sentences = n_tokens = finding_sentences = negated_sentences = with_prompt = 0
    for report in reports:
        sentences = split_sentences(report)
        n_sentences += len(sentences)
        holds_prompt = False
        for sentence in sentences:
            words = _WORD.findall(sentence.lower())
            n_tokens += len(words)
            types.update("x" if _DEID.fullmatch(w) else w for w in words)
            distinct.add(sentence.lower().strip())
            templates.add(sentence_template(sentence))
            mentions = find_mentions(sentence)
            if mentions:
                finding_sentences += 1
                negated_sentences += all(m.status == 0 for m in mentions)
            holds_prompt = holds_prompt or pattern.search(" ".join(sentence.lower().split())) is not None
        with_prompt += holds_prompt
    n = len(reports)
    return {
        "reports": n,
        "sentences": n_sentences,
        "sentences_per_report": n_sentences / n if n else 0.0,
        "tokens": n_tokens,
        "word_types": len(types),
        "distinct_sentences": len(distinct),
        "sentence_templates": len(templates),
        "finding_sentences": finding_sentences,
        "negated_finding_share": negated_sentences / finding_sentences if finding_sentences else 0.0,
        "prompt_verbatim_share": with_prompt / n if n else 0.0,
    }
