"""Evaluation of a pretrained model: embeddings, zero-shot, retrieval, linear probe.

- metrics.py: the pure metrics (NumPy/scikit-learn), the 5x200 selection, the linear probe;
- embeddings.py: what evaluation asks of a model (embeddings, prompt embeddings, logit scale);
- run.py: `evaluate_model` / `evaluate_checkpoint` and metrics.json;
- report.py: the confusion figure and the summary table;
- intervals.py: 95 % bootstrap intervals and paired differences;
- zeroshot_medclip.py: MedCLIP's zero-shot procedure on the 5x200 of the gloria or medclip rule;
- multiplicity.py: p-values, Holm's correction of a table's comparisons, the smallest resolvable difference;
- checkpoints.py: the 5x200 zero-shot accuracy of a run's saved checkpoints (learning curves).
- provenance.py: what an entry of metrics.json was computed with (config, commit, date, versions).

The names below are re-exported so that `from medclip_nb.evaluate import name` keeps working.
"""

from medclip_nb.evaluate.checkpoints import ZeroShotPoints, top_class_share
from medclip_nb.evaluate.embeddings import compute_embeddings, encode_texts, model_logit_scale
from medclip_nb.evaluate.evaluation import json_ready
from medclip_nb.evaluate.intervals import (
    CONFIDENCE,
    bootstrap_off,
    format_with_interval,
    paired_difference,
    paired_t_difference,
    t_interval,
)
from medclip_nb.evaluate.metrics import recall_at_k, select_5x200, zero_shot_classify
from medclip_nb.evaluate.multiplicity import ALPHA, holm, paired_t_p, smallest_resolvable
from medclip_nb.evaluate.provenance import run_provenance
from medclip_nb.evaluate.report import confusion_figure
from medclip_nb.evaluate.run import (
    check_evaluation_outputs,
    eval_datasets,
    evaluate_checkpoint,
    evaluate_model,
    merge_metrics,
    read_metrics,
)
from medclip_nb.evaluate.zeroshot_medclip import zero_shot_5x200_medclip

__all__ = [
    "ALPHA",
    "CONFIDENCE",
    "ZeroShotPoints",
    "bootstrap_off",
    "check_evaluation_outputs",
    "compute_embeddings",
    "confusion_figure",
    "encode_texts",
    "eval_datasets",
    "evaluate_checkpoint",
    "evaluate_model",
    "format_with_interval",
    "json_ready",
    "merge_metrics",
    "model_logit_scale",
    "paired_difference",
    "paired_t_difference",
    "paired_t_p",
    "smallest_resolvable",
    "holm",
    "read_metrics",
    "recall_at_k",
    "run_provenance",
    "select_5x200",
    "t_interval",
    "top_class_share",
    "zero_shot_5x200_medclip",
    "zero_shot_classify",
]
