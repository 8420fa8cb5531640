"""The text store: every long text of a run, once, in a NATS KV bucket keyed by its SHA-256.

Content-addressed, so storing a text twice (a redelivered event, a retried publish, the same
prompt in many runs) is harmless, and a text never changes under its key. A text larger than
`CHUNK_BYTES` is split into chunks (`<sha>.<n>`) written before its manifest (`<sha>`), so a
reader that finds the key finds every chunk. Entries live `text_ttl_seconds` (longer than the
run's events and state, which refer to them); the recorder copies every text into Postgres, which
keeps them for good. Texts never change, so readers cache them (`cache_bytes`).
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from moot.texts import documents_in, hydrate, refs_in, sha_of

# Each KV value stays far below NATS's max_payload (1 MiB, set explicitly where moot runs NATS).
CHUNK_BYTES = 256 * 1024
_WHOLE = b"="  # the value is the text
_CHUNKED = b"#"  # the value is the number of chunks


class MissingText(KeyError):
    """A referenced text is not in the store (expired, or never stored: a bug)."""


class TextStore:
    def __init__(self, kv: KeyValue, *, cache_bytes: int = 64 * 1024 * 1024) -> None:
        self.kv = kv
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._cache_bytes = 0
        self._cache_max = cache_bytes

    async def put_many(self, texts: Mapping[str, str]) -> None:
        """Store texts keyed by their SHA-256 (as `TextSink.texts` holds them)."""
        await asyncio.gather(*(self._put(sha, text) for sha, text in texts.items()))

    async def put(self, text: str) -> str:
        sha = sha_of(text)
        await self._put(sha, text)
        return sha

    async def get_many(self, shas: Iterable[str]) -> dict[str, str]:
        """The texts of these SHA-256s; MissingText when one is not stored."""
        wanted = set(shas)
        found = {sha: self._cache[sha] for sha in wanted if sha in self._cache}
        missing = sorted(wanted - found.keys())
        fetched = await asyncio.gather(*(self._get(sha) for sha in missing))
        for sha, text in zip(missing, fetched, strict=True):
            self._remember(sha, text)
            found[sha] = text
        return found

    async def get(self, sha: str) -> str:
        return (await self.get_many([sha]))[sha]

    async def _put(self, sha: str, text: str) -> None:
        if sha in self._cache:
            return  # stored by this process already
        data = text.encode("utf-8", "surrogatepass")
        if len(data) <= CHUNK_BYTES:
            await self._create(sha, _WHOLE + data)
        else:
            chunks = [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]
            await asyncio.gather(*(self._create(f"{sha}.{n}", chunk) for n, chunk in enumerate(chunks)))
            await self._create(sha, _CHUNKED + str(len(chunks)).encode())
        self._remember(sha, text)

    async def _create(self, key: str, value: bytes) -> None:
        try:
            await self.kv.create(key, value)
        except KeyWrongLastSequenceError:
            pass  # content-addressed: what is there is the same

    async def _get(self, sha: str) -> str:
        value = await self._value(sha)
        if value[:1] == _WHOLE:
            return value[1:].decode("utf-8", "surrogatepass")
        count = int(value[1:])
        chunks = await asyncio.gather(*(self._value(f"{sha}.{n}") for n in range(count)))
        return b"".join(chunks).decode("utf-8", "surrogatepass")

    async def _value(self, key: str) -> bytes:
        try:
            entry = await self.kv.get(key)
        except KeyNotFoundError as exc:
            raise MissingText(key) from exc
        if entry.value is None:
            raise MissingText(key)
        return entry.value

    def _remember(self, sha: str, text: str) -> None:
        size = len(text)
        if size > self._cache_max // 4:
            return
        self._cache[sha] = text
        self._cache.move_to_end(sha)
        self._cache_bytes += size
        while self._cache_bytes > self._cache_max:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= len(old)


async def fetch_all(store: TextStore, data: Any) -> dict[str, str]:
    """Every text `data` refers to, also through the documents it refers to (a stored view,
    stored parts), level by level: one fetch per level, none when there is no reference."""
    texts: dict[str, str] = {}
    pending, documents = refs_in(data), documents_in(data)
    while pending:
        texts |= await store.get_many(pending)
        fetched, pending = documents & pending, set()
        for sha in fetched:
            inner = json.loads(texts[sha])
            pending |= refs_in(inner) - texts.keys()
            documents |= documents_in(inner)
    return texts


async def hydrated(store: TextStore, data: Any) -> Any:
    """JSON data (an event, a view, a list of them) with every reference replaced by its text.

    No fetch when it has no reference (most events). MissingText when one is not stored.
    """
    if not refs_in(data):
        return data
    return hydrate(data, await fetch_all(store, data))


async def open_text_store(
    js: JetStreamContext, bucket: str, ttl_seconds: float, *, replicas: int = 1
) -> TextStore:
    """The text bucket, created (with `replicas`) if missing."""
    try:
        kv = await js.key_value(bucket)
    except BucketNotFoundError:
        kv = await js.create_key_value(
            KeyValueConfig(
                bucket=bucket,
                history=1,
                ttl=ttl_seconds,
                replicas=replicas,
                # The server counts the headers too (`create` sends the expected last sequence).
                max_value_size=CHUNK_BYTES + 1024,
                direct=True,
            )
        )
    return TextStore(kv)
