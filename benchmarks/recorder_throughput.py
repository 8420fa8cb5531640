"""Recorder throughput: run events into Postgres, batched, against one INSERT per event.

    .venv/bin/python benchmarks/recorder_throughput.py [--runs N] [--debate-share F] [--rate-runs-per-s R]

What it does (see benchmarks/README.md for every option and how to read the output):

1. builds the events of N whole runs the way production makes them: consortium runs (3 members,
   arbiter, one iteration) and debates (3 debaters, 3 rounds, an external judge whose verdict is
   streamed as `final.chunk`s), each driven by the protocol's own `start()`/`decide()` with canned
   call outcomes (member answers of `--answer-chars` characters, the test model server's arbiter
   answer). Every event is what the arbiter or a worker would publish: its JSON, its subject
   `<ns>.runs.<run_id>.<type>`, its `Nats-Msg-Id`, long texts by reference (answers, requests,
   views) with the texts put in the text store first. Runs are interleaved, C at a time, as if C
   ran at once;
2. baseline: the same events written one event per transaction with the recorder's own SQL
   (`moot_recorder.writer.Writer.write` given a one-event batch: the `events` insert and the one
   upsert that event makes), from this process, `--baseline-concurrency` writers on a pool of that
   size, in a database of its own; events come from memory already hydrated (no NATS, no text
   store reads: the baseline's advantage). Time-boxed (`--baseline-seconds`);
3. the real recorder (`python -m moot_recorder`, a process of `moot.devstack.stack.Stack`, alone)
   on NATS_URL / DATABASE_URL in a fresh namespace and database: every event published to the runs
   stream as fast as this process can, and the time from the first publish until `events` holds
   them all; CPU of the recorder, NATS and Postgres (psutil);
4. at benchmark 2's rate: consortium runs published at `--rate-runs-per-s` (default: the figure
   of docs/benchmarks.md, or `--measure-rate` runs a short `consortium_throughput.py`), each run's
   events spread over its run time, for `--rate-seconds`; the backlog (events published and not
   yet in `events`) sampled every 0.1 s.

Everything started here is stopped on exit; the namespace's streams and buckets and the
databases are deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import asyncpg
import nats
import psutil
from consortium_throughput import (
    CpuMeter,
    bench_infrastructure,
    create_database,
    drop_database,
    print_log_findings,
    print_profile,
    profile_process,
    scan_logs,
    summarize_profile,
)
from harness import delete_namespace, run_benchmark
from nats.js import JetStreamContext

from moot.devstack.embedded import Infrastructure
from moot.devstack.model_server import ModelBehaviour, arbiter_reply
from moot.devstack.stack import ServiceSpec, Stack
from moot.messages import CallJob, FinalChunk
from moot.protocols import consortium, debate
from moot.protocols.base import Command, Transition
from moot.records.migrate import migrate
from moot.requests import ConsortiumRequest, DebateRequest
from moot.runtime.nats import MSG_ID
from moot.runtime.subjects import Names
from moot.runtime.textstore import open_text_store
from moot.texts import TextSink, hydrate
from moot.views import Usage
from moot_recorder.writer import Writer, envelope_of

MEMBERS = ("m1", "m2", "m3")
ARBITER = "arb"
JUDGE = "judge"
PROMPT = "Is it better to walk or to cycle 3 km to work in a city? Answer in two sentences."
# docs/benchmarks.md, "Consortium throughput": moot at C=16, 2 workers (the table's current figure).
DOCS_RUNS_PER_S = 15.3
WORDS = re.compile(r"\S*\s*")  # how the test model server cuts a streamed answer into chunks


# --------------------------------------------------------------------------- events


@dataclass
class Message:
    subject: str
    msg_id: str
    payload: bytes
    run_id: str
    type: str


@dataclass
class Workload:
    messages: list[Message] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)
    runs: int = 0
    by_type: dict[str, int] = field(default_factory=dict)

    def add_run(self, run: list[Message], texts: dict[str, str]) -> None:
        self.runs += 1
        self.texts.update(texts)
        for m in run:
            self.by_type[m.type] = self.by_type.get(m.type, 0) + 1


def answer_text(job: CallJob, chars: int) -> str:
    """A canned answer for a call, as a model would give it (long ones go by reference)."""
    if job.role == "arbiter":
        return arbiter_reply(ModelBehaviour(), model=job.model, n=1, call=1, last_user="")
    if job.role == "judge":
        return "CONTINUE\nThe debaters still disagree on the main point; another round would help."
    head = f"{job.call_id}: "  # every answer its own text, as a model's would be
    body = "Cycling is faster over 3 km and walking is calmer; both are healthy and cheap. " * (
        chars // 80 + 1
    )
    return (head + body)[: max(chars, len(head))] + "\nConfidence: 0.8"


class RunBuilder:
    """Plays whole runs through the protocols with canned outcomes; collects what is published."""

    def __init__(self, names: Names, answer_chars: int) -> None:
        self.names = names
        self.answer_chars = answer_chars

    def _event(self, command: Command) -> Message:
        assert not isinstance(command, CallJob)
        return Message(
            self.names.run_event(command.run_id, command.type),
            command.event_id(),
            command.model_dump_json().encode(),
            command.run_id,
            command.type,
        )

    def play(
        self, run_id: str, request: ConsortiumRequest | DebateRequest, at: datetime
    ) -> tuple[list[Message], dict[str, str]]:
        """Every event of the run in publish order, and every text they refer to."""
        protocol: Any = consortium if isinstance(request, ConsortiumRequest) else debate
        messages: list[Message] = []
        texts: dict[str, str] = {}
        clock = [at]

        def tick(ms: int) -> datetime:
            clock[0] += timedelta(milliseconds=ms)
            return clock[0]

        def take(t: Transition[Any]) -> list[CallJob]:
            texts.update(t.texts)
            messages.extend(self._event(c) for c in t.commands if not isinstance(c, CallJob))
            return [c for c in t.commands if isinstance(c, CallJob)]

        state: Any
        t = protocol.start(run_id, request, tick(0))
        state, pending = t.state, take(t)
        while pending:
            job = pending.pop(0)
            text = answer_text(job, self.answer_chars)
            if job.stream:  # the worker publishes the deltas as they come in
                for index, piece in enumerate(p for p in WORDS.findall(text) if p):
                    chunk = FinalChunk(
                        run_id=run_id, call_id=job.call_id, index=index, delta=piece, at=tick(2)
                    )
                    messages.append(self._event(chunk))
            outcome = job.completed(
                text,
                usage=Usage(input_tokens=400, output_tokens=len(text) // 4, cost_usd=0.0),
                attempts=1,
                latency_ms=200,
                worker="bench-worker:1",
                finish_reason="stop",
                at=tick(200),
            )
            # As the worker publishes it: a long answer stored, carried by reference.
            sink = TextSink()
            published = outcome.model_copy(update={"text": sink.text(text)})
            texts.update(sink.texts)
            messages.append(self._event(published))
            t = protocol.decide(state, outcome)
            state = t.state
            pending += take(t)
        if state.status != "completed":
            raise RuntimeError(f"run {run_id} ended {state.status}: the canned answers are off")
        return messages, texts

    def consortium_run(self, at: datetime) -> tuple[list[Message], dict[str, str]]:
        request = ConsortiumRequest(
            prompt=PROMPT, members=[{"model": m} for m in MEMBERS], arbiter=ARBITER, max_iterations=1
        )
        return self.play(uuid.uuid4().hex, request, at)

    def debate_run(self, at: datetime) -> tuple[list[Message], dict[str, str]]:
        request = DebateRequest(
            prompt=PROMPT, members=[{"model": m} for m in MEMBERS], judge=JUDGE, max_rounds=3
        )
        return self.play(uuid.uuid4().hex, request, at)


def build(names: Names, runs: int, debate_share: float, concurrency: int, answer_chars: int) -> Workload:
    """`runs` runs (a share of them debates), interleaved `concurrency` at a time."""
    builder = RunBuilder(names, answer_chars)
    rng = random.Random(14)
    work = Workload()
    at = datetime.now(UTC)
    group: list[list[Message]] = []

    def flush() -> None:
        # Round-robin over the group's runs: each run's events stay in order.
        while any(group):
            for run in group:
                if run:
                    work.messages.append(run.pop(0))
        group.clear()

    for i in range(runs):
        run, texts = builder.debate_run(at) if rng.random() < debate_share else builder.consortium_run(at)
        work.add_run(run, texts)
        group.append(run)
        if len(group) == concurrency or i == runs - 1:
            flush()
    return work


# --------------------------------------------------------------------------- phases


@dataclass
class Phase:
    name: str
    events: int
    seconds: float
    events_per_s: float
    publish_seconds: float | None = None  # first publish -> last publish acknowledged
    cpu: list[dict[str, Any]] = field(default_factory=list)
    machine_busy_cores: float = 0.0
    notes: list[str] = field(default_factory=list)
    max_backlog: int | None = None
    max_backlog_seconds: float | None = None
    lag_after_last_publish: float | None = None
    offered_events_per_s: float | None = None


def recorder_cpu(phase: Phase) -> dict[str, Any] | None:
    return next((r for r in phase.cpu if r["process"] == "recorder"), None)


def us_per_event(row: dict[str, Any] | None, events: int) -> float | None:
    return None if row is None else 1e6 * row["cpu_s"] / max(events, 1)


async def count_events(conn: asyncpg.Connection) -> int:
    n: int = await conn.fetchval("SELECT count(*) FROM events")
    return n


async def baseline_phase(admin_url: str, work: Workload, meter: CpuMeter, args: argparse.Namespace) -> Phase:
    """One event per transaction, with the recorder's SQL, `--baseline-concurrency` at a time."""
    db_name = f"moot_bench_rec_base_{secrets.token_hex(4)}"
    url = await create_database(admin_url, db_name)
    try:
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        # The envelopes the recorder would make (hydrated, parsed): built before the clock starts.
        envelopes = [
            envelope_of(hydrate(json.loads(m.payload), work.texts), seq)
            for seq, m in enumerate(work.messages, start=1)
        ]
        pool = await asyncpg.create_pool(
            url, min_size=args.baseline_concurrency, max_size=args.baseline_concurrency
        )
        try:
            writer = Writer(pool)
            queue = iter(envelopes)
            written = 0
            deadline = time.perf_counter() + args.baseline_seconds

            async def lane() -> None:
                nonlocal written
                for env in queue:
                    if time.perf_counter() > deadline:
                        return
                    await writer.write([env])
                    written += 1

            before = meter.snapshot()
            started = time.perf_counter()
            await asyncio.gather(*(lane() for _ in range(args.baseline_concurrency)))
            seconds = time.perf_counter() - started
            after = meter.snapshot()
        finally:
            await pool.close()
        phase = Phase(
            f"baseline: one event per transaction ({args.baseline_concurrency} connections)",
            written,
            seconds,
            written / seconds,
        )
        phase.cpu, phase.machine_busy_cores = CpuMeter.diff(before, after, written)
        return phase
    finally:
        await drop_database(admin_url, db_name)


