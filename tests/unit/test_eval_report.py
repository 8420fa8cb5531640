"""An evaluation's statistics and report: intervals, the paired comparison, the summary of
results (failed, unpriced, partial), the Markdown table and the plot files."""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from math import comb
from pathlib import Path

import pytest

from moot.eval import stats
from moot.eval.models import ItemResult, Report, Strategy
from moot.eval.report import markdown, plot, summarise, to_json


@pytest.fixture(autouse=True)
def _no_warnings() -> Iterator[None]:
    # A warning (degenerate data, NaN, division) is a bug here: every test fails on one.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def outcomes(right: int, wrong: int) -> list[bool]:
    """`right` True among `wrong` False, spread evenly (no long run of either)."""
    n = right + wrong
    return [(i * right) // n != ((i + 1) * right) // n for i in range(n)]


# Statistics


def test_outcomes_helper_has_the_asked_number_right() -> None:
    assert sum(outcomes(30, 20)) == 30 and len(outcomes(30, 20)) == 50


def test_accuracy_interval_of_30_right_of_50_is_about_046_to_074() -> None:
    low, high = stats.accuracy_interval(outcomes(30, 20))
    assert 0.44 <= low <= 0.49 and 0.72 <= high <= 0.76
    assert low < 0.6 < high


def test_accuracy_interval_shrinks_with_more_questions() -> None:
    widths = []
    for scale in (1, 4, 16):
        low, high = stats.accuracy_interval(outcomes(6 * scale, 4 * scale))
        assert low < 0.6 < high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]


def test_accuracy_interval_is_deterministic_for_a_seed() -> None:
    data = outcomes(17, 13)
    assert stats.accuracy_interval(data, seed=3) == stats.accuracy_interval(data, seed=3)
    assert stats.accuracy_interval(data, resamples=500, seed=1) != stats.accuracy_interval(
        data, resamples=500, seed=2
    )


@pytest.mark.parametrize(("right", "wrong", "low", "high"), [(10, 0, 0.6915, 1.0), (0, 10, 0.0, 0.3085)])
def test_all_right_or_all_wrong_gets_the_exact_interval(
    right: int, wrong: int, low: float, high: float
) -> None:
    # Clopper-Pearson for 10 of 10: 0.025 ** (1 / 10) = 0.6915; the bootstrap would say 1 to 1.
    assert stats.accuracy_interval(outcomes(right, wrong)) == pytest.approx((low, high), abs=1e-4)


def test_one_question_gets_an_interval_without_warnings() -> None:
    assert stats.accuracy_interval([True]) == pytest.approx((0.025, 1.0))
    assert stats.accuracy_interval([False]) == pytest.approx((0.0, 0.975))


def test_two_questions_one_right_is_anything() -> None:
    assert stats.accuracy_interval([True, False]) == (0.0, 1.0)


def test_no_outcomes_has_no_interval() -> None:
    with pytest.raises(ValueError, match="no outcomes"):
        stats.accuracy_interval([])
    with pytest.raises(ValueError, match="no outcomes"):
        stats.paired_difference([], [])


def test_mcnemar_is_the_exact_binomial_on_discordant_pairs() -> None:
    # 9 wins, 5 losses, 6 both right, 4 both wrong: p = 2 * P(X <= 5), X ~ Binomial(14, 1/2).
    a = [False] * 9 + [True] * 5 + [True] * 6 + [False] * 4
    b = [True] * 9 + [False] * 5 + [True] * 6 + [False] * 4
    expected = 2 * sum(comb(14, k) for k in range(6)) / 2**14
    wins, losses, p = stats.mcnemar(a, b)
    assert (wins, losses) == (9, 5)
    assert p == pytest.approx(expected) and p == pytest.approx(0.42395, abs=1e-5)
    assert stats.mcnemar(b, a) == (5, 9, pytest.approx(expected))


def test_mcnemar_without_discordant_pairs_is_p_1() -> None:
    assert stats.mcnemar([True, False, True], [True, False, True]) == (0, 0, 1.0)
    assert stats.mcnemar([], []) == (0, 0, 1.0)


def test_mcnemar_one_sided_sweep_is_significant() -> None:
    wins, losses, p = stats.mcnemar([False] * 10, [True] * 10)
    assert (wins, losses) == (10, 0) and p == pytest.approx(2 / 2**10)


def test_paired_outcomes_must_have_the_same_length() -> None:
    with pytest.raises(ValueError, match="length"):
        stats.mcnemar([True], [True, False])
    with pytest.raises(ValueError, match="length"):
        stats.paired_difference([True], [True, False])


