"""The written readings of notebook 04, generated from the numbers they read.

A reading is never typed by hand: it is written from the table it reads, so it says what the
numbers say, including when a difference's interval includes 0 (*not resolved*: these data
cannot tell the two apart) or when there are too few values for an interval at all.
"""

from __future__ import annotations

from typing import Any, Mapping

from medclip_nb.study.data_efficiency import COLLAPSE_SHARE
from medclip_nb.study.tables import headline, headline_intervals

METRIC_NAMES = {"zs_acc_mean": "zero-shot accuracy", "i2t_R@10": "image->text R@10",
                "probe_auroc": "linear-probe AUROC"}
NOT_RESOLVED = "not resolved: Holm-adjusted p >= 0.05"
NO_INTERVAL = "no interval: fewer than 2 paired seeds"


def verdict(paired: Mapping[str, Any]) -> str:
    """'resolved: higher' / 'resolved: lower' / 'not resolved: ...' / 'no interval: ...' for a paired
    difference; *resolved* is the table's Holm decision (seed_stats.correct_family)."""
    if not paired.get("ci"):
        return NO_INTERVAL
    if paired["resolved"]:
        return "resolved: higher" if paired["difference"] > 0 else "resolved: lower"
    return NOT_RESOLVED


def p_text(p: float | None) -> str:
    """'0.012', '< 0.001' or 'n/a'."""
    if p is None:
        return "n/a"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


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


def resolvable_text(comparisons) -> str:
    """'0.041 (0.018-0.090 across its comparisons)': the median smallest resolvable difference of a family."""
    values = sorted(c["smallest_resolvable"] for c in comparisons if c.get("smallest_resolvable") is not None)
    if not values:
        return "n/a (fewer than 2 seeds)"
    half = len(values) // 2
    median = values[half] if len(values) % 2 else (values[half - 1] + values[half]) / 2
    return f"{median:.3f} (median; {values[0]:.3f}-{values[-1]:.3f} across its {len(values)} comparisons)"


def _budget_line(budget: Mapping[str, Any], n_seeds: int, lead: str = "- Every run") -> str:
    return (f"{lead}: {budget.get('max_steps')} steps of {budget.get('batch_size')} pairs "
            f"({budget.get('vision_backbone')} at {budget.get('image_size')} px), scored at its last step; "
            f"{n_seeds} seeds; 95 % Student t intervals over seeds; differences paired by seed (the same seed "
            f"and test images); the table's comparisons corrected together by Holm before any is called resolved. "
            f"Data: {budget.get('data', 'n/a')}.")


def ablation_reading(entry: Mapping[str, Any]) -> str:
    """The reading of an `ablation` entry (study.ablation_entry): each variant against the
    reference, metric by metric, resolved (Holm) or not, then the lists of both kinds."""
    reference, names = entry["reference"], METRIC_NAMES
    lines = [_budget_line(entry.get("budget", {}), len(entry.get("seeds", [])))]
    ref = entry["summary"].get(reference, {})
    lines.append(f"- {reference} (the reference): " + ", ".join(
        f"{names.get(m, m)} {value_with_interval(ref[m])}" for m in entry["metrics"] if m in ref) + ".")
    resolved, unresolved, family = [], [], []
    for variant in (v for v in entry.get("variants") or entry["summary"] if v in entry["paired"]):
        by_metric = entry["paired"][variant]
        parts = []
        for metric in entry["metrics"]:
            paired, name = by_metric[metric], names.get(metric, metric)
            family.append(paired)
            parts.append(f"{name} {signed_with_interval(paired)} (Holm p {p_text(paired.get('p_holm'))}, "
                         f"{verdict(paired)})")
            if paired.get("resolved"):
                resolved.append(f"{variant} {'above' if paired['difference'] > 0 else 'below'} {reference} on {name}")
            else:
                unresolved.append(f"{variant} vs {reference} on {name}")
        lines.append(f"- {variant} - {reference}: " + "; ".join(parts) + ".")
    lines.append("- Resolved: " + ("; ".join(resolved) if resolved else "none") + ".")
    lines.append("- Not resolved (these seeds cannot tell them apart at this budget): "
                 + ("; ".join(unresolved) if unresolved else "none") + ".")
    lines.append(f"- Smallest difference this table could resolve (Holm over its {len(family)} comparisons, from "
                 f"each comparison's paired spread and seeds): {resolvable_text(family)}.")
    lines.append("- The intervals are over training seeds on one fixed test set: they say how far another seed "
                 "could move a number, not how a model would do on other images (phantom data, not MIMIC-CXR).")
    return "\n".join(lines)


