"""An evaluation's report: per strategy, how accurate, how sure, at what price, against the first.

`summarise` folds the (strategy, question) results into a `Report`; `markdown`, `to_json` and
`plot` show it. Pure but for `plot`, which writes its file.

What is counted:
- a run that did not complete is wrong (it has no answer), and counted apart as `failed`;
- one result per strategy and question: a later one replaces an earlier (a question asked again);
- the cost is what the priced results cost, None when no result had a price; cost per question
  divides it by the questions scored;
- latencies are over the results that have one, failed runs included: they are waited for too;
- each strategy but the first is compared with the first on the questions both have results for
  (`moot.eval.stats`: paired bootstrap interval, exact McNemar test).
A report can be taken while the evaluation runs: a strategy without results yet has
`questions` 0, accuracy 0 and the interval 0 to 1 (nothing known), which `markdown` shows as
"no answers yet" and `plot` leaves out. Every interval is computed with the same seed, so the
same results give the same report.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from pathlib import Path

from moot.eval import stats
from moot.eval.models import Comparison, ItemResult, Report, Scoring, Strategy, StrategySummary

DASH = "\u2014"  # "—": nothing to show
_MINUS = "\u2212"  # the minus sign: reads better than a hyphen in a table
_LEVEL = 0.95
_SIGNIFICANCE = 0.05
# `plot` sets matplotlib's SVG text mode, a process-wide setting, while it saves: one at a time.
_SAVE = threading.Lock()


def summarise(
    strategies: Sequence[Strategy],
    items: Sequence[ItemResult],
    *,
    scoring: Scoring,
    questions: int,
    dataset: str = "",
    judge_cost_usd: float | None = None,
) -> Report:
    """The report of `items` (any order; results of strategies not listed are ignored), strategies in order."""
    by_strategy: dict[str, dict[str, ItemResult]] = {s.name: {} for s in strategies}
    for item in items:
        if item.strategy in by_strategy:
            by_strategy[item.strategy][item.question_id] = item
    summaries: list[StrategySummary] = []
    for strategy in strategies:
        results = by_strategy[strategy.name]
        summary = _summary(strategy, results)
        if summaries:
            summary.versus_first = _compare(strategies[0].name, by_strategy[strategies[0].name], results)
        summaries.append(summary)
    return Report(
        questions=questions,
        scoring=scoring,
        dataset=dataset,
        strategies=summaries,
        judge_cost_usd=judge_cost_usd,
    )


def _outcome(item: ItemResult) -> bool:
    return item.correct and item.status == "completed"


def _summary(strategy: Strategy, results: dict[str, ItemResult]) -> StrategySummary:
    # Ordered by question id, so that the bootstrap draws the same resamples whatever order
    # the runs ended in.
    ordered = [results[qid] for qid in sorted(results)]
    outcomes = [_outcome(item) for item in ordered]
    n = len(outcomes)
    accuracy = sum(outcomes) / n if n else 0.0
    ci_low, ci_high = stats.accuracy_interval(outcomes, _LEVEL) if n else (0.0, 1.0)
    prices = [item.cost_usd for item in ordered if item.cost_usd is not None]
    cost = sum(prices) if prices else None
    cost_per_question = cost / n if cost is not None and n else None
    latencies = [item.latency_s for item in ordered if item.latency_s is not None]
    return StrategySummary(
        name=strategy.name,
        run=strategy.run,
        questions=n,
        correct=sum(outcomes),
        failed=sum(1 for item in ordered if item.status != "completed"),
        accuracy=accuracy,
        ci_low=ci_low,
        ci_high=ci_high,
        calls=sum(item.calls for item in ordered),
        input_tokens=sum(item.input_tokens for item in ordered),
        output_tokens=sum(item.output_tokens for item in ordered),
        cost_usd=cost,
        cost_per_question=cost_per_question,
        accuracy_per_dollar=accuracy / cost_per_question if cost_per_question else None,
        latency_p50_s=stats.percentile(latencies, 50),
        latency_p95_s=stats.percentile(latencies, 95),
    )


def _compare(
    baseline: str, first: dict[str, ItemResult], results: dict[str, ItemResult]
) -> Comparison | None:
    shared = sorted(first.keys() & results.keys())
    if not shared:
        return None
    a = [_outcome(first[qid]) for qid in shared]
    b = [_outcome(results[qid]) for qid in shared]
    difference, low, high = stats.paired_difference(a, b, _LEVEL)
    wins, losses, p = stats.mcnemar(a, b)
    return Comparison(
        baseline=baseline,
        difference=difference,
        ci_low=low,
        ci_high=high,
        wins=wins,
        losses=losses,
        mcnemar_p=p,
    )


def to_json(report: Report) -> str:
    """The report as indented JSON, fields in the contract's order."""
    return report.model_dump_json(indent=2)


# Markdown


def markdown(report: Report) -> str:
    """A heading line, a GitHub table (one row per strategy), one sentence per comparison."""
    lines = [
        _heading(report),
        "",
        "| strategy | questions | accuracy (95 % CI) | calls/question | tokens/question | cost/question"
        " | accuracy per $ | p50 / p95 latency | vs first |",
        "|---|---:|---|---:|---:|---:|---:|---|---|",
    ]
    lines += [_row(s, report.questions) for s in report.strategies]
    sentences = [_sentence(s, report.strategies[0].name) for s in report.strategies[1:]]
    if sentences:
        lines += ["", *sentences]
    return "\n".join(lines) + "\n"


def _heading(report: Report) -> str:
    dataset = " ".join(report.dataset.split()) or "evaluation"
    heading = f"### {dataset}: {report.questions} questions, scored `{report.scoring}`"
    if report.judge_cost_usd is not None:
        heading += f" (the judge cost {_dollars(report.judge_cost_usd)})"
    return heading