async def publish_messages(
    js: JetStreamContext, names: Names, messages: Sequence[Message], window: int
) -> None:
    """Publish in order, `window` publishes awaiting their acknowledgement at a time."""
    stream = names.runs_stream
    sem = asyncio.Semaphore(window)

    async def one(m: Message) -> None:
        try:
            await js.publish(m.subject, m.payload, stream=stream, headers={MSG_ID: m.msg_id}, timeout=30)
        finally:
            sem.release()

    tasks = []
    for m in messages:
        await sem.acquire()
        tasks.append(asyncio.create_task(one(m)))
    await asyncio.gather(*tasks)


async def wait_for_count(conn: asyncpg.Connection, expected: int, give_up_after: float) -> tuple[int, float]:
    deadline = time.perf_counter() + give_up_after
    while True:
        n = await count_events(conn)
        now = time.perf_counter()
        if n >= expected or now > deadline:
            return n, now
        await asyncio.sleep(0.05)


async def recorder_phase(
    js: JetStreamContext,
    names: Names,
    conn: asyncpg.Connection,
    work: Workload,
    meter: CpuMeter,
    args: argparse.Namespace,
) -> Phase:
    before_rows = await count_events(conn)
    expected = before_rows + len(work.messages)
    profiling = None
    if args.profile and args.recorder_pid:
        out = args.data_dir_resolved / "profile-recorder.txt"
        profiling = asyncio.create_task(profile_process(args.recorder_pid, out, args.profile_seconds, 100))
    before = meter.snapshot()
    started = time.perf_counter()
    publisher = asyncio.create_task(publish_messages(js, names, work.messages, args.publish_window))
    published_at: float | None = None

    def done_publishing(_: asyncio.Task[None]) -> None:
        nonlocal published_at
        published_at = time.perf_counter()

    publisher.add_done_callback(done_publishing)
    rows, reached = await wait_for_count(conn, expected, args.db_timeout)
    await publisher
    after = meter.snapshot()
    if profiling is not None and (path := await profiling) is not None:
        print_profile("recorder", {**summarize_profile(path, args.profile_seconds, 100), "file": str(path)})
    seconds = reached - started
    events = rows - before_rows
    phase = Phase("moot recorder: batched (1 process)", events, seconds, events / seconds)
    phase.publish_seconds = (published_at or reached) - started
    phase.cpu, phase.machine_busy_cores = CpuMeter.diff(before, after, max(events, 1))
    if rows < expected:
        phase.notes.append(
            f"only {events} of {len(work.messages)} events recorded after {args.db_timeout:.0f}s"
        )
    if phase.publish_seconds > 0.8 * seconds:
        phase.notes.append(
            "publishing took most of the phase: the publisher, not the recorder, may be the limit"
        )
    return phase


