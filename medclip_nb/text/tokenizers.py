"""Every tokenizer: text (or a record's feature rows) into the ids a text encoder reads.

They share one interface (``encode``, ``vocab_size``, ``pad_id``, ``max_length``, ``to_json``)
so the model, the collate function and the checkpoint code never need to know which one they have.
Each text tokenizer is also callable, as open_clip's is: ``tokenizer(texts)`` cleans the texts as
training cleaned the reports (``clean_report``) and returns ``encode``'s tensors, so that
``model.encode_text(**tokenizer(["small left pleural effusion"]))`` works.

- ``SubwordTokenizer``: a BPE vocabulary learned from the training reports with the
  Hugging Face ``tokenizers`` library (``[CLS] ... [SEP]``, padded with ``[PAD]`` = 0);
- ``CharTokenizer``: the seed script's character-level encoder (ASCII codes, 50 characters);
- ``HFTokenizerAdapter``: a local BERT folder's own tokenizer (``text_encoder: bert``);
- ``ClipIndexTokenizer``: ``text_encoder: precomputed``, whose text input is each record's
  ``clip_indices`` (rows of a features file).

``tokenizer_from_json`` rebuilds any of them from what ``to_json`` wrote (checkpoints, exports).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

from medclip_nb.errors import CheckpointError, DataError, UserError, is_native_panic, one_line, quote
from medclip_nb.progress import progress
from medclip_nb.text.clean import clean_report

if TYPE_CHECKING:
    from medclip_nb.config import Config

PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN = "[PAD]", "[UNK]", "[CLS]", "[SEP]"
# Order fixes the ids: [PAD] = 0 matches the zero padding of CharTokenizer.
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN)

# The seed model reads exactly 50 character codes.
CHAR_MAX_LENGTH = 50
CLIP_INDEX_PAD = -1  # PrecomputedTextEncoder gives -1 / mask 0 positions no weight
# What a stored tokenizer may ask for (the config key table's bounds of max_text_tokens and
# vocab_size): a length decides the padding the Rust library allocates for every text.
MAX_LENGTH = 8192
MAX_VOCAB = 1_000_000
MAX_JSON_CHARS = 64 << 20
# Parts of a subword tokenizer's JSON that code sets, not the file (see SubwordTokenizer.from_json).
_COMPONENTS = ("normalizer", "pre_tokenizer", "post_processor", "decoder")


class CallableTokenizer:
    """``tokenizer(texts)``: one text or a list, cleaned as training cleaned the reports
    (``clean_report``), then ``encode``: ``{"input_ids", "attention_mask"}``, int64 ``[B, L]``."""

    def __call__(self, texts: str | Sequence[str]) -> dict[str, torch.Tensor]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.encode([clean_report(t) for t in texts])


def _empty_batch(max_length: int) -> dict[str, torch.Tensor]:
    empty = torch.zeros((0, max_length), dtype=torch.long)
    return {"input_ids": empty, "attention_mask": empty.clone()}


def trim_padding(encoded: dict[str, torch.Tensor], tokenizer) -> dict[str, torch.Tensor]:
    """`encoded` (from `tokenizer.encode`) cut to its longest text: every row keeps its real
    tokens and the columns that are padding in every row go; the encoders' masked mean makes
    the embedding independent of the padded length. With one sentence per report a batch of
    params/debug.yaml is ~15 tokens wide instead of 64, and prompts a few; its whole reports keep
    64 (a batch of 32 always holds one that fills it). A fixed-length tokenizer (the seed's
    characters: its model reads exactly 50) is left alone."""
    if getattr(tokenizer, "fixed_length", False) or encoded["input_ids"].shape[0] == 0:
        return encoded
    width = max(int(encoded["attention_mask"].sum(dim=1).max()), 1)
    if width == encoded["input_ids"].shape[1]:
        return encoded
    return {key: value[:, :width].contiguous() for key, value in encoded.items()}


def pad_text(encoded: dict[str, torch.Tensor], width: int, pad_id: int) -> dict[str, torch.Tensor]:
    """`encoded` padded on the right to `width` columns (ids with `pad_id`, mask with 0), so that
    text batches of different widths can be concatenated."""
    extra = width - encoded["input_ids"].shape[1]
    if extra <= 0:
        return encoded
    ids, mask = encoded["input_ids"], encoded["attention_mask"]
    return {"input_ids": torch.cat([ids, ids.new_full((ids.shape[0], extra), pad_id)], dim=1),
            "attention_mask": torch.cat([mask, mask.new_zeros((mask.shape[0], extra))], dim=1)}


class SubwordTokenizer(CallableTokenizer):
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
        texts = list(texts)
        if not texts:
            raise ValueError("no texts to learn a subword vocabulary from")
        tokenizer = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
        _set_components(tokenizer)
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

    def to_json(self) -> str:
        """The tokenizers library's own JSON (vocabulary, merges, padding and truncation)."""
        return self._tokenizer.to_str()

    @classmethod
    def from_json(cls, data: dict) -> "SubwordTokenizer":
        """Rebuild from what `to_json` wrote, taking only data from it: the BPE vocabulary, its
        merges and the length. The normaliser, pre-tokenizer, [CLS]/[SEP] template and padding
        are set by this code, and a file whose own differ is refused: a stored tokenizer can
        neither change how text is cut nor reach the parts of the Rust library that panic or
        allocate what a length asks for."""
        model = data.get("model")
        if not isinstance(model, dict) or model.get("type") != "BPE":
            raise CheckpointError("tokenizer JSON: the subword tokenizer's model is not a BPE vocabulary")
        vocab, merges = model.get("vocab"), model.get("merges")
        if not isinstance(vocab, dict) or not 0 < len(vocab) <= MAX_VOCAB or not all(
                isinstance(k, str) and _is_int(v) for k, v in vocab.items()) \
                or sorted(vocab.values()) != list(range(len(vocab))):
            raise CheckpointError(f"tokenizer JSON: 'vocab' must map at most {MAX_VOCAB} tokens to the ids "
                                  f"0..n-1, each once")
        pairs = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) if isinstance(m, list) else ()
                 for m in merges] if isinstance(merges, list) and len(merges) <= len(vocab) else None
        if pairs is None or not all(len(p) == 2 and all(isinstance(t, str) and t in vocab for t in p) for p in pairs):
            raise CheckpointError("tokenizer JSON: 'merges' must be pairs of tokens of the vocabulary")
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise CheckpointError(f"tokenizer JSON: the vocabulary has no {missing[0]} token")
        truncation = data.get("truncation")
        length = truncation.get("max_length") if isinstance(truncation, dict) else None
        if not _is_int(length) or not 2 <= length <= MAX_LENGTH:
            raise CheckpointError(f"tokenizer JSON: the subword tokenizer's length {quote(length)} is not in "
                                  f"2..{MAX_LENGTH}")
        try:
            tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs, unk_token=UNK_TOKEN))
        except BaseException as exc:  # noqa: BLE001 - the library's own checks, and its panics
            if not isinstance(exc, Exception) and not is_native_panic(exc):
                raise
            raise CheckpointError(f"tokenizer JSON: not a valid subword vocabulary ({one_line(exc, 120)})") from None
        tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
        _set_components(tokenizer)
        _add_cls_sep(tokenizer)
        ours = json.loads(tokenizer.to_str())
        for part in _COMPONENTS:
            if data.get(part) != ours.get(part):
                raise CheckpointError(f"tokenizer JSON: its {part} is not the one medclip-nb writes")
        return cls(tokenizer, length)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _set_components(tokenizer: Tokenizer) -> None:
    """The parts of a subword tokenizer that code, not a file, decides: NFKC and lower case, then
    splits on whitespace and on every punctuation character."""
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()


