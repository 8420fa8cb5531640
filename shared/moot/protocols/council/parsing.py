"""Reading a reviewer's ranking: the letters after its `FINAL RANKING:` line, best first.

Reviewers are asked to end with the line `FINAL RANKING:` and a numbered list of the letters
they saw (`prompts.review_prompt`). Models keep to that loosely, so `parse_ranking` reads:
- the header in any case, with markdown around it or in it (`**Final Ranking:**`,
  `## FINAL RANKING`, `final_ranking -`); when it appears more than once (a reviewer that
  announces it, or an answer it quotes that holds one) the last one that names a letter shown
  counts, since the ranking is asked for at the end (of the last `_HEADERS_TRIED`);
- after it, numbered items (`1. Response C`, `1) C`, `2 - **b**`, `3. answer a: the weakest`),
  taken in the order of their numbers when those are all different, else in the order written;
  lines between them (a reason under an item) are skipped;
- without numbered items, items that are the letter alone (`C`, `- **B**`, `Response A.`) or
  letters in one line (`C > A > B`, `C, A, B`), also on the header's own line;
- without the header, a list that ends the review (nothing but blank lines after it) whose items
  are letters alone, numbered 1, 2, 3... in order, two at least: read as the ranking, with a
  problem saying so. A review that ends with numbered comments (`1. A is accurate`) is not read
  as a ranking: such a list follows the letters' order, not a judgement.
Within an item, the letter is the first word when it is a single letter (lower case too: `1. c`),
else the letter after "Response" or "Answer", else the first capital letter standing alone that
was shown (`1. I think C`, `1. A close call, but C`: a leading "I" or "A" followed by a
lower-case word is the English word). A letter that was not shown is ignored, a repeated one keeps its first
place, and a ranking that leaves letters out is used as far as it goes; each is reported in
`problems`. A review without any letter shown is unreadable (`letters` empty).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

_HEADER = re.compile(r"final[\s_*-]*ranking[\s*_]*(?:[:\u2013\u2014-][\s*_]*)?", re.IGNORECASE)
# Markdown and quoting around an item: emphasis, code, headings, quotes, bullets.
_DECORATION = re.compile(r"[*_`#]+")
_BULLET = re.compile(r"^\s*(?:>\s*)*(?:[-+\u2022\u2013]\s+)?")
_NUMBERED = re.compile(r"^\s*\(?(\d{1,2})(?:\s*[.):\]-]\s*|\s+)(.*)$")
_NAMED = r"(?:(?:response|answer|option)[\s:]*)?"
# The item's first word when it is a single letter; lower case too ("1. c"), but not a word.
_LEAD = re.compile(rf"^{_NAMED}[(\[]?([a-z])[)\]]?(?![a-z0-9'\u2019])", re.IGNORECASE)
# What makes a leading "I" or "A" the English word: a lower-case word after it.
_WORD_AFTER = re.compile(r"\s+[a-z]")
_AFTER_NAME = re.compile(r"\b(?:response|answer)\s+([a-z])\b", re.IGNORECASE)
_CAPITAL = re.compile(r"\b([A-Z])\b")
# An item that is a letter alone: nothing after it but punctuation.
_ALONE = re.compile(rf"^{_NAMED}[(\[]?([a-z])[)\]]?[\s.,;:!]*$", re.IGNORECASE)
# What separates letters in one line, best first: "C > A > B", "C, A, B", "Response C, Response A".
_BETWEEN = re.compile(r"(?:\b(?:response|answer|option)\b|[\s,;/>.\u2192-])+", re.IGNORECASE)
# How many headers, the last ones, are tried: each reads the rest of the review, so a review that
# repeats the header thousands of times would take minutes to read (measured: 10,000 took 215 s).
_HEADERS_TRIED = 4
# More numbered items on the header's own line: "FINAL RANKING: 1. C 2. A 3. B".
_NEXT_NUMBER = re.compile(r"(?<=\s)(?=\d{1,2}[.)]\s)")


@dataclass(frozen=True)
class ReadRanking:
    """A reviewer's ranking as read: letters shown to it, best first, each once; what went wrong."""

    letters: list[str]
    problems: list[str] = field(default_factory=list)

    @property
    def readable(self) -> bool:
        return bool(self.letters)


@dataclass(frozen=True)
class _Item:
    number: int | None  # as written; None for an item without a number
    letter: str | None  # upper case; None when the item names no letter at all


