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
- `number`: the answer's number, once the confidence is removed: the last one given as a
  result ("= 8", "the answer is 8"), else the first one it holds, so "8 legs", "It has 8." and
  "3 + 5 = 8" agree; else a number written in words and nothing else ("Eight.", "forty-two");
  an answer without a number has no vote;
- `choice`: the letter of the option chosen, in capitals: "B", "(b)", "Answer: B", "B. Paris",
  "The answer is (B)"; with the options given, an answer that is one option's text alone
  ("Paris") is that option's letter, and a letter beyond the options is no vote. An option held
  by reference (longer than `moot.texts.INLINE_MAX`) is matched by its letter only;
- `yes_no`: "yes" or "no", by how the answer starts: "Yes.", "Yes, because ...", "Correct",
  "True" are yes; "No", "Nope", "False", "Not really", "Definitely not" are no; "Maybe",
  "It depends" and "Yes and no" are no vote.
An answer's lead-in ("Answer:", "The final answer is", "I'd go with") is not part of it
(`without_lead`) for the last three formats; `free` keeps it, as the consortium has always
compared its members' answers.

A long answer held by reference (`moot.texts.TextRef`: pure code never sees its text) is compared
by its exact text, its SHA-256. Agreement is equality of keys, nothing fuzzier: "2 of 3 members
agree" must be true as read.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from moot.requests import AnswerFormat
from moot.texts import Text, TextRef

Format = AnswerFormat  # `moot.requests.VoteRequest.answer_format`
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


# What introduces an answer without being part of it: "Answer:", "**Final answer:**", "The
# correct option is", "So the answer would be", "I'd go with".
_LEAD = re.compile(
    r"^[\W_]*(?:(?:so|thus|therefore|hence|overall|in\s+conclusion)\b[\s,:]*)?"
    r"(?:(?:(?:the|my|our|final|correct|right|best|short)\s+)*(?:answer|choice|option|verdict)\b"
    r"(?:\s+(?:is|would\s+be|will\s+be))?"
    r"|i\s+(?:think|believe|would\s+say|say|choose|pick|select|go\s+with)\b"
    r"|i['\u2019]d\s+(?:say|choose|pick|select|go\s+with)\b)"
    r"[\s:=*_\-\u2013\u2014]*",
    re.IGNORECASE,
)
# A list bullet, a heading's or a quote's mark before an answer.
_BULLET = re.compile(r"^(?:[#>\u2022*]+|-\s)+\s*")


def without_lead(text: str) -> str:
    """`text` without what introduces it ("Answer:", "The final answer is: I'd say"), if anything does."""
    text = text.strip()
    while (bare := _LEAD.sub("", text, count=1).strip()) != text:
        text = bare
    return text


def _body(text: str) -> str:
    """The answer alone: no stated confidence, no lead-in, no emphasis or quotes, no bullet."""
    return _BULLET.sub("", _DECORATION.sub("", without_lead(answer_text(text)))).strip()


# A number given as a result ("= 8", "the answer is 8", "Answer: $8"), rather than one worked with.
_RESULT_NUMBER = re.compile(rf"(?:=|\b(?i:answer)\b(?:\s+is)?\s*:?)\s*\$?\s*({_NUMBER.pattern})")
_UNITS = {
    word: value
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
        " fifteen sixteen seventeen eighteen nineteen".split()
    )
}
_TENS = {
    word: 10 * value
    for value, word in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)
}
_SCALES = {"thousand": 1_000, "million": 1_000_000, "billion": 1_000_000_000}


def _number_in_words(text: str) -> float | None:
    """A number written in words and nothing else ("eight", "Forty-two.", "one hundred and five")."""
    words = [w for w in re.sub(r"[^\w\s]", " ", text.casefold().replace("-", " ")).split() if w != "and"]
    if not words:
        return None
    total = current = 0
    for word in words:
        if word in _UNITS:
            current += _UNITS[word]
        elif word in _TENS:
            current += _TENS[word]
        elif word == "hundred":
            current = (current or 1) * 100
        elif word in _SCALES:
            total, current = total + (current or 1) * _SCALES[word], 0
        else:
            return None
    return float(total + current)


def numbers_in(text: str) -> list[float]:
    """Every number written in digits in `text` without its stated confidence, in order."""
    found = (_as_number(m.group(0)) for m in _NUMBER.finditer(_DECORATION.sub("", answer_text(text))))
    return [n for n in found if n is not None]


def _number_key(text: str) -> Key | None:
    body = _DECORATION.sub("", answer_text(text))
    if results := _RESULT_NUMBER.findall(body):
        return _as_number(results[-1])
    if m := _NUMBER.search(body):
        return _as_number(m.group(0))
    return _number_in_words(_body(text))