def _add_cls_sep(tokenizer: Tokenizer) -> None:
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS_TOKEN} $A {SEP_TOKEN}",
        special_tokens=[(t, tokenizer.token_to_id(t)) for t in (CLS_TOKEN, SEP_TOKEN)],
    )


class CharTokenizer(CallableTokenizer):
    """The seed script's text encoder: one id per character, its code point clipped to
    0..255, padded with 0 / truncated to ``max_length``; the model divides ids by 255."""

    vocab_size = 256
    pad_id = 0
    fixed_length = True  # the seed's model reads exactly max_length codes: never trimmed (trim_padding)

    def __init__(self, max_length: int = CHAR_MAX_LENGTH):
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.max_length = int(max_length)

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` (1 on real characters), int64 ``[B, max_length]``."""
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
    """Rebuild the tokenizer that ``to_json`` wrote (as stored in checkpoints and exports): a
    ``SubwordTokenizer``, a ``CharTokenizer``, a local BERT tokenizer (``HFTokenizerAdapter``)
    or ``ClipIndexTokenizer`` (precomputed features). Whatever the text holds, the result is a
    tokenizer of at most MAX_LENGTH tokens or one CheckpointError line ("tokenizer JSON: ...";
    the caller adds the file)."""
    if not isinstance(text, str) or len(text) > MAX_JSON_CHARS:
        raise CheckpointError(f"tokenizer JSON: not a string of at most {MAX_JSON_CHARS >> 20} Mi characters")
    try:
        data = json.loads(text)
    except RecursionError:
        raise CheckpointError("tokenizer JSON: nested too deeply") from None
    except (TypeError, ValueError) as exc:  # JSONDecodeError, and integers of thousands of digits
        raise CheckpointError(f"tokenizer JSON: not valid JSON ({one_line(exc, 120)})") from None
    if not isinstance(data, dict):
        raise CheckpointError("tokenizer JSON: expected an object")
    kind = data.get("kind")
    if kind == "char":
        length = data.get("max_length")
        if not _is_int(length) or not 1 <= length <= MAX_LENGTH:
            raise CheckpointError(f"tokenizer JSON: the character-level tokenizer's 'max_length' {quote(length)} is "
                                  f"not in 1..{MAX_LENGTH}")
        return CharTokenizer(length)
    if kind == "hf":
        return HFTokenizerAdapter.from_json(data)
    if kind == "clip_indices":  # text_encoder 'precomputed': records' rows of the features file
        return ClipIndexTokenizer()
    if "model" in data:
        return SubwordTokenizer.from_json(data)
    raise CheckpointError("tokenizer JSON: neither a subword, a character-level, a BERT nor a clip-index tokenizer")


def tokenizer_problem(tokenizer, cfg: "Config") -> str | None:
    """Why `tokenizer` is not the one ``build_tokenizer(cfg)`` makes (its kind, or its length:
    ``max_text_tokens``, the seed model's 50 characters), or None. A stored tokenizer (a checkpoint's,
    an export's) must pass this against the config it is used with."""
    if cfg.model == "simple":
        kind, length = CharTokenizer, CHAR_MAX_LENGTH
    elif cfg.text_encoder == "precomputed":
        kind, length = ClipIndexTokenizer, None
    elif cfg.text_encoder == "bert":
        kind, length = HFTokenizerAdapter, cfg.max_text_tokens
    else:
        kind, length = SubwordTokenizer, cfg.max_text_tokens
    if not isinstance(tokenizer, kind):
        return f"its tokenizer is a {type(tokenizer).__name__}, the config needs a {kind.__name__}"
    if length is not None and tokenizer.max_length != length:
        key = "the seed model's text length" if cfg.model == "simple" else "config key 'max_text_tokens'"
        return f"its tokenizer cuts texts at {tokenizer.max_length} tokens, {key} is {length}"
    return None


def build_tokenizer(cfg: "Config", train_reports: Iterable[str]):
    """The tokenizer ``cfg`` asks for: the seed's ``CharTokenizer`` for ``model: simple``;
    the BERT folder's own tokenizer for ``text_encoder: bert`` (its ids must match the
    pretrained weights); ``ClipIndexTokenizer`` for ``text_encoder: precomputed`` (the
    records' ``clip_indices`` are the text input); else a BPE vocabulary of ``cfg.vocab_size``
    learned from the cleaned training reports, ``cfg.max_text_tokens`` long."""
    if cfg.model == "simple":
        return CharTokenizer(CHAR_MAX_LENGTH)
    if cfg.text_encoder == "precomputed":
        return ClipIndexTokenizer()
    if cfg.text_encoder == "bert":
        return HFTokenizerAdapter(cfg.path("bert_path"), cfg.max_text_tokens)
    cleaned = [clean_report(r) for r in train_reports]
    if not any(cleaned):
        raise DataError(f"{cfg.data_path}: no training report text to learn the subword vocabulary from")
    return SubwordTokenizer.train(cleaned, cfg.vocab_size, cfg.max_text_tokens)


def clip_index_list(value: Any, where: str) -> list[int]:
    """A record's ``clip_indices`` (one int or a list of ints) as a non-empty list of ints >= 0."""
    if isinstance(value, np.ndarray):  # NumPy arrays / scalars as Python lists / numbers
        value = value.tolist()
    items = [item.item() if isinstance(item, np.generic) else item
             for item in (value if isinstance(value, (list, tuple)) else [value])]
    if not items:
        raise DataError(f"{where}: key 'clip_indices' is empty (need at least one feature row)")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise DataError(f"{where}: key 'clip_indices': {quote(item)} is not an integer row index")
        if not 0 <= item < 2**62:
            raise DataError(f"{where}: key 'clip_indices': {quote(item)} is negative or absurdly large")
    return items


class ClipIndexTokenizer:
    """The tokenizer slot for ``text_encoder: precomputed``: the model's text input is each
    record's ``clip_indices`` (rows of the precomputed features file), not report text.

    ``encode_indices`` pads a batch's index lists to the longest with -1 (attention mask 0),
    as ``models.PrecomputedTextEncoder`` expects; ``BatchCollator`` calls it instead of
    ``encode``. ``to_json``/``tokenizer_from_json`` round-trip it through checkpoints.
    """

    kind = "clip_indices"
    pad_id = CLIP_INDEX_PAD

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        raise TypeError(
            "text_encoder 'precomputed' cannot encode text (prompts, reports): its text input is "
            "each record's clip_indices"
        )

    def encode_indices(
        self, index_lists: Sequence[Any], sample_ids: Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """``input_ids`` (int64 ``[B, K]``, K = the longest list, at least 1, padded with -1)
        and ``attention_mask`` (1 on real indices). A missing (None) or malformed entry is a
        ``DataError`` naming the sample's dataset index from ``sample_ids``."""
        lists = []
        for position, value in enumerate(index_lists):
            sample = sample_ids[position] if sample_ids is not None else position
            where = f"dataset sample {sample}"
            if value is None:
                raise DataError(
                    f"{where}: no 'clip_indices' in its record (text_encoder 'precomputed' needs them)"
                )
            lists.append(clip_index_list(value, where))
        width = max((len(indices) for indices in lists), default=1)
        input_ids = torch.full((len(lists), width), CLIP_INDEX_PAD, dtype=torch.long)
        for row, indices in enumerate(lists):
            input_ids[row, : len(indices)] = torch.tensor(indices, dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": (input_ids != CLIP_INDEX_PAD).long()}

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "pad_id": self.pad_id})



# ---------------------------------------------------------------------------------------------
# Batches and loaders
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# A local Hugging Face folder (text_encoder: bert); models.BertTextEncoder loads its weights the same way
# ---------------------------------------------------------------------------------------------


def import_transformers():
    try:
        import transformers
    except ImportError:
        raise UserError(
            "text_encoder 'bert' needs the transformers package: pip install -e .[transformers]"
        ) from None
    return transformers


# A file of a local BERT folder (BERT-large's weights are 1.3 GB).
MAX_BERT_FILE_BYTES = 4 << 30


def local_hf_folder(path: str | os.PathLike) -> Path:
    """A local Hugging Face folder (config key bert_path, which a model file may name): a folder
    whose files are regular files under MAX_BERT_FILE_BYTES (never a FIFO or a device: the
    library would wait on it or read it without end)."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(
            f"bert_path {folder}: not a folder; nothing is downloaded here: on a networked machine save the model "
            f"and its tokenizer there with save_pretrained (for Bio_ClinicalBERT see params/medclip_paper.yaml) "
            f"and copy the folder"
        )
    try:
        entries = sorted(folder.iterdir())
        for entry in entries:
            info = entry.stat()  # follows links (the hub cache links to its blobs)
            regular = stat.S_ISREG(info.st_mode) and info.st_size <= MAX_BERT_FILE_BYTES
            if not stat.S_ISDIR(info.st_mode) and not regular:
                raise UserError(f"bert_path {entry}: not a regular file of at most {MAX_BERT_FILE_BYTES >> 30} GiB")
    except OSError as e:
        raise UserError(f"bert_path {folder}: cannot be read ({e.strerror or type(e).__name__})") from None
    return folder


def from_local_folder(auto_class, folder, what: str):
    """`auto_class.from_pretrained` on a local folder only (never the hub); one-line UserError."""
    try:
        return auto_class.from_pretrained(str(folder), local_files_only=True)
    except BaseException as e:  # noqa: BLE001 - whatever the folder's files make the library raise, panics too
        if not isinstance(e, Exception) and not is_native_panic(e):
            raise
        raise UserError(f"bert_path {folder}: cannot load {what} from it ({one_line(e, 160)})") from None


class HFTokenizerAdapter(CallableTokenizer):
    """A local Hugging Face tokenizer behind the interface of the other tokenizers here:
    `.encode(texts) -> {'input_ids', 'attention_mask'}` (int64 `[B, max_length]`),
    `.vocab_size`, `.pad_id`, `.max_length`, `.to_json()`."""

    kind = "hf"

    def __init__(self, path: str | os.PathLike, max_length: int = 128):
        transformers = import_transformers()
        folder = local_hf_folder(path)
        self.tokenizer = from_local_folder(transformers.AutoTokenizer, folder, "a tokenizer")
        if self.tokenizer.pad_token_id is None:
            raise UserError(f"bert_path {folder}: the tokenizer has no pad token")
        self.path = str(folder)
        self.max_length = int(max_length)
        self.pad_id = int(self.tokenizer.pad_token_id)
        self.vocab_size = len(self.tokenizer)

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(
            list(texts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {"input_ids": encoded["input_ids"].long(), "attention_mask": encoded["attention_mask"].long()}

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "path": self.path, "max_length": self.max_length})

    @classmethod
    def from_json(cls, state: dict) -> "HFTokenizerAdapter":
        path, length = state.get("path"), state.get("max_length", 128)
        if not isinstance(path, str) or not _is_int(length) or not 1 <= length <= MAX_LENGTH:
            raise CheckpointError(f"tokenizer JSON: a BERT tokenizer needs a folder 'path' and a 'max_length' in "
                                  f"1..{MAX_LENGTH}")
        return cls(path, length)
