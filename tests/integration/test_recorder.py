"""The recorder against real NATS and Postgres: run events in, rows out, exactly once.

Events carry long texts by reference, as the services publish them; the recorder writes them
hydrated (every text in full) to Postgres.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import nats
import pytest
from nats.js import JetStreamContext

from moot.messages import (
    CallCompleted,
    CallFailed,
    CallJob,
    DebateStart,
    FinalChunk,
    IterationCompleted,
    RunCompleted,
    RunCreated,
    RunFailed,
    parse_event,
)
from moot.protocols import consortium, council, debate
from moot.records.queries import TABLES, fetch_run_view
from moot.requests import ConsortiumRequest, CouncilRequest, DebateRequest, MemberSpec
from moot.runtime import deadletters
from moot.runtime.nats import MSG_ID, ensure_topology, open_texts
from moot.runtime.settings import MootSettings
from moot.runtime.subjects import Names
from moot.runtime.textstore import TextStore
from moot.texts import TextRef, TextSink, documents_in, hydrate, refs_in
from moot.views import Usage
from moot_recorder.handlers import BatchRecorder
from moot_recorder.main import create_app
from moot_recorder.settings import RecorderSettings
from moot_recorder.writer import Envelope, Writer, envelope_from, to_rows

T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)

# Every text the protocols referred to in the runs these tests make (content-addressed, so one
# dict serves them all). `Recorder.publish` stores what an event refers to before publishing it,
# as the services do.
TEXTS: dict[str, str] = {}


def full_data(event: Any) -> Any:
    """An event's JSON as the recorder writes it: every reference replaced by its text."""
    return hydrate(json.loads(event.model_dump_json()), TEXTS)


def full(event: Any) -> Any:
    """The event, hydrated (its request a request, its view's texts inline)."""
    return parse_event(json.dumps(full_data(event)))


def full_json(event: Any) -> bytes:
    return json.dumps(full_data(event)).encode()


def referred(event: Any) -> dict[str, str]:
    """Every text of `TEXTS` the event refers to, also through the documents it refers to (an end
    event's view, itself referring to the request and the answers)."""
    texts: dict[str, str] = {}
    pending, documents = refs_in(event), documents_in(event)
    while pending:
        new = {sha: TEXTS[sha] for sha in pending if sha in TEXTS and sha not in texts}
        texts |= new
        pending = set()
        for sha in documents & new.keys():
            inner = json.loads(new[sha])
            pending |= refs_in(inner)
            documents |= documents_in(inner)
    return texts


def late_failure(end: RunCompleted, when: datetime) -> RunFailed:
    """A run.failed published late for a run that completed: its view (by reference, as the
    protocols publish it) says failed."""
    sink = TextSink()
    view = sink.document(full(end).run.model_copy(update={"status": "failed"}))
    TEXTS.update(sink.texts)
    return RunFailed(run_id=end.run_id, reason="late failure", run=view, at=when)


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
ARBITER_TEXT = (
    "<synthesis>2 + 2 = 4.</synthesis><confidence>0.9</confidence><analysis>All agree.</analysis>"
    "<dissent>None.</dissent><needs_iteration>false</needs_iteration><refinement_areas></refinement_areas>"
)


def make_request(prompt: str = "What is 2 + 2?") -> ConsortiumRequest:
    return ConsortiumRequest(
        prompt=prompt,
        members=[
            MemberSpec(model="alpha", count=3),
            MemberSpec(model="beta", count=2),
            MemberSpec(model="gamma"),
        ],
        arbiter="judge",
        max_iterations=2,
    )


def consortium_run(run_id: str) -> list[Any]:
    """The events of a one-iteration consortium run, made by the real protocol.

    Six member calls (one fails), the arbiter's answer, the verdict, the end: 11 events.
    """
    transition = consortium.start(run_id, make_request(), T0)
    TEXTS.update(transition.texts)
    events = [c for c in transition.commands if not isinstance(c, CallJob)]
    jobs = [c for c in transition.commands if isinstance(c, CallJob)]
    state = transition.state
    while jobs:
        job = jobs.pop(0)
        outcome: CallCompleted | CallFailed
        if job.model == "beta" and job.instance == 2:
            outcome = CallFailed(
                run_id=run_id, call_id=job.call_id, iteration=job.iteration, role=job.role, model=job.model,
                instance=job.instance, error="provider timed out", error_type="timeout", attempts=3,
                latency_ms=30_000, at=T0,
            )  # fmt: skip
        else:
            text = (
                ARBITER_TEXT
                if job.role == "arbiter"
                else f"It is 4. <confidence>0.{job.instance + 6}</confidence>"
            )
            outcome = CallCompleted(
                run_id=run_id, call_id=job.call_id, iteration=job.iteration, role=job.role, model=job.model,
                instance=job.instance, text=text, usage=Usage(input_tokens=100, output_tokens=20, cost_usd=0.001),
                finish_reason="stop", latency_ms=250, at=T0,
            )  # fmt: skip
        events.append(outcome)
        transition = consortium.decide(state, outcome)
        TEXTS.update(transition.texts)
        state = transition.state
        events += [c for c in transition.commands if not isinstance(c, CallJob)]
        jobs += [c for c in transition.commands if isinstance(c, CallJob)]
    assert state.status == "completed"
    return events


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


DEBATE_PROMPT = "Is a hot dog a sandwich?"
JUDGE_TEXT = "CONTINUE\nThe positions still differ on buns."
FINAL_TEXT = "Verdict: not a sandwich. alpha#1's taxonomy of breads held up; beta#1's case fell apart."


def make_debate_request(**kw: Any) -> DebateRequest:
    body: dict[str, Any] = {
        "mode": "debate",
        "prompt": DEBATE_PROMPT,
        "members": [{"model": "alpha", "count": 2}, {"model": "beta"}],
        "judge_mode": "external_judge",
        "judge": "judge",
        "max_rounds": 3,
    }
    return DebateRequest.model_validate(body | kw)


