"""Tolerant parsing on what the local model (SmolLM2-135M-Instruct) really wrote.

Every fixture in `fixtures/smollm2/` is an answer of the model to a prompt the protocols built
(captured with `tests/slow/smollm2_compliance.py`): as arbiter of a consortium, as judge of a
debate, as a debater asked whether it was convinced. The parsers recover what they reasonably
can, and record as malformed / unreadable what they cannot, so a run on this model always ends.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from moot.messages import CallCompleted, CallJob, JudgeDecision
from moot.protocols import debate
from moot.protocols.consortium.parsing import parse_arbiter
from moot.protocols.debate import parse_conviction, parse_judge_answer
from moot.requests import DebateRequest

FIXTURES = Path(__file__).parent / "fixtures" / "smollm2"


def answer(name: str) -> str:
    return (FIXTURES / name).read_text()


# --------------------------------------------------------------------------- arbiter


def test_prose_without_any_tag_becomes_the_synthesis() -> None:
    v = parse_arbiter(answer("arbiter-prose-no-tags.txt"))
    assert v.synthesis.startswith("The single best answer to the question of regular exercise")
    assert v.confidence is None and v.needs_iteration is None
    assert v.malformed
    assert "no <synthesis>: the whole answer is used as the synthesis" in v.problems
    assert "missing <confidence>" in v.problems


def test_a_closing_tag_without_its_opening_one_closes_what_came_before() -> None:
    v = parse_arbiter(answer("arbiter-closing-tag-only.txt"))
    assert v.synthesis.startswith("The best way to learn a new language is indeed with effort")
    assert v.synthesis.endswith("how they work in context.")
    assert "</synthesis> without <synthesis>: read what comes before it" in v.problems
    assert v.malformed and v.confidence is None


def test_answer_tags_copied_from_the_prompt_are_stripped_from_the_synthesis() -> None:
    v = parse_arbiter(answer("arbiter-nested-answer-tags.txt"))
    assert "<answer" not in v.synthesis and "</answer>" not in v.synthesis
    assert v.synthesis.startswith("This answer includes several advantages of regular exercise")
    assert v.malformed and v.confidence is None


def test_the_confidence_tag_alone_is_read_and_the_rest_is_the_synthesis() -> None:
    v = parse_arbiter(answer("arbiter-confidence-tag-only.txt"))
    assert v.confidence == pytest.approx(0.8)
    assert v.synthesis.startswith("The answer to the question is: 1. Improves physical")
    assert "0.8" not in v.synthesis and "<confidence>" not in v.synthesis
    assert v.malformed  # no <synthesis>, no <needs_iteration>
    assert v.needs_iteration is None


def test_the_confidence_written_into_the_tag_itself_is_read() -> None:
    v = parse_arbiter(answer("arbiter-junk-tags.txt"))
    assert v.confidence == pytest.approx(0.8)
    assert "confidence read from the tag itself ('<confidence:0.8>')" in v.problems
    assert v.synthesis.startswith("I'm glad to share my personal experience")
    assert v.malformed


def test_the_reply_template_copied_word_for_word_is_not_an_answer() -> None:
    v = parse_arbiter(answer("arbiter-placeholder-copied.txt"))
    assert "<synthesis> is the prompt's placeholder, copied: not read" in v.problems
    # The text around the copied template is what the model had to say.
    assert v.synthesis == (
        "The answer to this classic puzzle is 0.921, which can be compared to other answers "
        "from your list of perfect values:"
    )
    assert v.confidence is None and v.malformed


def test_a_copied_example_confidence_is_not_the_models_confidence() -> None:
    v = parse_arbiter(
        "<synthesis>Exercise helps the heart.</synthesis>\n"
        "<confidence>a number from 0 to 1, e.g. 0.7</confidence>\n"
        "<needs_iteration>false, or true if another round would clearly help</needs_iteration>"
    )
    assert v.synthesis == "Exercise helps the heart."
    assert v.confidence is None and v.needs_iteration is None
    assert "<confidence> is the prompt's placeholder, copied: not read" in v.problems


def test_an_echo_of_an_older_template_keeps_an_unreadable_confidence() -> None:
    v = parse_arbiter(answer("arbiter-template-echoed.txt"))
    assert v.confidence is None
    assert any(p.startswith("unreadable confidence 'one thing that improves") for p in v.problems)
    assert v.malformed


def test_a_percentage_in_an_unclosed_confidence_is_read_as_written() -> None:
    v = parse_arbiter(answer("arbiter-percent-in-prose.txt"))
    assert v.confidence == pytest.approx(0.015)  # "1.5% of the models disagree": read as written
    assert "unclosed <confidence>" in v.problems and v.malformed


@pytest.mark.parametrize(
    ("text", "confidence"),
    [
        ("Exercise helps.\n0.75", 0.75),
        ("Exercise helps.\n**.6**", 0.6),
        ("Exercise helps.\n- 85%", 0.85),
        ("Exercise helps.\n1.0", 1.0),
        ("Steps:\n1.\nstretch\n2.\nrun", None),  # list numbers are not confidences
        ("Exercise helps.\n1", None),
    ],
)
def test_a_bare_number_on_a_line_of_its_own_is_the_confidence(text: str, confidence: float | None) -> None:
    v = parse_arbiter(text)
    assert v.confidence == (pytest.approx(confidence) if confidence is not None else None)
    if confidence is not None:
        assert "confidence read from a bare number, not from <confidence>" in v.problems


# --------------------------------------------------------------------------- judge


@pytest.mark.parametrize(
    ("fixture", "word"),
    [
        ("judge-continues.txt", "CONTINUE"),  # "The debate continues."
        ("judge-is-over.txt", "STOP"),  # "The debate is over."
        ("judge-concluded.txt", "STOP"),  # "The debate has now concluded."
        ("judge-stop-word.txt", "STOP"),
        ("judge-continue-in-passing.txt", "CONTINUE"),  # "I'm happy to continue."
        ("judge-neither.txt", None),
        ("judge-echoes-example.txt", None),  # the second line of the prompt's example
    ],
)
def test_the_judges_decision(fixture: str, word: str | None) -> None:
    text = answer(fixture)
    got, reason = parse_judge_answer(text)
    assert got == word
    assert reason  # the decision's reason, or the whole answer when there is none


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("They should not continue; nothing new came up.", "STOP"),
        ("We shouldn't STOP yet.", "CONTINUE"),
        ("Do not stop now, they disagree.", "CONTINUE"),
        ("Stopping here is best.", "STOP"),
        ("The debate is over.\nBut they could continue.", "STOP"),  # the first line decides
        (
            "A long answer.\nIt rambles on and continues forever.",
            None,
        ),  # a form further down decides nothing
    ],
)
def test_word_forms_and_negations(text: str, word: str | None) -> None:
    assert parse_judge_answer(text)[0] == word


def test_an_unreadable_judge_answer_lets_the_debate_go_on_and_says_so() -> None:
    req = DebateRequest.model_validate(
        {
            "mode": "debate",
            "prompt": "Is it better to work from home or from an office?",
            "members": [{"model": "local", "count": 2}],
            "judge_mode": "external_judge",
            "judge": "local",
            "max_rounds": 3,
        }
    )
    at = datetime(2026, 1, 1, tzinfo=UTC)
    t = debate.start("r", req, at)
    state, pending = t.state, [c for c in t.commands if isinstance(c, CallJob)]
    decision = None
    while pending:
        job = pending.pop(0)
        text = answer("judge-neither.txt") if job.role == "judge" else "I prefer the office."
        outcome = CallCompleted(
            run_id="r", call_id=job.call_id, iteration=job.iteration, role=job.role,
            model=job.model, instance=job.instance, text=text, at=at,
        )  # fmt: skip
        state, commands, _texts = debate.decide(state, outcome)
        decision = next((c for c in commands if isinstance(c, JudgeDecision)), decision)
        pending += [c for c in commands if isinstance(c, CallJob)]
    assert decision is not None and decision.continue_ and not decision.readable
    assert state.status == "completed" and len(state.rounds) == 3
    assert state.rounds[1].decision_readable is False


# --------------------------------------------------------------------------- conviction


def _others() -> list[debate.Debater]:
    req = DebateRequest.model_validate(
        {
            "mode": "debate",
            "prompt": "q",
            "members": [{"model": "local", "count": 2}],
            "judge_mode": "self_convergence",
        }
    )
    t = debate.start("r", req, datetime(2026, 1, 1, tzinfo=UTC))
    return [d for d in t.state.debaters if d.number != 1]


@pytest.mark.parametrize(
    "fixture",
    [
        # "One of the debaters (Local#2) has convinced me ...": prose, not the CONVINCED line. A
        # concession eliminates a debater, so only the asked-for form counts: the safe side.
        "conviction-prose-convinced.txt",
        "conviction-not-convinced-prose.txt",
        "conviction-not-convinced-late.txt",
        "conviction-off-topic.txt",
    ],
)
def test_only_the_asked_for_form_concedes(fixture: str) -> None:
    assert parse_conviction(answer(fixture), _others()) == (False, None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("CONVINCED: local#2\nTheir point was better.", (True, 2)),
        ("**CONVINCED: Local#2**", (True, 2)),
        ("NOT CONVINCED\nMine stands.", (False, None)),
    ],
)
def test_the_asked_for_forms(text: str, expected: tuple[bool, int | None]) -> None:
    assert parse_conviction(text, _others()) == expected
