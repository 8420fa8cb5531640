"""Reading the judge's and the debaters' answers: CONTINUE or STOP, and CONVINCED by whom.

Both parsers never raise and read tolerantly (small models rarely keep to the format); what
they cannot read is reported to the state machine, which records it and goes on. They read the
answer itself (`decide()` is given `event.text` as a string).

A reason that quotes model text goes into fields that are not texts by reference: the round's
`decision_reason`, the judge decision's `reason`, and the run's `reason` (`run.completed`,
`debate.completed`, the runs table), which quotes the judge's. So it is shortened (`shorten`: at
most `REASON_MAX` characters, an ellipsis where it was cut); the judge's whole answer stays
available as a text (`judge_decision.raw`, the judge call's `text`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from moot.protocols.debate.machine import Debater


REASON_MAX = 300


def shorten(text: str, limit: int = REASON_MAX) -> str:
    """`text`, or its first `limit` characters ending in an ellipsis when it is longer."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


_DECISION_WORD = re.compile(r"\b(CONTINUE|STOP)\b", re.IGNORECASE)
# What small models write instead of the word: "The debate continues.", "Stopping here.", "The
# debate is over.", "The debate has concluded." (SmolLM2-135M, tests/unit/test_local_model_parsing.py).
_DECISION_FORM = re.compile(
    r"\b(?:(?P<go>continu(?:es|ed|ing))|(?P<stop>stop(?:s|ped|ping)|(?:is|are|be)\s+over|"
    r"(?:has|have|is|be)\s+(?:now\s+)?(?:ended|concluded|finished)|conclude[sd]?|halt(?:s|ed)?))\b",
    re.IGNORECASE,
)
# A negation just before the word turns it around: "should not continue" is a STOP.
_NEGATED = re.compile(r"(?:\b(?:not|no|never|cannot)|n't)\W+(?:\w+\W+){0,2}$", re.IGNORECASE)


def _decision(text: str, pattern: re.Pattern[str]) -> tuple[Literal["CONTINUE", "STOP"], int | None] | None:
    """The decision `pattern` finds in `text`, and where its reason starts (None: the whole text is it)."""
    m = pattern.search(text)
    if m is None:
        return None
    stop = (m.group(1) or "").upper() == "STOP" if pattern is _DECISION_WORD else m.group("stop") is not None
    if _NEGATED.search(text[: m.start()][-40:]):
        return ("CONTINUE" if stop else "STOP"), None
    return ("STOP" if stop else "CONTINUE"), m.end() if pattern is _DECISION_WORD else None


def parse_judge_answer(text: str) -> tuple[Literal["CONTINUE", "STOP"] | None, str]:
    """The judge's decision word and its reason; (None, text) when it wrote none.

    In this order: CONTINUE or STOP (a whole word, any case) on the first non-empty line; one of
    their forms there ("The debate continues.", "is over", "concluded"); the word anywhere (a
    form further down is too weak a sign: rambling small models say "continue" in passing). A
    negation just before it turns it around ("should not continue": STOP).
    """
    stripped = (text or "").strip()
    first_line, _, more = stripped.partition("\n")
    for where, pattern in (
        (first_line, _DECISION_WORD),
        (first_line, _DECISION_FORM),
        (stripped, _DECISION_WORD),
    ):
        found = _decision(where, pattern)
        if found is None:
            continue
        word, end = found
        if end is None:  # a sentence, not the word alone: all of it is the reason
            return word, stripped
        rest = where[end:] + ("\n" + more if where is first_line else "")
        reason = rest.strip().lstrip("*-\u2013\u2014:.) ").strip()
        return word, reason or stripped
    return None, stripped


_CONVINCED_BY = re.compile(r"debater\s*#?\s*(\d+)", re.IGNORECASE)


def parse_conviction(text: str, others: list[Debater]) -> tuple[bool, int | None]:
    """Whether the answer concedes (first line starts with CONVINCED) and to whom, if it says."""
    first_line = next((line for line in (text or "").splitlines() if line.strip()), "")
    line = first_line.strip().lstrip("*_#>` ").strip()
    if not line.upper().startswith("CONVINCED"):
        return False, None  # NOT CONVINCED, or anything else
    named = line[len("CONVINCED") :].lstrip(" *_:-\u2013\u2014").lower()
    if not named:
        return True, None
    by_label = [d for d in others if d.label.lower() in named]
    if by_label:
        return True, max(by_label, key=lambda d: len(d.label)).number
    if (m := _CONVINCED_BY.search(named)) and int(m.group(1)) in {d.number for d in others}:
        return True, int(m.group(1))
    by_model = [d for d in others if d.model.lower() in named]
    if len({d.model for d in by_model}) == 1 and len(by_model) == 1:
        return True, by_model[0].number
    return True, None