def _pct(fraction_key: str) -> str:
    return f"{float(fraction_key):.0%}"


def _tested_lines(entry: Mapping[str, Any]) -> list[str]:
    """What was trained: the arms by what they use, the decoupled items, the budget and the statistics."""
    budget, table = entry.get("budget", {}), entry["table"]
    keys = [f"{float(f):g}" for f in entry["fractions"]]
    lines = ["- Arms (each named by what it uses): " + "; ".join(f"{a}: {entry['uses'].get(a, a)}"
                                                                for a in entry["arms"]) + "."]
    decoupled = entry.get("decoupled") or []
    if decoupled:
        sizes = ", ".join(f"at {_pct(k)} {table[decoupled[0]][k].get('n_unpaired_images')} image-only and "
                          f"{table[decoupled[0]][k].get('n_unpaired_texts')} text-only items"
                          for k in keys if float(k) < 1)
        lines.append(f"- Decoupled data: {', '.join(decoupled)} at {', '.join(_pct(k) for k in keys if float(k) < 1)} "
                     f"of the pairs ({sizes}; {budget.get('unpaired_per_batch')} of each per step); at 100 % no "
                     f"patient is left out and they are the plain runs.")
    else:
        lines.append("- Decoupled data: none of these arms used any (no image-only or text-only items).")
    lines.append(f"- Budget: every run {budget.get('max_steps')} optimizer steps of {budget.get('batch_size')} pairs "
                 f"({budget.get('vision_backbone')} at {budget.get('image_size')} px), compared at equal steps (a "
                 f"decoupled step also holds its unpaired items: equal steps, not equal compute); learning-curve "
                 f"points at steps {budget.get('curve_steps')}; {len(entry.get('seeds', []))} seeds; 95 % Student t "
                 f"intervals over seeds; differences paired by seed; each table's comparisons corrected together "
                 f"by Holm. Data: {budget.get('data', 'n/a')}.")
    return lines


def _flattened_line(entry: Mapping[str, Any]) -> str:
    flat, reference = entry.get("flattened"), entry["reference"]
    if not flat:
        return f"- Flattening: no interval for {reference}'s last two curve points (too few seeds or points)."
    (a, b), (ma, mb) = flat["steps"], flat["means"]
    if flat["flattened"]:
        return (f"- Flattening: {reference} on all the pairs has flattened: {ma:.3f} at step {a} and {mb:.3f} at "
                f"step {b}, each inside the other's 95 % interval.")
    return (f"- Flattening: {reference} on all the pairs has NOT flattened ({ma:.3f} at step {a}, {mb:.3f} at step "
            f"{b}, outside each other's interval): the end points are not where the arms would end; a longer budget "
            f"(max_steps) is needed before the end points say where training leads.")


def _collapse_counts(entry: Mapping[str, Any], cells) -> list[tuple[str, str, int | None, int | None]]:
    """(arm, fraction key, collapsed seeds (None: runs without zs_top_share), seeds) of each (arm, fraction
    key) cell of `cells`."""
    table = entry["table"]
    return [(arm, k, cell.get("collapsed"), cell.get("n"))
            for arm, k in cells for cell in [table.get(arm, {}).get(k) or {}]]


