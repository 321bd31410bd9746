"""Report text: cleaning and sentence splitting (no torch: prepare and the phantom use it).

The tokenizers that turn the cleaned text into ids are in tokenizers.py.
"""

from __future__ import annotations

import re
import unicodedata

# ---------------------------------------------------------------------------------------------
# Cleaning and sentence splitting
# ---------------------------------------------------------------------------------------------

# MIMIC-CXR replaces names, dates and places by runs of underscores ("Dr. ___ on ___").
_PLACEHOLDER = re.compile(r"_{2,}")
# "1. ", "2) " at the start of a line, or after a header colon / the previous item's end.
# Requiring that position keeps "measuring 2. " mid-sentence and decimals ("2.5") intact.
_LIST_MARKER = re.compile(r"(^|[\n:;.!?])([ \t]*)\d{1,2}[.)](?=\s)", re.MULTILINE)
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,;:!?)])")
_REPEATED_PUNCT = re.compile(r"([.,;:])(?:\s*[.,;:])+")
_WHITESPACE = re.compile(r"\s+")
_HAS_WORD = re.compile(r"[0-9a-z]", re.IGNORECASE)

# Words whose trailing period does not end a sentence (compared lower-case, without the
# final period). "No." and "etc." are left out on purpose: in reports they usually do end one.
ABBREVIATIONS = frozenset(
    {
        "approx", "appr", "e.g", "i.e", "dr", "drs", "mr", "mrs", "ms", "prof", "vs", "cf",
        "fig", "ca", "incl", "resp", "pt", "pts", "st", "sr", "jr", "al",
    }
)
# A candidate sentence end: terminal punctuation followed by whitespace or the end.
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
_LAST_WORD = re.compile(r"(\S+)$")


def _normalise(text: str) -> str:
    """Clean ``text`` but keep its case (shared by ``clean_report`` and ``split_sentences``)."""
    text = unicodedata.normalize("NFKC", text)
    text = _PLACEHOLDER.sub(" ", text)

    def list_marker(match: re.Match) -> str:
        before = match.group(1)
        # A list item that starts on a new line ends the previous item: keep a sentence
        # boundary there even when the previous item had no final period.
        if before == "\n":
            return "\n. "
        return before + " "

    text = _LIST_MARKER.sub(list_marker, text)
    text = _WHITESPACE.sub(" ", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _REPEATED_PUNCT.sub(r"\1", text)
    text = text.strip()
    # Removing markers and placeholders can leave punctuation at the start ("1. x" -> ". x").
    return re.sub(r"^[\s.,;:!?]+", "", text)


def clean_report(text: str) -> str:
    """Return ``text`` lower-cased with whitespace collapsed, MIMIC de-identification
    placeholders ("___") removed and numbered-list markers ("1. ", "2) ") dropped.

    Sentence punctuation is kept so that ``split_sentences`` still works on the result.
    Cleaning is idempotent: ``clean_report(clean_report(t)) == clean_report(t)``.
    """
    if not isinstance(text, str):
        raise TypeError(f"clean_report expects a str, got {type(text).__name__}")
    return _normalise(text).lower()


def split_sentences(text: str) -> list[str]:
    """Split a report into cleaned (lower-case) sentences.

    A period ends a sentence only when whitespace or the end follows it, so decimals
    ("2.5 cm") never split; known abbreviations ("approx.", "e.g.", "Dr.", "vs.") and single
    letters ("a.") do not end one either. Numbered-list markers and placeholders are removed
    first; pieces without any letter or digit are dropped.
    """
    cleaned = clean_report(text)
    sentences: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(cleaned):
        end = match.end()
        if match.group() == ".":
            word = _LAST_WORD.search(cleaned, start, match.start())
            last = word.group(1).lstrip("([\"'") if word else ""
            if last in ABBREVIATIONS or (len(last) == 1 and last.isalpha()):
                continue
        sentences.append(cleaned[start:end].strip())
        start = end
    sentences.append(cleaned[start:].strip())
    return [s for s in sentences if _HAS_WORD.search(s)]
