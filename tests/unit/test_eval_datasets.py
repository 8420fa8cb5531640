"""Datasets of an evaluation: the generators, reading and writing JSONL, and solving the generated
questions wherever a prompt embeds them."""

from __future__ import annotations

import io
import json
import math
import random
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from moot.eval.datasets import (
    GENERATORS,
    DatasetError,
    Solution,
    arithmetic,
    multiple_choice,
    read_dataset,
    solve,
    write_dataset,
)
from moot.eval.models import Question, Scoring
from moot.eval.scoring import prompt_for
from moot.protocols.agreement import Format
from moot.protocols.debate import prompts as debate_prompts
from moot.protocols.vote.prompts import how_to_answer, vote_prompt
from moot.texts import render

ARITHMETIC = re.compile(
    r"What is the result of (\d+\+\d+\*\d+\+\d+-\d+\*\d+)\? Make sure to state your answer at the end of the response\."
)


def vote_asks(question: Question, *, with_choices: bool) -> str:
    """What a vote's voter receives, built by the vote's own prompt code."""
    fmt: Format = "choice" if question.choices else "number"
    choices = question.choices if with_choices and question.choices else []
    rendered = render(vote_prompt(question.question, how_to_answer(fmt, choices)), {})
    assert isinstance(rendered, str)
    return rendered


def is_prime(n: int) -> bool:
    return n > 1 and all(n % d for d in range(2, math.isqrt(n) + 1))


def truth(question: Question) -> int:
    """The right option's value, worked out here independently of the generator."""
    stem, *options = question.question.splitlines()
    if m := re.fullmatch(r"What is the value of ([\d+*-]+)\?", stem):
        return int(eval(m.group(1)))  # digits and + - * only
    if m := re.fullmatch(r"What is the greatest common divisor of (\d+) and (\d+)\?", stem):
        return math.gcd(int(m.group(1)), int(m.group(2)))
    if m := re.fullmatch(r"What is the remainder when (\d+) is divided by (\d+)\?", stem):
        return int(m.group(1)) % int(m.group(2))
    if stem == "Which of these numbers is prime?":
        (prime,) = [int(o[3:]) for o in options if is_prime(int(o[3:]))]
        return prime
    m = re.fullmatch(r"How many (\w+) are there in (\d+) (\w+)\?", stem)
    assert m, stem
    per = {("days", "weeks"): 7, ("hours", "days"): 24, ("minutes", "hours"): 60}
    return per[(m.group(1), m.group(3))] * int(m.group(2))


# --------------------------------------------------------------------------- arithmetic


def test_arithmetic_is_du_et_al_task_with_right_answers() -> None:
    questions = arithmetic(200, seed=3)
    assert [q.id for q in questions[:3]] == ["arith-0001", "arith-0002", "arith-0003"]
    assert len({q.question for q in questions}) == 200
    for q in questions:
        m = ARITHMETIC.fullmatch(q.question)
        assert m, q.question
        numbers = [int(x) for x in re.findall(r"\d+", m.group(1))]
        assert len(numbers) == 6 and all(0 <= x <= 30 for x in numbers)
        assert q.answer == str(eval(m.group(1)))  # digits and + - * only
        assert q.choices is None


def test_generators_are_deterministic_per_seed_and_differ_across_seeds() -> None:
    for generate in GENERATORS.values():
        assert generate(30, 1) == generate(30, 1)
        assert [q.question for q in generate(30, 1)] != [q.question for q in generate(30, 2)]
    assert set(GENERATORS) == {"arithmetic", "choice"}


# --------------------------------------------------------------------------- multiple choice


def test_multiple_choice_has_four_distinct_options_and_exactly_one_right() -> None:
    questions = multiple_choice(300, seed=5)
    assert questions[0].id == "choice-0001" and questions[-1].id == "choice-0300"
    stems = [q.question.splitlines()[0] for q in questions]
    assert len(set(stems)) > 250  # the prime family repeats its stem with other numbers
    for q in questions:
        assert q.choices is not None and len(q.choices) == 4
        assert len(set(q.choices)) == 4
        # The text lists the options as a vote lists them, so it reads the same anywhere.
        assert q.question.splitlines()[1:] == [
            f"{letter}. {c}" for letter, c in zip("ABCD", q.choices, strict=True)
        ]
        right = truth(q)
        assert [int(c) for c in q.choices].count(right) == 1
        assert q.choices["ABCD".index(q.answer)] == str(right)
    families = {re.sub(r"\d+", "N", stem) for stem in stems}
    assert len(families) >= 5
    assert {q.answer for q in questions} == set("ABCD")


def test_remainder_distractors_stay_non_negative() -> None:
    for q in multiple_choice(300, seed=9):
        if "remainder" in q.question:
            assert q.choices is not None and all(int(c) >= 0 for c in q.choices)


# --------------------------------------------------------------------------- reading and writing