def judged_answer(job: CallJob) -> str | None:
    """External judge, 3 rounds: beta#1's turn fails in round 2, the judge says CONTINUE after it."""
    if job.role == "judge":
        return JUDGE_TEXT
    if job.role == "final":
        return FINAL_TEXT
    if job.iteration == 2 and job.model == "beta":
        return None
    return f"{job.model}#{job.instance} in round {job.iteration}: no, because of the bun."


def convergence_answer(job: CallJob) -> str | None:
    """Self-convergence: after round 2 alpha#2 concedes to beta#1 and alpha#1's conviction call
    fails; after round 3 alpha#1 and beta#1 convince each other, so alpha#1 (the earlier) is kept."""
    if job.role == "conviction":
        return {
            (2, "alpha", 1): None,
            (2, "alpha", 2): "CONVINCED: beta#1\nThe bun argument is decisive.",
            (2, "beta", 1): "NOT CONVINCED\nMine stands.",
            (3, "alpha", 1): "CONVINCED: beta#1\nFair enough.",
            (3, "beta", 1): "CONVINCED: alpha#1\nFair enough.",
        }[(job.iteration, job.model, job.instance)]
    if job.role == "final":
        return FINAL_TEXT
    return f"{job.model}#{job.instance} in round {job.iteration}: it depends on the bun."


def debate_run(
    run_id: str,
    request: DebateRequest,
    answer: Callable[[CallJob], str | None],
    chunk_size: int = 20,
) -> list[Any]:
    """The events of a debate, made by the real protocol, in the order they would be published.

    Each call outcome comes one second after the previous one (`at(n)`); `answer` says what a
    call answers (None: the call fails). The final call is streamed: its `final.chunk` events
    (`chunk_size` characters each) come before its outcome, as the worker publishes them.
    """
    clock = itertools.count(1)
    transition = debate.start(run_id, request, T0)
    TEXTS.update(transition.texts)
    events = [c for c in transition.commands if not isinstance(c, CallJob)]
    jobs = [c for c in transition.commands if isinstance(c, CallJob)]
    state = transition.state
    while jobs:
        job = jobs.pop(0)
        now = at(next(clock))
        text = answer(job)
        common: dict[str, Any] = {
            "run_id": run_id, "call_id": job.call_id, "iteration": job.iteration, "role": job.role,
            "model": job.model, "instance": job.instance, "at": now,
        }  # fmt: skip
        outcome: CallCompleted | CallFailed
        if text is None:
            outcome = CallFailed(**common, error="provider timed out", error_type="timeout", attempts=3)
        else:
            if job.stream:
                pieces = [text[i : i + chunk_size] for i in range(0, len(text), chunk_size)]
                events += [
                    FinalChunk(run_id=run_id, call_id=job.call_id, index=n, delta=piece, at=now)
                    for n, piece in enumerate(pieces)
                ]
            outcome = CallCompleted(
                **common, text=text, usage=Usage(input_tokens=100, output_tokens=20, cost_usd=0.001),
                finish_reason="stop", latency_ms=250,
            )  # fmt: skip
        events.append(outcome)
        transition = debate.decide(state, outcome)
        TEXTS.update(transition.texts)
        state = transition.state
        events += [c for c in transition.commands if not isinstance(c, CallJob)]
        jobs += [c for c in transition.commands if isinstance(c, CallJob)]
    assert state.status == "completed"
    return events


def call_rows_expected(events: list[Any]) -> dict[str, tuple[Any, ...]]:
    """The calls rows the call outcomes among `events` must make (without stream_seq)."""
    rows: dict[str, tuple[Any, ...]] = {}
    for e in events:
        if isinstance(e, CallCompleted):
            u = e.usage
            rows[e.call_id] = (e.call_id, e.run_id, e.iteration, e.role, e.model, e.instance, "completed",
                               e.text, None, None, u.input_tokens, u.output_tokens, u.cost_usd, e.latency_ms,
                               e.attempts, e.finish_reason, e.at)  # fmt: skip
        elif isinstance(e, CallFailed):
            rows[e.call_id] = (e.call_id, e.run_id, e.iteration, e.role, e.model, e.instance, "failed", None,
                               e.error, e.error_type, None, None, None, e.latency_ms, e.attempts, None, e.at)  # fmt: skip
    return rows


ROUND_JSONB = ("speakers", "eliminated", "remaining", "unanswered")


async def debate_round_rows(pool: asyncpg.Pool, run_id: str) -> list[tuple[Any, ...]]:
    rows = await pool.fetch("SELECT * FROM debate_rounds WHERE run_id = $1 ORDER BY round", run_id)
    return [
        tuple(json.loads(v) if k in ROUND_JSONB and v is not None else v for k, v in r.items()) for r in rows
    ]


async def snapshot(pool: asyncpg.Pool, run_id: str, *, volatile: bool = True) -> dict[str, Any]:
    """Every row of a run in every table, the run id replaced by RUN (so runs can be compared);
    without the columns that depend on stream positions and timing unless `volatile`."""
    out: dict[str, Any] = {}
    for table in TABLES:
        key = "id" if table == "runs" else "run_id"
        rows = [
            dict(r) for r in await pool.fetch(f"SELECT * FROM {table} WHERE {key} = $1 ORDER BY 1, 2", run_id)
        ]
        if not volatile:
            for row in rows:
                for column in ("updated_at", "recorded_at", "stream_seq"):
                    row.pop(column, None)
        out[table] = rows
    return json.loads(json.dumps(out, default=str).replace(run_id, "RUN"))