async def paced_phase(
    js: JetStreamContext,
    names: Names,
    conn: asyncpg.Connection,
    runs: list[list[Message]],
    runs_per_s: float,
    meter: CpuMeter,
    args: argparse.Namespace,
) -> Phase:
    """Runs start every 1/rate seconds; each run's events are spread over a run's time (`--run-ms`)."""
    schedule: list[tuple[float, Message]] = []
    for i, run in enumerate(runs):
        start = i / runs_per_s
        for j, m in enumerate(run):
            schedule.append((start + args.run_ms / 1000 * j / max(len(run) - 1, 1), m))
    schedule.sort(key=lambda x: x[0])
    total = len(schedule)
    before_rows = await count_events(conn)
    published = 0
    samples: list[tuple[float, int]] = []  # (time, backlog)
    stream = names.runs_stream
    done = asyncio.Event()

    async def sampler() -> None:
        sconn = await asyncpg.connect(args.database_url_for_sampling)
        try:
            while not done.is_set():
                rows = await count_events(sconn) - before_rows
                samples.append((time.perf_counter(), max(0, published - rows)))
                await asyncio.sleep(0.1)
        finally:
            await sconn.close()

    before = meter.snapshot()
    sampling = asyncio.create_task(sampler())
    started = time.perf_counter()
    pending: set[asyncio.Task[Any]] = set()
    for offset, m in schedule:
        delay = started + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(
            js.publish(m.subject, m.payload, stream=stream, headers={MSG_ID: m.msg_id}, timeout=30)
        )
        pending.add(task)
        task.add_done_callback(pending.discard)
        published += 1
    await asyncio.gather(*pending)
    last_publish = time.perf_counter()
    rows, reached = await wait_for_count(conn, before_rows + total, args.db_timeout)
    done.set()
    await sampling
    after = meter.snapshot()
    seconds = reached - started
    phase = Phase(
        f"moot recorder at {runs_per_s:.1f} runs/s",
        rows - before_rows,
        seconds,
        (rows - before_rows) / seconds,
    )
    phase.offered_events_per_s = total / max(last_publish - started, 1e-9)
    phase.cpu, phase.machine_busy_cores = CpuMeter.diff(before, after, max(rows - before_rows, 1))
    phase.lag_after_last_publish = reached - last_publish
    backlog = max((b for _, b in samples), default=0)
    phase.max_backlog = backlog
    phase.max_backlog_seconds = backlog / phase.offered_events_per_s if phase.offered_events_per_s else None
    if rows < before_rows + total:
        phase.notes.append(
            f"only {rows - before_rows} of {total} events recorded after {args.db_timeout:.0f}s"
        )
    return phase


