"""Dead letters on a real NATS server: a job nak'ed until max_deliver and an undecodable outcome
end in the dead-letter stream with their reason and fail their run (the arbiter running in
process); `moot dead-letters list|replay` as processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import nats
import pytest
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from moot.protocols import consortium
from moot.requests import ConsortiumRequest, MemberSpec
from moot.runtime import deadletters
from moot.runtime.nats import ensure_topology, open_texts
from moot.runtime.runstore import RunStore
from moot.runtime.settings import MootSettings, get_settings
from moot.runtime.subjects import Names


@dataclass
class Env:
    js: JetStreamContext
    names: Names
    store: RunStore


async def _until(check: Callable[[], Awaitable[Any]], within: float = 20.0) -> Any:
    deadline = asyncio.get_running_loop().time() + within
    while True:
        got = await check()
        if got:
            return got
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


@pytest.fixture
async def env(nats_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Env]:
    """The arbiter (in process) in a namespace of its own, and a run store beside it."""
    monkeypatch.setenv("NATS_URL", nats_url)
    monkeypatch.setenv("MOOT_NAMESPACE", namespace)
    get_settings.cache_clear()
    from moot_arbiter.main import create_app

    settings = MootSettings(NATS_URL=nats_url, namespace=namespace)
    names = Names(namespace)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    kv = await ensure_topology(js, names, settings)
    texts = await open_texts(js, names, settings)

    async def publish(items: list[tuple[str, str, bytes]]) -> None:
        for subject, msg_id, payload in items:
            await js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id})

    app = create_app()
    try:
        async with app.router.lifespan_context(app):
            yield Env(js, names, RunStore(kv=kv, names=names, publish=publish, texts=texts))
    finally:
        get_settings.cache_clear()
        for stream in (names.runs_stream, names.jobs_stream, names.dead_stream, names.advisories_stream):
            await js.delete_stream(stream)
        await js.delete_key_value(names.state_bucket)
        await js.delete_key_value(names.text_bucket)
        await nc.close()


async def _start_run(env: Env) -> str:
    run_id = uuid.uuid4().hex
    request = ConsortiumRequest(prompt="q", members=[MemberSpec(model="m")], arbiter="arb")
    await env.store.create(run_id, "consortium", consortium.start(run_id, request, datetime.now(UTC)))
    return run_id


async def _failed(env: Env, run_id: str) -> Any:
    loaded = await env.store.load(run_id)
    assert loaded is not None
    return loaded[1] if loaded[1].status == "failed" else None


async def test_a_job_nacked_until_max_deliver_is_dead_lettered_and_its_run_fails(env: Env) -> None:
    run_id = await _start_run(env)
    names, js = env.names, env.js
    job = await js.get_msg(names.jobs_stream, subject=names.call_jobs)
    # A worker that never gets a job done: it naks each delivery, twice.
    await js.add_consumer(
        names.jobs_stream,
        ConsumerConfig(
            durable_name=names.worker_consumer,
            filter_subject=names.call_jobs,
            ack_policy=AckPolicy.EXPLICIT,
            max_deliver=2,
            ack_wait=30,
        ),
    )
    sub = await js.pull_subscribe_bind(durable=names.worker_consumer, stream=names.jobs_stream)
    for _ in range(2):
        for msg in await sub.fetch(1, timeout=5):
            await msg.nak()
    # The server gives up (and sends the advisory) when it would deliver a third time, which a
    # worker's next pull request makes it try.
    with pytest.raises(nats.errors.TimeoutError):
        await sub.fetch(1, timeout=1)

    state = await _until(lambda: _failed(env, run_id))
    reason = f"max deliveries: delivered 2 times to {names.worker_consumer} without an ack"
    assert state.reason == f"dead letter: {reason}"
    [letter] = await deadletters.read_all(js, names)
    assert (letter.reason, letter.subject, letter.run_id) == (reason, names.call_jobs, run_id)
    assert (letter.stream, letter.sequence, letter.consumer, letter.deliveries) == (
        names.jobs_stream,
        job.seq,
        names.worker_consumer,
        2,
    )
    # The original message, its id and headers kept.
    assert letter.data == job.data and letter.msg_id == (job.headers or {})["Nats-Msg-Id"]
    assert letter.original_headers()["Nats-Msg-Id"] == letter.msg_id
    # The work queue kept the job after its last delivery; the arbiter removed it.
    assert (await js.stream_info(names.jobs_stream)).state.messages == 0
    ended = await js.get_msg(names.runs_stream, subject=names.run_event(run_id, "run.failed"))
    assert json.loads(ended.data)["reason"] == f"dead letter: {reason}"


async def test_an_undecodable_outcome_is_dead_lettered_and_its_run_fails(env: Env) -> None:
    run_id = await _start_run(env)
    names, js = env.names, env.js
    ack = await js.publish(
        names.run_event(run_id, "call.completed"),
        b'{"type": "call.completed"}',
        headers={"traceparent": "00-x"},
    )
    state = await _until(lambda: _failed(env, run_id))
    assert state.reason == "dead letter: undecodable: ValidationError"
    [letter] = await deadletters.read_all(js, names)
    assert (letter.consumer, letter.sequence, letter.run_id) == (names.arbiter_consumer, ack.seq, run_id)
    assert letter.headers["traceparent"] == "00-x" and letter.msg_id is None


def _moot(namespace: str, nats_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "NATS_URL": nats_url, "MOOT_NAMESPACE": namespace}
    return subprocess.run(
        [sys.executable, "-m", "moot.cli", "dead-letters", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_moot_dead_letters_list_and_replay(nats_url: str, namespace: str) -> None:
    settings = MootSettings(NATS_URL=nats_url, namespace=namespace)
    names = Names(namespace)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        await ensure_topology(js, names, settings)
        run_id = uuid.uuid4().hex
        subject = names.run_event(run_id, "call.completed")
        # One whose original is still in the stream's duplicate window, one never published.
        recent = await js.publish(subject, b"{}", headers={"Nats-Msg-Id": "recent"})
        for seq, msg_id in ((recent.seq, "recent"), (9999, "old")):
            origin = deadletters.Origin(subject, names.runs_stream, seq, names.recorder_consumer, 3)
            await deadletters.write(
                js, names, origin, "undecodable", "undecodable: X", b"{}", {"Nats-Msg-Id": msg_id, "a": "b"}
            )

        listed = _moot(namespace, nats_url, "list", "--json")
        assert listed.returncode == 0, listed.stderr
        letters = json.loads(listed.stdout)
        assert [(d["msg_id"], d["run_id"], d["subject"], d["reason"]) for d in letters] == [
            ("recent", run_id, subject, "undecodable: X"),
            ("old", run_id, subject, "undecodable: X"),
        ]
        table = _moot(namespace, nats_url, "list", "--limit", "1")
        assert (
            table.returncode == 0 and "undecodable: X" in table.stdout and len(table.stdout.splitlines()) == 2
        )

        replayed = _moot(namespace, nats_url, "replay", "--all")
        assert replayed.returncode == 1  # the recent one is still within the duplicate window
        assert "duplicate window" in replayed.stderr and f"replayed {letters[1]['id']}" in replayed.stdout
        again = await js.get_msg(names.runs_stream, subject=subject)
        assert again.seq > recent.seq and (again.headers or {}).get("Nats-Msg-Id") == "old"
        assert (again.headers or {})["a"] == "b" and not any(
            k.startswith("Moot-Dead") for k in again.headers or {}
        )
        left = json.loads(_moot(namespace, nats_url, "list", "--json").stdout)
        assert [d["msg_id"] for d in left] == ["recent"]
        missing = _moot(namespace, nats_url, "replay", "424242")
        assert missing.returncode == 1 and "no dead letter 424242" in missing.stderr
    finally:
        for stream in (names.runs_stream, names.jobs_stream, names.dead_stream, names.advisories_stream):
            await js.delete_stream(stream)
        await js.delete_key_value(names.state_bucket)
        await nc.close()