def test_paired_difference_sign_and_interval() -> None:
    a = [False] * 9 + [True] * 5 + [True] * 6 + [False] * 4
    b = [True] * 9 + [False] * 5 + [True] * 6 + [False] * 4
    difference, low, high = stats.paired_difference(a, b)
    assert difference == pytest.approx(4 / 24)
    assert low < 0 < difference < high  # 9 wins to 5 is not enough to be sure
    flipped, flow, fhigh = stats.paired_difference(b, a)
    assert flipped == pytest.approx(-difference)
    assert flow < flipped < 0 < fhigh


def test_paired_difference_is_narrower_than_unpaired_accuracies_suggest() -> None:
    # The same hard questions for both: only 6 questions differ, all in b's favour.
    a = outcomes(30, 20)
    b = list(a)
    flips = [i for i, x in enumerate(a) if not x][:6]
    for i in flips:
        b[i] = True
    difference, low, high = stats.paired_difference(a, b)
    assert difference == pytest.approx(6 / 50)
    assert 0 < low < difference < high
    a_low, a_high = stats.accuracy_interval(a)
    assert high - low < a_high - a_low


def test_identical_outcomes_differ_by_exactly_nothing() -> None:
    data = outcomes(7, 5)
    assert stats.paired_difference(data, data) == (0.0, 0.0, 0.0)


def test_percentile() -> None:
    assert stats.percentile([], 50) is None
    assert stats.percentile([3.0], 95) == 3.0
    assert stats.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert stats.percentile([float(i) for i in range(1, 101)], 95) == pytest.approx(95.05)


# Summary


def item(
    strategy: str,
    qid: str,
    correct: bool,
    *,
    status: str = "completed",
    cost: float | None = 0.001,
    latency: float | None = 1.0,
    calls: int = 1,
) -> ItemResult:
    return ItemResult(
        strategy=strategy,
        question_id=qid,
        run_id=f"{strategy}-{qid}",
        status=status,
        answer="42" if status == "completed" else None,
        correct=correct,
        calls=calls,
        input_tokens=100 * calls,
        output_tokens=20 * calls,
        cost_usd=cost,
        latency_s=latency,
    )


SINGLE = Strategy(name="single", run={"mode": "consortium", "models": ["m"]})
VOTE5 = Strategy(name="vote5", run={"mode": "vote", "members": 5})
DEBATE = Strategy(name="debate", run={"mode": "debate"})


def test_summary_counts_failed_runs_as_wrong() -> None:
    items = [
        item("single", "q1", True),
        item("single", "q2", False),
        # A failed run scored right by mistake is still wrong: it has no answer.
        item("single", "q3", True, status="failed"),
        item("single", "q4", False, status="cancelled"),
    ]
    report = summarise([SINGLE], items, scoring="exact", questions=4)
    s = report.strategies[0]
    assert (s.questions, s.correct, s.failed, s.accuracy) == (4, 1, 2, 0.25)
    assert s.ci_low <= 0.25 <= s.ci_high
    assert s.calls == 4 and s.input_tokens == 400 and s.output_tokens == 80


def test_summary_costs_and_accuracy_per_dollar() -> None:
    items = [item("single", f"q{i}", i < 3, cost=0.002) for i in range(4)]
    s = summarise([SINGLE], items, scoring="exact", questions=4).strategies[0]
    assert s.cost_usd == pytest.approx(0.008)
    assert s.cost_per_question == pytest.approx(0.002)
    assert s.accuracy_per_dollar == pytest.approx(0.75 / 0.002)


def test_unpriced_results_have_no_cost() -> None:
    items = [item("single", f"q{i}", True, cost=None) for i in range(3)]
    s = summarise([SINGLE], items, scoring="exact", questions=3).strategies[0]
    assert s.cost_usd is None and s.cost_per_question is None and s.accuracy_per_dollar is None


def test_free_results_have_no_accuracy_per_dollar() -> None:
    s = summarise([SINGLE], [item("single", "q1", True, cost=0.0)], scoring="exact", questions=1).strategies[
        0
    ]
    assert s.cost_usd == 0.0 and s.cost_per_question == 0.0 and s.accuracy_per_dollar is None


def test_latency_percentiles_skip_results_without_one() -> None:
    items = [item("single", f"q{i}", True, latency=float(i)) for i in range(1, 11)]
    items.append(item("single", "q99", True, latency=None))
    s = summarise([SINGLE], items, scoring="exact", questions=11).strategies[0]
    assert s.latency_p50_s == pytest.approx(5.5)
    assert s.latency_p95_s == pytest.approx(9.55)
    none = summarise([SINGLE], [item("single", "q1", True, latency=None)], scoring="exact", questions=1)
    assert none.strategies[0].latency_p50_s is None and none.strategies[0].latency_p95_s is None