def _collapse_line(entry: Mapping[str, Any]) -> str | None:
    """Which cells' seeds collapsed (gave one class to COLLAPSE_SHARE or more of the 5x200 images at their
    last step)."""
    keys = [f"{float(f):g}" for f in entry["fractions"]]
    cells = _collapse_counts(entry, [(arm, k) for arm in entry["arms"] for k in keys])
    if all(c is None for _, _, c, _ in cells):
        return None
    hit = [f"{arm} at {_pct(k)} ({c}/{n} seeds)" for arm, k, c, n in cells if c]
    share = f"{COLLAPSE_SHARE:.0%}".replace("%", " %")
    if not hit:
        return (f"- Collapse: no run collapsed (none gave one class to {share} or more of the 5x200 images at its "
                "last step).")
    return ("- Collapse: " + "; ".join(hit) + f" gave one class to {share} or more of the 5x200 images at the last "
            "step: their embeddings no longer tell the classes apart, so their end points measure the collapse, "
            "not what their targets were meant to teach; a difference involving them says that this loss collapsed "
            "at this budget, not that the labels it uses carry less.")


def _comparison_line(c: Mapping[str, Any]) -> str:
    at = f"at {_pct(c['fraction'])}" if "from_fraction" not in c else ""
    return (f"{c['comparison']} {at} {signed_with_interval(c)} (Holm p {p_text(c.get('p_holm'))}, "
            f"{verdict(c)})").replace("  ", " ")


def _part(c: Mapping[str, Any] | None) -> str:
    """'holds' / 'fails' / 'unresolved' of one comparison whose claimed direction is above 0."""
    if c is None or not c.get("ci"):
        return "unresolved"
    return ("holds" if c["difference"] > 0 else "fails") if c.get("resolved") else "unresolved"


def _collapsed(entry: Mapping[str, Any], cells) -> list[str]:
    """The (arm, fraction key) cells among `cells` with a collapsed seed, as 'arm at 10%'."""
    return [f"{arm} at {_pct(k)}" for arm, k, c, _ in _collapse_counts(entry, cells) if c]


def _claim_lines(entry: Mapping[str, Any]) -> list[str]:
    """MedCLIP's claim per decoupled arm: above clip at the smallest fraction, and more so than on all pairs.
    A part whose cells hold collapsed seeds is not decided: it would measure the collapse."""
    reference, small = entry["reference"], f"{float(min(entry['fractions'])):g}"
    full = f"{float(max(entry['fractions'])):g}"
    endpoint, claims = entry["endpoint_comparisons"], entry["claim_comparisons"]
    arms = entry.get("decoupled") or [a for a in entry["arms"] if a != reference]
    lines = []
    for arm in arms:
        beats = next((c for c in endpoint if c["arm"] == arm and c["fraction"] == small), None)
        more = next((c for c in claims if c["arm"] == arm and c["kind"] == "gap change with fewer pairs"), None)
        parts = [_part(beats), _part(more)]
        for i, cells in enumerate([[(arm, small), (reference, small)],
                                   [(arm, small), (arm, full), (reference, small), (reference, full)]]):
            collapsed = _collapsed(entry, cells)
            if collapsed and parts[i] != "unresolved":
                parts[i] = f"{parts[i]} on paper, not decided: it rests on collapsed runs ({', '.join(collapsed)})"
        decided = [p for p in parts if "not decided" not in p]
        overall = ("not decided: a part rests on collapsed runs" if len(decided) < 2 and "fails" not in decided
                   else "holds" if parts == ["holds", "holds"] else "fails" if "fails" in decided else
                   "partly holds (the other part unresolved at this power)" if "holds" in parts else
                   "unresolved at this power")
        power = [c["smallest_resolvable"] for c in (beats, more) if c and c.get("smallest_resolvable") is not None]
        lines.append(f"- MedCLIP's claim for {arm} (decoupled soft targets beat {reference}, more so with fewer "
                     f"pairs): beats {reference} at {_pct(small)}: {parts[0]}; more so than on all the pairs: "
                     f"{parts[1]}; overall: {overall}" + (f" (smallest resolvable differences "
                                                         f"{', '.join(f'{v:.3f}' for v in power)})" if power else "")
                     + ".")
    return lines


