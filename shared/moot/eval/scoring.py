"""Scoring: what each strategy is asked, its final answer as read, and whether that answer is right.

Every strategy is told the same thing as a vote's voters (`prompt_for`): the question, its
options, and to end with a last line "Answer: ...", in the vote's own words for the format. Every
final answer (a single model's reply, a vote's winner, a consortium's synthesis, a debate's
verdict) is read from the line it ends on, as a vote reads that line (`extract`), so no strategy wins
or loses on how its answer happens to be worded.

How an answer compares with the reference depends on the scoring (`moot.eval.models.Scoring`):
- `numeric`: both read as numbers, equal within an absolute `tolerance` ("1,234" and "3.50" are
  numbers);
- `choice`: the same option letter ("b", "(B)" and "B" are one);
- `exact`: the same text as the vote's `free` format normalises it (case, punctuation, spacing;
  a number as a number, so "8" and "8.0" agree);
- `judge`: a model told the question, the reference and the answer says whether they are the
  same answer, as a yes-or-no vote of one (`judge_request`, `judged_correct`); the caller runs it.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import Any

from moot.eval.models import Question, Scoring
from moot.protocols import agreement
from moot.protocols.agreement import Format
from moot.protocols.vote.parsing import final_line, key_text, read_vote
from moot.protocols.vote.prompts import how_to_answer, vote_prompt

__all__ = [
    "FORMATS",
    "Scoring",
    "as_number",
    "default_scoring",
    "extract",
    "is_correct",
    "judge_prompt",
    "judge_request",
    "judged_correct",
    "lists_choices",
    "prompt_for",
    "readable_reference",
]

# The vote format each scoring reads answers in; a judge is shown the answer as given.
FORMATS: dict[Scoring, Format] = {"numeric": "number", "choice": "choice", "exact": "free", "judge": "free"}

# A number as a reference gives it: "42", "-3.50", "1,234", ".5".
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")


def as_number(text: str) -> float | None:
    """`text` as a number when it is one and nothing else ("1,234", " 3.50 "); else None."""
    text = text.strip()
    return float(text.replace(",", "")) if _NUMBER.fullmatch(text) else None


def default_scoring(questions: Sequence[Question]) -> Scoring:
    """`choice` when every question has choices, `numeric` when every answer is a number, else `exact`."""
    if questions and all(q.choices for q in questions):
        return "choice"
    if questions and all(as_number(q.answer) is not None for q in questions):
        return "numeric"
    return "exact"


def extract(answer: str | None, scoring: Scoring, choices: Sequence[str] | None = None) -> str | None:
    """A final answer as scored: "42", "B", normalised text ("paris"); None when none can be read.

    Read from the line the reply ends on (`final_line`: the last "Answer:" line, else the last
    line), as a vote reads that line: a number or a letter elsewhere in the reply (the question
    quoted, a working) is never taken for the answer. A judge is shown the whole answer, stripped.
    """
    if answer is None:
        return None
    if scoring == "judge":
        return answer.strip() or None
    reading = read_vote(final_line(answer), FORMATS[scoring], choices or ())
    return None if reading.key is None else key_text(reading.key)


def is_correct(extracted: str | None, reference: str, scoring: Scoring, tolerance: float = 1e-6) -> bool:
    """Whether an extracted answer matches the reference (`numeric`: within `tolerance`, absolute).

    A reference that does not read in the scoring's format (a `numeric` reference that is no
    number) matches nothing. ValueError for `judge`: a model scores those (`judge_prompt`).
    """
    if scoring == "judge":
        raise ValueError("judge scoring is done by a model: see judge_request")
    if extracted is None:
        return False
    if scoring == "numeric":
        got, expected = as_number(extracted), as_number(reference)
        return got is not None and expected is not None and abs(got - expected) <= tolerance
    if scoring == "choice":
        letter = agreement.normalise(reference, "choice")
        return letter is not None and extracted.strip().upper() == letter
    expected_key = agreement.normalise(reference, "free")
    return expected_key is not None and agreement.normalise(extracted, "free") == expected_key


def readable_reference(question: Question, scoring: Scoring) -> bool:
    """Whether the question's reference answer reads in `scoring` (a number for `numeric`, an
    option's letter for `choice`): one that does not would make every answer wrong."""
    if scoring == "numeric":
        return as_number(question.answer) is not None
    if scoring == "choice":
        letter = agreement.normalise(question.answer, "choice")
        if not isinstance(letter, str):
            return False
        return not question.choices or string.ascii_uppercase.index(letter) < len(question.choices)
    return True


def lists_choices(question: Question) -> bool:
    """Whether the question's text already lists its options, one "A. ..." line each."""
    choices = question.choices or []
    return all(
        re.search(rf"^\s*{letter}[.)]\s*{re.escape(choice)}\s*$", question.question, re.MULTILINE)
        for letter, choice in zip(string.ascii_uppercase, choices, strict=False)
    )


def prompt_for(question: Question, scoring: Scoring) -> str:
    """What a strategy is asked: the question as a vote's voters see it (`vote_prompt`), its options
    listed unless its text lists them, then the last line to end with ("Answer: <the number>")."""
    choices = [] if lists_choices(question) else question.choices or []
    parts = vote_prompt(question.question, how_to_answer(FORMATS[scoring], choices))
    # Plain strings in, plain strings out: nothing here is held by reference.
    return "".join(part for part in parts if isinstance(part, str))


JUDGE_PROMPT = """\
You are checking an answer to a question against the reference answer.

Question:
{question}

Reference answer:
{reference}

Answer to check:
{candidate}

Does the answer to check give the same final answer as the reference answer? Judge its final \
answer only: wording, formatting, units written or not, and the working before it do not \
matter; a different value, option or meaning does."""


def judge_prompt(question: Question, candidate: str) -> str:
    """What a judge model is asked: is `candidate` the same answer as the question's reference?
    It is asked as a yes-or-no vote of one (`judge_request`), which says how to answer."""
    listed = "" if lists_choices(question) else _options(question.choices or [])
    return JUDGE_PROMPT.format(
        question=question.question + listed, reference=question.answer, candidate=candidate.strip()
    )


def judge_request(judge: str, question: Question, candidate: str) -> dict[str, Any]:
    """The run that judges `candidate`: one call of `judge`, read as a yes-or-no vote."""
    return {
        "mode": "vote",
        "members": [{"model": judge}],
        "answer_format": "yes_no",
        "prompt": judge_prompt(question, candidate),
    }


def judged_correct(answer: str | None) -> bool:
    """A judge run's answer: correct only when it says yes."""
    return read_vote(answer or "", "yes_no").key == "yes"


def _options(choices: Sequence[str]) -> str:
    return "".join(
        f"\n{letter}. {choice}" for letter, choice in zip(string.ascii_uppercase, choices, strict=False)
    )
