"""Reading what models write: the arbiter's tagged answer and a member's stated confidence.

Models, small ones especially, break the format in every way: tags missing, reordered, left
open, closed but never opened, wrapped in code fences, tags copied from the prompt nested in the
answer, confidence as a percentage, in prose, or as a bare number on a line of its own. The
parser recovers what it reasonably can and says what it could not, instead of quietly
defaulting. `tests/unit/test_local_model_parsing.py` holds answers of SmolLM2-135M (the local
model), which breaks the format in most of these ways.
"""

from __future__ import annotations

import re

from moot.protocols.consortium import prompts
from moot.views import ArbiterVerdict

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


# Where an unopened tag's content can start: after an arbiter tag, or after a tag of the prompt
# (`<answer>`, `<iteration>`) that small models copy into their reply.
_BOUNDARY_TAG_RE = re.compile(
    rf"<\s*/?\s*(?:{'|'.join((*ARBITER_TAGS, 'answer', 'iteration'))})\b[^>]*>", re.IGNORECASE
)


def _extract(text: str, tag: str) -> tuple[str | None, str]:
    """Content of the first `<tag>` and how it was found: "ok", "unclosed", "unopened"; (None, "") when absent.

    An unclosed tag runs to the next arbiter tag that opens after it, or to the end. A closing
    tag without its opening one (small models often start right with the content) takes what
    comes before it, from the last tag before it (an arbiter tag, or one copied from the prompt) or
    from the start.
    """
    m = _OPEN[tag].search(text)
    if not m:
        close = _CLOSE[tag].search(text)
        if close is None:
            return None, ""
        before = [b.end() for b in _BOUNDARY_TAG_RE.finditer(text, 0, close.start())]
        content = text[(before[-1] if before else 0) : close.start()].strip()
        return (content, "unopened") if content else (None, "")
    start = m.end()
    close = _CLOSE[tag].search(text, start)
    next_opens = [o.start() for t in ARBITER_TAGS if t != tag if (o := _OPEN[t].search(text, start))]
    if close and (not next_opens or close.start() <= min(next_opens) or tag == "refinement_areas"):
        return text[start : close.start()].strip(), "ok"
    end = min(next_opens) if next_opens else len(text)
    return text[start:end].strip(), "unclosed"


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


_OTHER_FIELDS_RE = re.compile(
    rf"<\s*({'|'.join(t for t in ARBITER_TAGS if t != 'synthesis')})\b[^>]*>.*?<\s*/\s*\1\s*>",
    re.IGNORECASE | re.DOTALL,
)
# `<confidence:0.8>` or `<confidence=0.8>`: the number put into the tag.
_CONFIDENCE_IN_TAG = re.compile(r"<\s*confidence\s*[:=]\s*([\d.]+\s*%?)\s*>", re.IGNORECASE)
_BARE_NUMBER_LINE = re.compile(r"^[^\w.]*(0?\.\d+|1\.0+|\d{1,3}\s*%)\W*$", re.MULTILINE)


def _bare_confidence(text: str) -> float | None:
    """A confidence written as a number alone on a line (0.8, .8, 1.0, 80%), the last such line.

    Not a bare 0 or 1 (or "1."): those are more often list numbers than confidences.
    """
    found = _BARE_NUMBER_LINE.findall(_ANY_TAG_RE.sub("\n", text))
    return parse_confidence_value(found[-1]) if found else None


def _strip_tags(text: str) -> str:
    """`text` without tags. Removing one can join its neighbours into another (`<</b>/iteration>`
    leaves `</iteration>`); then no angle bracket is kept as one, so none can close a section of
    a later prompt that quotes the text (a synthesis, an area: `prompts.history_item`)."""
    text = _ANY_TAG_RE.sub("", text)
    if _ANY_TAG_RE.search(text):
        text = text.replace("<", "\u2039").replace(">", "\u203a")
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _template_placeholders(template: str) -> dict[str, str]:
    """Tag -> the text the prompt's reply template puts in it ("your combined best answer")."""
    return {
        m.group(1).lower(): " ".join(m.group(2).split()).lower()
        for m in re.finditer(r"<(\w+)>([^<]+)</\1>", template)
        if m.group(1).lower() in ARBITER_TAGS
    }


