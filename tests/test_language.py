"""The rule-based finding labeller (text/mentions.py) and the report-language figures (text/language.py)."""

import math

import pytest

from medclip_nb.labels import LABEL_INDEX
from medclip_nb.text.language import language_figures, prompt_pattern, sentence_template
from medclip_nb.text.mentions import find_mentions, negated, sentence_labels


def statuses(sentence):
    return [(m.label, m.status) for m in find_mentions(sentence)]


@pytest.mark.parametrize("sentence, expected", [
    ("No pleural effusion or pneumothorax.", [("Pleural Effusion", 0), ("Pneumothorax", 0)]),
    ("Small left pleural effusion.", [("Pleural Effusion", 1)]),
    ("Opacity may represent pneumonia.", [("Lung Opacity", -1), ("Pneumonia", -1)]),
    ("The heart is mildly enlarged.", [("Cardiomegaly", 1)]),
    ("Heart size is normal, but there is a small effusion.", [("Pleural Effusion", 1)]),  # scope stop
    ("Lungs are clear without focal consolidation.", [("Consolidation", 0)]),
    ("Calcified nodule in the right upper lobe.", []),  # CheXpert's unmention: not a lesion
    ("No pericardial effusion.", []),  # not a pleural effusion
    ("Pleural thickening at the left apex.", [("Pleural Other", 1)]),
    ("Right PICC line tip in the SVC.", [("Support Devices", 1), ("Support Devices", 1)]),
])
def test_mentions_and_their_status(sentence, expected):
    assert statuses(sentence) == expected


def test_negation_needs_its_cue_before_the_mention_and_no_scope_stop():
    text = "no effusion; edema"
    assert negated(text, text.index("effusion"))
    assert not negated(text, text.index("edema"))  # the ';' ends the cue's scope


def test_sentence_labels_vector_takes_positive_over_uncertain_over_negated():
    labels = sentence_labels("No effusion on the left but a small effusion on the right.")
    assert labels[LABEL_INDEX["Pleural Effusion"]] == 1.0
    labels = sentence_labels("No edema, but edema may be present; no pneumothorax.")
    assert labels[LABEL_INDEX["Edema"]] == -1.0 and labels[LABEL_INDEX["Pneumothorax"]] == 0.0
    assert math.isnan(labels[LABEL_INDEX["No Finding"]])
    assert sum(not math.isnan(v) for v in labels) == 2


def test_sentence_template_normalises_deidentification_digits_and_final_punctuation():
    assert sentence_template("Stable XXXX  in 2 views.") == "stable X in 0 views"
    assert sentence_template("No effusion;") == sentence_template("no EFFUSION.")


def test_language_figures_on_a_hand_made_corpus():
    reports = [
        "Small left pleural effusion. No pneumothorax.",
        "No pleural effusion. Heart size is normal.",
        "Heart size is normal. Lungs are clear XXXX.",
    ]
    f = language_figures(reports)
    assert (f["reports"], f["sentences"]) == (3, 6)
    # 'heart size is normal' twice: 5 distinct sentences and templates
    assert f["distinct_sentences"] == 5 and f["sentence_templates"] == 5
    words = {"small", "left", "pleural", "effusion", "no", "pneumothorax", "heart", "size", "is", "normal",
             "lungs", "are", "clear", "x"}
    assert f["word_types"] == len(words)
    # finding sentences: 'small left pleural effusion' (positive), 'no pneumothorax', 'no pleural effusion'
    assert f["finding_sentences"] == 3 and f["negated_finding_share"] == pytest.approx(2 / 3)
    # 'pleural effusion' is not a 5x200 prompt on its own; 'small left pleural effusion' holds none either,
    # while a custom prompt list finds the one report that says it
    assert f["prompt_verbatim_share"] == pytest.approx(0.0)
    assert language_figures(reports, prompts=["small left pleural effusion"])["prompt_verbatim_share"] == \
        pytest.approx(1 / 3)


def test_prompt_pattern_matches_whole_words_only():
    pattern = prompt_pattern(["pulmonary edema"])
    assert pattern.search("mild pulmonary edema.")
    assert not pattern.search("pulmonary edematous change")
