"""The demo's scores.png: each variant's score per language with its 95 % interval as a whisker, and beside it
the paired gain of each tuned variant over task-only per language and over all transfer languages, with its
interval, so a reader sees at a glance whether a gain clears zero. Drawn from results.json alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

BAR_GROUP_WIDTH = 0.8  # of the space one language gets on the x axis


def _bars(axis: Any, labels: list[str], series: dict[str, list[dict[str, float]]]) -> None:
    """Grouped bars at each label, one per series, with asymmetric whiskers from the intervals' low and high."""
    width = BAR_GROUP_WIDTH / max(len(series), 1)
    for index, (name, entries) in enumerate(series.items()):
        positions = [x - BAR_GROUP_WIDTH / 2 + width * (index + 0.5) for x in range(len(labels))]
        means = [entry["mean"] for entry in entries]
        whiskers = [[m - e["low"] for m, e in zip(means, entries)], [e["high"] - m for m, e in zip(means, entries)]]
        axis.bar(positions, means, width, yerr=whiskers, capsize=3, label=name)
    axis.set_xticks(range(len(labels)), labels)
    axis.legend(fontsize=8)


def plot_demo_scores(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    from matplotlib import pyplot

    plan, intervals = results["plan"], results["task"]["intervals"]
    languages = [lang for lang in (*plan["supervised"], *plan["aligned"], *plan["unaligned"]) if lang in intervals["languages"]]
    variants = list(intervals["languages"][languages[0]])
    by_language = intervals["gain over task by language"]
    tuned = [v for v in variants if v in by_language.get(languages[0], {})]
    figure, (scores_axis, gains_axis) = pyplot.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [1, 1.1]})
    _bars(scores_axis, languages, {v: [intervals["languages"][lang][v] for lang in languages] for v in variants})
    scores_axis.set_ylabel(f"{results['task']['metric']['name']} (%)")
    scores_axis.set_title("score per language, 95 % interval")
    gain_labels = [*languages, "transfer"]
    gains = {v: [by_language[lang][v] for lang in languages] + [intervals["gain over task"]["transfer"][v]] for v in tuned}
    _bars(gains_axis, gain_labels, gains)
    gains_axis.axhline(0, color="black", linewidth=0.8)
    gains_axis.axvline(len(languages) - 0.5, color="grey", linewidth=0.6, linestyle=":")
    gains_axis.set_ylabel("points over task-only")
    gains_axis.set_title("paired gain over task-only, 95 % interval")
    figure.suptitle(f"{results['model']}: trained on {', '.join(plan['supervised'])} only")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
