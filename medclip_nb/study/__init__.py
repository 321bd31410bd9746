"""Glue for the notebooks and `make study`: make sure the dataset exists, save figures, show tables.

Notebook-facing helpers, presentation only (the numbers come from train and evaluate):

- setup.py: the notebook's Config (`ensure_dataset` comes from prepare.py);
- runs.py: train and evaluate from a notebook, entries of reports/metrics.json;
- figures.py: figures saved under reports_dir/figures and shown in the cell;
- tables.py: pandas tables of the data, the training and each model's headline numbers;
- ablation.py: the ablation over variants and seeds, and the readings written from the numbers.

The notebooks use `from medclip_nb import study` and `study.<name>`: every name is re-exported here.
"""

from medclip_nb.prepare import ensure_dataset
from medclip_nb.study.ablation import ablation, ablation_reading, ablation_stats, ablation_summary, reading
from medclip_nb.study.figures import (
    FIGURE_DPI,
    embedding_figure,
    figures_dir,
    probe_fraction_figure,
    sample_grid_figure,
    save_figure,
    show_figure,
    similarity_heatmap_figure,
    similarity_sample,
    training_curves_figure,
)
from medclip_nb.study.runs import copy_metrics_entry, evaluate_run, train_and_evaluate, update_metrics
from medclip_nb.study.setup import notebook_config
from medclip_nb.study.tables import (
    HEADLINE_PATHS,
    epoch_table,
    headline,
    headline_intervals,
    label_prevalence,
    paired_comparisons,
    probe_fraction_table,
    read_metrics_log,
    report_lengths,
    results_table,
    results_table_with_intervals,
    split_counts,
    top_retrievals,
    zero_shot_hits,
)

__all__ = [
    "FIGURE_DPI",
    "HEADLINE_PATHS",
    "ablation",
    "ablation_reading",
    "ablation_stats",
    "ablation_summary",
    "copy_metrics_entry",
    "embedding_figure",
    "ensure_dataset",
    "epoch_table",
    "evaluate_run",
    "figures_dir",
    "headline",
    "headline_intervals",
    "label_prevalence",
    "notebook_config",
    "paired_comparisons",
    "probe_fraction_figure",
    "probe_fraction_table",
    "read_metrics_log",
    "reading",
    "report_lengths",
    "results_table",
    "results_table_with_intervals",
    "sample_grid_figure",
    "save_figure",
    "show_figure",
    "similarity_heatmap_figure",
    "similarity_sample",
    "split_counts",
    "top_retrievals",
    "train_and_evaluate",
    "training_curves_figure",
    "update_metrics",
    "zero_shot_hits",
]
