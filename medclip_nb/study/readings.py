"""The written readings of notebook 04, generated from the numbers they read.

A reading is never typed by hand: it is written from the table it reads, so it says what the
numbers say, including when a difference's interval includes 0 (*not resolved*: these data
cannot tell the two apart) or when there are too few values for an interval at all.
"""

from __future__ import annotations

from typing import Any, Mapping

from medclip_nb.study.tables import headline, headline_intervals

METRIC_NAMES = {"zs_acc_mean": "zero-shot accuracy", "i2t_R@10": "image->text R@10",
                "probe_auroc": "linear-probe AUROC"}
NOT_RESOLVED = "not resolved: the interval includes 0"
NO_INTERVAL = "no interval: fewer than 2 paired seeds"


def verdict(paired: Mapping[str, Any]) -> str:
    """'resolved: higher' / 'resolved: lower' / 'not resolved: ...' / 'no interval: ...' for a paired difference."""
    if not paired.get("ci"):
        return NO_INTERVAL
    if paired["resolved"]:
        return "resolved: higher" if paired["difference"] > 0 else "resolved: lower"
    return NOT_RESOLVED


def signed_with_interval(paired: Mapping[str, Any]) -> str:
    """'+0.031 [+0.012, +0.050]' (or the difference alone without an interval)."""
    if paired.get("difference") is None:
        return "n/a"
    ci = paired.get("ci")
    return f"{_signed(paired['difference'])}" + (f" [{_signed(ci[0])}, {_signed(ci[1])}]" if ci else "")


def _signed(value: float) -> str:
    """'+0.031'; a value that rounds to 0 is '+0.000', never '-0.000'."""
    return f"{round(value, 3) + 0.0:+.3f}"


def value_with_interval(summary: Mapping[str, Any]) -> str:
    """'0.612 [0.590, 0.634]' for a seed_summary (the mean alone without an interval)."""
    if summary.get("mean") is None:
        return "n/a"
    ci = summary.get("ci")
    return f"{summary['mean']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _budget_line(budget: Mapping[str, Any], n_seeds: int, lead: str = "- Every run") -> str:
    return (f"{lead}: {budget.get('max_steps')} steps of {budget.get('batch_size')} pairs "
            f"({budget.get('vision_backbone')} at {budget.get('image_size')} px), scored at its last step; "
            f"{n_seeds} seeds; 95 % Student t intervals over seeds; differences paired by seed (the same seed "
            f"and test images).")


def ablation_reading(entry: Mapping[str, Any]) -> str:
    """The reading of an `ablation` entry (study.ablation_entry): each variant against the
    reference, metric by metric, resolved or not, then the lists of both kinds."""
    reference, names = entry["reference"], METRIC_NAMES
    lines = [_budget_line(entry.get("budget", {}), len(entry.get("seeds", [])))]
    ref = entry["summary"].get(reference, {})
    lines.append(f"- {reference} (the reference): " + ", ".join(
        f"{names.get(m, m)} {value_with_interval(ref[m])}" for m in entry["metrics"] if m in ref) + ".")
    resolved, unresolved = [], []
    for variant in (v for v in entry.get("variants") or entry["summary"] if v in entry["paired"]):
        by_metric = entry["paired"][variant]
        parts = []
        for metric in entry["metrics"]:
            paired, name = by_metric[metric], names.get(metric, metric)
            parts.append(f"{name} {signed_with_interval(paired)} ({verdict(paired)})")
            if paired.get("resolved"):
                resolved.append(f"{variant} {'above' if paired['difference'] > 0 else 'below'} {reference} on {name}")
            else:
                unresolved.append(f"{variant} vs {reference} on {name}")
        lines.append(f"- {variant} - {reference}: " + "; ".join(parts) + ".")
    lines.append("- Resolved: " + ("; ".join(resolved) if resolved else "none") + ".")
    lines.append("- Not resolved (these seeds cannot tell them apart at this budget): "
                 + ("; ".join(unresolved) if unresolved else "none") + ".")
    lines.append("- The intervals are over training seeds on one fixed test set: they say how far another seed "
                 "could move a number, not how a model would do on other images (phantom data, not MIMIC-CXR).")
    return "\n".join(lines)


def _percent(fraction_key: str, row: Mapping[str, Any]) -> str:
    n = row.get("n_train")
    return f"{float(fraction_key):.0%}" + (f" ({n} pairs)" if n is not None else "")


