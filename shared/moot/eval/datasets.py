"""Datasets: JSONL files of questions, two generated kinds, and the solver of the generated ones.

A dataset is JSON Lines, one `Question` a line (`{"id", "question", "answer", "choices"?}`).
`read_dataset` says where a file is wrong by line and field, so a dataset exported from elsewhere
is fixed before an evaluation pays for a single call.

The generators make datasets whose right answers are known without a model, seeded so the same
seed gives the same questions:
- `arithmetic`: the arithmetic task of Du et al. 2023 (multi-agent debate), `a+b*c+d-e*f` with
  integers 0 to 30, in their prompt's words;
- `choice`: four options A to D on facts the generator computes (an expression's value, a
  greatest common divisor, a remainder, the prime among four numbers, a unit conversion). The
  question's text lists its options too, so it reads the same wherever it is embedded.

`solve` finds a generated question anywhere in a text (a strategy's prompt wraps it in
instructions, a vote appends the options again) and gives its right answer and the one mistake a
model makes on it every time. The test model server answers with it (`ModelBehaviour.
solver_accuracy`), so an evaluation's statistics can be checked against a known accuracy. Pure
Python and regular expressions: the server calls it on every request.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO, TypeVar

from pydantic import ValidationError

from moot.eval.models import Question

__all__ = [
    "GENERATORS",
    "DatasetError",
    "Solution",
    "arithmetic",
    "multiple_choice",
    "read_dataset",
    "solve",
    "write_dataset",
]


class DatasetError(ValueError):
    """A dataset file that cannot be read: the message names the file, the line and the field."""


# --------------------------------------------------------------------------- reading and writing


def read_dataset(path: str | os.PathLike[str]) -> list[Question]:
    """The questions of a JSONL file; blank lines are skipped. DatasetError says what is wrong where."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"{path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    questions: list[Question] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{where}: not JSON: {exc.msg} (column {exc.colno})") from exc
        if not isinstance(data, dict):
            raise DatasetError(f"{where}: not a JSON object")
        try:
            question = Question.model_validate(data)
        except ValidationError as exc:
            raise DatasetError(f"{where}: {_errors(exc)}") from exc
        if question.id in first_line:
            raise DatasetError(
                f"{where}: id {question.id!r} is already the id of line {first_line[question.id]}"
            )
        first_line[question.id] = number
        questions.append(question)
    if not questions:
        raise DatasetError(f"{path}: no questions")
    return questions


def _errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or 'line'}: {error['msg']}" for error in exc.errors()
    )


def write_dataset(questions: Iterable[Question], path_or_stream: str | os.PathLike[str] | TextIO) -> None:
    """Write `questions` as JSONL (a question without choices has no "choices" key)."""
    lines = "".join(q.model_dump_json(exclude_none=True) + "\n" for q in questions)
    if isinstance(path_or_stream, str | os.PathLike):
        Path(path_or_stream).write_text(lines, encoding="utf-8")
    else:
        path_or_stream.write(lines)


# --------------------------------------------------------------------------- arithmetic

# Du et al.'s prompt; `solve` recognises the question by its first sentence.
_ARITHMETIC = (
    "What is the result of {}+{}*{}+{}-{}*{}? Make sure to state your answer at the end of the response."
)
_ARITHMETIC_STEM = re.compile(r"What is the result of (\d+\+\d+\*\d+\+\d+-\d+\*\d+)\?")
_TERM = re.compile(r"\d+|[-+*]")


def arithmetic(n: int, seed: int = 0) -> list[Question]:
    """`n` distinct questions "What is the result of a+b*c+d-e*f? ..." with integers 0 to 30."""
    rng = random.Random(f"arithmetic/{seed}")

    def draw() -> tuple[str, str]:
        numbers = [rng.randint(0, 30) for _ in range(6)]
        text = _ARITHMETIC.format(*numbers)
        return text, text

    return [
        Question(id=f"arith-{i:04d}", question=text, answer=str(_value(text)))
        for i, text in enumerate(_distinct(draw, n), 1)
    ]


def _value(expression: str) -> int:
    """An expression of non-negative integers, +, - and *, with * first as usual."""
    terms: list[int] = []
    sign = 1
    pending_product = False
    for token in _TERM.findall(expression):
        if token == "*":
            pending_product = True
        elif token in "+-":
            sign = 1 if token == "+" else -1
        elif pending_product:
            terms[-1] *= int(token)
            pending_product = False
        else:
            terms.append(sign * int(token))
    return sum(terms)


def _left_to_right(expression: str) -> int:
    """The same expression worked strictly left to right: the mistake of forgetting precedence."""
    tokens = _TERM.findall(expression)
    value = int(tokens[0])
    for operator, operand in zip(tokens[1::2], tokens[2::2], strict=True):
        number = int(operand)
        value = value + number if operator == "+" else value - number if operator == "-" else value * number
    return value


