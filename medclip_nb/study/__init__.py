"""Glue for the notebooks and `make study`: make sure the dataset exists, save figures, show tables.

Notebook-facing helpers, presentation only (the numbers come from train and evaluate):

- setup.py: the notebook's Config (`ensure_dataset` comes from prepare.py);
- runs.py: train and evaluate from a notebook, entries of reports/metrics.json;
- figures.py: figures saved under reports_dir/figures and shown in the cell;
- tables.py: pandas tables of the data, the training and each model's headline numbers;
- ablation.py: `make ablation`'s runs (variants x seeds, the data-efficiency grid of arms x fractions) with
  learning-curve checkpoints;
- ablation_entries.py: their metrics.json entries; data_efficiency.py: the grid's statistics;
- seed_stats.py: means with t intervals over seeds, differences paired by seed, Holm per table;
- ablation_tables.py: the ablation's tables (notebook, summary.md, the end of `make ablation`);
- readings.py: the written readings, generated from the numbers;
- localisation.py: where the models look: localisation scores, paired differences, the grid of maps;
- open_i.py: which data a run used, Open-i's MeSH table, report language beside the phantom's, the prompt gap.

The notebooks use `from medclip_nb import study` and `study.<name>`: every name is re-exported here.
"""

from medclip_nb.study.ablation import (
    DATA_EFFICIENCY_ARMS,
    VARIANTS,
    ablation,
    planned_runs,
    run_config,
    train_and_score,
)
from medclip_nb.study.ablation_entries import ablation_entry, data_efficiency_entry
from medclip_nb.study.ablation_tables import print_ablation, show_ablation, show_data_efficiency
from medclip_nb.study.fidelity import write_fidelity
from medclip_nb.study.figures import (
    embedding_figure,
    label_prevalence_figure,
    overfit_figure,
    per_label_auroc_figure,
    probe_fraction_figure,
    report_length_figure,
    sample_grid_figure,
    show_figure,
    similarity_heatmap_figure,
    training_curves_figure,
)
from medclip_nb.study.localisation import (
    localisation_comparison,
    localisation_comparison_table,
    localisation_figure,
    localisation_table,
)
from medclip_nb.study.open_i import (
    dataset_description,
    is_open_i,
    language_corpora,
    mapped_share,
    mesh_table,
    prompt_gap,
    study_reports,
)
from medclip_nb.study.paper import run_paper
from medclip_nb.study.readings import reading
from medclip_nb.study.runs import (
    copy_metrics_entry,
    evaluate_run,
    record_comparisons,
    record_models,
    train_and_evaluate,
    update_metrics,
)
from medclip_nb.study.setup import ensure_dataset, notebook_config
from medclip_nb.study.summary import write_summary
from medclip_nb.study.tables import (
    comparison_table,
    epoch_table,
    label_prevalence,
    language_table,
    paired_comparison_entries,
    probe_fraction_table,
    read_metrics_log,
    report_lengths,
    results_table,
    results_table_with_intervals,
    split_counts,
    top_retrievals,
)

__all__ = [
    "DATA_EFFICIENCY_ARMS",
    "ablation",
    "ablation_entry",
    "comparison_table",
    "copy_metrics_entry",
    "data_efficiency_entry",
    "dataset_description",
    "embedding_figure",
    "ensure_dataset",
    "epoch_table",
    "evaluate_run",
    "is_open_i",
    "label_prevalence",
    "language_corpora",
    "language_table",
    "localisation_comparison",
    "localisation_comparison_table",
    "localisation_figure",
    "localisation_table",
    "mapped_share",
    "mesh_table",
    "label_prevalence_figure",
    "notebook_config",
    "overfit_figure",
    "paired_comparison_entries",
    "per_label_auroc_figure",
    "planned_runs",
    "print_ablation",
    "probe_fraction_figure",
    "probe_fraction_table",
    "prompt_gap",
    "read_metrics_log",
    "reading",
    "record_comparisons",
    "run_paper",
    "record_models",
    "report_length_figure",
    "report_lengths",
    "results_table",
    "results_table_with_intervals",
    "run_config",
    "sample_grid_figure",
    "show_ablation",
    "show_data_efficiency",
    "show_figure",
    "similarity_heatmap_figure",
    "split_counts",
    "study_reports",
    "top_retrievals",
    "train_and_evaluate",
    "train_and_score",
    "training_curves_figure",
    "update_metrics",
    "VARIANTS",
    "write_fidelity",
    "write_summary",
]
