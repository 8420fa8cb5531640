"""Scoring an evaluation's answers: the prompt every strategy is asked, reading final answers as a
vote reads them, comparing them with the reference, and the judge's prompt and verdict."""

from __future__ import annotations

import pytest

from moot.eval.datasets import arithmetic, multiple_choice
from moot.eval.models import Question, Scoring
from moot.eval.scoring import (
    as_number,
    default_scoring,
    extract,
    is_correct,
    judge_prompt,
    judge_request,
    judged_correct,
    lists_choices,
    prompt_for,
    readable_reference,
)
from moot.protocols.agreement import Format
from moot.protocols.vote.prompts import INSTRUCTIONS, PLACEHOLDERS

CAPITAL = Question(id="c", question="What is the capital of France?", answer="Paris")
CITIES = Question(
    id="m", question="Which city is the capital of France?", answer="B", choices=["London", "Paris", "Rome"]
)


def test_default_scoring() -> None:
    assert default_scoring(multiple_choice(5)) == "choice"
    assert default_scoring(arithmetic(5)) == "numeric"
    assert default_scoring([Question(id="1", question="q", answer="1,234"), CAPITAL]) == "exact"
    assert default_scoring([Question(id="1", question="q", answer="-3.50")]) == "numeric"
    # Some with choices and some without: their answers are letters, not numbers.
    assert default_scoring([CITIES, CAPITAL]) == "exact"


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("**Answer:** 42", "42"),
        ("The answer is 42.", "42"),
        ("6*7 = 42\nAnswer: 42", "42"),
        ("Working it through gives 41.\nAnswer: 42", "42"),
        ("**Final answer:** 1,234", "1234"),
        ("Answer: 3.50", "3.5"),
        ("Answer: -506", "-506"),
        ("First 12.\nThen 30.\nSo I cannot decide.", None),  # numbers worked with, none given
        ("", None),
    ],
)
def test_extract_numbers_from_messy_replies(reply: str, expected: str | None) -> None:
    assert extract(reply, "numeric") == expected


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("B) because Paris is the capital", "B"),
        ("**Answer:** B", "B"),
        ("I considered A first.\nAnswer: (b)", "B"),
        ("The answer is Paris.", "B"),
        ("Answer: E", None),  # beyond the options
        ("No idea.", None),
    ],
)
def test_extract_letters_from_messy_replies(reply: str, expected: str | None) -> None:
    assert extract(reply, "choice", CITIES.choices) == expected


def test_extract_text_and_judge() -> None:
    assert extract("Answer: **Paris.**", "exact") == "paris"
    assert extract("Answer: 8.0", "exact") == "8"
    assert extract("  It is Paris, surely.\n", "judge") == "It is Paris, surely."
    assert extract("   ", "judge") is None
    assert extract(None, "numeric") is None


@pytest.mark.parametrize(
    ("extracted", "reference", "scoring", "right"),
    [
        ("1234", "1,234", "numeric", True),
        ("3.5", "3.50", "numeric", True),
        ("42", "42.0000001", "numeric", True),
        ("42", "42.1", "numeric", False),
        ("42", "forty-two", "numeric", False),  # a reference that is no number matches nothing
        (None, "42", "numeric", False),
        ("B", "b", "choice", True),
        ("B", "(B)", "choice", True),
        ("b", "B", "choice", True),
        ("C", "B", "choice", False),
        ("paris", "Paris.", "exact", True),
        ("new  york", "New York", "exact", True),
        ("8", "8.0", "exact", True),
        ("paris", "Rome", "exact", False),
    ],
)
def test_is_correct(extracted: str | None, reference: str, scoring: Scoring, right: bool) -> None:
    assert is_correct(extracted, reference, scoring) is right


def test_is_correct_tolerance_is_absolute() -> None:
    assert is_correct("1000.4", "1000", "numeric", tolerance=0.5)
    assert not is_correct("1000.6", "1000", "numeric", tolerance=0.5)


def test_is_correct_refuses_judge_scoring() -> None:
    with pytest.raises(ValueError, match="judge"):
        is_correct("Paris", "Paris", "judge")


