"""A tokenizer as the files other libraries read: `tokenizer.json` (Hugging Face `tokenizers`)
and `tokenizer_config.json` (transformers' `AutoTokenizer`), for an export folder.

    tokenizers.Tokenizer.from_file("export/tokenizer.json").encode("small left pleural effusion").ids
    AutoTokenizer.from_pretrained("export")(texts, padding="max_length", truncation=True, return_tensors="pt")

Both give the ids this project's tokenizer gives (`[CLS] ... [SEP]`, padded to `max_length`):
`tokenizer.json` keeps the truncation and padding, which transformers switches off until the call
asks for them. What they do not do is `clean_report` (de-identification placeholders and list
numbers removed); the project's callable tokenizer does, as training did.

- the subword tokenizer: its own `tokenizers` JSON;
- the seed's character tokenizer: the same mapping as a `tokenizers` word-level model over single
  characters (code point, clipped to 255; pad 0);
- a local BERT's tokenizer (`text_encoder: bert`): its fast tokenizer's JSON with the model's
  `max_text_tokens` (a slow-only tokenizer has no JSON: no files);
- `text_encoder: precomputed` reads rows of a features file, not text: no files.
"""

from __future__ import annotations

import json

from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from medclip_nb.text.tokenizers import (
    CLS_TOKEN,
    PAD_TOKEN,
    SEP_TOKEN,
    UNK_TOKEN,
    CharTokenizer,
    HFTokenizerAdapter,
    SubwordTokenizer,
)

TOKENIZER_FILE, TOKENIZER_CONFIG_FILE = "tokenizer.json", "tokenizer_config.json"


def char_tokenizer_json(max_length: int) -> str:
    """CharTokenizer as a `tokenizers` JSON: every character one token, id = its code point
    clipped to 255 (255 doubles as the unknown token, so every higher code point maps there),
    padded with id 0 to `max_length`."""
    vocab = {chr(code): code for code in range(256)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=chr(255)))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(length=max_length, pad_id=0, pad_token=chr(0))
    return tokenizer.to_str()


def _bert_tokenizer_json(adapter: HFTokenizerAdapter) -> str | None:
    hf = adapter.tokenizer
    if not getattr(hf, "is_fast", False):
        return None
    backend = Tokenizer.from_str(hf.backend_tokenizer.to_str())  # a copy: the adapter's stays as it is
    backend.enable_truncation(max_length=adapter.max_length)
    backend.enable_padding(length=adapter.max_length, pad_id=adapter.pad_id, pad_token=hf.pad_token)
    return backend.to_str()


def tokenizer_files(tokenizer) -> dict[str, str]:
    """{file name: text} for `tokenizer`: tokenizer.json and tokenizer_config.json, or {} when
    the tokenizer has no `tokenizers` form (precomputed features, a slow-only BERT tokenizer)."""
    if isinstance(tokenizer, SubwordTokenizer):
        text = tokenizer.to_json()
        special = {"pad_token": PAD_TOKEN, "unk_token": UNK_TOKEN, "cls_token": CLS_TOKEN, "sep_token": SEP_TOKEN}
    elif isinstance(tokenizer, CharTokenizer):
        text = char_tokenizer_json(tokenizer.max_length)
        special = {"pad_token": chr(0), "unk_token": chr(255)}
    elif isinstance(tokenizer, HFTokenizerAdapter):
        text = _bert_tokenizer_json(tokenizer)
        hf = tokenizer.tokenizer
        special = {name: getattr(hf, name) for name in ("pad_token", "unk_token", "cls_token", "sep_token",
                                                        "mask_token") if getattr(hf, name, None) is not None}
    else:
        return {}
    if text is None:
        return {}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # reads tokenizer.json as it is
        "model_max_length": tokenizer.max_length,
        "padding_side": "right",
        "truncation_side": "right",
        "model_input_names": ["input_ids", "attention_mask"],
        "clean_up_tokenization_spaces": False,
        **special,
    }
    return {TOKENIZER_FILE: text, TOKENIZER_CONFIG_FILE: json.dumps(config, indent=2, sort_keys=True) + "\n"}
