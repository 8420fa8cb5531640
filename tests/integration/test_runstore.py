"""The run store on a real NATS server: CAS under concurrent arbiters, the outbox after a crash,
texts stored before anything refers to them, and messages NATS would refuse never written."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from fnmatch import fnmatch
from typing import Any

import pytest
from nats.js.errors import NotFoundError

from moot.messages import CallCompleted, CallJob, JobMessage, parse_event
from moot.protocols import consortium
from moot.protocols.base import Transition
from moot.requests import ConsortiumRequest, MemberSpec
from moot.runtime.nats import PayloadTooLarge, ensure_topology, make_broker, open_texts, publish_all
from moot.runtime.runstore import OutboxPending, RunExists, RunStore, StoredRun
from moot.runtime.settings import MootSettings
from moot.runtime.subjects import Names
from moot.texts import NATS_MAX_PAYLOAD_BYTES, TextRef, TextSink, hydrate, refs_in
from moot.views import Usage

T0 = datetime(2026, 11, 22, tzinfo=UTC)


@pytest.fixture
async def env(nats_url: str, namespace: str) -> AsyncIterator[tuple[RunStore, Names, object]]:
    settings = MootSettings(NATS_URL=nats_url, namespace=namespace)
    names = Names(namespace)
    broker = make_broker(settings)
    await broker.connect()
    js = broker.connection.jetstream()
    kv = await ensure_topology(js, names, settings)
    texts = await open_texts(js, names, settings)

    async def publish(items: list[tuple[str, str, bytes]]) -> None:
        await publish_all(broker, names, items)

    yield RunStore(kv=kv, names=names, publish=publish, texts=texts), names, js
    for stream in (
        names.runs_stream,
        names.jobs_stream,
        f"KV_{names.state_bucket}",
        f"KV_{names.text_bucket}",
    ):
        await js.delete_stream(stream)
    await broker.stop()


def _request() -> ConsortiumRequest:
    return ConsortiumRequest(prompt="q", members=[MemberSpec(model="m", count=6)], arbiter="arb")


def _completed(job: CallJob) -> CallCompleted:
    return job.completed("answer", usage=Usage(input_tokens=1, output_tokens=1))


async def _stored(js: Any, stream: str, subject: str) -> list[str]:
    """Payloads of the stream's messages on `subject` (read directly: a work queue admits no reader)."""
    info = await js.stream_info(stream)
    got: list[str] = []
    if not info.state.messages:
        return got
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await js.get_msg(stream, seq)
        except NotFoundError:
            continue
        if fnmatch(msg.subject, subject.replace(">", "*")):
            got.append(msg.data.decode())
    return got


async def test_concurrent_arbiters_decide_once(env: tuple[RunStore, Names, object]) -> None:
    store, names, js = env
    run_id = "1" * 32
    t = consortium.start(run_id, _request(), T0)
    await store.create(run_id, "consortium", t)
    with pytest.raises(RunExists):
        await store.create(run_id, "consortium", t)
    jobs = [c for c in t.commands if isinstance(c, CallJob)]
    # Six outcomes applied at once, each twice (a redelivery racing the original), by "arbiters"
    # that share nothing but the bucket: exactly one arbiter job may come out.
    await asyncio.gather(*(store.apply(run_id, _completed(j)) for j in jobs * 2))

    loaded = await store.load(run_id)
    assert loaded is not None
    _, state = loaded
    assert [m.status for m in state.iterations[0].members] == ["completed"] * 6
    assert state.usage.input_tokens == 6  # each outcome counted once

    job_payloads = await _stored(js, names.jobs_stream, names.call_jobs)
    arbiter_jobs = [p for p in job_payloads if CallJob.model_validate_json(p).role == "arbiter"]
    assert len(arbiter_jobs) == 1
    assert len(job_payloads) == 7  # 6 members + 1 arbiter, none duplicated
    events = [parse_event(p).type for p in await _stored(js, names.runs_stream, names.run_events(run_id))]
    assert events == ["run.created", "iteration.started"]


async def test_outbox_left_by_a_crash_is_published_by_the_next_touch(
    env: tuple[RunStore, Names, object],
) -> None:
    store, names, js = env
    run_id = "2" * 32
    t = consortium.start(run_id, _request(), T0)
    published: list[str] = []

    async def crash_before_publish(items: list[tuple[str, str, bytes]]) -> None:
        published.extend(i[1] for i in items)
        raise ConnectionError("process died")

    crashing = RunStore(kv=store.kv, names=names, publish=crash_before_publish, texts=store.texts)
    with pytest.raises(OutboxPending) as pending:
        await crashing.create(run_id, "consortium", t)
    assert isinstance(pending.value.__cause__, ConnectionError)
    assert await _stored(js, names.jobs_stream, names.call_jobs) == []  # nothing reached NATS

    # The redelivered event of any call finds the outbox and publishes it (plus its own effects).
    job = next(c for c in t.commands if isinstance(c, CallJob))
    assert await store.apply(run_id, _completed(job))
    assert len(await _stored(js, names.jobs_stream, names.call_jobs)) == 6
    entry = await store.kv.get(run_id)
    assert b'"outbox":[]' in entry.value