def _reach_line(entry: Mapping[str, Any]) -> str | None:
    reach, target = entry.get("steps_to_reach"), entry.get("target_accuracy")
    if not reach or target is None:
        return None
    keys = [f"{float(f):g}" for f in entry["fractions"]]
    budget = entry.get("budget", {}).get("max_steps")
    parts = []
    for arm in entry["arms"]:
        cells = [f"{_pct(k)} {reach_text(reach[arm][k], budget)}" for k in keys]
        parts.append(f"{arm}: " + ", ".join(cells))
    return (f"- Steps to reach zero-shot accuracy {target:.3f} ({entry.get('target_source')}; median over seeds, "
            f"linear between curve points): " + "; ".join(parts) + ".")


def reach_text(cell: Mapping[str, Any], budget: int | None) -> str:
    """'140 (5/5)' or '> 400 (2/5)': the median steps to reach the target and how many seeds did."""
    count = f"({cell['reached']}/{cell['n']})"
    return f"{cell['median']:.0f} {count}" if cell.get("median") is not None else f"> {budget} {count}"


def data_efficiency_reading(entry: Mapping[str, Any]) -> str:
    """The reading of a `data_efficiency` entry (study.data_efficiency_entry): what was tested, whether
    the reference has flattened, the end points, the comparisons of both Holm families, the steps to
    reach the target, what the numbers say about MedCLIP's claim, and what was not tested."""
    table, keys = entry["table"], [f"{float(f):g}" for f in entry["fractions"]]
    name = METRIC_NAMES.get(entry["metric"], entry["metric"])
    lines = _tested_lines(entry) + [_flattened_line(entry)]
    collapse = _collapse_line(entry)
    lines += [collapse] if collapse else []
    for arm in entry["arms"]:
        lines.append(f"- {arm}, {name} at the end: " + ", ".join(
            f"{_pct(k)} ({table[arm][k].get('n_train')} pairs) {value_with_interval(table[arm][k])}"
            for k in keys) + ".")
    lines.append(f"- Against {entry['reference']} (Holm over the {len(entry['endpoint_comparisons'])} comparisons of "
                 "the end-point table): " + "; ".join(_comparison_line(c) for c in entry["endpoint_comparisons"]) + ".")
    if entry["claim_comparisons"]:
        lines.append(f"- Decoupled items and the gap's change (Holm over these {len(entry['claim_comparisons'])}): "
                     + "; ".join(_comparison_line(c) for c in entry["claim_comparisons"]) + ".")
    lines.append(f"- Smallest differences these seeds could resolve: end-point table "
                 f"{resolvable_text(entry['endpoint_comparisons'])}; claim table "
                 f"{resolvable_text(entry['claim_comparisons'])}.")
    reach = _reach_line(entry)
    lines += ([reach] if reach else []) + _claim_lines(entry)
    lines.append("- Not tested here: MIMIC-CXR or CheXpert images (phantom data), MedCLIP's encoders (a small CNN "
                 "and a small text transformer), budgets beyond max_steps, and CheXpert's images as the image-only "
                 "source (the left-out patients of the same data stand in for them).")
    return "\n".join(lines)


def reading(results: Mapping[str, Mapping[str, Any]], default: str = "default", comparisons=None) -> str:
    """A short written reading of the results table, generated from the numbers themselves;
    with `comparisons` (`paired_comparison_entries`), each zero-shot gap says whether it is resolved."""
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
    """The paired interval and verdict of `name` from `tables.paired_comparison_entries` rows."""
    rows = [e for e in comparisons or () if e["against"] == name and e["metric"].endswith("(prompt mean)")]
    if not rows or not rows[0].get("ci"):
        return ""
    low, high = rows[0]["ci"]
    holm_p = rows[0].get("holm_p")
    verdict = ("resolved" if rows[0]["resolved"] else "not resolved") + \
        ("" if holm_p is None else f" (Holm p {p_text(holm_p)} over the table's {len(comparisons)} comparisons)")
    return f" (paired 95 % CI [{low:.3f}, {high:.3f}], {verdict})"


def _diff(a, b) -> str:
    if a is None or b is None:
        return "n/a"
    return f"{a - b:+.3f}"