def test_a_strategy_without_results_yet_is_listed_in_order() -> None:
    items = [item("single", "q1", True), item("single", "q2", False), item("other", "q1", True)]
    report = summarise([SINGLE, VOTE5], items, scoring="exact", questions=2, dataset="gsm8k")
    assert [s.name for s in report.strategies] == ["single", "vote5"]
    empty = report.strategies[1]
    assert (empty.questions, empty.correct, empty.accuracy) == (0, 0, 0.0)
    assert (empty.ci_low, empty.ci_high) == (0.0, 1.0)
    assert empty.cost_usd is None and empty.latency_p50_s is None and empty.versus_first is None
    assert empty.run == VOTE5.run


def test_comparison_pairs_on_the_questions_both_answered() -> None:
    # single: q0..q9, right on q0..q4. vote5: q5..q14, right on all: on the shared q5..q9 it wins 5.
    items = [item("single", f"q{i}", i < 5) for i in range(10)]
    items += [item("vote5", f"q{i}", True) for i in range(5, 15)]
    report = summarise([SINGLE, VOTE5], items, scoring="exact", questions=15)
    single, vote5 = report.strategies
    assert single.versus_first is None
    assert (single.accuracy, vote5.accuracy) == (0.5, 1.0)
    c = vote5.versus_first
    assert c is not None and c.baseline == "single"
    assert (c.wins, c.losses) == (5, 0)
    assert c.difference == pytest.approx(1.0)  # 5 shared questions: single 0 of 5, vote5 5 of 5
    assert c.mcnemar_p == pytest.approx(2 / 2**5)


def test_comparison_without_shared_questions_is_none() -> None:
    items = [item("single", "q1", True), item("vote5", "q2", True)]
    report = summarise([SINGLE, VOTE5], items, scoring="exact", questions=2)
    assert report.strategies[1].versus_first is None


def test_a_later_result_for_a_question_replaces_the_earlier() -> None:
    items = [item("single", "q1", False, status="failed"), item("single", "q1", True)]
    s = summarise([SINGLE], items, scoring="exact", questions=1).strategies[0]
    assert (s.questions, s.correct, s.failed) == (1, 1, 0)


def test_summary_does_not_depend_on_the_order_results_arrive_in() -> None:
    items = [item("single", f"q{i:02}", i % 3 != 0) for i in range(30)]
    items += [item("vote5", f"q{i:02}", i % 4 != 0) for i in range(30)]
    forward = summarise([SINGLE, VOTE5], items, scoring="exact", questions=30)
    backward = summarise([SINGLE, VOTE5], items[::-1], scoring="exact", questions=30)
    assert forward == backward


def test_json_round_trips() -> None:
    report = summarise([SINGLE, VOTE5], _three_way(), scoring="numeric", questions=40, judge_cost_usd=0.5)
    text = to_json(report)
    assert text.startswith("{\n  ")
    assert Report.model_validate_json(text) == report


# Markdown


def _three_way() -> list[ItemResult]:
    # 40 questions. single right on 20; vote5 also on 18 more (better); debate wrong on 15 of
    # single's (worse), failing 2 runs, unpriced.
    items = []
    for i in range(40):
        qid = f"q{i:02}"
        items.append(item("single", qid, i < 20, latency=float(i % 4 + 1)))
        items.append(item("vote5", qid, i < 38, calls=5, cost=0.005, latency=3.0))
        status = "failed" if i in (30, 31) else "completed"
        items.append(item("debate", qid, i < 5, status=status, calls=8, cost=None, latency=None))
    return items


def test_markdown_has_a_row_per_strategy_and_a_sentence_per_comparison() -> None:
    report = summarise(
        [SINGLE, VOTE5, DEBATE], _three_way(), scoring="numeric", questions=40, dataset="gsm8k.jsonl"
    )
    text = markdown(report)
    lines = text.splitlines()
    assert lines[0] == "### gsm8k.jsonl: 40 questions, scored `numeric`"
    rows = {
        line.split(" | ")[0].lstrip("| "): line
        for line in lines
        if line.startswith("| ") and "---" not in line
    }
    assert set(rows) == {"strategy", "single", "vote5", "debate"}
    assert "| 0.50 (" in rows["single"] and "$0.0010" in rows["single"]
    assert "| 0.95 (" in rows["vote5"] and "| 5.0 |" in rows["vote5"] and "$0.0050" in rows["vote5"]
    assert "| 600 |" in rows["vote5"]  # 5 calls of 120 tokens
    assert rows["single"].endswith("| \u2014 |")  # the first is compared with nothing
    assert "+0.45 (" in rows["vote5"] and "p < 0.001, 18 wins / 0 losses" in rows["vote5"]
    assert "40 (2 failed)" in rows["debate"]
    assert "| 0.12 (" in rows["debate"]
    assert "\u2212" in rows["debate"]  # a typographic minus in its difference
    assert "2.5 s / 4.0 s" in rows["single"]
    debate_cells = rows["debate"].split(" | ")
    assert debate_cells[5] == "\u2014" and debate_cells[6] == "\u2014" and debate_cells[7] == "\u2014"
    assert "vote5 is 0.45 more accurate than single (95 % interval " in text
    assert "McNemar p < 0.001): better." in text
    assert "debate is 0.38 less accurate than single" in text and "): worse." in text