async def test_texts_are_stored_before_the_state_and_answers_resolved_before_decide(
    env: tuple[RunStore, Names, object],
) -> None:
    store, names, js = env
    run_id = "3" * 32
    request = ConsortiumRequest(
        prompt="A long question. " * 1_000, members=[MemberSpec(model="m", count=2)], arbiter="arb"
    )
    t = consortium.start(run_id, request, T0)
    await store.create(run_id, "consortium", t)
    # Whatever the state and the published jobs refer to is in the text store.
    entry = await store.kv.get(run_id)
    jobs = await _stored(js, names.jobs_stream, names.call_jobs)
    stored = StoredRun.decode(entry.value)
    shas = refs_in([json.loads(stored.state), stored.model_dump(), *(json.loads(p) for p in jobs)])
    texts = await store.texts.get_many(shas)
    assert len(jobs) == 2 and len(entry.value) < 16_000
    assert request.prompt in json.dumps(hydrate([json.loads(p) for p in jobs], texts))

    # A long answer comes by reference (as a worker publishes it): decide() reads its text.
    answer = "It is 4, because two and two make four. " * 100 + "\nConfidence: 0.75"
    sink = TextSink()
    ref = sink.text(answer)
    assert isinstance(ref, TextRef)
    await store.texts.put_many(sink.texts)
    for job in (c for c in t.commands if isinstance(c, CallJob)):
        assert await store.apply(run_id, job.completed(ref))
    loaded = await store.load(run_id)
    assert loaded is not None
    _, state = loaded
    member = state.iterations[0].members[0]
    assert member.status == "completed" and member.confidence == 0.75


async def test_a_command_nats_would_refuse_never_reaches_the_outbox(
    env: tuple[RunStore, Names, object],
) -> None:
    store, names, js = env
    run_id = "4" * 32
    t = consortium.start(run_id, _request(), T0)
    job = next(c for c in t.commands if isinstance(c, CallJob))
    # A job with a text inline that should have been a reference, over max_payload.
    message = job.messages[0].model_copy(update={"content": ["x" * NATS_MAX_PAYLOAD_BYTES]})
    huge = job.model_copy(update={"call_id": "huge", "messages": [message]})
    with pytest.raises(PayloadTooLarge, match="call job huge"):
        await store.create(run_id, "consortium", Transition(t.state, [*t.commands, huge], t.texts))
    assert await store.load(run_id) is None  # nothing written
    assert await _stored(js, names.jobs_stream, names.call_jobs) == []


async def test_a_large_outbox_is_kept_by_reference_and_survives_a_crash(
    env: tuple[RunStore, Names, object],
) -> None:
    """A transition's many large commands do not swell the run's KV value: their payloads are in
    the text store, and a process that dies before publishing leaves references another uses."""
    store, names, js = env
    run_id = "5" * 32
    # 32 member jobs of several kilobytes each (as late in a long run, each quoting its earlier
    # turns): inline beside the state they would swell the run's KV value far past 64 KB.
    request = ConsortiumRequest.model_validate(
        {
            "prompt": "q",
            "members": [{"model": "m", "count": 16}, {"model": "n", "count": 16}],
            "arbiter": "arb",
        }
    )
    t = consortium.start(run_id, request, T0)
    earlier = JobMessage(role="assistant", content=["x" * 4_000])
    t = Transition(
        t.state,
        [
            c.model_copy(update={"messages": [earlier, *c.messages]}) if isinstance(c, CallJob) else c
            for c in t.commands
        ],
        t.texts,
    )
    jobs = [c for c in t.commands if isinstance(c, CallJob)]
    assert len(jobs) == 32 and sum(len(j.model_dump_json()) for j in jobs) > 128 * 1024

    async def crash_before_publish(items: list[tuple[str, str, bytes]]) -> None:
        raise ConnectionError("process died")

    crashing = RunStore(kv=store.kv, names=names, publish=crash_before_publish, texts=store.texts)
    with pytest.raises(OutboxPending):
        await crashing.create(run_id, "consortium", t)
    entry = await store.kv.get(run_id)
    assert entry.value is not None
    stored = StoredRun.decode(entry.value)
    assert len(stored.outbox) == 1 + len(jobs) + 1  # run.created, iteration.started, the jobs
    assert all(o.payload_sha for o in stored.outbox if o.subject == names.call_jobs)
    assert len(entry.value) < 64 * 1024, len(entry.value)

    # Another process (an empty cache: only the text store) publishes the outbox as it was.
    fresh = await open_texts(js, names, MootSettings(namespace=names.namespace))
    other = RunStore(kv=store.kv, names=names, publish=store.publish, texts=fresh)
    await other.flush_pending(run_id)
    published = [
        CallJob.model_validate_json(p) for p in await _stored(js, names.jobs_stream, names.call_jobs)
    ]
    assert sorted(j.call_id for j in published) == sorted(j.call_id for j in jobs)
    assert {j.call_id: j for j in published} == {j.call_id: j for j in jobs}
