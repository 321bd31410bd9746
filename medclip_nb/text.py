"""Report text: cleaning, sentence splitting, and the tokenizers that turn text into ids.

Two tokenizers share one interface (``encode``, ``vocab_size``, ``pad_id``, ``max_length``,
``to_json``) so the model and the checkpoint code never need to know which one they have:

- ``SubwordTokenizer``: a BPE vocabulary learned from the training reports with the
  Hugging Face ``tokenizers`` library;
- ``CharTokenizer``: the seed script's character-level encoder (ASCII codes, 50 characters).

A local BERT's own tokenizer (``text_encoder: bert``) is ``models.HFTokenizerAdapter``,
which offers the same interface.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import TYPE_CHECKING, Iterable, Protocol

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

from medclip_nb.errors import CheckpointError, DataError

if TYPE_CHECKING:
    import torch

    from medclip_nb.config import Config

PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
# Order fixes the ids: [PAD] = 0 matches the zero padding of CharTokenizer.
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN)

# The seed model reads exactly 50 character codes.
CHAR_MAX_LENGTH = 50

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


# ---------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------


class TextTokenizer(Protocol):
    """What the model, the collate function and the checkpoint code rely on."""

    max_length: int

    @property
    def vocab_size(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]: ...

    def token_lengths(self, texts: list[str]) -> list[int]: ...

    def to_json(self) -> str: ...


def _empty_batch(max_length: int) -> dict[str, torch.Tensor]:
    import torch  # here, not at import: prepare splits sentences without needing torch

    empty = torch.zeros((0, max_length), dtype=torch.long)
    return {"input_ids": empty, "attention_mask": empty.clone()}


class SubwordTokenizer:
    """A Hugging Face ``tokenizers`` tokenizer fixed to ``max_length`` tokens:
    ``[CLS] tokens... [SEP] [PAD]...``, truncated to fit, ``[PAD]`` = 0."""

    def __init__(self, tokenizer: Tokenizer, max_length: int):
        if max_length < 2:
            raise ValueError(f"max_length must leave room for [CLS] and [SEP], got {max_length}")
        pad_id = tokenizer.token_to_id(PAD_TOKEN)
        if pad_id is None:
            raise ValueError(f"the tokenizer has no {PAD_TOKEN} token")
        self._tokenizer = tokenizer
        self.max_length = int(max_length)
        self._pad_id = int(pad_id)
        # Truncation counts the [CLS]/[SEP] the post-processor adds.
        tokenizer.enable_truncation(max_length=self.max_length)
        tokenizer.enable_padding(length=self.max_length, pad_id=self._pad_id, pad_token=PAD_TOKEN)
        self._unpadded: Tokenizer | None = None

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, max_length: int) -> "SubwordTokenizer":
        """Learn a BPE vocabulary of at most ``vocab_size`` tokens from ``texts``.

        Plain BPE (no "##" continuation prefix) on purpose: the library's trainer assigns
        prefixed pieces their ids in hash-map order, which breaks ties between merges
        differently from run to run (huggingface/tokenizers#1794); without the prefix the
        same texts always give the same vocabulary.
        """
        from medclip_nb.progress import progress

        texts = list(texts)
        if not texts:
            raise ValueError("no texts to learn a subword vocabulary from")
        tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
        tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        # Splits on whitespace and on every punctuation character.
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        trainer = trainers.BpeTrainer(
            vocab_size=int(vocab_size), special_tokens=list(SPECIAL_TOKENS), show_progress=False
        )
        # The bar counts the texts the trainer has read; its merges follow (a few seconds at MIMIC size).
        tokenizer.train_from_iterator(progress(texts, desc="tokenizer: learning BPE from reports", unit="report"),
                                      trainer=trainer, length=len(texts))
        _add_cls_sep(tokenizer)
        return cls(tokenizer, max_length)

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    @property
    def pad_id(self) -> int:
        return self._pad_id

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask``, both int64 ``[len(texts), max_length]``."""
        import torch

        if not texts:
            return _empty_batch(self.max_length)
        encodings = self._tokenizer.encode_batch(list(texts))
        return {
            "input_ids": torch.tensor([e.ids for e in encodings], dtype=torch.long),
            "attention_mask": torch.tensor([e.attention_mask for e in encodings], dtype=torch.long),
        }

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Tokens each text needs before truncation, [CLS] and [SEP] included."""
        if self._unpadded is None:
            self._unpadded = Tokenizer.from_str(self._tokenizer.to_str())
            self._unpadded.no_truncation()
            self._unpadded.no_padding()
        return [len(e.ids) for e in self._unpadded.encode_batch(list(texts))]

    def tokens(self, text: str) -> list[str]:
        """The token strings of one text, padding included (for inspection in notebooks)."""
        return self._tokenizer.encode(text).tokens

    def to_json(self) -> str:
        """The tokenizers library's own JSON (vocabulary, merges, padding and truncation)."""
        return self._tokenizer.to_str()

    @classmethod
    def from_json(cls, text: str) -> "SubwordTokenizer":
        try:
            tokenizer = Tokenizer.from_str(text)
        except Exception as exc:  # the Rust side raises a bare Exception
            raise CheckpointError(f"tokenizer JSON: not a valid subword tokenizer ({exc})") from None
        truncation = tokenizer.truncation
        if not truncation:
            raise CheckpointError("tokenizer JSON: no truncation length saved with the subword tokenizer")
        return cls(tokenizer, truncation["max_length"])


def _add_cls_sep(tokenizer: Tokenizer) -> None:
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS_TOKEN} $A {SEP_TOKEN}",
        special_tokens=[(t, tokenizer.token_to_id(t)) for t in (CLS_TOKEN, SEP_TOKEN)],
    )


