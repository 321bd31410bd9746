"""Evaluation of a pretrained model: embeddings, zero-shot, retrieval, linear probe.

- metrics.py: the pure metrics (NumPy/scikit-learn), the 5x200 selection, the linear probe;
- embeddings.py: what evaluation asks of a model (embeddings, prompt embeddings, logit scale);
- run.py: `evaluate_model` / `evaluate_checkpoint` and metrics.json;
- report.py: the confusion figure and the summary table;
- intervals.py: 95 % bootstrap intervals and paired differences;
- zeroshot_paper.py: CheXpert-5x200 zero-shot as MedCLIP published it.

The names below are re-exported so that `from medclip_nb.evaluate import name` keeps working.
"""

from medclip_nb.evaluate.embeddings import (
    EvaluationArrays,
    compute_embeddings,
    encode_texts,
    loader_for,
    model_logit_scale,
)
from medclip_nb.evaluate.intervals import (
    CONFIDENCE,
    N_RESAMPLES,
    auroc_columns,
    format_with_interval,
    mean_auroc_interval,
    mean_interval,
    paired_difference,
    statistic_interval,
)
from medclip_nb.evaluate.metrics import (
    DEFAULT_C,
    DEFAULT_CS,
    accuracy,
    auroc_per_label,
    binarize_labels,
    build_5x200,
    confusion,
    linear_probe,
    linear_probe_fractions,
    macro_f1,
    mean_defined,
    multilabel_auroc,
    precision_at_k,
    recall_at_k,
    retrieval_metrics,
    select_5x200,
    zero_shot_classify,
    zero_shot_multilabel,
)
from medclip_nb.evaluate.report import confusion_figure, summary_lines
from medclip_nb.evaluate.run import (
    ROUND_DIGITS,
    checkpoint_name,
    eval_datasets,
    evaluate_checkpoint,
    evaluate_model,
    json_ready,
    merge_metrics,
    read_metrics,
)
from medclip_nb.evaluate.zeroshot_paper import (
    FRONTAL_VIEWS,
    PAPER_PROMPT_VOCABULARY,
    frontal_mask,
    logit_class_scores,
    paper_eval_transform,
    paper_prompt_pool,
    record_labels,
    sample_paper_prompts,
    select_5x200_paper,
    zero_shot_5x200_paper,
)

__all__ = [
    "CONFIDENCE",
    "DEFAULT_C",
    "DEFAULT_CS",
    "FRONTAL_VIEWS",
    "N_RESAMPLES",
    "PAPER_PROMPT_VOCABULARY",
    "ROUND_DIGITS",
    "EvaluationArrays",
    "accuracy",
    "auroc_columns",
    "auroc_per_label",
    "binarize_labels",
    "build_5x200",
    "checkpoint_name",
    "compute_embeddings",
    "confusion",
    "confusion_figure",
    "encode_texts",
    "eval_datasets",
    "evaluate_checkpoint",
    "evaluate_model",
    "format_with_interval",
    "frontal_mask",
    "json_ready",
    "linear_probe",
    "linear_probe_fractions",
    "loader_for",
    "logit_class_scores",
    "macro_f1",
    "mean_auroc_interval",
    "mean_defined",
    "mean_interval",
    "merge_metrics",
    "model_logit_scale",
    "multilabel_auroc",
    "paired_difference",
    "paper_eval_transform",
    "paper_prompt_pool",
    "precision_at_k",
    "read_metrics",
    "recall_at_k",
    "record_labels",
    "retrieval_metrics",
    "sample_paper_prompts",
    "select_5x200",
    "select_5x200_paper",
    "statistic_interval",
    "summary_lines",
    "zero_shot_5x200_paper",
    "zero_shot_classify",
    "zero_shot_multilabel",
]