# --------------------------------------------------------------------------- multiple choice

_LETTERS = "ABCD"


@dataclass(frozen=True)
class _Family:
    """One kind of multiple-choice question."""

    stem: re.Pattern[str]  # the question as worded, its parameters as groups
    make: Callable[[random.Random], tuple[str, int, list[int]]]  # stem, right value, plausible wrong ones
    right: Callable[[re.Match[str], Sequence[int]], int | None]  # from the stem and the options' values


def _make_expression(rng: random.Random) -> tuple[str, int, list[int]]:
    first, second = rng.choice([("*", "+"), ("*", "-"), ("+", "*"), ("-", "*")])
    expression = f"{rng.randint(2, 15)}{first}{rng.randint(2, 15)}{second}{rng.randint(1, 30)}"
    right = _value(expression)
    wrong = [_left_to_right(expression), right + 1, right - 1, right + 10, right - 10]
    return f"What is the value of {expression}?", right, wrong


def _make_gcd(rng: random.Random) -> tuple[str, int, list[int]]:
    divisor = rng.randint(2, 15)
    x, y = rng.sample(range(2, 16), 2)
    while math.gcd(x, y) != 1:
        x, y = rng.sample(range(2, 16), 2)
    a, b = divisor * x, divisor * y
    smaller = [d for d in range(2, divisor) if divisor % d == 0]
    wrong = [*smaller, 1, 2 * divisor, abs(a - b), min(a, b)]
    return f"What is the greatest common divisor of {a} and {b}?", divisor, wrong


def _make_remainder(rng: random.Random) -> tuple[str, int, list[int]]:
    divisor = rng.randint(3, 19)
    dividend = rng.randint(2 * divisor, 400)
    quotient, remainder = divmod(dividend, divisor)
    wrong = [quotient, remainder + 1, divisor - remainder, remainder + 2]
    if remainder:
        wrong.append(remainder - 1)
    return f"What is the remainder when {dividend} is divided by {divisor}?", remainder, wrong


def _is_prime(number: int) -> bool:
    return number > 1 and all(number % d for d in range(2, math.isqrt(number) + 1))


_PRIMES = [p for p in range(23, 200) if _is_prime(p)]
# Odd and not ending in 5: composites that look prime at a glance (91, 119, 133, ...).
_LOOK_PRIME = [c for c in range(21, 200, 2) if c % 5 and not _is_prime(c)]


def _make_prime(rng: random.Random) -> tuple[str, int, list[int]]:
    return "Which of these numbers is prime?", rng.choice(_PRIMES), rng.sample(_LOOK_PRIME, 3)


def _prime_option(_stem: re.Match[str], options: Sequence[int]) -> int | None:
    primes = [o for o in options if _is_prime(o)]
    return primes[0] if len(primes) == 1 else None


# (smaller unit, larger unit): how many of the one make the other, and factors people confuse it with.
_UNITS: dict[tuple[str, str], tuple[int, list[int]]] = {
    ("days", "weeks"): (7, [5, 6, 8]),
    ("hours", "days"): (24, [12, 20, 60]),
    ("minutes", "hours"): (60, [24, 30, 100]),
}


def _make_units(rng: random.Random) -> tuple[str, int, list[int]]:
    (small, large), (factor, confused) = rng.choice(list(_UNITS.items()))
    count = rng.randint(2, 99)
    right = factor * count
    wrong = [f * count for f in confused] + [right + factor, right - factor]
    return f"How many {small} are there in {count} {large}?", right, wrong


def _units_value(stem: re.Match[str], _options: Sequence[int]) -> int | None:
    factor = _UNITS.get((stem.group(1), stem.group(3)))
    return None if factor is None else factor[0] * int(stem.group(2))


_FAMILIES = [
    _Family(
        re.compile(r"What is the value of (\d+[-+*]\d+[-+*]\d+)\?"),
        _make_expression,
        lambda stem, _options: _value(stem.group(1)),
    ),
    _Family(
        re.compile(r"What is the greatest common divisor of (\d+) and (\d+)\?"),
        _make_gcd,
        lambda stem, _options: math.gcd(int(stem.group(1)), int(stem.group(2))),
    ),
    _Family(
        re.compile(r"What is the remainder when (\d+) is divided by (\d+)\?"),
        _make_remainder,
        lambda stem, _options: int(stem.group(1)) % int(stem.group(2)) if int(stem.group(2)) else None,
    ),
    _Family(re.compile(r"Which of these numbers is prime\?"), _make_prime, _prime_option),
    _Family(
        re.compile(r"How many (\w+) are there in (\d+) (\w+)\?"),
        _make_units,
        _units_value,
    ),
]

