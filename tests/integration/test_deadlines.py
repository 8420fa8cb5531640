"""The sweeper on a real NATS server: a run past its deadline is ended once, whatever the number
of sweepers racing; an outbox a crash left unpublished (a run created but never started) is
published; a run's envelope says whether it is running without its state being read."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from nats.js.errors import NotFoundError

from moot.messages import CallJob, utcnow
from moot.protocols import consortium
from moot.requests import ConsortiumRequest
from moot.runtime.nats import ensure_topology, make_broker, open_texts, publish_all
from moot.runtime.runstore import OutboxPending, RunStore, StoredRun
from moot.runtime.settings import MootSettings
from moot.runtime.subjects import Names
from moot_arbiter import sweeper

Publish = Callable[[list[tuple[str, str, bytes]]], Awaitable[None]]


class Env:
    def __init__(self, store: RunStore, names: Names, js: Any) -> None:
        self.store, self.names, self.js = store, names, js

    def replica(self, publish: Publish | None = None) -> RunStore:
        """Another arbiter's run store: shares nothing with the first but the bucket."""
        s = self.store
        return RunStore(kv=s.kv, names=s.names, publish=publish or s.publish, texts=s.texts)

    async def subjects(self, stream: str) -> list[str]:
        info = await self.js.stream_info(stream)
        found: list[str] = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages else ():
            try:
                found.append((await self.js.get_msg(stream, seq)).subject)
            except NotFoundError:
                continue
        return found


@pytest.fixture
async def env(nats_url: str, namespace: str) -> AsyncIterator[Env]:
    settings = MootSettings(NATS_URL=nats_url, namespace=namespace)
    names = Names(namespace)
    broker = make_broker(settings)
    await broker.connect()
    js = broker.connection.jetstream()
    kv = await ensure_topology(js, names, settings)
    texts = await open_texts(js, names, settings)

    async def publish(items: list[tuple[str, str, bytes]]) -> None:
        await publish_all(broker, names, items)

    yield Env(RunStore(kv=kv, names=names, publish=publish, texts=texts), names, js)
    for info in await js.streams_info():
        if namespace.lower() in info.config.name.lower():
            await js.delete_stream(info.config.name)
    await broker.stop()


def _request(seconds: int) -> ConsortiumRequest:
    return ConsortiumRequest.model_validate(
        {
            "prompt": "q",
            "members": [{"model": "m", "count": 2}],
            "arbiter": "arb",
            "budget": {"seconds": seconds},
        }
    )


async def _create(store: RunStore, run_id: str, seconds: int, age: float = 0.0) -> list[CallJob]:
    """A run accepted `age` seconds ago with a budget of `seconds`; its first jobs."""
    t = consortium.start(run_id, _request(seconds), utcnow() - timedelta(seconds=age))
    await store.create(run_id, "consortium", t)
    return [c for c in t.commands if isinstance(c, CallJob)]


async def test_a_run_past_its_deadline_is_ended_once_by_racing_sweepers(env: Env) -> None:
    store = env.store
    late, on_time = "1" * 32, "2" * 32
    await _create(store, late, seconds=1, age=5)
    await _create(store, on_time, seconds=600)
    assert await store.is_running(late) and await store.is_running(on_time)

    # Two replicas, each a full pass and each a few direct sweeps, all at once: CAS lets one win.
    a, b = env.replica(), env.replica()
    now = utcnow()
    passes = await asyncio.gather(sweeper.sweep(a, now), sweeper.sweep(b, now))
    direct = await asyncio.gather(*(s.sweep_one(late, now) for s in (a, b, a, b)))
    ended = [p.ended for p in passes] + [["x"] for d in direct if "ended" in d]
    assert sorted(map(tuple, ended)) == [(), (late,)], ended

    assert not await store.is_running(late) and await store.is_running(on_time)
    loaded = await store.load(late)
    assert loaded is not None
    state = loaded[1]
    assert state.status == "failed" and state.stop_reason == "deadline"
    assert state.reason.startswith("deadline of 1 s passed during iteration 1")
    ends = [
        s
        for s in await env.subjects(env.names.runs_stream)
        if s.startswith(env.names.run_event(late, "run."))
    ]
    assert ends.count(env.names.run_event(late, "run.failed")) == 1
    assert env.names.run_event(late, "run.completed") not in ends
    # The run that still has time is untouched by a later pass too.
    again = await sweeper.sweep(a)
    assert again.ended == [] and again.running == 1 and again.runs == 2


async def test_an_outbox_left_by_a_crash_is_published_by_the_sweeper(env: Env) -> None:
    run_id = "3" * 32

    async def dead(items: list[tuple[str, str, bytes]]) -> None:
        raise ConnectionError("the gateway died between storing the run and publishing it")

    # Stored, never started: its first jobs are only in its outbox.
    with pytest.raises(OutboxPending):
        await _create(env.replica(publish=dead), run_id, seconds=600)
    head = StoredRun.decode_head((await env.store.kv.get(run_id)).value or b"")
    assert len(head.outbox) == 4 and head.status == "running"  # run.created, iteration.started, 2 jobs
    assert await env.subjects(env.names.jobs_stream) == []

    # A young outbox is its writer's to publish; one older than the grace was left by a crash.
    assert (await sweeper.sweep(env.store)).flushed == []
    swept = await sweeper.sweep(env.store, grace=timedelta(0))
    assert swept.flushed == [run_id] and swept.ended == []
    assert len(await env.subjects(env.names.jobs_stream)) == 2
    created = [s for s in await env.subjects(env.names.runs_stream) if s.endswith("run.created")]
    assert created == [env.names.run_event(run_id, "run.created")]
    head = StoredRun.decode_head((await env.store.kv.get(run_id)).value or b"")
    assert head.outbox == []
    assert (await sweeper.sweep(env.store, grace=timedelta(0))).flushed == []


async def test_is_running_reads_the_envelope_and_knows_old_values(env: Env) -> None:
    assert not await env.store.is_running("f" * 32)  # unknown
    run_id = "4" * 32
    await _create(env.store, run_id, seconds=600)
    value = (await env.store.kv.get(run_id)).value or b""
    head, _, state = value.partition(b"\n")
    assert json.loads(head)["status"] == "running" and json.loads(head)["deadline"]
    # A value written before the envelope held the status: read from the state instead.
    old = json.loads(head)
    del old["status"], old["deadline"]
    await env.store.kv.put(run_id, json.dumps(old).encode() + b"\n" + state)
    assert await env.store.is_running(run_id)


async def test_a_pass_over_1000_runs_with_nothing_due_reads_envelopes_only(env: Env) -> None:
    """Measured for docs/architecture.md ("Deadlines and the sweeper")."""
    t = consortium.start("0" * 32, _request(600), utcnow())
    value = StoredRun.of("consortium", t.state, [], None).encode()
    for i in range(1000):
        await env.store.kv.put(f"{i:032x}", value)
    started = time.perf_counter()
    swept = await sweeper.sweep(env.store)
    elapsed = time.perf_counter() - started
    assert swept.runs == 1000 and swept.running == 1000 and swept.ended == swept.flushed == []
    print(f"\n1000 runs of {len(value)} bytes: one pass in {elapsed * 1000:.0f} ms")
    assert elapsed < 10