def test_markdown_says_not_shown_to_differ() -> None:
    a = [False] * 9 + [True] * 5 + [True] * 6 + [False] * 4
    b = [True] * 9 + [False] * 5 + [True] * 6 + [False] * 4
    items = [item("single", f"q{i:02}", x) for i, x in enumerate(a)]
    items += [item("vote5", f"q{i:02}", x) for i, x in enumerate(b)]
    text = markdown(summarise([SINGLE, VOTE5], items, scoring="exact", questions=24))
    assert "vote5 is 0.17 more accurate than single (95 % interval \u2212" in text
    assert "McNemar p = 0.42): not shown to differ." in text
    assert "9 wins / 5 losses" in text


def test_markdown_never_says_better_when_the_test_and_the_interval_part() -> None:
    # Five questions, each right only under vote5: the paired bootstrap has no width (every
    # difference is 1) while five discordant pairs cannot reach p < 0.05.
    items = [item("single", f"q{i}", False) for i in range(5)] + [
        item("vote5", f"q{i}", True) for i in range(5)
    ]
    text = markdown(summarise([SINGLE, VOTE5], items, scoring="exact", questions=5))
    assert "McNemar p = 0.062): the test and the interval disagree (few questions differ)" in text
    assert "better" not in text


def test_markdown_says_when_both_got_the_same_questions_right() -> None:
    items = [item(s, f"q{i}", i % 2 == 0) for s in ("single", "vote5") for i in range(6)]
    text = markdown(summarise([SINGLE, VOTE5], items, scoring="exact", questions=6))
    assert (
        "vote5 is as accurate as single" in text
        and "no question was right under one and wrong under the other." in text
    )


def test_markdown_shows_partial_progress_and_escapes_pipes() -> None:
    report = summarise([SINGLE, VOTE5], [item("single", "q1", True)], scoring="exact", questions=3)
    report.strategies[0].name = "a|b"
    text = markdown(report)
    assert "| a\\|b | 1 of 3 |" in text
    assert "| vote5 | 0 of 3 | no answers yet |" in text
    assert "vote5 has no question answered by a|b too yet: not compared." in text


def test_markdown_shows_the_judge_cost() -> None:
    report = summarise(
        [SINGLE], [item("single", "q1", True)], scoring="judge", questions=1, judge_cost_usd=0.0123
    )
    assert (
        markdown(report).splitlines()[0]
        == "### evaluation: 1 questions, scored `judge` (the judge cost $0.012)"
    )


# Plot


def test_plot_writes_a_png(tmp_path: Path) -> None:
    report = summarise([SINGLE, VOTE5, DEBATE], _three_way(), scoring="numeric", questions=40)
    path = plot(report, tmp_path / "eval.png")
    assert path == tmp_path / "eval.png"
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 10_000


def test_plot_writes_an_svg_with_the_strategies_named(tmp_path: Path) -> None:
    report = summarise(
        [SINGLE, VOTE5, DEBATE], _three_way(), scoring="numeric", questions=40, dataset="costs $1 $2"
    )
    path = plot(report, str(tmp_path / "eval.svg"))
    texts = " ".join(
        "".join(e.itertext()) for e in ET.parse(path).getroot().iter("{http://www.w3.org/2000/svg}text")
    )
    assert "single" in texts and "vote5" in texts
    assert "cost per question (USD)" in texts
    assert "not placed (no price): debate" in texts  # priced and unpriced strategies mixed
    assert "costs $1 $2" in texts  # dollar signs as text, not a formula


def test_plot_falls_back_to_calls_without_prices(tmp_path: Path) -> None:
    items = [item(s, f"q{i}", i % 2 == 0, cost=None) for s in ("single", "vote5") for i in range(6)]
    report = summarise([SINGLE, VOTE5, DEBATE], items, scoring="exact", questions=6)
    path = plot(report, tmp_path / "eval.svg")
    texts = " ".join(
        "".join(e.itertext()) for e in ET.parse(path).getroot().iter("{http://www.w3.org/2000/svg}text")
    )
    assert "calls per question (no strategy has a price)" in texts
    assert "single" in texts and "vote5" in texts
    assert "debate" not in texts  # no answers yet: no point


def test_plot_refuses_other_formats(tmp_path: Path) -> None:
    report = summarise([SINGLE], [item("single", "q1", True)], scoring="exact", questions=1)
    with pytest.raises(ValueError, match=r"\.gif"):
        plot(report, tmp_path / "eval.gif")
    assert not (tmp_path / "eval.gif").exists()