def test_as_number() -> None:
    assert as_number(" 1,234 ") == 1234 and as_number(".5") == 0.5 and as_number("-7") == -7
    assert as_number("1/2") is None and as_number("nan") is None and as_number("42 apples") is None


@pytest.mark.parametrize(
    ("scoring", "fmt"), [("numeric", "number"), ("choice", "choice"), ("exact", "free"), ("judge", "free")]
)
def test_prompt_for_tells_what_a_vote_tells(scoring: Scoring, fmt: Format) -> None:
    prompt = prompt_for(CAPITAL, scoring)
    assert prompt.startswith(CAPITAL.question + "\n")
    assert INSTRUCTIONS[fmt] in prompt
    assert prompt.splitlines()[-1] == f"Answer: {PLACEHOLDERS[fmt]}"


def test_prompt_for_lists_options_once() -> None:
    prompt = prompt_for(CITIES, "choice")
    assert "\nA. London\nB. Paris\nC. Rome\n" in prompt
    generated = multiple_choice(1)[0]
    assert lists_choices(generated) and not lists_choices(CITIES)
    prompt = prompt_for(generated, "choice")
    assert prompt.count("\nA. ") == 1 and "Options:" not in prompt


def test_judge_prompt_shows_question_options_reference_and_candidate() -> None:
    prompt = judge_prompt(CITIES, "  I'd say Paris.  ")
    for shown in (
        CITIES.question,
        "\nA. London\nB. Paris\nC. Rome",
        "Reference answer:\nB",
        "I'd say Paris.",
    ):
        assert shown in prompt
    assert prompt.endswith("a different value, option or meaning does.")


def test_a_judge_is_one_call_read_as_a_yes_or_no_vote() -> None:
    body = judge_request("referee", CITIES, "Paris")
    assert body["members"] == [{"model": "referee"}] and body["answer_format"] == "yes_no"
    assert body["prompt"] == judge_prompt(CITIES, "Paris")


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("The candidate says Paris, as does the reference.\nAnswer: yes", True),
        ("Different city.\n**Answer:** no", False),
        ("yes", True),
        ("It looks correct to me.", False),
        ("", False),
        (None, False),
    ],
)
def test_only_a_yes_from_the_judge_counts_an_answer_correct(reply: str | None, verdict: bool) -> None:
    assert judged_correct(reply) is verdict


def test_solver_replies_score_as_intended() -> None:
    # The test model server's solver ends its replies this way (tests/unit/test_model_server_solver.py).
    question = arithmetic(1)[0]
    assert is_correct(
        extract(f"Working it through gives 1.\nAnswer: {question.answer}", "numeric"),
        question.answer,
        "numeric",
    )
    choice = multiple_choice(1)[0]
    reply = f"Option {choice.answer} is the one that fits.\nAnswer: {choice.answer}"
    assert is_correct(extract(reply, "choice", choice.choices), choice.answer, "choice")


@pytest.mark.parametrize(
    ("answer", "choices", "how", "readable"),
    [
        ("42", None, "numeric", True),
        ("1,234.5", None, "numeric", True),
        ("Paris", None, "numeric", False),
        ("b", ["x", "y"], "choice", True),
        ("E", ["x", "y"], "choice", False),
        ("Paris", ["x", "y"], "choice", False),
        ("Paris", None, "exact", True),
    ],
)
def test_a_reference_that_cannot_be_read_in_the_scoring_is_found(
    answer: str, choices: list[str] | None, how: Scoring, readable: bool
) -> None:
    assert readable_reference(Question(id="q", question="?", answer=answer, choices=choices), how) is readable


@pytest.mark.parametrize(
    "reply",
    [
        'On "What is the result of 15+13*5+12-11*7?":\nthe debaters disagree.\nConfidence: 0.8',
        "Synthesis: the members agree on the main point.",
        "7 of the members said one thing.\nThe rest said another.",
    ],
)
def test_a_number_the_reply_does_not_end_on_is_not_its_answer(reply: str) -> None:
    assert extract(reply, "numeric") is None
