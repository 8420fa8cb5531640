"""Which answer several models agree on: normalising answers and counting the agreeing ones.

Pure, no I/O. The consortium falls back on it when its arbiter's synthesis cannot be read
(`moot.protocols.consortium.machine`): the run's answer is then the one most members gave. A
vote protocol counts ballots with the same normalisation.

Two answers agree when their normalised forms (`normalise`) are equal. What is compared depends
on the answer's format:
- `free`: the text without what is not the answer (a trailing "Confidence: 0.6" line or
  `<confidence>` tag, markdown emphasis), in lower case, without punctuation, with single
  spaces; an answer that is essentially a number ("8", "8.0", "**1,000**.") is compared as that
  number, so "8" and "8.0" agree;
- `number`: the answer's number (the first one it holds, once the confidence is removed), so
  "8 legs" and "It has 8." agree; an answer without a number has no vote.
Other formats (a choice among options, yes/no) fit the same contract: a function from an answer
to its key in `_KEYS`, None when the answer holds none.

A long answer held by reference (`moot.texts.TextRef`: pure code never sees its text) is compared
by its exact text, its SHA-256. Agreement is equality of keys, nothing fuzzier: "2 of 3 members
agree" must be true as read.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from moot.texts import Text, TextRef

Format = Literal["free", "number"]
Key = str | float | TextRef

# A line that states a confidence and nothing else ("Confidence: 0.6", "(My confidence is 80%)",
# "0.6 (confidence)"), a "Confidence: 0.6" at the end of the answer's last line, or a
# <confidence> tag: what members are asked to end with, not part of their answer.
_CONFIDENCE_LINE = re.compile(
    r"^\W*(?:(?:my\s+)?confidence(?:\s+level)?(?:\s+is|\s+of)?\s*[:=]?\s*\**\s*[\d.]+\s*%?"
    r"|[\d.]+\s*%?\s*\(?\s*confidence)\W*$",
    re.IGNORECASE,
)
_CONFIDENCE_AT_END = re.compile(r"[\s(]*\bconfidence\s*[:=]\s*\**\s*[\d.]+\s*%?\W*$", re.IGNORECASE)
_CONFIDENCE_TAG = re.compile(r"<\s*confidence\b[^>]*>.*?<\s*/\s*confidence\s*>", re.IGNORECASE | re.DOTALL)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")
# Markdown emphasis and quotes around an answer, which say nothing about it.
_DECORATION = re.compile(r"[*_`\"'\u201c\u201d\u2018\u2019]")  # also typographic quotes


def answer_text(text: str) -> str:
    """The answer without the confidence its author stated about it (a trailing line, or a tag)."""
    lines = _CONFIDENCE_TAG.sub("", text).strip().splitlines()
    while lines and (not lines[-1].strip() or _CONFIDENCE_LINE.match(lines[-1].strip())):
        lines.pop()
    return _CONFIDENCE_AT_END.sub("", "\n".join(lines)).strip()


def _as_number(token: str) -> float | None:
    try:
        return float(token.replace(",", ""))
    except ValueError:
        return None


def _free_key(text: str) -> Key | None:
    body = _DECORATION.sub("", answer_text(text)).strip()
    whole = _NUMBER.fullmatch(body.rstrip(".!").strip())
    if whole and (number := _as_number(whole.group(0))) is not None:
        return number
    # NFKC first: full-width letters and ligatures compare as their plain forms.
    words = re.sub(r"[\W_]+", " ", unicodedata.normalize("NFKC", body).casefold()).split()
    return " ".join(words) or None


def _number_key(text: str) -> Key | None:
    m = _NUMBER.search(_DECORATION.sub("", answer_text(text)))
    return _as_number(m.group(0)) if m else None


_KEYS: dict[Format, Callable[[str], Key | None]] = {"free": _free_key, "number": _number_key}


def normalise(answer: Text | None, fmt: Format = "free") -> Key | None:
    """What `answer` is compared by in format `fmt`; None when it holds no answer (then it has no vote)."""
    if isinstance(answer, TextRef):
        return answer if answer.chars else None
    return _KEYS[fmt](answer) if answer else None


@dataclass(frozen=True)
class Agreement:
    """The most agreed answer: `index` of the answer that stands for it (the first of its group),
    its `text` (without its stated confidence, unless a reference), and how many of the `counted`
    answers gave it."""

    index: int
    text: Text
    count: int
    counted: int
    key: Key

    @property
    def unanimous(self) -> bool:
        return self.count == self.counted


def most_agreed(
    answers: Sequence[Text | None], confidences: Sequence[float | None] = (), fmt: Format = "free"
) -> Agreement | None:
    """The answer most of `answers` agree on; None when none of them holds an answer.

    `confidences[i]` is what answer i's author stated (None: not stated). Among answers given
    equally often, the one whose group holds the highest stated confidence wins (a stated one
    beats none), then the one given first.
    """
    groups: dict[Key, list[int]] = {}
    for index, answer in enumerate(answers):
        key = normalise(answer, fmt)
        if key is not None:
            groups.setdefault(key, []).append(index)
    if not groups:
        return None

    def confidence(index: int) -> float:
        stated = confidences[index] if index < len(confidences) else None
        return stated if stated is not None else -1.0

    def rank(group: list[int]) -> tuple[int, float, int]:
        return (len(group), max(confidence(i) for i in group), -group[0])

    key, group = max(groups.items(), key=lambda item: rank(item[1]))
    first = group[0]
    chosen = answers[first]
    return Agreement(
        index=first,
        text=answer_text(chosen) if isinstance(chosen, str) else (chosen or ""),
        count=len(group),
        counted=sum(len(g) for g in groups.values()),
        key=key,
    )