def _row(s: StrategySummary, questions: int) -> str:
    name = s.name.replace("|", "\\|")
    scored = str(s.questions) if s.questions == questions else f"{s.questions} of {questions}"
    if s.failed:
        scored += f" ({s.failed} failed)"
    if not s.questions:
        return f"| {name} | {scored} | no answers yet | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} | {DASH} |"
    cells = [
        name,
        scored,
        f"{s.accuracy:.2f} ({_number(s.ci_low)}\u2013{_number(s.ci_high)})",
        f"{s.calls / s.questions:.1f}",
        f"{(s.input_tokens + s.output_tokens) / s.questions:,.0f}",
        _dollars(s.cost_per_question) if s.cost_per_question is not None else DASH,
        _per_dollar(s.accuracy_per_dollar),
        _latencies(s.latency_p50_s, s.latency_p95_s),
        _versus(s.versus_first),
    ]
    return "| " + " | ".join(cells) + " |"


def _versus(c: Comparison | None) -> str:
    if c is None:
        return DASH
    wins = f"{c.wins} win" + ("" if c.wins == 1 else "s")
    losses = f"{c.losses} loss" + ("" if c.losses == 1 else "es")
    return (
        f"{_number(c.difference, signed=True)} ({_number(c.ci_low)} to {_number(c.ci_high)}),"
        f" {_p(c.mcnemar_p)}, {wins} / {losses}"
    )


def _sentence(s: StrategySummary, first: str) -> str:
    c = s.versus_first
    if c is None:
        return f"{s.name} has no question answered by {first} too yet: not compared."
    if c.difference > 0:
        how = f"is {_number(c.difference)} more accurate than"
    elif c.difference < 0:
        how = f"is {_number(-c.difference)} less accurate than"
    else:
        how = "is as accurate as"
    # Said better or worse only when the test and the interval agree; at a handful of questions
    # that differ the two can part (a bootstrap of five wins in five questions has no width).
    significant, excludes_zero = c.mcnemar_p < _SIGNIFICANCE, c.ci_low > 0 or c.ci_high < 0
    if c.wins + c.losses == 0:
        verdict = "no question was right under one and wrong under the other"
    elif significant and excludes_zero:
        verdict = "better" if c.difference > 0 else "worse"
    elif significant or excludes_zero:
        verdict = "the test and the interval disagree (few questions differ): not shown to differ"
    else:
        verdict = "not shown to differ"
    return (
        f"{s.name} {how} {c.baseline} (95 % interval {_number(c.ci_low)} to {_number(c.ci_high)};"
        f" McNemar {_p(c.mcnemar_p)}): {verdict}."
    )


def _number(x: float, *, signed: bool = False) -> str:
    text = f"{x:+.2f}" if signed else f"{x:.2f}"
    if text in ("-0.00", "+0.00"):  # a rounding of a tiny difference has no sign
        text = "0.00"
    return text.replace("-", _MINUS)


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def _dollars(x: float) -> str:
    if x >= 1:
        return f"${x:,.2f}"
    if x <= 0:
        return "$0"
    # Two significant digits however small: a cheap model's question costs $0.000034.
    return f"${x:.{1 - math.floor(math.log10(x))}f}"


def _per_dollar(x: float | None) -> str:
    if x is None:
        return DASH
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _latencies(p50: float | None, p95: float | None) -> str:
    if p50 is None or p95 is None:
        return DASH
    return f"{p50:.1f} s / {p95:.1f} s"


# Plot


def plot(report: Report, path: str | Path) -> Path:
    """Accuracy (with its interval) against cost per question, one labelled point per strategy.

    Against calls per question when no strategy has a price; a strategy without a price among
    priced ones is named under the plot rather than placed. `.png` or `.svg` from the suffix."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg"):
        raise ValueError(f"{path.suffix or 'no suffix'!r}: a plot is written as .png or .svg")
    # Slow to import (about a second): only when plotting.
    import matplotlib
    from matplotlib.figure import Figure

    answered = [s for s in report.strategies if s.questions]
    priced = any(s.cost_per_question is not None for s in answered)
    fig = Figure(figsize=(7.0, 4.5), layout="constrained")
    ax = fig.add_subplot()
    unplaced: list[str] = []
    for s in answered:
        x = s.cost_per_question if priced else s.calls / s.questions
        if x is None:
            unplaced.append(s.name)
            continue
        yerr = [[s.accuracy - s.ci_low], [s.ci_high - s.accuracy]]
        ax.errorbar([x], [s.accuracy], yerr=yerr, fmt="o", capsize=4)
        ax.annotate(_plain(s.name), (x, s.accuracy), xytext=(6, 6), textcoords="offset points")
    # Room for the labels right of the points; from zero, so that "twice the price" looks it.
    ax.margins(x=0.15, y=0.08)
    ax.set_xlim(left=0)
    ax.set_xlabel("cost per question (USD)" if priced else "calls per question (no strategy has a price)")
    ax.set_ylabel("accuracy (95 % interval)")
    title = f"{report.dataset or 'evaluation'}: {report.questions} questions, scored {report.scoring}"
    ax.set_title(_plain(title))
    ax.grid(alpha=0.3)
    if unplaced:
        fig.supxlabel(_plain(f"not placed (no price): {', '.join(unplaced)}"), fontsize="small")
    # SVG text as <text> (searchable, selectable, smaller), not as outlines.
    with _SAVE, matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(path, format=fmt, dpi=150)
    return path


def _plain(text: str) -> str:
    # matplotlib reads text between two "$" as a formula.
    return text.replace("$", r"\$")