@dataclass
class Recorder:
    js: JetStreamContext
    names: Names
    pool: asyncpg.Pool
    app: Any
    texts: TextStore

    @property
    def handler(self) -> BatchRecorder:
        return self.app.state.recorder

    async def publish(self, event: Any, *, dedup: bool = True, headers: dict[str, str] | None = None) -> int:
        """Publish like the arbiter does (Nats-Msg-Id = event id), or without, like a late republish.

        The texts the event refers to are stored first, as the services do.
        """
        await self.texts.put_many(referred(event))
        hdrs = dict(headers or {})
        if dedup:
            hdrs[MSG_ID] = event.event_id()
        subject = self.names.run_event(event.run_id, event.type)
        ack = await self.js.publish(subject, event.model_dump_json().encode(), headers=hdrs or None)
        return ack.seq

    async def publish_raw(self, subject: str, data: bytes) -> int:
        return (await self.js.publish(subject, data)).seq

    async def consumed(self, seq: int, within: float = 10.0) -> None:
        """Wait until the recorder has acked everything up to stream sequence `seq`."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            info = await self.js.consumer_info(self.names.runs_stream, self.names.recorder_consumer)
            if info.ack_floor.stream_seq >= seq:
                return
            assert asyncio.get_running_loop().time() < deadline, f"recorder stuck at {info.ack_floor}"
            await asyncio.sleep(0.05)

    async def count(self, table: str, run_id: str) -> int:
        key = "id" if table == "runs" else "run_id"
        return await self.pool.fetchval(f"SELECT count(*) FROM {table} WHERE {key} = $1", run_id)

    async def run(self, run_id: str) -> asyncpg.Record:
        return await self.pool.fetchrow("SELECT * FROM runs WHERE id = $1", run_id)


@asynccontextmanager
async def running_recorder(
    nats_url: str, database_url: str, namespace: str, **recorder_settings: Any
) -> AsyncIterator[Recorder]:
    settings = MootSettings(nats_url=nats_url, database_url=database_url, namespace=namespace)
    names = Names(namespace)
    app = create_app(
        settings, RecorderSettings(batch_size=64, batch_timeout_seconds=0.1, **recorder_settings)
    )
    nc = await nats.connect(nats_url)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        js = nc.jetstream()
        await ensure_topology(js, names, settings)
        texts = await open_texts(js, names, settings)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as http:
                assert (await http.get("/readyz")).status_code == 200
            yield Recorder(js, names, pool, app, texts)
        # Clean up the namespace's streams: the NATS server may be shared with other runs.
        for stream in (names.runs_stream, names.jobs_stream, names.dead_stream, names.advisories_stream):
            await js.delete_stream(stream)
        await js.delete_key_value(names.state_bucket)
        await js.delete_key_value(names.text_bucket)
    finally:
        await pool.close()
        await nc.close()


@pytest.fixture
async def recorder(nats_url: str, database_url: str, namespace: str) -> AsyncIterator[Recorder]:
    async with running_recorder(nats_url, database_url, namespace) as rec:
        yield rec


def new_run_id() -> str:
    return f"run_{uuid.uuid4().hex[:12]}"


# ---------------------------------------------------------------------------------------------


async def test_records_a_run_once_even_when_events_come_again(recorder: Recorder) -> None:
    run_id = new_run_id()
    events = consortium_run(run_id)
    assert [e.type for e in events] == [
        "run.created", "iteration.started", *["call.completed"] * 4, "call.failed", "call.completed",
        "call.completed", "iteration.completed", "run.completed",
    ]  # fmt: skip
    end = events[-1]
    assert isinstance(end, RunCompleted)
    last = 0
    for event in events:
        last = await recorder.publish(event, headers={"traceparent": TRACEPARENT})
    await recorder.consumed(last)

    assert {t: await recorder.count(t, run_id) for t in ("runs", "iterations", "calls", "events")} == {
        "runs": 1, "iterations": 1, "calls": 7, "events": 11,
    }  # fmt: skip

    run = await recorder.run(run_id)
    assert run["mode"] == "consortium"
    assert run["status"] == "completed"
    assert run["prompt"] == "What is 2 + 2?"
    assert json.loads(run["request"]) == make_request().model_dump(mode="json")
    assert run["reason"] == end.reason and run["reason"].startswith("confidence 0.90 meets threshold")
    result = json.loads(run["result"])
    assert (result["synthesis"], result["confidence"], result["analysis"]) == (
        "2 + 2 = 4.",
        0.9,
        "All agree.",
    )
    # 5 member answers + the arbiter's, 100/20 tokens each; the failed call has no usage.
    assert (run["input_tokens"], run["output_tokens"]) == (600, 120)
    assert run["cost_usd"] == pytest.approx(0.006)
    assert run["iterations"] == 1
    assert json.loads(run["view"]) == full(end).run.model_dump(mode="json")
    assert run["created_at"] == T0 and run["finished_at"] == T0
    assert run["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"

    it = await recorder.pool.fetchrow("SELECT * FROM iterations WHERE run_id = $1", run_id)
    assert it["number"] == 1 and it["started_at"] == T0 and it["completed_at"] == T0
    assert len(it["member_call_ids"]) == 6 and f"{run_id}:1:member:beta:2" in it["member_call_ids"]
    assert (it["synthesis"], it["confidence"], it["needs_iteration"], it["malformed"]) == (
        "2 + 2 = 4.",
        0.9,
        False,
        False,
    )
    assert (it["decision"], it["dissent"], json.loads(it["refinement_areas"])) == ("stop", "None.", [])
    assert isinstance(json.loads(it["problems"]), list)

    calls = {
        r["call_id"]: r for r in await recorder.pool.fetch("SELECT * FROM calls WHERE run_id = $1", run_id)
    }
    failed = calls[f"{run_id}:1:member:beta:2"]
    assert (failed["status"], failed["error"], failed["error_type"], failed["attempts"]) == (
        "failed", "provider timed out", "timeout", 3,
    )  # fmt: skip
    assert failed["text"] is None and failed["input_tokens"] is None
    arbiter = calls[f"{run_id}:1:arbiter:judge:1"]
    assert (arbiter["role"], arbiter["status"], arbiter["text"], arbiter["finish_reason"]) == (
        "arbiter", "completed", ARBITER_TEXT, "stop",
    )  # fmt: skip
    assert (arbiter["input_tokens"], arbiter["output_tokens"], arbiter["latency_ms"]) == (100, 20, 250)
    assert sorted(r["status"] for r in calls.values()) == ["completed"] * 6 + ["failed"]

    seqs = await recorder.pool.fetch("SELECT event_id, stream_seq FROM events WHERE run_id = $1", run_id)
    first_seqs = {r["event_id"]: r["stream_seq"] for r in seqs}
    assert set(first_seqs) == {e.event_id() for e in events}
    assert await fetch_run_view(recorder.pool, run_id) == full(end).run

    # Redelivery after JetStream's duplicate window: same events, no Nats-Msg-Id, new stream
    # sequences. Plus a late run.failed for the finished run (it shares run.completed's id).
    late_fail = late_failure(end, T0)
    again = [events[0], events[1], events[2], events[6], events[-2], events[-1], late_fail]
    for event in again:
        last = await recorder.publish(event, dedup=False)
    await recorder.consumed(last)

    assert {t: await recorder.count(t, run_id) for t in ("runs", "iterations", "calls", "events")} == {
        "runs": 1, "iterations": 1, "calls": 7, "events": 11,
    }  # fmt: skip
    after = await recorder.run(run_id)
    assert dict(after) | {"updated_at": None} == dict(run) | {"updated_at": None}
    seqs = await recorder.pool.fetch("SELECT event_id, stream_seq FROM events WHERE run_id = $1", run_id)
    assert {r["event_id"]: r["stream_seq"] for r in seqs} == first_seqs
    stats = recorder.handler.stats
    assert stats.events_written >= 11 and stats.events_duplicate >= len(again)
    assert stats.batches_written >= 2 and stats.batches_failed == 0 and stats.last_batch_at is not None


async def test_end_before_start_still_ends_completed(recorder: Recorder) -> None:
    """Replicas may write run.completed before run.created: the run must end up completed."""
    run_id = new_run_id()
    events = consortium_run(run_id)
    created, started, end = events[0], events[1], events[-1]
    assert isinstance(created, RunCreated) and isinstance(end, RunCompleted)

    await recorder.consumed(await recorder.publish(end))
    run = await recorder.run(run_id)
    # Everything the end event's view carries is there already.
    assert (run["status"], run["mode"], run["prompt"], run["created_at"]) == (
        "completed",
        "consortium",
        full(created).request.prompt,
        T0,
    )
    assert json.loads(run["view"]) == full(end).run.model_dump(mode="json")

    await recorder.publish(created, headers={"traceparent": TRACEPARENT})
    await recorder.consumed(await recorder.publish(started))
    after = await recorder.run(run_id)
    assert after["status"] == "completed"
    assert json.loads(after["view"]) == full(end).run.model_dump(mode="json") and after["finished_at"] == T0
    assert json.loads(after["request"]) == full(created).request.model_dump(mode="json")
    assert after["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"  # only run.created carried one
    assert await recorder.count("iterations", run_id) == 1
    assert await recorder.count("events", run_id) == 3


async def test_running_run_view_and_bad_messages(recorder: Recorder) -> None:
    """Poison messages are skipped, a row Postgres rejects is isolated, the rest is recorded."""
    run_id = new_run_id()
    events = consortium_run(run_id)
    created, member = events[0], events[2]
    assert isinstance(member, CallCompleted)
    # NUL is valid in JSON but not in Postgres text: it must not block the batch.
    nul_answer = member.model_copy(update={"text": "four\x00!"})
    # Parses as an event, but latency does not fit a bigint: Postgres (asyncpg) refuses the row.
    too_big = events[3].model_copy(update={"latency_ms": 2**70})
    await recorder.publish_raw(recorder.names.run_event(run_id, "call.completed"), b"\xff not json")
    await recorder.publish_raw(recorder.names.run_event(run_id, "run.created"), b'{"type": "run.created"}')
    await recorder.publish(created)
    await recorder.publish(too_big)
    last = await recorder.publish(nul_answer)
    await recorder.consumed(last)

    assert await recorder.count("events", run_id) == 2
    text = await recorder.pool.fetchval("SELECT text FROM calls WHERE call_id = $1", member.call_id)
    assert text == "four!"
    assert await recorder.count("calls", run_id) == 1
    assert recorder.handler.stats.events_skipped >= 3
    # None of them lost: each is a dead letter with its reason.
    letters = await deadletters.read_all(recorder.js, recorder.names)
    assert sorted(d.reason for d in letters) == [
        "rejected by the database: DataError 22000",
        "undecodable: UnicodeDecodeError",
        "undecodable: ValidationError",
    ]
    assert {d.consumer for d in letters} == {recorder.names.recorder_consumer}

    view = await fetch_run_view(recorder.pool, run_id)
    assert view is not None
    shown = view.model_dump(mode="json")
    assert (shown["id"], shown["mode"], shown["status"], shown["created_at"]) == (
        run_id,
        "consortium",
        "running",
        T0.isoformat(),
    )
    assert shown["request"] == full(created).request.model_dump(mode="json")
    assert shown["result"] is None and shown["finished_at"] is None
    assert await fetch_run_view(recorder.pool, "no-such-run") is None


async def test_database_errors_nack_the_batch_for_later(recorder: Recorder, database_url: str) -> None:
    """A batch the database cannot take (here: tables not found) is redelivered and then recorded."""
    run_id = new_run_id()
    events = consortium_run(run_id)[:3]
    working = recorder.handler.writer
    assert working is not None
    # A real pool whose search_path hides the tables: every write fails like an unavailable schema.
    blind = await asyncpg.create_pool(
        database_url, min_size=1, max_size=1, server_settings={"search_path": "nowhere"}
    )
    try:
        recorder.handler.writer = Writer(blind)
        last = 0
        for event in events:
            last = await recorder.publish(event)
        deadline = asyncio.get_running_loop().time() + 5
        while recorder.handler.stats.batches_failed == 0:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        recorder.handler.writer = working
        await recorder.consumed(last)  # the nack delay is 1 s
    finally:
        await blind.close()
    assert await recorder.count("events", run_id) == 3
    assert await recorder.count("calls", run_id) == 1
    info = await recorder.js.consumer_info(recorder.names.runs_stream, recorder.names.recorder_consumer)
    assert info.num_pending == 0 and info.num_ack_pending == 0


async def test_events_with_references_are_recorded_with_their_texts(recorder: Recorder) -> None:
    """A long answer published by reference (as a worker does) is a full text in every row."""
    run_id = new_run_id()
    created, started, member = consortium_run(run_id)[:3]
    assert isinstance(member, CallCompleted) and isinstance(created, RunCreated)
    answer = "Four, and here is why: " + "two and two make four, é ✓. " * 400
    sink = TextSink()
    by_reference = member.model_copy(update={"text": sink.text(answer)})
    assert isinstance(by_reference.text, TextRef)
    await recorder.texts.put_many(sink.texts)
    await recorder.publish(created)
    await recorder.publish(started)
    await recorder.consumed(await recorder.publish(by_reference))

    text = await recorder.pool.fetchval("SELECT text FROM calls WHERE call_id = $1", member.call_id)
    assert text == answer
    payload = await recorder.pool.fetchval(
        "SELECT payload::text FROM events WHERE event_id = $1", by_reference.event_id()
    )
    assert json.loads(payload)["text"] == answer and "$text" not in payload
    # The request went by reference too (a JSON document): the runs row has it whole.
    assert isinstance(created.request, TextRef)
    run = await recorder.run(run_id)
    assert run["prompt"] == "What is 2 + 2?"
    assert json.loads(run["request"]) == make_request().model_dump(mode="json")


async def test_a_missing_text_holds_the_batch_back(recorder: Recorder) -> None:
    """An event whose text is not (yet) stored is not recorded without it: the batch comes again."""
    run_id = new_run_id()
    member = consortium_run(run_id)[2]
    assert isinstance(member, CallCompleted)
    answer = "An answer stored late. " * 30
    sink = TextSink()
    event = member.model_copy(update={"text": sink.text(answer)})
    subject = recorder.names.run_event(run_id, event.type)
    last = (await recorder.js.publish(subject, event.model_dump_json().encode())).seq
    deadline = asyncio.get_running_loop().time() + 5
    while recorder.handler.stats.batches_failed == 0:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    assert await recorder.count("events", run_id) == 0  # nothing recorded without its text
    await recorder.texts.put_many(sink.texts)
    await recorder.consumed(last)  # redelivered after the nack delay (1 s)
    text = await recorder.pool.fetchval("SELECT text FROM calls WHERE call_id = $1", member.call_id)
    assert text == answer


# --------------------------------------------------------------------------------------------- rows


def test_row_mapping() -> None:
    run_id = "r1"
    events = consortium_run(run_id)
    envelopes = [envelope_from(full_json(e), n, {}) for n, e in enumerate(events, start=1)]
    rows = to_rows(envelopes)
    assert (len(rows.runs), len(rows.iterations), len(rows.calls)) == (2, 2, 7)
    created, ended = rows.runs  # stream order kept for one run
    assert created[:4] == (run_id, "consortium", "running", "What is 2 + 2?") and created[5:12] == (None,) * 7
    assert ended[2] == "completed" and ended[7:11] == (600, 120, pytest.approx(0.006), 1)
    verdict = next(r for r in rows.iterations if r[2] is None)
    assert verdict[4:9] == ("2 + 2 = 4.", 0.9, "All agree.", "None.", False) and verdict[12] == "stop"

    # A view that is not finished still ends the run, as its end event says.
    end = full(events[-1])
    assert isinstance(end, RunCompleted) and isinstance(events[-2], IterationCompleted)
    odd = end.model_copy(update={"run": end.run.model_copy(update={"status": "running"})})
    env = envelope_from(odd.model_dump_json().encode(), 99)
    assert to_rows([env]).runs[0][2] == "completed"
    failed = RunFailed(run_id=run_id, reason="x", run=end.run.model_copy(update={"status": "cancelled"}))
    assert to_rows([envelope_from(failed.model_dump_json().encode(), 100)]).runs[0][2] == "cancelled"

    def trace_of(headers: dict[str, str]) -> str | None:
        return envelope_from(failed.model_dump_json().encode(), 101, headers).trace_id

    assert trace_of({"traceparent": TRACEPARENT}) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_of({"traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01"}) is None
    assert trace_of({"traceparent": "garbage"}) is None and trace_of({}) is None
    with pytest.raises(ValueError):
        envelope_from(b'{"type": "run.created"}', 1)


# --------------------------------------------------------------------------------------------- debates


async def test_records_a_debate_once_even_when_events_come_again(recorder: Recorder) -> None:
    run_id = new_run_id()
    request = make_debate_request()
    events = debate_run(run_id, request, judged_answer)
    turn = ["call.completed", "turn.completed"]
    failed_turn = ["call.failed", "turn.completed"]
    chunks = -(-len(FINAL_TEXT) // 20)
    assert chunks == 5
    assert [e.type for e in events] == [
        "debate.started", "round.started", *turn * 3, "round.completed",
        "round.started", *turn * 2, *failed_turn, "round.completed",
        "call.completed", "judge.decided",
        "round.started", *turn * 3, "round.completed",
        "final.started", *["final.chunk"] * chunks, "call.completed", "final.completed", "debate.completed",
        "run.completed",
    ]  # fmt: skip
    start, end = events[0], events[-1]
    assert isinstance(start, DebateStart) and isinstance(end, RunCompleted)

    # Running: the minimal view of a debate, with the keys of the full one.
    await recorder.consumed(await recorder.publish(start, headers={"traceparent": TRACEPARENT}))
    running_view = await fetch_run_view(recorder.pool, run_id)
    assert running_view is not None
    running = running_view.model_dump(mode="json")
    assert running == {
        "id": run_id, "mode": "debate", "status": "running", "created_at": T0.isoformat(), "finished_at": None,
        "reason": None, "owner": "", "config": None, "continued_from": None,
        "request": request.model_dump(mode="json"), "debaters": [], "rounds": [],
        "final": None, "result": None, "usage": {"input_tokens": 0, "output_tokens": 0, "cost_usd": None},
        "deadline": None, "stop_reason": None,
    }  # fmt: skip
    assert running.keys() == full(end).run.model_dump().keys()

    last = 0
    for event in events[1:]:
        last = await recorder.publish(event, headers={"traceparent": TRACEPARENT})
    await recorder.consumed(last)

    counts = {t: await recorder.count(t, run_id) for t in TABLES}
    assert counts == {
        "runs": 1, "iterations": 0, "debate_rounds": 3, "steps": 0, "calls": 11, "events": len(events),
    }  # fmt: skip

    run = dict(await recorder.run(run_id))
    assert run.pop("updated_at") is not None
    for column in ("request", "result", "view"):
        run[column] = json.loads(run[column])
    assert run.pop("cost_usd") == pytest.approx(0.01)
    assert run == {
        "id": run_id, "mode": "debate", "status": "completed", "prompt": DEBATE_PROMPT,
        "request": request.model_dump(mode="json"), "reason": "reached max_rounds (3)",
        "result": {"text": FINAL_TEXT, "model": "judge", "by": "judge"},
        # 10 calls answered (9 turns and the judge's, plus the verdict, minus beta#1's failed turn)
        "input_tokens": 1000, "output_tokens": 200, "iterations": 3, "view": full(end).run.model_dump(mode="json"),
        "created_at": T0, "finished_at": at(11), "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "owner": None,
    }  # fmt: skip

    speakers = ["alpha#1", "alpha#2", "beta#1"]
    assert await debate_round_rows(recorder.pool, run_id) == [
        (run_id, 1, T0, speakers, 3, 0, at(3), None, None, None, None, None, None, None, None),
        (run_id, 2, at(3), speakers, 3, 1, at(6), "judge", True, True, "The positions still differ on buns.",
         None, None, None, None),
        (run_id, 3, at(7), speakers, 3, 0, at(10), None, None, None, None, None, None, None, None),
    ]  # fmt: skip

    calls = {
        r["call_id"]: tuple(r.values())[:-1]
        for r in await recorder.pool.fetch("SELECT * FROM calls WHERE run_id = $1", run_id)
    }
    assert calls == call_rows_expected(events)
    assert Counter((c[3], c[6]) for c in calls.values()) == {
        ("debater", "completed"): 8, ("debater", "failed"): 1, ("judge", "completed"): 1,
        ("final", "completed"): 1,
    }  # fmt: skip
    assert calls[f"{run_id}:2:judge:judge:1"][2:8] == (2, "judge", "judge", 1, "completed", JUDGE_TEXT)
    assert calls[f"{run_id}:3:final:judge:1"][2:8] == (3, "final", "judge", 1, "completed", FINAL_TEXT)
    assert calls[f"{run_id}:2:debater:beta:1"][6:10] == ("failed", None, "provider timed out", "timeout")

    recorded = await recorder.pool.fetch(
        "SELECT event_id, type, payload::text AS payload, at FROM events WHERE run_id = $1 ORDER BY stream_seq",
        run_id,
    )
    assert [(r["event_id"], r["type"], r["at"]) for r in recorded] == [
        (e.event_id(), e.type, e.at) for e in events
    ]
    assert [json.loads(r["payload"]) for r in recorded] == [full_data(e) for e in events]
    # The streamed verdict: the chunks in order make the final call's answer.
    deltas = [json.loads(r["payload"])["delta"] for r in recorded if r["type"] == "final.chunk"]
    assert "".join(deltas) == FINAL_TEXT
    judged = next(json.loads(r["payload"]) for r in recorded if r["type"] == "judge.decided")
    assert judged["continue"] is True  # published by its alias, as clients know it

    assert await fetch_run_view(recorder.pool, run_id) == full(end).run

    # Redelivery after JetStream's duplicate window: every event again without Nats-Msg-Id (new
    # stream sequences), and a late run.failed for the finished debate. Not a row changes.
    before = await snapshot(recorder.pool, run_id)
    late_fail = late_failure(end, at(99))
    for event in [*events, late_fail]:
        last = await recorder.publish(event, dedup=False)
    await recorder.consumed(last)
    assert await snapshot(recorder.pool, run_id) == before
    assert recorder.handler.stats.events_duplicate >= len(events) + 1


async def test_debate_end_before_start_still_ends_completed(recorder: Recorder) -> None:
    """run.completed first, then the whole debate backwards: the same rows as in order."""
    run_id = new_run_id()
    events = debate_run(run_id, make_debate_request(), judged_answer)
    start, end = events[0], events[-1]
    assert isinstance(start, DebateStart) and isinstance(end, RunCompleted)

    await recorder.consumed(await recorder.publish(end))
    run = await recorder.run(run_id)
    # Everything the end event's view carries is there already.
    assert (run["status"], run["mode"], run["prompt"], run["created_at"], run["finished_at"]) == (
        "completed", "debate", DEBATE_PROMPT, T0, at(11),
    )  # fmt: skip
    assert (run["iterations"], json.loads(run["result"])["text"]) == (3, FINAL_TEXT)
    assert await recorder.count("debate_rounds", run_id) == 0

    last = 0
    for event in reversed(events[:-1]):
        last = await recorder.publish(event, headers={"traceparent": TRACEPARENT} if event is start else None)
    await recorder.consumed(last)

    after = await recorder.run(run_id)
    assert after["status"] == "completed" and after["reason"] == "reached max_rounds (3)"
    assert json.loads(after["view"]) == full(end).run.model_dump(mode="json")
    assert after["finished_at"] == at(11)
    assert json.loads(after["request"]) == full(start).request.model_dump(mode="json")
    assert after["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"  # only debate_start carried one
    assert await fetch_run_view(recorder.pool, run_id) == full(end).run

    speakers = ["alpha#1", "alpha#2", "beta#1"]
    assert await debate_round_rows(recorder.pool, run_id) == [
        (run_id, 1, T0, speakers, 3, 0, at(3), None, None, None, None, None, None, None, None),
        (run_id, 2, at(3), speakers, 3, 1, at(6), "judge", True, True, "The positions still differ on buns.",
         None, None, None, None),
        (run_id, 3, at(7), speakers, 3, 0, at(10), None, None, None, None, None, None, None, None),
    ]  # fmt: skip
    assert await recorder.count("calls", run_id) == 11
    assert await recorder.count("events", run_id) == len(events)


def council_run(run_id: str) -> list[Any]:
    """The events of a council of three made by the real protocol: every reviewer ranks B over A."""
    request = CouncilRequest(
        prompt="What is 2 + 2?", members=[MemberSpec(model="alpha", count=3)], chairman="chair"
    )
    transition = council.start(run_id, request, T0)
    TEXTS.update(transition.texts)
    events = [c for c in transition.commands if not isinstance(c, CallJob)]
    jobs = [c for c in transition.commands if isinstance(c, CallJob)]
    state = transition.state
    while jobs:
        job = jobs.pop(0)
        text = {"member": f"It is 4 (#{job.instance}).", "reviewer": "FINAL RANKING:\n1. B\n2. A"}.get(
            job.role, "4."
        )
        outcome = CallCompleted(
            run_id=run_id, call_id=job.call_id, iteration=job.iteration, role=job.role, model=job.model,
            instance=job.instance, text=text, usage=Usage(input_tokens=10, output_tokens=5), at=T0,
        )  # fmt: skip
        events.append(outcome)
        transition = council.decide(state, outcome)
        TEXTS.update(transition.texts)
        state = transition.state
        events += [c for c in transition.commands if not isinstance(c, CallJob)]
        jobs += [c for c in transition.commands if isinstance(c, CallJob)]
    assert state.status == "completed"
    return events


async def test_a_council_is_recorded_in_steps_in_any_order(recorder: Recorder) -> None:
    """A protocol without tables of its own: its steps become `steps` rows, the same whatever the
    order and however often its events come."""
    run_id = new_run_id()
    events = council_run(run_id)
    assert [e.type for e in events if e.type.startswith(("step.", "run."))] == [
        "run.created", "step.started", "step.completed", "step.started", "step.completed",
        "step.started", "step.completed", "run.completed",
    ]  # fmt: skip
    shuffled = list(reversed(events)) + events[::3]
    last = 0
    for event in shuffled:
        last = await recorder.publish(event, dedup=False)
    await recorder.consumed(last)

    steps = await recorder.pool.fetch(
        "SELECT step, name, started_at, call_ids, completed_at, data FROM steps WHERE run_id = $1 ORDER BY step",
        run_id,
    )
    assert [(r["step"], r["name"], r["started_at"], r["completed_at"]) for r in steps] == [
        (1, "answers", T0, T0), (2, "reviews", T0, T0), (3, "chairman", T0, T0),
    ]  # fmt: skip
    assert json.loads(steps[0]["call_ids"]) == [f"{run_id}:1:member:alpha:{i}" for i in (1, 2, 3)]
    assert json.loads(steps[0]["data"]) == {"answered": 3, "failed": 0}
    ranking = json.loads(steps[1]["data"])["ranking"]
    assert [r["rank"] for r in ranking] == [1, 2, 3] and sum(r["score"] for r in ranking) == 3
    assert {t: await recorder.count(t, run_id) for t in TABLES} == {
        "runs": 1, "iterations": 0, "debate_rounds": 0, "steps": 3, "calls": 7, "events": len(events),
    }  # fmt: skip
    run = await recorder.run(run_id)
    assert (run["mode"], run["status"], run["iterations"]) == ("council", "completed", 3)
    assert await fetch_run_view(recorder.pool, run_id) == full(events[-1]).run


async def test_self_convergence_rows_in_any_order(recorder: Recorder) -> None:
    """One transaction per event, in order, backwards and shuffled: always the same rows."""
    writer = Writer(recorder.pool)
    request = make_debate_request(judge_mode="self_convergence", judge=None, max_rounds=4)
    orders: dict[str, Callable[[list[Any]], list[Any]]] = {
        "in order": list,
        "backwards": lambda es: es[::-1],
        "shuffled": lambda es: random.Random(7).sample(es, len(es)),
    }
    snapshots = {}
    for name, order in orders.items():
        run_id = new_run_id()
        events = debate_run(run_id, request, convergence_answer)
        for seq, event in enumerate(order(events), start=1):
            await writer.write([envelope_from(full_json(event), seq)])
        snapshots[name] = await snapshot(recorder.pool, run_id, volatile=False)

        run = await recorder.run(run_id)
        assert (run["status"], run["iterations"], run["reason"]) == (
            "completed",
            3,
            "only alpha#1 remains after round 3",
        )
        assert json.loads(run["result"]) == {"text": FINAL_TEXT, "model": "alpha", "by": "debater"}
        rounds = await debate_round_rows(recorder.pool, run_id)
        everyone, two = ["alpha#1", "alpha#2", "beta#1"], ["alpha#1", "beta#1"]
        assert [r[3:] for r in rounds] == [
            (everyone, 3, 0, rounds[0][6], None, None, None, None, None, None, None, None),
            (everyone, 3, 0, rounds[1][6], None, None, None, None, ["alpha#2"], None, two, ["alpha#1"]),
            (two, 2, 0, rounds[2][6], None, None, None, None, ["beta#1"], "alpha#1", ["alpha#1"], []),
        ]  # fmt: skip
        assert [r[1:3] + r[6:7] for r in rounds] == [(1, T0, at(3)), (2, at(3), at(6)), (3, at(9), at(11))]
        roles = await recorder.pool.fetch(
            "SELECT role, count(*) FROM calls WHERE run_id = $1 GROUP BY role", run_id
        )
        assert dict((r["role"], r["count"]) for r in roles) == {"debater": 8, "conviction": 5, "final": 1}
        failed = await recorder.pool.fetchval(
            "SELECT call_id FROM calls WHERE run_id = $1 AND status = 'failed'", run_id
        )
        assert failed == f"{run_id}:2:conviction:alpha:1"
    assert snapshots["backwards"] == snapshots["in order"]
    assert snapshots["shuffled"] == snapshots["in order"]


async def test_many_final_chunks_in_one_batch(recorder: Recorder) -> None:
    """A streamed verdict is hundreds of tiny events: one events statement, no other rows."""
    run_id = new_run_id()
    call_id = f"{run_id}:3:final:judge:1"
    chunks = [
        FinalChunk(run_id=run_id, call_id=call_id, index=n, delta=f"w{n} ", at=at(n)) for n in range(500)
    ]
    data = [c.model_dump_json().encode() for c in chunks]

    envelopes: list[Envelope] = [envelope_from(d, seq, {}) for seq, d in enumerate(data, start=1)]
    result = await Writer(recorder.pool).write(envelopes)
    # One statement for the batch, not one per chunk: only the events table is touched.
    assert result.new_events == 500 and result.duplicates == 0
    assert result.rows == {
        "events": 500,
        "runs": 0,
        "iterations": 0,
        "debate_rounds": 0,
        "steps": 0,
        "calls": 0,
    }

    deltas = await recorder.pool.fetch(
        "SELECT payload->>'delta' AS delta FROM events WHERE run_id = $1 ORDER BY (payload->>'index')::int",
        run_id,
    )
    assert "".join(r["delta"] for r in deltas) == "".join(f"w{n} " for n in range(500))
    assert {t: await recorder.count(t, run_id) for t in TABLES} == {
        "runs": 0, "iterations": 0, "debate_rounds": 0, "steps": 0, "calls": 0, "events": 500,
    }  # fmt: skip
    again = await Writer(recorder.pool).write(envelopes)
    assert (again.new_events, again.duplicates) == (0, 500)

    # And through the recorder: the same chunks published as the worker does, batched by the consumer.
    run_id = new_run_id()
    call_id = f"{run_id}:3:final:judge:1"
    last = 0
    for n in range(500):
        last = await recorder.publish(
            FinalChunk(run_id=run_id, call_id=call_id, index=n, delta=f"w{n} ", at=at(n))
        )
    await recorder.consumed(last)
    assert await recorder.count("events", run_id) == 500


# ------------------------------------------------------------------------------ database outage


class TcpProxy:
    """A TCP proxy to Postgres that can be taken away (listener closed, connections cut) and back."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in list(self.writers):
            w.transport.abort()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.transport.abort()
                self.writers.discard(dst)

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_a_database_outage_is_waited_out_with_nothing_lost_or_doubled(
    nats_url: str, database_url: str, namespace: str
) -> None:
    """Postgres unreachable for a while: the recorder keeps nacking (no delivery limit; backoff
    capped, here at 1 s), the stream holds the events, and after the outage every event published
    during it is recorded, once."""
    from urllib.parse import urlsplit

    url = urlsplit(database_url)
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 5432)
    await proxy.start()
    proxied = url._replace(netloc=f"{url.username or 'postgres'}@127.0.0.1:{proxy.port}").geturl()
    if url.password:
        proxied = url._replace(netloc=f"{url.username}:{url.password}@127.0.0.1:{proxy.port}").geturl()
    async with running_recorder(nats_url, proxied, namespace, retry_delay_max_seconds=1.0) as rec:
        info = await rec.js.consumer_info(rec.names.runs_stream, rec.names.recorder_consumer)
        assert info.config.max_deliver == -1  # no delivery limit: the stream is the buffer
        before = consortium_run(new_run_id())
        await rec.consumed(max([await rec.publish(e) for e in before]))

        await proxy.stop()
        runs = [consortium_run(new_run_id()) for _ in range(5)]
        last = 0
        for events in runs:
            for event in events:
                last = await rec.publish(event)
        failed = rec.handler.stats.batches_failed
        # Redelivered and refused again and again, well past a few deliveries.
        deadline = asyncio.get_running_loop().time() + 20
        while rec.handler.stats.batches_failed < failed + 4:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.1)
        await proxy.start()
        await rec.consumed(last, within=30)

        for events in [before, *runs]:
            run_id = events[0].run_id
            stored = await rec.pool.fetch("SELECT event_id FROM events WHERE run_id = $1", run_id)
            assert Counter(r["event_id"] for r in stored) == Counter({e.event_id() for e in events})
            assert (await rec.run(run_id))["status"] == "completed"
        assert await deadletters.read_all(rec.js, rec.names) == []
    await proxy.stop()
