"""Glue for the notebooks and `make study`: make sure the dataset exists, save figures, show tables.

Notebook-facing helpers, presentation only (the numbers come from train and evaluate):

- setup.py: the notebook's Config (`ensure_dataset` comes from prepare.py);
- runs.py: train and evaluate from a notebook, entries of reports/metrics.json;
- figures.py: figures saved under reports_dir/figures and shown in the cell;
- tables.py: pandas tables of the data, the training and each model's headline numbers;
- ablation.py: `make ablation`'s runs (variants x seeds, data-efficiency fractions) at one step budget;
- seed_stats.py: means with t intervals over seeds, differences paired by seed;
- ablation_tables.py: the ablation's tables (notebook, summary.md, the end of `make ablation`);
- readings.py: the written readings, generated from the numbers.

The notebooks use `from medclip_nb import study` and `study.<name>`: every name is re-exported here.
"""

from medclip_nb.data.prepare import ensure_dataset
from medclip_nb.study.ablation import (
    DATA_EFFICIENCY_LOSSES,
    VARIANTS,
    ablation,
    ablation_entry,
    data_efficiency_entry,
    planned_runs,
)
from medclip_nb.study.ablation_tables import (
    ablation_report,
    ablation_table,
    data_efficiency_table,
    print_ablation,
    show_ablation,
    show_data_efficiency,
)
from medclip_nb.study.figures import (
    FIGURE_DPI,
    ablation_figure,
    data_efficiency_figure,
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
from medclip_nb.study.readings import ablation_reading, data_efficiency_reading, reading
from medclip_nb.study.runs import (
    BASELINE_ENTRIES,
    copy_metrics_entry,
    evaluate_run,
    record_models,
    train_and_evaluate,
    update_metrics,
)
from medclip_nb.study.seed_stats import data_efficiency_stats, paired_by_seed, seed_summary, variant_stats
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
    "DATA_EFFICIENCY_LOSSES",
    "FIGURE_DPI",
    "HEADLINE_PATHS",
    "VARIANTS",
    "ablation",
    "ablation_entry",
    "ablation_figure",
    "ablation_reading",
    "ablation_report",
    "ablation_table",
    "BASELINE_ENTRIES",
    "copy_metrics_entry",
    "record_models",
    "data_efficiency_entry",
    "data_efficiency_figure",
    "data_efficiency_reading",
    "data_efficiency_stats",
    "data_efficiency_table",
    "embedding_figure",
    "ensure_dataset",
    "epoch_table",
    "evaluate_run",
    "figures_dir",
    "headline",
    "headline_intervals",
    "label_prevalence",
    "notebook_config",
    "paired_by_seed",
    "paired_comparisons",
    "planned_runs",
    "print_ablation",
    "probe_fraction_figure",
    "probe_fraction_table",
    "read_metrics_log",
    "reading",
    "report_lengths",
    "results_table",
    "results_table_with_intervals",
    "sample_grid_figure",
    "save_figure",
    "seed_summary",
    "show_ablation",
    "show_data_efficiency",
    "show_figure",
    "similarity_heatmap_figure",
    "similarity_sample",
    "split_counts",
    "top_retrievals",
    "train_and_evaluate",
    "training_curves_figure",
    "update_metrics",
    "variant_stats",
    "zero_shot_hits",
]