# The four options after a stem, as the question lists them or as a vote appends them ("A. 12").
_OPTIONS = re.compile(
    r"(?<!\w)A[.)][ \t]*(-?\d+)\s+B[.)][ \t]*(-?\d+)\s+C[.)][ \t]*(-?\d+)\s+D[.)][ \t]*(-?\d+)(?!\w)"
)


def multiple_choice(n: int, seed: int = 0) -> list[Question]:
    """`n` distinct four-option questions; the answer is the right option's letter."""
    rng = random.Random(f"choice/{seed}")

    def draw() -> tuple[tuple[str, int], tuple[str, list[int], int]]:
        stem, right, wrong = rng.choice(_FAMILIES).make(rng)
        options = [*_distractors(rng, right, wrong), right]
        rng.shuffle(options)
        return (stem, right), (stem, options, options.index(right))

    questions = []
    for i, (stem, options, position) in enumerate(_distinct(draw, n), 1):
        listed = "\n".join(f"{letter}. {value}" for letter, value in zip(_LETTERS, options, strict=True))
        questions.append(
            Question(
                id=f"choice-{i:04d}",
                question=f"{stem}\n{listed}",
                answer=_LETTERS[position],
                choices=[str(value) for value in options],
            )
        )
    return questions


def _distractors(rng: random.Random, right: int, wrong: list[int]) -> list[int]:
    """Three distinct wrong values, drawn from the plausible ones; the next integers when too few are."""
    candidates = [w for w in dict.fromkeys(wrong) if w != right]
    chosen = rng.sample(candidates, min(3, len(candidates)))
    step = 1
    while len(chosen) < 3:
        if right + step not in chosen:
            chosen.append(right + step)
        step += 1
    return chosen


_Item = TypeVar("_Item")


def _distinct(draw: Callable[[], tuple[Hashable, _Item]], n: int) -> list[_Item]:
    """`n` draws whose keys differ: a dataset never asks the same thing twice."""
    seen: set[Hashable] = set()
    out: list[_Item] = []
    misses = 0
    while len(out) < n:
        key, item = draw()
        if key in seen:
            misses += 1
            if misses > 1000 + 10 * n:
                raise ValueError(f"cannot generate {n} distinct questions of this kind")
            continue
        seen.add(key)
        out.append(item)
    return out


GENERATORS: dict[str, Callable[[int, int], list[Question]]] = {
    "arithmetic": arithmetic,
    "choice": multiple_choice,
}


# --------------------------------------------------------------------------- solving


@dataclass(frozen=True)
class Solution:
    """A generated question found in a text: its right answer and the mistake made on it (the
    arithmetic worked left to right, forgetting precedence; the wrong option nearest the right one).

    `question` is its canonical text (the same wherever and however it is embedded); `letters`
    are a multiple-choice question's option letters, "" when the answer is a number.
    """

    question: str
    answer: str
    mistake: str
    letters: str = ""

    def wrong_answer(self, rng: random.Random) -> str:
        """A wrong answer drawn with `rng`: another letter, or the number off by 1 to 20."""
        if self.letters:
            return rng.choice([letter for letter in self.letters if letter != self.answer])
        return str(int(self.answer) + rng.choice((-1, 1)) * rng.randint(1, 20))


def solve(text: str) -> Solution | None:
    """The first generated question in `text`, solved; None when it holds none."""
    found: list[tuple[re.Match[str], _Family | None]] = []
    if stem := _ARITHMETIC_STEM.search(text):
        found.append((stem, None))
    for family in _FAMILIES:
        if stem := family.stem.search(text):
            found.append((stem, family))
    for match, kind in sorted(found, key=lambda item: item[0].start()):
        solution = _solve_arithmetic(match) if kind is None else _solve_choice(text, match, kind)
        if solution is not None:
            return solution
    return None


def _solve_arithmetic(stem: re.Match[str]) -> Solution:
    right = _value(stem.group(1))
    mistake = _left_to_right(stem.group(1))
    return Solution(stem.group(0), str(right), str(mistake if mistake != right else right + 1))


def _solve_choice(text: str, stem: re.Match[str], family: _Family) -> Solution | None:
    listed = _OPTIONS.search(text, stem.end())
    if listed is None:
        return None
    options = [int(value) for value in listed.groups()]
    right = family.right(stem, options)
    if right is None or options.count(right) != 1:
        return None
    index = options.index(right)
    # The wrong option nearest the right one: the mistake that looks most like the answer.
    nearest = min((i for i in range(len(options)) if i != index), key=lambda i: (abs(options[i] - right), i))
    canonical = "\n".join(
        [stem.group(0), *(f"{letter}. {value}" for letter, value in zip(_LETTERS, options, strict=True))]
    )
    return Solution(canonical, _LETTERS[index], _LETTERS[nearest], _LETTERS)
