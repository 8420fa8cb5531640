"""Reading a vote: which line of a voter's reply is its answer, and what that answer counts as.

A voter is asked to end its reply with its answer alone on a last line, after "Answer:"
(`prompts`). Models reason before it, or (small ones especially) answer first and explain after,
or state a confidence nobody asked for. So the answer is read from, in this order: the last line
that introduces itself as the answer ("Answer: B", "**Final answer:** 8"), the last line, and
(except for numbers) the first line; the first of them that holds an answer in the vote's format
(`moot.protocols.agreement.normalise`, after its lead-in) is the vote. A number vote that finds
none there counts the reply's number when it holds exactly one ("8\\n\\nA spider has eight legs."):
a reply that works with several numbers and gives none as its answer has no vote, rather than
one taken from its working.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from moot.protocols import agreement
from moot.protocols.agreement import Format, Key
from moot.texts import Text

# A line that says it holds the answer: "Answer: 8", "**Final answer:** B", "The answer is yes."
_ANSWER_LINE = re.compile(
    r"^[\W_]*(?:(?:the|my|our|final|correct|right|best|short)\s+)*answer\b", re.IGNORECASE
)
# Markdown emphasis around an answer ("**Tokyo**"), or left of it by its lead-in ("**Answer:** Tokyo").
_EMPHASIS = re.compile(r"\*\*|__")


@dataclass(frozen=True)
class Reading:
    """A vote as read: what it counts as (`key`; None: it could not be read, and does not count)
    and the answer as written: the line it was read from, without its lead-in ("Answer:") and
    markdown emphasis."""

    key: Key | None
    answer: str


def read_vote(text: str, fmt: Format, choices: Sequence[Text] = ()) -> Reading:
    """The vote a reply casts in format `fmt` (`choices`: the options of a `choice` vote)."""
    lines = [line.strip() for line in agreement.answer_text(text).splitlines() if re.search(r"\w", line)]
    if not lines:
        return Reading(None, "")
    marked = [line for line in lines if _ANSWER_LINE.match(line)]
    candidates = [*marked[-1:], lines[-1], *([] if fmt == "number" else [lines[0]])]
    for line in dict.fromkeys(candidates):
        answer = _EMPHASIS.sub("", agreement.without_lead(line)).strip(" *")
        # The formats but `free` read past a lead-in themselves, and need to know there was one.
        if (key := agreement.normalise(answer if fmt == "free" else line, fmt, choices)) is not None:
            return Reading(key, answer)
    if fmt == "number" and len(numbers := set(agreement.numbers_in(text))) == 1:
        (number,) = numbers
        return Reading(number, key_text(number))
    return Reading(None, "")


def final_line(text: str) -> str:
    """The one line a final answer is read from when nothing else may be: the last line that
    introduces itself as the answer, else the last line (its stated confidence left out). Not a
    vote's leniency (its first line, or the reply's only number): an evaluation scores what a
    reply ends on (`moot.eval.scoring`)."""
    lines = [line.strip() for line in agreement.answer_text(text).splitlines() if re.search(r"\w", line)]
    marked = [line for line in lines if _ANSWER_LINE.match(line)]
    return (marked or lines or [""])[-1]


def key_text(key: Key) -> str:
    """A key as the tally shows it: a number without a needless ".0" ("8", "0.5"), else itself.

    A key is never a reference here: `read_vote` reads plain text.
    """
    if isinstance(key, float):
        return str(int(key)) if key.is_integer() and abs(key) < 1e15 else repr(key)
    if not isinstance(key, str):
        raise TypeError("a vote's key is read from plain text, never a reference")
    return key