class CharTokenizer:
    """The seed script's text encoder: one id per character, its code point clipped to
    0..255, padded with 0 / truncated to ``max_length``; the model divides ids by 255."""

    vocab_size = 256
    pad_id = 0

    def __init__(self, max_length: int = CHAR_MAX_LENGTH):
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.max_length = int(max_length)

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` (1 on real characters), int64 ``[B, max_length]``."""
        import torch

        if not texts:
            return _empty_batch(self.max_length)
        ids = torch.zeros((len(texts), self.max_length), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, text in enumerate(texts):
            codes = [min(ord(ch), 255) for ch in text[: self.max_length]]
            ids[row, : len(codes)] = torch.tensor(codes, dtype=torch.long)
            mask[row, : len(codes)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def token_lengths(self, texts: list[str]) -> list[int]:
        return [len(t) for t in texts]

    def to_json(self) -> str:
        return json.dumps({"kind": "char", "max_length": self.max_length})


def tokenizer_from_json(text: str):
    """Rebuild the tokenizer that ``to_json`` wrote (as stored in checkpoints): a
    ``SubwordTokenizer``, a ``CharTokenizer``, a local BERT tokenizer
    (``models.HFTokenizerAdapter``) or ``data.ClipIndexTokenizer`` (precomputed features)."""
    try:
        data = json.loads(text)
    except (TypeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"tokenizer JSON: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError("tokenizer JSON: expected an object")
    kind = data.get("kind")
    if kind == "char":
        if not isinstance(data.get("max_length"), int):
            raise CheckpointError("tokenizer JSON: the character-level tokenizer has no integer 'max_length'")
        return CharTokenizer(data["max_length"])
    if kind == "hf":
        from medclip_nb.models import HFTokenizerAdapter

        return HFTokenizerAdapter.from_json(text)
    if kind == "clip_indices":  # text_encoder 'precomputed': records' rows of the features file
        from medclip_nb.data import ClipIndexTokenizer

        return ClipIndexTokenizer.from_json(text)
    if "model" in data:
        return SubwordTokenizer.from_json(text)
    raise CheckpointError("tokenizer JSON: neither a subword, a character-level, a BERT nor a clip-index tokenizer")


def build_tokenizer(cfg: "Config", train_reports: Iterable[str]):
    """The tokenizer ``cfg`` asks for: the seed's ``CharTokenizer`` for ``model: simple``;
    the BERT folder's own tokenizer for ``text_encoder: bert`` (its ids must match the
    pretrained weights); ``data.ClipIndexTokenizer`` for ``text_encoder: precomputed`` (the
    records' ``clip_indices`` are the text input); else a BPE vocabulary of ``cfg.vocab_size``
    learned from the cleaned training reports, ``cfg.max_text_tokens`` long."""
    if cfg.model == "simple":
        return CharTokenizer(CHAR_MAX_LENGTH)
    if cfg.text_encoder == "precomputed":
        from medclip_nb.data import ClipIndexTokenizer

        return ClipIndexTokenizer()
    if cfg.text_encoder == "bert":
        from medclip_nb.models import HFTokenizerAdapter

        return HFTokenizerAdapter(cfg.path("bert_path"), cfg.max_text_tokens)
    cleaned = [clean_report(r) for r in train_reports]
    if not any(cleaned):
        raise DataError(f"{cfg.data_path}: no training report text to learn the subword vocabulary from")
    return SubwordTokenizer.train(cleaned, cfg.vocab_size, cfg.max_text_tokens)
