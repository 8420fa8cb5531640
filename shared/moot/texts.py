"""Texts by reference (claim check): every long text is stored once and travels as a reference.

Prompts, answers, syntheses, transcripts and attachments can each be hundreds of kilobytes; a
run's state, its jobs and its events must stay far below NATS's `max_payload`. So a text longer
than `INLINE_MAX` characters is put in the text store (`moot.runtime.textstore`, a KV bucket keyed
by the text's SHA-256) and replaced by a `TextRef`; shorter ones travel as they are.

Pure code (the protocols) never does I/O: it computes references with a `TextSink`, which
collects the texts to store, and the caller stores them before anything naming them is written
or published. Prompts are `Parts`: the template's literal text inline, the texts it quotes by
reference (`compose`); the member worker resolves them into the messages it sends (`render`).
Views and events read by people (the API, the recorder's rows) are resolved with `hydrate`.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Iterable, Iterator, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, WithJsonSchema
from pydantic_core import to_jsonable_python

# Texts up to this many characters travel inline: a reference costs about 90 bytes of JSON.
INLINE_MAX = 256

# NATS's `max_payload`, set explicitly wherever moot starts or describes NATS (the embedded
# server, docker-compose.yml, deploy/README.md for Kubernetes): the largest message, or KV value,
# the server takes. Publishing more is refused (`moot.runtime.nats.PayloadTooLarge`).
NATS_MAX_PAYLOAD_BYTES = 1024 * 1024
# What one job or event should stay under, far below max_payload: with texts by reference, a
# larger one carries inline a text that should travel by reference, and is logged as an error.
MESSAGE_BUDGET_BYTES = 64 * 1024
# A run's stored state grows with the run's calls, each a few hundred bytes: its own budget (for
# the run's KV value, the state and its outbox, whose payloads over 1 KB are kept by reference),
# still a quarter of max_payload.
STATE_BUDGET_BYTES = 256 * 1024


class TextRef(BaseModel):
    """A stored text: its SHA-256 (of the UTF-8 bytes) and its length. `json`: the text is a JSON document."""

    model_config = ConfigDict(
        frozen=True, serialize_by_alias=True, validate_by_name=True, validate_by_alias=True
    )

    sha: str = Field(alias="$text", min_length=64, max_length=64, pattern=r"^[0-9a-f]{64}$")
    chars: int = Field(ge=0)
    json_: bool = Field(
        False, alias="json", exclude_if=lambda v: not v
    )  # omitted when false: refs are everywhere


# A text in a state, a job or an event: inline when short, else a reference. The API always
# answers with the text itself (`hydrate`), so its schema there is a string.
Text = Annotated[str | TextRef, WithJsonSchema({"type": "string"}, mode="serialization")]


class ImagePart(BaseModel):
    """An image in a prompt (OpenAI's `image_url` content part); a data URL is a stored text."""

    type: Literal["image_url"] = "image_url"
    url: Text


Part = str | TextRef | ImagePart
Parts = list[Part]


def sha_of(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class TextSink:
    """Hands out references for texts and remembers them, for the caller to store."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}

    def ref(self, text: str, *, as_json: bool = False) -> TextRef:
        """A reference to `text`, whatever its length."""
        sha = sha_of(text)
        self.texts[sha] = text
        return TextRef(sha=sha, chars=len(text), json_=as_json)

    def text(self, text: str) -> Text:
        """`text` itself when short, else a reference."""
        return text if len(text) <= INLINE_MAX else self.ref(text)

    def document(self, value: BaseModel | Any) -> TextRef:
        """A JSON document (a request, a view, tool definitions, a list of messages) stored as one text."""
        data = to_jsonable_python(value, by_alias=True)
        return self.ref(json.dumps(data, ensure_ascii=False, separators=(",", ":")), as_json=True)

    def parts(self, parts: Parts) -> Parts:
        """Parts stored as one document, quoted as one part: what many jobs quote alike (a closed
        round of a debate, the conversation a run continues) costs each of them one reference."""
        parts = merge(parts)
        return parts if len(parts) <= 1 else [self.document(parts)]


def compose(template: str, **values: Any) -> Parts:
    """`template.format(**values)` as parts: literal text inline, `Text`/`Parts` values as they are.

    Other values are formatted with `str()`; `{{` and `}}` are literal braces, as in `str.format`.
    """
    parts: Parts = []
    for literal, name, _spec, _conversion in string.Formatter().parse(template):
        if literal:
            parts.append(literal)
        if name is not None:
            value = values[name]
            if isinstance(value, list):
                parts.extend(value)
            elif isinstance(value, str | TextRef | ImagePart):
                parts.append(value)
            else:
                parts.append(str(value))
    return merge(parts)


def join(items: Iterable[Parts | Text], separator: str) -> Parts:
    """Parts of each item, with `separator` between them (like `separator.join`)."""
    parts: Parts = []
    for i, item in enumerate(items):
        if i:
            parts.append(separator)
        parts.extend(item if isinstance(item, list) else [item])
    return merge(parts)


def merge(parts: Iterable[Part]) -> Parts:
    """Adjacent inline strings joined, empty ones dropped: the smallest form of the same parts."""
    out: Parts = []
    for part in parts:
        if isinstance(part, str):
            if not part:
                continue
            if out and isinstance(out[-1], str):
                out[-1] += part
                continue
        out.append(part)
    return out


def refs_in(value: Any) -> set[str]:
    """The SHA-256 of every reference in a model, a list, a mapping or JSON data."""
    return {sha for sha, _ in _walk_refs(value)}


def documents_in(value: Any) -> set[str]:
    """The SHA-256 of the references to JSON documents, whose texts may hold more references."""
    return {sha for sha, is_json in _walk_refs(value) if is_json}


def _walk_refs(value: Any) -> Iterator[tuple[str, bool]]:
    if isinstance(value, TextRef):
        yield value.sha, value.json_
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _walk_refs(getattr(value, name))
    elif isinstance(value, Mapping):
        if isinstance(value.get("$text"), str) and "chars" in value:
            yield value["$text"], bool(value.get("json"))
        else:
            for v in value.values():
                yield from _walk_refs(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _walk_refs(v)


def hydrate(data: Any, texts: Mapping[str, str]) -> Any:
    """JSON data with every reference replaced by its text (a JSON document by its value).

    KeyError when a text is missing from `texts`: fetch `refs_in(data)` first.
    """
    if isinstance(data, dict):
        sha = data.get("$text")
        if isinstance(sha, str) and "chars" in data:
            text = texts[sha]
            # A document may itself hold references (a stored view, stored parts).
            return hydrate(json.loads(text), texts) if data.get("json") else text
        return {k: hydrate(v, texts) for k, v in data.items()}
    if isinstance(data, list):
        return [hydrate(v, texts) for v in data]
    return data


def resolve(text: Text | None, texts: Mapping[str, str]) -> str | None:
    """One `Text` as a string."""
    if text is None or isinstance(text, str):
        return text
    return texts[text.sha]


_PARTS: TypeAdapter[Parts] = TypeAdapter(Parts)


def expand(parts: Parts, texts: Mapping[str, str]) -> Parts:
    """Parts with every stored document of parts (`TextSink.parts`) put in its place."""
    out: Parts = []
    for p in parts:
        if isinstance(p, TextRef) and p.json_:
            out.extend(expand(_PARTS.validate_json(texts[p.sha]), texts))
        else:
            out.append(p)
    return out


def render(parts: Parts, texts: Mapping[str, str]) -> str | list[dict[str, Any]]:
    """What a model is sent: a string, or OpenAI content parts when there are images."""
    parts = expand(parts, texts)
    if not any(isinstance(p, ImagePart) for p in parts):
        return "".join(
            p if isinstance(p, str) else texts[p.sha] for p in parts if not isinstance(p, ImagePart)
        )
    content: list[dict[str, Any]] = []
    for p in parts:
        if isinstance(p, ImagePart):
            content.append({"type": "image_url", "image_url": {"url": resolve(p.url, texts)}})
        else:
            piece = p if isinstance(p, str) else texts[p.sha]
            if content and content[-1]["type"] == "text":
                content[-1]["text"] += piece
            else:
                content.append({"type": "text", "text": piece})
    return content
