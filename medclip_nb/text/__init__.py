"""The text stage: report cleaning and sentences, tokenizers, sentence-label tables, EDA, the
rule-based finding labeller and the report-language figures (docs/architecture.md lists the
modules). A lazy facade: only the tokenizers import torch."""

from __future__ import annotations

from medclip_nb import lazy_exports

# name -> the submodule that defines it, loaded on first use (medclip_nb.lazy_exports).
_PUBLIC = {
    "drop_short_sentences": "medclip_nb.text.augment",
    "eda": "medclip_nb.text.augment",
    "medclip_eda": "medclip_nb.text.augment",
    "clean_report": "medclip_nb.text.clean",
    "find_mentions": "medclip_nb.text.mentions",
    "PromptSentences": "medclip_nb.text.prompt_sentences",
    "split_sentences": "medclip_nb.text.clean",
    "labelled_sentence": "medclip_nb.text.mentions",
    "language_figures": "medclip_nb.text.language",
    "PREPARED_NAME": "medclip_nb.text.sentence_labels",
    "find_source_table": "medclip_nb.text.sentence_labels",
    "label_tensor_table": "medclip_nb.text.sentence_labels",
    "read_sentence_labels": "medclip_nb.text.sentence_labels",
    "resolve_sentence_labels": "medclip_nb.text.sentence_labels",
    "sentence_hits": "medclip_nb.text.sentence_labels",
    "sentence_key": "medclip_nb.text.sentence_labels",
    "unlisted_sentence_labels": "medclip_nb.text.sentence_labels",
    "write_sentence_labels": "medclip_nb.text.sentence_labels",
    "build_tokenizer": "medclip_nb.text.tokenizers",
    "clip_index_list": "medclip_nb.text.tokenizers",
    "from_local_folder": "medclip_nb.text.tokenizers",
    "import_transformers": "medclip_nb.text.tokenizers",
    "local_hf_folder": "medclip_nb.text.tokenizers",
    "pad_text": "medclip_nb.text.tokenizers",
    "tokenizer_from_json": "medclip_nb.text.tokenizers",
    "trim_padding": "medclip_nb.text.tokenizers",
    "TOKENIZER_CONFIG_FILE": "medclip_nb.text.tokenizer_export",
    "TOKENIZER_FILE": "medclip_nb.text.tokenizer_export",
    "tokenizer_files": "medclip_nb.text.tokenizer_export",
    "tokenizer_problem": "medclip_nb.text.tokenizers",
}
__all__ = sorted(_PUBLIC)
__getattr__, __dir__ = lazy_exports(__name__, _PUBLIC)
