"""The fidelity table: each choice where MedCLIP's code and this package can differ, written once here and
rendered into docs/fidelity.md (`make fidelity`; tests/test_fidelity.py checks the file is current and that
every test a row names exists).

A row's `test` is the test that checks "same as MedCLIP" on the same inputs (a restatement of MedCLIP's code
beside ours); `same` says what that test shows. A row with no test claims no equality: its `same` says so.
MedCLIP's code: github.com/RyanWangZf/MedCLIP at the commit named (f8599d2 is the code the paper trained with,
aad8818 its zero-shot script, HEAD = medclip 0.0.3 on PyPI); GLoRIA's: github.com/marshuang80/gloria.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medclip_nb.files import write_text_atomic
from medclip_nb.paths import repo_root


@dataclass(frozen=True)
class Row:
    choice: str
    medclip: str  # what MedCLIP's code does, with its file and function
    ours: str  # what this package does by default
    key: str  # the config key (or command) that selects MedCLIP's way here
    test: str | None  # tests/<file>.py::<test> that checks equality on the same inputs, or None
    same: str  # what the test shows, or why nothing is claimed


ROWS = (
    Row("loss", "soft cross-entropy against softmax of the raw label dot products, both directions averaged "
        "(`medclip/losses.py`, `ImageTextContrastiveLoss._soft_clip_loss`)", "`loss: clip`",
        "`loss: medclip` (ours: `medclip_cosine`)",
        "tests/test_losses_published.py::test_medclip_loss_equals_the_published_formula",
        "equal to 1e-6 on random embeddings and labels"),
    Row("image labels", "written with blank → 0 and −1 → 0 (`examples/process_chexpert.py`, "
        "`process_mimic_cxr.py`, f8599d2)", "1 / 0 / −1 kept, blank → 0", "`image_uncertain_labels: zero`",
        "tests/test_medclip_recipe.py::test_medclips_encoding_zeroes_uncertain_image_labels_and_keeps_text_ones",
        "the loss equals MedCLIP's formula on its image (−1 → 0) and text (−1 kept) label vectors"),
    Row("text labels", "its sentence table, read with `fillna(0)`: −1 kept (`medclip/dataset.py`, "
        "`_preprocess_sentence_label`)", "−1 kept", "`text_uncertain_labels: keep` (the default)",
        "tests/test_medclip_recipe.py::test_medclips_encoding_zeroes_uncertain_image_labels_and_keeps_text_ones",
        "as the row above"),
    Row("MIMIC-CXR label table", "NegBio's (`examples/process_mimic_cxr.py`, f8599d2)",
        "the CheXpert labeler's (`mimic-cxr-2.0.0-chexpert.csv.gz`)", "`mimic_labels: negbio` (`prepare --labels "
        "negbio`)", "tests/test_medclip_recipe.py::test_prepare_reads_the_negbio_table_when_asked",
        "the labels come from `mimic-cxr-2.0.0-negbio.csv.gz`; MedCLIP's own merge (one row per image, every view, "
        "a flat image folder) is not copied"),
    Row("5x200 rule", "−1 → 0 and blank → 0 first; the class 1 and the twelve other findings 0 (No Finding free); "
        "frontal and lateral; `np.random.seed(42)`, `sample(n=400)` per class, then `sample(frac=0.5)` "
        "(`examples/process_chexpert.py`, f8599d2)", "class 1, other four competition classes not 1 "
        "(`zero_shot_5x200`)", "`zeroshot_protocols: [medclip]` (`zero_shot_5x200_medclip`); "
        "`prepare-chexpert` for CheXpert",
        "tests/test_five_by_200.py::test_medclip_rule_gives_the_rows_of_medclips_script_in_its_order",
        "the same rows in the same order as a pandas restatement of the script; on CheXpert's real train table "
        "(when installed) its 9 shipped rows and 215/197/200/188/200 per class "
        "(`test_medclip_rule_rebuilds_medclips_published_chexpert_5x200_from_the_real_table`)"),
    Row("GLoRIA's 5x200 rule", "blank → 0, −1 kept (so a −1 disqualifies); frontal only; 200 per class, no seed "
        "(GLoRIA's `preprocess_chexpert_5x200_data`; the old `zeroshot_protocol: paper`)", "our rule",
        "`zeroshot_protocols: [gloria]` (`zero_shot_5x200_gloria`)",
        "tests/test_zeroshot_medclip.py::test_gloria_5x200_rule_on_a_hand_made_table",
        "the same qualifying rows; the draw is seeded here (GLoRIA's is not), so not its rows"),
    Row("5x200 removed from pretraining", "only the 1,000 test images, by image path; the other half of the draw "
        "and the same patients stay (`examples/process_chexpert.py`)", "no CheXpert", "`prepare-chexpert`",
        "tests/test_chexpert.py::test_import_holds_medclips_5x200_and_the_rest_as_image_only_records",
        "train_images = train.csv minus the 5x200 rows, the finetune half kept"),
    Row("MIMIC-5x200", "MedCLIP's rule on all of MIMIC-CXR (every split and view), removed from pretraining "
        "(`examples/process_mimic_cxr.py`)", "our rule on the test split", "`zeroshot_protocols: [medclip]` (on the "
        "test split)", None, "not the same: drawn from the test split here, so no training image is in it"),
    Row("prompt draws", "`random.seed(42)` once, then 5 consecutive runs of `random.sample(pool, 10)` per class "
        "(`eval_zeroshot_classification.py`, aad8818; `medclip/prompts.py`, `generate_chexpert_class_prompts`)",
        "every combination, deduplicated", "`zeroshot_protocols` gloria / medclip; `zeroshot_prompts_n`, "
        "`zeroshot_prompt_draws`",
        "tests/test_zeroshot_medclip.py::test_prompt_draws_are_medclips_five_consecutive_draws_after_one_seed",
        "the same prompts (a digest of MedCLIP's own draws from its constants)"),
    Row("prompt words", "\"apperance\", \"uppper\", \"presistent\"; a repeated subtype (`medclip/constants.py`)",
        "respelled, deduplicated", "the gloria / medclip rules",
        "tests/test_zeroshot_medclip.py::test_paper_vocabulary_is_medclips_spelling_and_ours_is_unchanged",
        "the same words and pool sizes 210 / 15 / 192 / 18 / 54"),
    Row("class score", "mean (or max) of the prompt logits (`medclip/modeling_medclip.py`, "
        "`MedClipPromptClassifier`, ensemble=True)", "similarity to the normalised mean prompt embedding / max",
        "the gloria / medclip rules",
        "tests/test_zeroshot_medclip.py::test_class_score_is_the_mean_of_prompt_logits_not_of_prompt_embeddings",
        "equal on a hand-made case where the two ways disagree"),
    Row("reported statistic", "mean and `np.std` (population, ddof 0) over the 5 draws "
        "(`eval_zeroshot_classification.py`)", "one number with a bootstrap interval", "the gloria / medclip rules",
        "tests/test_zeroshot_medclip.py::test_each_rule_is_recorded_under_its_own_key_with_its_name",
        "`accuracy_std` is the population std of the per-draw accuracies"),
    Row("evaluation image", "pad to square, resize 224 (`ZeroShotImageDataset`)", "pad, resize 256, centre crop 224",
        "the gloria / medclip rules (zero-shot only)",
        "tests/test_zeroshot_medclip.py::test_paper_transform_pads_and_resizes_the_whole_film",
        "the whole film is kept, padded black"),
    Row("text per step", "one random sentence of the report (`ImageTextContrastiveDataset.__getitem__`)",
        "the whole report", "`report_sampling: sentence`", None,
        "not claimed equal: our sentences are `text.split_sentences`', MedCLIP's its segments"),
    Row("short sentences", "segments of 4 tokens or fewer dropped (word-character tokens, `_split_report_into_"
        "segment`)", "kept", "`short_sentence_tokens: 4`", None,
        "not claimed equal: whitespace words are counted here, word-character tokens there"),
    Row("sentence lookup", "the sentence table keyed by its normal form: `digits.` removed, split at periods, "
        "word-character tokens, ASCII, > 4 tokens (`_split_report_into_segment`, f8599d2)",
        "MedCLIP's normal form", "`sentence_labels: auto` or a path",
        "tests/test_sentence_labels.py::test_sentence_key_is_medclips_normal_form",
        "equal to a restatement on MedCLIP's example report; a MedCLIP-form table finds ≥ 99 % of the phantom's "
        "sentences (`test_a_medclip_form_table_finds_99_percent_of_the_phantoms_sentences`)"),
    Row("sentence missing from the table", "No Finding = 1 (`ImageTextContrastiveDataset.__getitem__`)",
        "its study's labels, counted and warned about", "`sentence_label_miss: no_finding`",
        "tests/test_sentence_labels.py::test_dataset_hands_out_the_sentences_own_labels",
        "No Finding = 1 and nothing else"),
    Row("text of an image-only item", "a prompt sentence of the table sampled from the image's labels "
        "(`sample_sent_prompts`, `_build_prompt_sentence`); its all-zero branch takes the sentence's first "
        "character (a bug)", "none: image rows learn from label similarity alone",
        "`image_only_text: prompt_sentence`",
        "tests/test_medclip_recipe.py::test_prompt_sentence_candidates_are_medclips",
        "the same candidate sentences; draws seeded per item here, and the whole sentence in the all-zero branch"),
    Row("CheXpert images in pretraining", "CheXpert train.csv minus the 5x200, as image-only rows "
        "(`examples/process_chexpert.py`, `run_medclip_pretrain.py`)", "none",
        "`prepare-chexpert`, `unpaired_data_path`, `unpaired_sources: [images]`",
        "tests/test_chexpert.py::test_its_image_only_records_train_with_unpaired_sources",
        "they train as pairs with prompt sentences (a run, not an equality)"),
    Row("EDA operations", "one of synonym replacement, random swap, random deletion (textaugment 1.3.4 defaults) "
        "per sentence, drawn uniformly (`ImageTextContrastiveCollator`)", "off (`text_eda`: ours, in one view)",
        "`text_eda_view: true`",
        "tests/test_medclip_recipe.py::test_medclip_eda_operations_equal_textaugments_on_the_same_draws",
        "swap and deletion equal textaugment's on the same draws; synonym replacement is missing (no clean "
        "offline WordNet package), so the draw is between two operations, not three"),
    Row("EDA loss term", "(loss(text) + loss(augmented text)) / 2 with the same label targets "
        "(`ImageTextContrastiveLoss.forward`)", "off", "`text_eda_view: true`",
        "tests/test_medclip_recipe.py::test_eda_view_loss_is_the_mean_of_both_views_with_the_same_targets",
        "equal to 1e-6"),
    Row("weight decay", "AdamW; names holding `bias`, `LayerNorm.bias`, `LayerNorm.weight` exempt "
        "(`medclip/trainer.py`, `Trainer.train`)", "every 1-D parameter and the logit scale exempt",
        "`no_decay_rule: medclip`",
        "tests/test_medclip_recipe.py::test_medclip_no_decay_rule_is_its_substring_test",
        "the same exempt names"),
    Row("encoders", "ImageNet Swin-T (or ResNet-50), Bio_ClinicalBERT (`medclip/modeling_medclip.py`)",
        "from scratch", "`vision_pretrained: true`, `vision_backbone: swin_t`, `text_encoder: bert`, `bert_path`",
        None, "not claimed equal (the same architectures; weights are the user's)"),
    Row("BERT pooling", "mean of layers 1, 2 and last, padding included", "mean of the last four layers over "
        "real tokens", "none", None, "differs; no key"),
    Row("recipe", "batch 100, lr 2e-5 (HEAD; 5e-5 at f8599d2), weight decay 1e-4, warmup 0.1, 10 epochs, AMP",
        "(params/full.yaml) batch 256, lr 5e-4, wd 0.1", "`params/medclip_paper.yaml`",
        "tests/test_medclip_paper.py::test_the_yaml_is_medclips_recipe", "the yaml holds these values"),
    Row("checkpoint", "the step with the best zero-shot accuracy on CheXpert-5x200, the test set "
        "(`run_medclip_pretrain.py`, `Trainer.train(save_best_model=True)`)", "best validation loss / last step",
        "none (not copied: it selects on the test set)", None, "differs on purpose"),
)

PAPER_TABLES = (
    "The paper's numbers (Wang et al., EMNLP 2022, arXiv 2210.10163: Table 2 zero-shot on CheXpert-5x200, "
    "MIMIC-5x200, COVID and RSNA; the linear-probe / fine-tune table; retrieval P@K) are **not transcribed**: "
    "the paper's tables could not be read from where this was written (searches of arXiv 2210.10163, the ACL "
    "Anthology page and PMC returned the abstract only), and numbers are never typed from memory. `make paper` "
    "prints our numbers with the paper's column marked \"not transcribed (source not reachable here)\" until "
    "`medclip_nb/study/paper.py`'s `PAPER_NUMBERS` holds them with their table and page."
)


def fidelity_markdown() -> str:
    """docs/fidelity.md, from ROWS."""
    cell = lambda text: text.replace("|", "\\|")
    lines = [
        "# Fidelity to MedCLIP",
        "",
        "Generated from `medclip_nb/study/fidelity.py` by `make fidelity`; do not edit by hand "
        "(`tests/test_fidelity.py` checks that this file is current and that every test named here exists).",
        "",
        "Each choice where MedCLIP's published code and this package can differ: what MedCLIP's code does "
        "(file and function; commit f8599d2 is the code the paper trained with), what we do by default, the key "
        "that selects MedCLIP's way, and the test that checks \"same as MedCLIP\" on the same inputs. A row without "
        "a test claims no equality. `params/medclip_paper.yaml` sets every key MedCLIP's way (its GPU recipe); "
        "`make paper` runs MedCLIP's protocol on CheXpert-5x200 and MIMIC-5x200.",
        "",
        "| choice | MedCLIP's code | ours by default | MedCLIP's way here | test of equality | what the test shows |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in ROWS:
        test = f"`{row.test}`" if row.test else "none"
        lines.append(f"| {cell(row.choice)} | {cell(row.medclip)} | {cell(row.ours)} | {cell(row.key)} | "
                     f"{cell(test)} | {cell(row.same)} |")
    lines += ["", "## The paper's numbers", "", PAPER_TABLES, ""]
    return "\n".join(lines)


def write_fidelity(path: str | Path | None = None) -> Path:
    """Write docs/fidelity.md (or `path`) from ROWS."""
    path = Path(path) if path is not None else repo_root() / "docs" / "fidelity.md"
    write_text_atomic(path, fidelity_markdown())
    return path