# "B", "(b)", "b.", "[C]": a letter alone.
_LETTER_ALONE = re.compile(r"[(\[]?([A-Za-z])[)\]]?[.:)]?")
# A letter, then its option or a word about it: "B. Paris", "(b) Paris", "C) the third", "D - none",
# "B is correct", "a. Paris". A capital alone before a word is not one: "A city in France".
_LETTER_FIRST = re.compile(
    r"(?:[(\[]([A-Za-z])[)\]]|([A-Z])\s*[.:)\-\u2013\u2014]|([A-Z])\s+is\b|([a-z])[.)])(?:\s|$)"
)
# A letter named anywhere: "the answer is (B)", "option C", "I choose answer D", "\boxed{B}".
_LETTER_NAMED = re.compile(
    r"\b(?i:answer|option|choice|letter)\b(?:\s+(?:is|would\s+be))?\s*:?\s*"
    r"(?:[(\[]([A-Za-z])[)\]]|([A-Z])\b(?![\'\u2019]\w))"
    r"|\\boxed\{\s*([A-Za-z])\s*\}"
)


def _letter(body: str, whole: str, introduced: bool) -> str | None:
    """The option letter `body` (the answer alone) starts with, or the last one `whole` names.

    After a lead-in ("Answer:", "I choose") a capital starting the answer is its letter: "I choose
    B because ...".
    """
    found = _LETTER_ALONE.fullmatch(body) or _LETTER_FIRST.match(body)
    if found is None and introduced:
        found = re.match(r"([A-Z])\b(?![\'\u2019]\w)", body)
    if found:
        return next(g for g in found.groups() if g)
    named = [
        m
        for m in _LETTER_NAMED.finditer(whole)
        # "The answer: I think B", "answer A city": a pronoun or an article, not a letter.
        if not (m.group(2) in {"A", "I"} and re.match(r"\s+[a-z]", whole[m.end() :]))
    ]
    return next(g for g in named[-1].groups() if g) if named else None


def _choice_key(text: str, choices: Sequence[Text]) -> Key | None:
    letters = string.ascii_uppercase[: len(choices)] if choices else string.ascii_uppercase
    body, answer = _body(text), answer_text(text)
    letter = _letter(body, _DECORATION.sub("", answer), without_lead(answer) != answer.strip())
    if letter is None and body:
        said = _free_key(body)
        chosen = [
            i for i, option in enumerate(choices) if isinstance(option, str) and _free_key(option) == said
        ]
        letter = letters[chosen[0]] if len(chosen) == 1 else None
    return letter.upper() if letter is not None and letter.upper() in letters else None


# How an answer to a yes/no question starts, hedged or not ("Probably not", "I'd say yes").
_HEDGE = r"(?:(?:probably|likely|most\s+likely|surely|i\s+think|i\s+believe|i\s+would\s+say|i['\u2019]d\s+say)[\s,]+)?"
_BOTH = re.compile(r"^(?:yes|no)(?:\W*\s(?:and|or|but)\s\W*|\s*/\s*)(?:yes|no)\b", re.IGNORECASE)
_NO = re.compile(
    rf"^{_HEDGE}(?:no(?!\s+(?:doubt|question)\b)|nope|nah|false|incorrect|negative|no\s+way"
    r"|not\s+(?:really|at\s+all|quite|necessarily|exactly|true|correct|so)"
    r"|(?:absolutely|definitely|certainly|of\s+course|probably|likely|surely)\s+not"
    r"|i\s+(?:don['\u2019]?t|do\s+not)\s+think\s+so)\b",
    re.IGNORECASE,
)
_YES = re.compile(
    rf"^{_HEDGE}(?:yes|yeah|yep|yup|y|sure|true|correct|affirmative|absolutely|definitely|certainly"
    r"|indeed|of\s+course|no\s+doubt)\b",
    re.IGNORECASE,
)


def _yes_no_key(text: str) -> Key | None:
    body = _body(text)
    if _BOTH.match(body):
        return None
    if _NO.match(body):
        return "no"
    return "yes" if _YES.match(body) else None


_KEYS: dict[Format, Callable[[str], Key | None]] = {
    "free": _free_key,
    "number": _number_key,
    "yes_no": _yes_no_key,
}


def normalise(answer: Text | None, fmt: Format = "free", choices: Sequence[Text] = ()) -> Key | None:
    """What `answer` is compared by in format `fmt`; None when it holds no answer (then it has no vote).

    `choices` are the options of a `choice` answer ("A" is the first); without them any letter counts.
    """
    if isinstance(answer, TextRef):
        return answer if answer.chars else None
    if not answer:
        return None
    return _choice_key(answer, choices) if fmt == "choice" else _KEYS[fmt](answer)


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