# --------------------------------------------------------------------------- rate of benchmark 2


def consortium_rate(args: argparse.Namespace, data_dir: Path) -> tuple[float, str]:
    """Benchmark 2's runs/s: docs/benchmarks.md's figure, or a short run of consortium_throughput.py."""
    if args.rate_runs_per_s is not None:
        return args.rate_runs_per_s, "given with --rate-runs-per-s"
    if not args.measure_rate:
        return DOCS_RUNS_PER_S, "docs/benchmarks.md (moot, C=16, 2 workers)"
    out = data_dir / "consortium_throughput.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve().parent / "consortium_throughput.py"),
        "--runs", "200", "--no-baseline", "--json", str(out), "--data-dir", str(data_dir / "consortium"),
    ]  # fmt: skip
    print(f"measuring benchmark 2's rate: {' '.join(cmd[1:])}", flush=True)
    subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL)
    phases = json.loads(out.read_text())["phases"]
    rate = float(next(p["runs_per_s"] for p in phases if p["name"].startswith("moot")))
    return rate, "a short run of consortium_throughput.py (200 runs, C=16) just now"


# --------------------------------------------------------------------------- infrastructure


def _fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    return "-" if value is None else f"{value:,.{digits}f}{unit}"


def print_phase(phase: Phase) -> None:
    print(f"\n== {phase.name}")
    print(
        f"  events/s            {phase.events_per_s:10,.0f}   ({phase.events:,} events in {phase.seconds:.2f}s)"
    )
    if phase.publish_seconds is not None:
        print(f"  publishing took     {phase.publish_seconds:10.2f}s")
    if phase.offered_events_per_s is not None:
        print(f"  offered             {phase.offered_events_per_s:10,.0f} events/s")
        print(
            f"  backlog             max {phase.max_backlog} events (~{_fmt(phase.max_backlog_seconds, 2)}s of "
            f"traffic); all rows {phase.lag_after_last_publish:.2f}s after the last publish"
        )
    for note in phase.notes:
        print(f"  note: {note}")
    print(f"  CPU (machine busy {phase.machine_busy_cores:.2f} of {psutil.cpu_count()} cores):")
    for row in phase.cpu:
        if row["cpu_s"] >= 0.02:
            wait = f"  waited {row['runq_wait_s']:.1f}s for a CPU" if "runq_wait_s" in row else ""
            print(
                f"    {row['process']:<32} {row['cores']:5.2f} cores  "
                f"{us_per_event(row, phase.events):8.0f} µs/event  ({row['cpu_s']:.2f}s){wait}"
            )


