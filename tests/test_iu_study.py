"""The study's views of report language and of the data a run used (study/open_i.py, study.language_table,
summary.md's data section, phantom_report_texts, the ablation's variants)."""

from __future__ import annotations

import pandas as pd
import pytest

from medclip_nb import study
from medclip_nb.config import Config
from medclip_nb.data.mimic_reports import read_report
from medclip_nb.errors import ConfigError
from medclip_nb.phantom import generate_phantom, phantom_report_texts
from medclip_nb.study.ablation import run_config
from medclip_nb.study.summary import summary_markdown


def test_language_table_has_one_column_per_corpus():
    table = study.language_table({"a": ["No pneumothorax. Small left effusion.", "Heart size is normal."],
                                  "b": ["Mild pulmonary edema."]})
    assert list(table.columns) == ["a", "b"]
    assert table.loc["reports", "a"] == 2 and table.loc["sentences", "a"] == 3
    assert table.loc["finding sentences fully negated (share)", "a"] == 0.5
    assert table.loc["reports holding a 5x200 prompt verbatim (share)", "b"] == 1.0


def test_phantom_report_texts_are_the_phantoms_reports(tmp_path):
    generate_phantom(tmp_path / "p", studies=12, size=32, seed=3, workers=1)
    written = sorted(read_report(str(p))[0] for p in (tmp_path / "p" / "files").rglob("s*.txt"))
    assert sorted(phantom_report_texts(12, seed=3)) == written


def test_prompt_gap_counts_prompts_found_word_for_word():
    gap = study.prompt_gap(["Mild pulmonary edema. No pleural effusion.", "Bibasilar atelectasis at the lung bases."])
    assert gap.loc["Edema", "found in a training sentence"] >= 2  # "pulmonary edema", "mild pulmonary edema"
    assert gap.loc["Consolidation", "found in a training sentence"] == 0
    assert gap.loc["Atelectasis", "prompts"] > 100


def test_study_reports_count_a_study_once():
    splits = {"train": [{"study_id": 1, "report": "a"}, {"study_id": 1, "report": "a"}, {"study_id": 2,
                                                                                      "report": "b"}]}
    assert study.study_reports(splits) == ["a", "b"]


def test_summary_shows_the_data_language_and_prompt_gap():
    metrics = {"dataset": {"dataset": "Open-i", "image_kind": "phantom"},
               "language": pd.DataFrame({"Open-i": {"word types": 1968}, "phantom": {"word types": 177}}).to_dict(),
               "prompt_gap": {"Edema": {"prompts": 18, "found": 3, "share": 0.167}}}
    text = summary_markdown(metrics)
    assert "- image kind: phantom" in text
    assert "| word types | 1968 | 177 |" in text
    assert "| Edema | 18 | 3 | 0.167 |" in text


def test_ablation_variants_and_sentence_labels_per_loss():
    cfg = Config(max_steps=5, report_sampling="sentence", sentence_labels="auto", loss="medclip",
                 ablation_variants=["clip", "medclip"])
    assert run_config(cfg, {"loss": "clip"}, 0, 1.0, "x").sentence_labels is None
    assert run_config(cfg, {"loss": "medclip"}, 0, 1.0, "x").sentence_labels == "auto"
    with pytest.raises(ConfigError, match="ablation_variants"):
        Config(ablation_variants=["medclip"])  # clip, the reference, is required


def test_ablation_without_medclip_cosine_runs_when_no_data_efficiency_fraction(tmp_path):
    from medclip_nb.errors import DataError

    cfg = Config(max_steps=5, ablation_variants=["clip", "medclip"], data_path=str(tmp_path / "absent.pkl"))
    with pytest.raises(DataError):  # past the variants check: it goes on to read the dataset
        study.ablation(cfg, [0], fractions=[1.0])
    # The data-efficiency grid trains its own arms (study.DATA_EFFICIENCY_ARMS) whatever the variants are:
    # medclip_cosine on all the pairs is then an arm's run, so this too goes on to read the dataset.
    with pytest.raises(DataError):
        study.ablation(cfg, [0], fractions=[0.5, 1.0])