def parse_ranking(text: str, shown: Sequence[str]) -> ReadRanking:
    """The ranking in a review of the answers under `shown` letters. Never raises."""
    shown = [s.upper() for s in shown]
    text = text or ""
    headers = list(_HEADER.finditer(text))
    for header in reversed(headers[-_HEADERS_TRIED:]):
        items = _section_items(text[header.end() :], shown)
        if any(item.letter in shown for item in items):
            return _ranking(items, shown, [])
    if headers:
        return ReadRanking([], [f"FINAL RANKING names none of the letters shown ({', '.join(shown)})"])
    closing = _closing_list(text, shown)
    if closing is None:
        return ReadRanking([], ["no FINAL RANKING line, and no numbered list of letters at the end"])
    return _ranking(
        closing, shown, ["no FINAL RANKING line: read the numbered list of letters that ends the review"]
    )


def _section_items(section: str, shown: list[str]) -> list[_Item]:
    """The items after a header: numbered ones if there are any, else letters alone or in a line."""
    first, _, rest = section.partition("\n")
    lines = [*_NEXT_NUMBER.split(first), *rest.splitlines()]
    numbered: list[_Item] = []
    unnumbered: list[_Item] = []
    for line in lines:
        clean = _clean(line)
        if not clean:
            continue
        if (m := _NUMBERED.match(clean)) is not None:
            numbered.append(_Item(int(m.group(1)), _item_letter(m.group(2), shown)))
        elif (m := _ALONE.match(clean)) is not None:
            unnumbered.append(_Item(None, m.group(1).upper()))
        elif len(letters := _letters_in_a_line(clean)) > 1:
            unnumbered += [_Item(None, letter) for letter in letters]
    if not numbered:
        return unnumbered
    numbers = [item.number for item in numbered]
    if len(set(numbers)) == len(numbers):
        numbered.sort(key=lambda item: item.number or 0)
    return numbered


def _closing_list(text: str, shown: list[str]) -> list[_Item] | None:
    """The numbered list of letters alone that ends `text`, numbered 1, 2, ...; None when it has none."""
    items: list[_Item] = []
    for line in reversed(text.splitlines()):
        clean = _clean(line)
        if not clean:
            continue
        m = _NUMBERED.match(clean)
        alone = _ALONE.match(m.group(2)) if m is not None else None
        if m is None or alone is None:
            break
        items.append(_Item(int(m.group(1)), alone.group(1).upper()))
    items.reverse()
    if len(items) < 2 or [item.number for item in items] != list(range(1, len(items) + 1)):
        return None
    return items if any(item.letter in shown for item in items) else None


def _letters_in_a_line(line: str) -> list[str]:
    """The letters of a line that holds letters alone, between separators; [] for any other line."""
    words = [w for w in _BETWEEN.split(line) if w]
    return [w.upper() for w in words] if all(len(w) == 1 and w.isalpha() for w in words) else []


def _clean(line: str) -> str:
    return _DECORATION.sub("", _BULLET.sub("", line)).strip()


def _item_letter(item: str, shown: list[str]) -> str | None:
    """The letter an item names (see the module's docstring), upper case; None if it names none."""
    lead = _LEAD.match(item)
    if lead is not None and lead.group(1) in "IiAa" and _WORD_AFTER.match(item, lead.end()):
        lead = None  # "I think C", "A close call, but C": the English word, not a letter
    if lead is not None and lead.group(1).upper() in shown:
        return lead.group(1).upper()
    named = _AFTER_NAME.search(item)
    if named is not None and named.group(1).upper() in shown:
        return named.group(1).upper()
    capital = next(
        (
            m.group(1)
            for m in _CAPITAL.finditer(item)
            if m.group(1) in shown and not (m.group(1) in "IA" and _WORD_AFTER.match(item, m.end()))
        ),
        None,
    )
    if capital is not None:
        return capital
    return lead.group(1).upper() if lead is not None else None


def _ranking(items: list[_Item], shown: list[str], problems: list[str]) -> ReadRanking:
    letters: list[str] = []
    not_shown: list[str] = []
    repeated: list[str] = []
    for item in items:
        if item.letter is None:
            continue
        if item.letter not in shown:
            not_shown += [item.letter] if item.letter not in not_shown else []
        elif item.letter in letters:
            repeated += [item.letter] if item.letter not in repeated else []
        else:
            letters.append(item.letter)
    if not_shown:
        problems.append(f"ignored {', '.join(not_shown)}: not among the letters shown")
    if repeated:
        problems.append(f"{', '.join(repeated)} ranked more than once: the first place kept")
    if missing := [s for s in shown if s not in letters]:
        problems.append(f"partial ranking: {', '.join(missing)} not ranked")
    return ReadRanking(letters, problems)
