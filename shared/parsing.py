"""Reading what models write: the arbiter's tagged answer and a member's stated confidence.

Models, small ones especially, break the format in every way: tags missing, reordered, left
open, wrapped in code fences, confidence as a percentage. The parser recovers what it reasonably
can and says what it could not, instead of quietly defaulting.
"""

from __future__ import annotations

import re

from moot.messages import ArbiterVerdict

ARBITER_TAGS = ("synthesis", "confidence", "analysis", "dissent", "needs_iteration", "refinement_areas")
MANDATORY_TAGS = ("synthesis", "confidence", "needs_iteration")

_FENCE_RE = re.compile(r"```[a-zA-Z]*\n?|```")
_NUMBER_RE = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?|\.\d+)\s*(%?)")
_ANY_TAG_RE = re.compile(r"</?[A-Za-z_][\w-]*(?:\s[^<>]*)?/?>")
_AREA_RE = re.compile(r"<area\b[^>]*>(.*?)(?:</area>|(?=<area\b)|$)", re.IGNORECASE | re.DOTALL)


def _open_re(tag: str) -> re.Pattern[str]:
    return re.compile(rf"<\s*{tag}\b[^>]*>", re.IGNORECASE)


def _close_re(tag: str) -> re.Pattern[str]:
    return re.compile(rf"<\s*/\s*{tag}\s*>", re.IGNORECASE)


_OPEN = {t: _open_re(t) for t in ARBITER_TAGS}
_CLOSE = {t: _close_re(t) for t in ARBITER_TAGS}


def _extract(text: str, tag: str) -> tuple[str | None, bool]:
    """Content of the first `<tag>`; (None, False) when absent; (content, True) when left open.

    An unclosed tag runs to the next arbiter tag that opens after it, or to the end.
    """
    m = _OPEN[tag].search(text)
    if not m:
        return None, False
    start = m.end()
    close = _CLOSE[tag].search(text, start)
    next_opens = [o.start() for t in ARBITER_TAGS if t != tag if (o := _OPEN[t].search(text, start))]
    if close and (not next_opens or close.start() <= min(next_opens) or tag == "refinement_areas"):
        return text[start : close.start()].strip(), False
    end = min(next_opens) if next_opens else len(text)
    return text[start:end].strip(), True


def parse_confidence_value(raw: str) -> float | None:
    """A confidence in [0, 1] from `0.85`, `85%`, `85`, `8.5/10`; None when there is no such number."""
    m = _NUMBER_RE.search(raw)
    if not m:
        return None
    value = float(m.group(1))
    rest = raw[m.end() :].lstrip()
    if rest.startswith("/10") and not rest.startswith("/100"):
        value /= 10
    elif m.group(2) == "%" or 1 < value <= 100:
        value /= 100
    return value if 0.0 <= value <= 1.0 else None


def _parse_bool(raw: str) -> bool | None:
    word = raw.strip().strip(".!").lower()
    first = word.split()[0] if word.split() else ""
    if first in {"true", "yes", "y", "1"}:
        return True
    if first in {"false", "no", "n", "0"}:
        return False
    return None


def _strip_tags(text: str) -> str:
    return re.sub(r"\n{3,}", "\n\n", _ANY_TAG_RE.sub("", text)).strip()


def parse_arbiter(text: str) -> ArbiterVerdict:
    """Parse the arbiter's answer. Never raises; what is missing or unreadable is in `problems`."""
    problems: list[str] = []
    malformed = False
    body = _FENCE_RE.sub("", text or "").strip()
    if not body:
        return ArbiterVerdict(malformed=True, problems=["empty answer"])

    fields: dict[str, str | None] = {}
    for tag in ARBITER_TAGS:
        content, unclosed = _extract(body, tag)
        fields[tag] = content
        if content is None:
            problems.append(f"missing <{tag}>")
            malformed = malformed or tag in MANDATORY_TAGS
        elif unclosed:
            problems.append(f"unclosed <{tag}>")
            malformed = True

    synthesis = fields["synthesis"]
    if synthesis is None:
        # Better an answer the user can read than none: the whole reply, tags removed.
        synthesis = _strip_tags(body)
        problems.append("no <synthesis>: the whole answer is used as the synthesis")
    else:
        synthesis = _strip_tags(synthesis) if _ANY_TAG_RE.search(synthesis) else synthesis

    confidence: float | None = None
    if fields["confidence"] is not None:
        confidence = parse_confidence_value(fields["confidence"])
        if confidence is None:
            problems.append(f"unreadable confidence {fields['confidence'][:40]!r}")
            malformed = True
    else:
        # Small models often write "Confidence: 0.7" in prose instead of the tag.
        confidence = extract_member_confidence(body)
        if confidence is not None:
            problems.append("confidence read from prose, not from <confidence>")

    needs_iteration: bool | None = None
    if fields["needs_iteration"] is not None:
        needs_iteration = _parse_bool(fields["needs_iteration"])
        if needs_iteration is None:
            problems.append(f"unreadable needs_iteration {fields['needs_iteration'][:40]!r}")
            malformed = True

    areas: list[str] = []
    raw_areas = fields["refinement_areas"]
    if raw_areas:
        areas = [_strip_tags(a).strip() for a in _AREA_RE.findall(raw_areas)]
        if not any(areas):
            areas = [line.strip().lstrip("-*•0123456789.) ").strip() for line in raw_areas.splitlines()]
        areas = [a for a in areas if a]

    return ArbiterVerdict(
        synthesis=synthesis,
        confidence=confidence,
        analysis=_strip_tags(fields["analysis"] or ""),
        dissent=_strip_tags(fields["dissent"] or ""),
        needs_iteration=needs_iteration,
        refinement_areas=areas,
        malformed=malformed,
        problems=problems,
    )


_MEMBER_CONF_TAG = re.compile(r"<confidence>\s*([^<]*?)\s*</confidence>", re.IGNORECASE)
_MEMBER_CONF_PROSE = re.compile(
    r"confidence(?:\s+level)?\s*(?:is|of)?\s*[:=]?\s*\**\s*([\d.]+\s*%?(?:/10)?)", re.I
)


def extract_member_confidence(text: str) -> float | None:
    """The confidence a member states about its own answer, if it states one."""
    if not text:
        return None
    m = _MEMBER_CONF_TAG.search(text) or _MEMBER_CONF_PROSE.search(text)
    return parse_confidence_value(m.group(1)) if m else None
