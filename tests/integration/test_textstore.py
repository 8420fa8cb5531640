"""The text store on a real NATS server: texts of every size round-trip, stored once, cached."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import pytest
from nats.js import JetStreamContext

from moot.runtime.nats import open_texts
from moot.runtime.settings import MootSettings
from moot.runtime.subjects import Names
from moot.runtime.textstore import CHUNK_BYTES, MissingText, TextStore, hydrated
from moot.texts import TextSink, sha_of


@pytest.fixture
async def js(nats_url: str, namespace: str) -> AsyncIterator[JetStreamContext]:
    nc = await nats.connect(nats_url)
    try:
        yield nc.jetstream()
        await nc.jetstream().delete_key_value(Names(namespace).text_bucket)
    finally:
        await nc.close()


async def _store(js: JetStreamContext, namespace: str) -> TextStore:
    """A text store with a cache of its own (each call: as another process would see the bucket)."""
    return await open_texts(js, Names(namespace), MootSettings(namespace=namespace))


async def test_texts_of_every_size_round_trip(js: JetStreamContext, namespace: str) -> None:
    short = "2 + 2 = 4."
    long = "A long answer, with accents: é, ü, and ✓. " * 2_000  # ~90 KB of UTF-8, one value
    # Several chunks, and a chunk boundary inside multi-byte characters.
    huge = ("ξ" + "漢字" * 3 + "🙂") * (3 * CHUNK_BYTES // 13)
    assert len(huge.encode()) > 2 * CHUNK_BYTES
    texts = {sha_of(t): t for t in (short, long, huge, "")}

    await (await _store(js, namespace)).put_many(texts)
    reader = await _store(js, namespace)  # nothing cached: every text comes from the bucket
    assert await reader.get_many(texts) == texts
    assert await reader.get(sha_of(huge)) == huge
    # A chunked text is a manifest plus its chunks; a short one a single value.
    keys = set(await reader.kv.keys())
    assert {sha_of(huge), f"{sha_of(huge)}.0", f"{sha_of(huge)}.2"} <= keys
    assert f"{sha_of(long)}.0" not in keys


async def test_putting_a_text_again_is_harmless(js: JetStreamContext, namespace: str) -> None:
    text = "the same prompt, in many runs " * 100
    first, second = await _store(js, namespace), await _store(js, namespace)
    sha = await first.put(text)
    assert await second.put(text) == sha  # another process: the key exists, same content
    await second.put_many({sha: text})  # and again from its cache
    entry = await first.kv.get(sha)
    assert entry.revision == 1  # written once
    assert await (await _store(js, namespace)).get(sha) == text


async def test_a_missing_text_raises_missing_text(js: JetStreamContext, namespace: str) -> None:
    store = await _store(js, namespace)
    stored = await store.put("here")
    absent = sha_of("never stored")
    with pytest.raises(MissingText) as missing:
        await store.get_many([stored, absent])
    assert missing.value.args[0] == absent
    # A chunked text whose chunk is gone (expired first) is missing too, not truncated.
    huge = "x" * (CHUNK_BYTES + 10)
    sha = await store.put(huge)
    await store.kv.purge(f"{sha}.1")
    with pytest.raises(MissingText):
        await (await _store(js, namespace)).get(sha)


async def test_texts_are_cached_by_the_process(js: JetStreamContext, namespace: str) -> None:
    store = await _store(js, namespace)
    sha = await store.put("cached once read or written " * 20)
    await store.kv.purge(sha)
    # Texts never change under their key: this process still has it without asking NATS.
    assert await store.get(sha) == "cached once read or written " * 20
    with pytest.raises(MissingText):
        await (await _store(js, namespace)).get(sha)


async def test_hydrated_puts_every_referenced_text_back(js: JetStreamContext, namespace: str) -> None:
    store = await _store(js, namespace)
    sink = TextSink()
    answer = "A long answer. " * 50
    request = {"prompt": "Q" * 1_000, "members": [{"model": "m", "count": 2}]}
    event = {"type": "call.completed", "text": sink.text(answer).model_dump(), "n": 1}
    view = {"request": sink.document(request).model_dump(), "short": sink.text("short")}
    await store.put_many(sink.texts)

    assert await hydrated(store, [event, view]) == [
        {"type": "call.completed", "text": answer, "n": 1},
        {"request": request, "short": "short"},
    ]
    plain = {"type": "final.chunk", "delta": "no reference here"}
    assert await hydrated(store, plain) is plain  # nothing to fetch: returned as it is