def _claim(loss: str, reference: str, change: Mapping[str, Any]) -> str:
    """What the gap change of one loss says about MedCLIP's data-efficiency claim."""
    to, fro = f"{float(change['to']):.0%}", f"{float(change['from']):.0%}"
    head = (f"- {loss}: its gap to {reference} changes by {signed_with_interval(change)} from {fro} to {to} of the "
            f"pairs ({verdict(change)})")
    if not change.get("ci") or not change.get("resolved"):
        return head + f": these seeds cannot tell whether less data favours {loss}."
    if change["difference"] > 0:
        return head + f": {loss} gains on {reference} with less data, as MedCLIP claims for its soft targets."
    return head + f": {loss} loses ground to {reference} with less data, against MedCLIP's claim."


def data_efficiency_reading(entry: Mapping[str, Any]) -> str:
    """The reading of a `data_efficiency` entry (study.data_efficiency_entry): accuracy per loss and
    fraction, what less data costs, each loss against the reference per fraction, and what the
    change of that gap says about MedCLIP's claim. Losses and fractions in the entry's order."""
    reference, table, losses = entry["reference"], entry["table"], entry["losses"]
    keys = [f"{float(f):g}" for f in entry["fractions"]]
    lead = (f"- {METRIC_NAMES.get(entry['metric'], entry['metric'])} by loss and share of the training pairs "
            "(nested patient subsets); every run")
    lines = [_budget_line(entry.get("budget", {}), len(entry.get("seeds", [])), lead)]
    for loss in losses:
        lines.append(f"- {loss}: " + ", ".join(f"{_percent(k, table[loss][k])} {value_with_interval(table[loss][k])}"
                                               for k in keys) + ".")
    effects = entry.get("fraction_effect", {})
    for loss in (loss for loss in losses if loss in effects):
        change = effects[loss]
        lines.append(f"- {loss} with {float(change['to']):.0%} instead of {float(change['from']):.0%} of the pairs: "
                     f"{signed_with_interval(change)} ({verdict(change)}).")
    for loss in (loss for loss in losses if loss in entry["paired"]):
        lines.append(f"- {loss} - {reference}: " + "; ".join(
            f"at {float(k):.0%} {signed_with_interval(entry['paired'][loss][k])} ({verdict(entry['paired'][loss][k])})"
            for k in keys) + ".")
    changes = entry.get("gap_change", {})
    lines += [_claim(loss, reference, changes[loss]) for loss in losses if loss in changes]
    return "\n".join(lines)


def reading(results: Mapping[str, Mapping[str, Any]], default: str = "default", comparisons=None) -> str:
    """A short written reading of the results table, generated from the numbers themselves;
    with `comparisons` (`paired_comparisons`), each zero-shot gap says whether it is resolved."""
    d, ci = headline(results[default]), headline_intervals(results[default])
    lines = []
    acc = d["zs_acc_mean"]
    if acc is not None:
        interval = ci["zs_acc_mean"]
        if interval:
            verdict = ("above" if interval[0] > 0.2 else "not distinguishable from") + " chance (0.200)"
            lines.append(f"- 5-class zero-shot accuracy of the default model: {acc:.3f} "
                         f"(95 % CI {interval[0]:.3f}-{interval[1]:.3f}), {verdict}.")
        else:
            lines.append(f"- 5-class zero-shot accuracy of the default model: {acc:.3f} (no interval: too few images).")
    for name, m in results.items():
        if name == default:
            continue
        other = headline(m)
        if acc is not None and other["zs_acc_mean"] is not None:
            gap = acc - other["zs_acc_mean"]
            lines.append(f"- Against {name}: zero-shot accuracy {gap:+.3f}{_paired_note(comparisons, name)}, "
                         f"image->text R@10 {_diff(d['i2t_R@10'], other['i2t_R@10'])}, "
                         f"linear-probe AUROC {_diff(d['probe_auroc'], other['probe_auroc'])}.")
    if d["zs_auroc"] is not None:
        lines.append(f"- Mean per-label zero-shot AUROC: {d['zs_auroc']:.3f} (labels with both classes in test).")
    lines.append("- These are phantom data: the numbers show that the pipeline learns image-report "
                 "alignment end to end, not how the model would do on MIMIC-CXR.")
    return "\n".join(lines)


def _paired_note(comparisons, name: str) -> str:
    if comparisons is None or not len(comparisons):
        return ""
    row = comparisons[(comparisons["against"] == name) & (comparisons["metric"] == "zero-shot accuracy (mean)")]
    if not len(row) or row.iloc[0]["95% CI"] is None:
        return ""
    verdict = "resolved" if row.iloc[0]["resolved"] else "not resolved: the interval includes 0"
    return f" (paired 95 % CI {row.iloc[0]['95% CI']}, {verdict})"


def _diff(a, b) -> str:
    if a is None or b is None:
        return "n/a"
    return f"{a - b:+.3f}"