def test_write_then_read_round_trips(tmp_path: Path) -> None:
    questions = arithmetic(3) + multiple_choice(3)
    path = tmp_path / "data.jsonl"
    write_dataset(questions, path)
    assert read_dataset(path) == questions
    lines = path.read_text().splitlines()
    assert "choices" not in json.loads(lines[0]) and "choices" in json.loads(lines[3])
    stream = io.StringIO()
    write_dataset(questions, stream)
    assert stream.getvalue() == path.read_text()


def write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_read_skips_blank_lines_and_takes_numbers_as_text(tmp_path: Path) -> None:
    path = write(tmp_path, "", '{"id": 1, "question": "2+2?", "answer": 4, "source": "x"}', "  ")
    assert read_dataset(path) == [Question(id="1", question="2+2?", answer="4")]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "a", "question": "q"}', r"data.jsonl:3: answer: Field required"),
        ('{"id": "a", "question": "q", "answer": ', r"data.jsonl:3: not JSON: "),
        ('["a", "q", "1"]', r"data.jsonl:3: not a JSON object"),
        (
            '{"id": "a", "question": "", "answer": "1"}',
            r"data.jsonl:3: question: String should have at least 1",
        ),
        (
            '{"id": "a", "question": "q", "answer": "1", "choices": ["x"]}',
            r"data.jsonl:3: choices: List should",
        ),
    ],
)
def test_read_errors_name_file_line_and_field(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path, '{"id": "ok", "question": "q", "answer": "1"}', "", line)
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path)) + "/" + message):
        read_dataset(path)


def test_read_refuses_duplicate_ids_naming_both_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '{"id": "x", "question": "q", "answer": "1"}',
        '{"id": "y", "question": "q", "answer": "1"}',
        '{"id": "x", "question": "r", "answer": "2"}',
    )
    with pytest.raises(DatasetError, match=r"data.jsonl:3: id 'x' is already the id of line 1"):
        read_dataset(path)


def test_read_refuses_an_empty_or_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no questions"):
        read_dataset(write(tmp_path, "", "   "))
    with pytest.raises(DatasetError, match="No such file"):
        read_dataset(tmp_path / "absent.jsonl")


# --------------------------------------------------------------------------- solving


@pytest.mark.parametrize("generate", [arithmetic, multiple_choice])
def test_solve_finds_every_generated_question_wherever_it_is_embedded(
    generate: Callable[[int, int], list[Question]],
) -> None:
    for q in generate(150, 11):
        scoring: Scoring = "choice" if q.choices else "numeric"
        embeddings = [
            q.question,
            vote_asks(q, with_choices=True),
            vote_asks(q, with_choices=False),
            prompt_for(q, scoring),
            debate_prompts.FIRST_ROUND["free_discussion"].format(label="m#1", question=q.question),
        ]
        solutions = [solve(text) for text in embeddings]
        first = solutions[0]
        assert first is not None
        assert all(s == first for s in solutions), q.question
        assert first.answer == q.answer
        assert first.mistake != first.answer
        if q.choices:
            assert first.letters == "ABCD" and first.mistake in "ABCD"
            assert first.question == q.question
        else:
            assert first.letters == "" and int(first.mistake) != int(q.answer)


def test_the_arithmetic_mistake_is_forgetting_precedence() -> None:
    solution = solve("Please: What is the result of 2+3*4+1-5*2? Make sure to state your answer.")
    # Right: 2+12+1-10 = 5; left to right: ((((2+3)*4)+1)-5)*2 = 32.
    assert solution == Solution("What is the result of 2+3*4+1-5*2?", "5", "32")
    # Where left to right happens to be right, the mistake is still wrong.
    same = solve("What is the result of 0+0*0+0-0*0?")
    assert same is not None and same.answer == "0" and same.mistake == "1"


def test_the_choice_mistake_is_the_nearest_wrong_option() -> None:
    text = "What is the greatest common divisor of 12 and 18?\nA. 3\nB. 36\nC. 6\nD. 2"
    assert solve(text) == Solution(text, "C", "A", "ABCD")


def test_solve_returns_none_without_a_generated_question() -> None:
    assert solve("How many legs does a spider have?") is None
    assert solve("") is None
    # A stem without its options, or whose options hold no right one, is not a question it can answer.
    assert solve("What is the remainder when 17 is divided by 5?") is None
    assert solve("What is the remainder when 17 is divided by 5?\nA. 1\nB. 3\nC. 4\nD. 5") is None


def test_solve_takes_the_first_question_of_several() -> None:
    first, second = arithmetic(2, seed=4)
    solution = solve(f"{first.question}\nEarlier someone asked: {second.question}")
    assert solution is not None and solution.answer == first.answer


def test_wrong_answers_are_wrong() -> None:
    rng = random.Random(0)
    number = Solution("q", "10", "11")
    letter = Solution("q", "B", "C", "ABCD")
    numbers = {number.wrong_answer(rng) for _ in range(200)}
    letters = {letter.wrong_answer(rng) for _ in range(200)}
    assert "10" not in numbers and all(1 <= abs(int(v) - 10) <= 20 for v in numbers) and len(numbers) > 10
    assert letters == {"A", "C", "D"}