def markdown_table(phases: list[Phase]) -> str:
    lines = [
        "| setup | events | events/s | writer CPU µs/event | writer cores | Postgres µs/event | machine busy | backlog |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for p in phases:
        rec = recorder_cpu(p)
        own = next((r for r in p.cpu if r["process"] == "bench: driver (rest)"), None)
        cpu = rec or own
        pg = next((r for r in p.cpu if r["process"].startswith("postgres")), None)
        backlog = "-"
        if p.max_backlog is not None:
            backlog = (
                f"max {p.max_backlog} events, all in {p.lag_after_last_publish:.2f} s after the last publish"
            )
        lines.append(
            f"| {p.name} | {p.events:,} | {p.events_per_s:,.0f} | "
            f"{_fmt(us_per_event(cpu, p.events), 0)}{'' if rec or not own else ' (bench process)'} | "
            f"{_fmt(cpu['cores'] if cpu else None, 2)} | {_fmt(us_per_event(pg, p.events), 0)} | "
            f"{p.machine_busy_cores:.2f} | {backlog} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--runs", type=int, default=2000, help="runs whose events are published (default 2000)"
    )
    parser.add_argument("--debate-share", type=float, default=0.25, help="share of debates among them (0.25)")
    parser.add_argument(
        "--concurrency", "-c", type=int, default=16, help="runs interleaved in the stream (16)"
    )
    parser.add_argument(
        "--answer-chars", type=int, default=600, help="length of each answer (600: by reference)"
    )
    parser.add_argument("--baseline-seconds", type=float, default=15.0, help="time box of the baseline (15)")
    parser.add_argument(
        "--baseline-concurrency", type=int, default=4, help="baseline writers = pool size (4)"
    )
    parser.add_argument("--publish-window", type=int, default=512, help="publishes awaiting their ack (512)")
    parser.add_argument("--rate-runs-per-s", type=float, default=None, help="benchmark 2's rate to test")
    parser.add_argument(
        "--measure-rate",
        action="store_true",
        help="measure benchmark 2's rate with a short consortium_throughput.py",
    )
    parser.add_argument("--rate-seconds", type=float, default=20.0, help="length of the paced phase (20)")
    parser.add_argument(
        "--run-ms", type=float, default=1000.0, help="a paced run's events spread over this (1000)"
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the recorder from the start of the flat-out phase"
    )
    parser.add_argument("--profile-seconds", type=float, default=5.0, help="length of the profile (5)")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--no-paced", action="store_true")
    parser.add_argument("--db-timeout", type=float, default=120.0, help="give up waiting for the rows (120)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="MOOT_RECORDER_BATCH_SIZE (service default)"
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="logs and results (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--verbose", action="store_true", help="show the stack's progress messages")
    return parser.parse_args(argv)


async def bench(args: argparse.Namespace) -> int:
    data_dir = (args.data_dir or Path(tempfile.mkdtemp(prefix="moot-bench-recorder-"))).absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    args.data_dir_resolved = data_dir
    print(f"data dir: {data_dir}")
    namespace = f"bench_{secrets.token_hex(4)}"
    names = Names(namespace)
    rate, rate_source = consortium_rate(args, data_dir)

    started = time.perf_counter()
    work = build(names, args.runs, args.debate_share, args.concurrency, args.answer_chars)
    builder = RunBuilder(names, args.answer_chars)
    paced_runs: list[list[Message]] = []
    paced_texts: dict[str, str] = {}
    if not args.no_paced:
        for _ in range(max(1, round(rate * args.rate_seconds))):
            run, texts = builder.consortium_run(datetime.now(UTC))
            paced_runs.append(run)
            paced_texts.update(texts)
    per_consortium_run = (
        len(paced_runs[0]) if paced_runs else len(builder.consortium_run(datetime.now(UTC))[0])
    )
    print(
        f"workload: {work.runs} runs, {len(work.messages):,} events ({len(work.texts):,} texts by reference), "
        f"built in {time.perf_counter() - started:.1f}s; by type: "
        + ", ".join(f"{t} {n}" for t, n in sorted(work.by_type.items(), key=lambda x: -x[1]))
    )
    needed = rate * per_consortium_run
    print(
        f"benchmark 2's rate: {rate:.1f} runs/s ({rate_source}) x {per_consortium_run} events per "
        f"consortium run = {needed:.0f} events/s"
    )

    meter = CpuMeter(None)
    phases: list[Phase] = []
    infra: Infrastructure | None = None
    db_name = f"moot_bench_rec_{secrets.token_hex(4)}"
    database_url: str | None = None
    logs: dict[str, Any] = {}
    try:
        infra = await bench_infrastructure(data_dir)
        print(
            f"nats: {infra.kind['nats']} {infra.nats_url}; postgres: {infra.kind['postgres']}; "
            f"namespace {namespace}, databases dropped afterwards"
        )
        if not args.no_baseline:
            phase = await baseline_phase(infra.database_url, work, meter, args)
            phases.append(phase)
            print_phase(phase)

        database_url = await create_database(infra.database_url, db_name)
        args.database_url_for_sampling = database_url
        nc = await nats.connect(infra.nats_url)
        try:
            js = nc.jetstream()
            extra_env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}
            if args.batch_size:
                extra_env["MOOT_RECORDER_BATCH_SIZE"] = str(args.batch_size)
            async with Stack(
                data_dir,
                namespace=namespace,
                nats_url=infra.nats_url,
                database_url=database_url,
                services=[ServiceSpec("recorder", (sys.executable, "-m", "moot_recorder"))],
                extra_env=extra_env,
                publish_home=False,
                progress=(lambda m: print(f"  stack: {m}", file=sys.stderr)) if args.verbose else None,
            ) as stack:
                for service in stack.services:
                    meter.add(service.name, service.pid)
                args.recorder_pid = stack.services[0].pid
                # The texts are stored before their events are published, as the arbiter and the
                # workers do (not the recorder's work, not timed).
                store = await open_text_store(js, names.text_bucket, 7 * 24 * 3600)
                await store.put_many({**work.texts, **paced_texts})
                conn = await asyncpg.connect(database_url)
                try:
                    phase = await recorder_phase(js, names, conn, work, meter, args)
                    phases.append(phase)
                    print_phase(phase)
                    if paced_runs:
                        await asyncio.sleep(1.0)
                        phase = await paced_phase(js, names, conn, paced_runs, rate, meter, args)
                        phases.append(phase)
                        print_phase(phase)
                finally:
                    await conn.close()
                restarts = {s.name: s.restarts for s in stack.services if s.restarts}
                if restarts or stack.failure:
                    print(f"  service restarts: {restarts} {stack.failure or ''}")
            logs = scan_logs(data_dir / "logs")
        finally:
            await nc.close()
    finally:
        if infra is not None:
            await delete_namespace(infra.nats_url, namespace)
            if database_url is not None:
                await drop_database(infra.database_url, db_name)
            await infra.close()
        shutil.rmtree(data_dir / "infra", ignore_errors=True)

    print("\n== summary")
    print(markdown_table(phases))
    base = next((p for p in phases if p.name.startswith("baseline")), None)
    flat = next((p for p in phases if p.name.startswith("moot recorder: batched")), None)
    paced = next((p for p in phases if p.offered_events_per_s is not None), None)
    ok = True
    if base and flat:
        ratio = flat.events_per_s / base.events_per_s
        ok &= ratio >= 20
        print(
            f"recorder / baseline: {ratio:.1f}x events/s (target >= 20x: {'met' if ratio >= 20 else 'NOT met'})"
        )
        rec, own = (
            recorder_cpu(flat),
            next((r for r in base.cpu if r["process"] == "bench: driver (rest)"), None),
        )
        if rec and own:
            print(
                f"CPU per event: recorder {us_per_event(rec, flat.events):.0f} µs, baseline writer "
                f"{us_per_event(own, base.events):.0f} µs (postgres beside them in the phase tables)"
            )
    if flat:
        print(
            f"headroom at benchmark 2's rate: {flat.events_per_s / needed:.0f}x ({needed:.0f} events/s needed)"
        )
    if paced:
        keeps_up = paced.lag_after_last_publish is not None and paced.lag_after_last_publish < 2.0
        ok &= keeps_up
        print(
            f"at benchmark 2's rate ({paced.offered_events_per_s:.0f} events/s offered): max backlog "
            f"{paced.max_backlog} events, all rows {paced.lag_after_last_publish:.2f}s after the last "
            f"publish: {'no backlog' if keeps_up else 'BACKLOG'}"
        )
    print_log_findings(logs, "the recorder's log")

    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "workload": {"runs": work.runs, "events": len(work.messages), "by_type": work.by_type},
        "rate": {"runs_per_s": rate, "source": rate_source, "events_per_run": per_consortium_run},
        "phases": [asdict(p) for p in phases],
        "logs": logs,
    }
    (data_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nresults: {data_dir / 'results.json'}")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    return run_benchmark(bench, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