def _placeholders_copied(body: str) -> dict[str, str]:
    """Tag -> the `<tag>...</tag>` block of `body` that repeats the prompt's placeholder text.

    Small models copy the reply template: a copied `<confidence>a number from 0 to 1, e.g.
    0.7</confidence>` is the example's number, not the model's confidence.
    """
    placeholders = _template_placeholders(prompts.ARBITER_PROMPT)
    copied: dict[str, str] = {}
    for m in re.finditer(r"<\s*(\w+)\s*>([^<]*)<\s*/\s*\1\s*>", body):
        tag = m.group(1).lower()
        if (
            tag in placeholders
            and tag not in copied
            and " ".join(m.group(2).split()).lower() == placeholders[tag]
        ):
            copied[tag] = m.group(0)
    return copied


def parse_arbiter(text: str) -> ArbiterVerdict:
    """Parse the arbiter's answer. Never raises; what is missing or unreadable is in `problems`."""
    problems: list[str] = []
    malformed = False
    body = _FENCE_RE.sub("", text or "").strip()
    if not body:
        return ArbiterVerdict(malformed=True, problems=["empty answer"])

    fields: dict[str, str | None] = {}
    copied = _placeholders_copied(body)
    for block in copied.values():
        body = body.replace(block, "\n")
    for tag in ARBITER_TAGS:
        content, how = _extract(body, tag)
        fields[tag] = content
        if tag in copied and content is None:
            problems.append(f"<{tag}> is the prompt's placeholder, copied: not read")
            malformed = malformed or tag in MANDATORY_TAGS
        elif content is None:
            problems.append(f"missing <{tag}>")
            malformed = malformed or tag in MANDATORY_TAGS
        elif how == "unclosed":
            problems.append(f"unclosed <{tag}>")
            malformed = True
        elif how == "unopened":
            problems.append(f"</{tag}> without <{tag}>: read what comes before it")
            malformed = True

    synthesis = fields["synthesis"]
    if synthesis is None:
        # Better an answer the user can read than none: the whole reply, without the other
        # fields' tags and what is in them.
        synthesis = _strip_tags(_OTHER_FIELDS_RE.sub("\n", body))
        problems.append("no <synthesis>: the whole answer is used as the synthesis")
        if not synthesis:
            synthesis = _strip_tags(_FENCE_RE.sub("", text or ""))
    else:
        synthesis = _strip_tags(synthesis) if _ANY_TAG_RE.search(synthesis) else synthesis

    confidence: float | None = None
    if fields["confidence"] is not None:
        confidence = parse_confidence_value(fields["confidence"])
        if confidence is None and (in_tag := _CONFIDENCE_IN_TAG.search(body)):
            confidence = parse_confidence_value(in_tag.group(1))
            problems.append(f"confidence read from the tag itself ({in_tag.group(0)!r})")
            malformed = True
        elif confidence is None:
            problems.append(f"unreadable confidence {fields['confidence'][:40]!r}")
            malformed = True
    else:
        # Small models often write "Confidence: 0.7" in prose instead of the tag, or the number
        # alone on a line.
        confidence = extract_member_confidence(body)
        if confidence is not None:
            problems.append("confidence read from prose, not from <confidence>")
        elif (bare := _bare_confidence(body)) is not None:
            confidence = bare
            problems.append("confidence read from a bare number, not from <confidence>")

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
            # Without tags, like every other field: later arbiter prompts quote the areas.
            areas = [_strip_tags(line).lstrip("-*•0123456789.) ").strip() for line in raw_areas.splitlines()]
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
