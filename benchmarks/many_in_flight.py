"""Many runs in flight: N consortium runs accepted within a minute, with 30-second model calls.

    .venv/bin/python benchmarks/many_in_flight.py [--runs N] [--submit-seconds 60] [--latency-ms 30000]

Issue 14, benchmark 3. Target: "10,000 runs accepted within a minute with 30 s calls: all
complete, memory per in-flight run across all processes and NATS <= 50 KB, `POST /v1/runs` p99
<= 50 ms while they are in flight."

1. The stack as processes (benchmarks/harness.py `BenchStack`: gateway, W member workers, arbiter,
   recorder, the test model server as its own process) on NATS_URL / DATABASE_URL (else embedded
   servers), in a fresh database and namespace deleted at the end; an API key without limits.
   Every member worker may hold all the member calls of its share at once
   (`MOOT_WORKER_CONCURRENCY`, default ceil(3N / W) + 16) and litellm's HTTP pool is opened as
   wide (`AIOHTTP_CONNECTOR_LIMIT[_PER_HOST]`: litellm's default caps a process at 500
   connections per host, which would queue the calls in the worker instead of at the provider).
2. Warm-up runs on models with no latency (imports, pools, caches), then the idle baseline: the
   resident memory (RSS, and USS) of every process of the stack, NATS and Postgres, sampled for
   `--idle-seconds` before the first POST.
3. N runs (3 members + arbiter, one iteration, `--latency-ms` per call), POSTed at an even pace
   over `--submit-seconds` (open loop, at most `--post-concurrency` POSTs at once); each POST's
   round trip is timed with the runs in flight when it was sent. Completion is watched on a core
   NATS subscription to the terminal events (no per-run SSE), with `--sse-sample` runs followed
   over SSE as well. Memory, runs in flight and the model server's open requests are sampled
   every `--sample-seconds`.
4. When every run has ended: memory at the peak of runs in flight minus the idle baseline, per
   run in flight; POST latency percentiles; every run a `completed` row in Postgres; CPU per
   process; the machine's busy share; a Markdown table; an extrapolation to `--target-runs`.

Exit status 0 when every run completed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import asyncpg
import httpx
import nats
import psutil
from consortium_throughput import (
    ARBITER,
    MEMBERS,
    PROMPT,
    CpuMeter,
    MootDriver,
    _pct,
    _version,
    background_load,
    print_log_findings,
    scan_logs,
)
from harness import BenchStack, MachineBusy, listening_pid, postgres_processes, run_benchmark

# Warm-up runs use these (no latency) so that the measured models see only measured runs.
WARM_MEMBERS = ("w1", "w2", "w3")
WARM_ARBITER = "warb"
TARGET_POST_P99_MS = 50.0
TARGET_KB_PER_RUN = 50.0


def behaviours(latency_ms: float) -> dict[str, dict[str, Any]]:
    slow = {"latency_ms": latency_ms}
    arbiter = {"arbiter": "well_formed", "arbiter_confidence": 0.9}
    return {
        **{m: slow for m in MEMBERS},
        ARBITER: {**slow, **arbiter},
        **{m: {} for m in WARM_MEMBERS},
        WARM_ARBITER: arbiter,
    }


def run_body(members: Sequence[str], arbiter: str) -> dict[str, Any]:
    return {
        "mode": "consortium",
        "prompt": PROMPT,
        "members": [{"model": m} for m in members],
        "arbiter": arbiter,
        "max_iterations": 1,
    }


# --------------------------------------------------------------------------- memory


class Memory:
    """Resident memory of the processes that serve the runs, by group: each service, NATS (the
    process listening on NATS_URL's port), Postgres (the server's own processes plus the
    benchmark database's backends); the model server apart (the provider, not moot)."""

    def __init__(self, bench: BenchStack, with_uss: bool = True) -> None:
        assert bench.stack is not None
        self.bench = bench
        self.with_uss = with_uss
        self.services = {s.name: psutil.Process(s.pid) for s in bench.stack.services if s.pid}
        port = int(bench.nats_url.rsplit(":", 1)[-1].split("/")[0]) if ":" in bench.nats_url else 4222
        self.nats_pid = listening_pid(port)
        pg_port = 5432
        with contextlib.suppress(ValueError, IndexError):
            pg_port = int(bench.database_url.split("@", 1)[-1].split("/", 1)[0].rsplit(":", 1)[1])
        self.postmaster_pid = listening_pid(pg_port)
        self.model_server = psutil.Process(bench.model_server_pid) if bench.model_server_pid else None

    def _groups(self) -> dict[str, list[psutil.Process]]:
        groups: dict[str, list[psutil.Process]] = {name: [p] for name, p in self.services.items()}
        if self.nats_pid:
            with contextlib.suppress(psutil.Error):
                groups["nats-server"] = [psutil.Process(self.nats_pid)]
        if self.postmaster_pid:
            pg = postgres_processes(self.postmaster_pid, self.bench.db_name)
            groups["postgres"] = pg["server"] + pg["database"]
        return groups

    def sample(self) -> dict[str, dict[str, float]]:
        """{group: {"rss": bytes, "uss": bytes, "n": processes}}, plus "model server (apart)"."""
        out: dict[str, dict[str, float]] = {}
        groups = self._groups()
        if self.model_server is not None:
            groups["model server (apart)"] = [self.model_server]
        for name, procs in groups.items():
            rss = uss = 0.0
            alive = 0
            for proc in procs:
                try:
                    if self.with_uss:
                        info = proc.memory_full_info()
                        uss += info.uss
                    else:
                        info = proc.memory_info()
                    rss += info.rss
                    alive += 1
                except psutil.Error:
                    continue
            out[name] = {"rss": rss, "uss": uss, "n": alive}
        return out


def total(sample: dict[str, dict[str, float]], key: str) -> float:
    return sum(v[key] for k, v in sample.items() if k != "model server (apart)")


# --------------------------------------------------------------------------- the phase


@dataclass
class Post:
    sent: float  # seconds since the first POST was due
    seconds: float
    in_flight: int  # runs accepted and not ended when it was sent
    status: int  # HTTP status, 0 for a transport error
    run_id: str | None = None
    error: str | None = None


@dataclass
class Sample:
    at: float  # seconds since the first POST was due
    accepted: int
    ended: int
    model_open: int  # the model server's requests in flight
    memory: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def in_flight(self) -> int:
        return self.accepted - self.ended


class Watcher:
    """Terminal events of the namespace's runs, from a core NATS subscription (sees every event
    JetStream stores on those subjects, consumes nothing)."""

    def __init__(self, nats_url: str, namespace: str) -> None:
        self.nats_url = nats_url
        self.namespace = namespace
        self.ended: dict[str, str] = {}
        self.ended_at: dict[str, float] = {}
        self.changed = asyncio.Event()  # set at every run's end
        self._nc: Any = None

    async def __aenter__(self) -> Watcher:
        self._nc = await nats.connect(self.nats_url, connect_timeout=2)

        async def seen(msg: Any) -> None:
            parts = msg.subject.split(".")
            # <ns>.runs.<run id>.run.<completed|failed|cancelled>
            run_id, kind = parts[-3], parts[-1]
            if run_id not in self.ended:
                self.ended[run_id] = kind
                self.ended_at[run_id] = time.perf_counter()
                self.changed.set()

        for kind in ("completed", "failed", "cancelled"):
            await self._nc.subscribe(f"{self.namespace}.runs.*.run.{kind}", cb=seen)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._nc is not None:
            await self._nc.close()


async def model_open_requests(client: httpx.AsyncClient, root: str) -> int:
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
        response = await client.get(f"{root}/_control/stats", params={"requests": "false"})
        return int(response.json()["in_flight"])
    return -1


async def failure_reasons(database_url: str, run_ids: list[str]) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT left(coalesce(reason, ''), 200) AS reason, count(*) AS n FROM runs "
            "WHERE id = ANY($1::text[]) AND status NOT IN ('completed', 'running') GROUP BY 1",
            run_ids,
        )
    finally:
        await conn.close()
    return {r["reason"]: r["n"] for r in rows}


async def completed_rows(database_url: str, run_ids: list[str], want: int, give_up_after: float) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.perf_counter() + give_up_after
        while True:
            rows = int(
                await conn.fetchval(
                    "SELECT count(*) FROM runs WHERE status = 'completed' AND id = ANY($1::text[])", run_ids
                )
            )
            if rows >= want or time.perf_counter() > deadline:
                return rows
            await asyncio.sleep(1.0)
    finally:
        await conn.close()


async def measure(bench: BenchStack, args: argparse.Namespace) -> dict[str, Any]:
    assert bench.stack is not None
    limits = httpx.Limits(
        max_connections=args.post_concurrency + args.sse_sample + 8,
        max_keepalive_connections=args.post_concurrency + args.sse_sample + 8,
    )
    root = bench.model_server_url.removesuffix("/v1")
    async with httpx.AsyncClient(
        base_url=bench.gateway_url, headers=bench.headers, limits=limits, timeout=60.0, trust_env=False
    ) as client:
        # Warm-up: every code path once per process, on models that answer at once.
        if args.warmup:
            warm = MootDriver(client, "sse", 0.1, 60.0)
            warm.body = lambda: run_body(WARM_MEMBERS, WARM_ARBITER)  # type: ignore[method-assign]
            results = await asyncio.gather(*(warm.run(i) for i in range(args.warmup)))
            bad = [r.error for r in results if not r.ok]
            print(f"warm-up: {args.warmup - len(bad)}/{args.warmup} runs completed {bad[:2] if bad else ''}")

        memory = Memory(bench, with_uss=not args.no_uss)
        print(
            f"memory of: {', '.join(memory.services)}, nats-server (pid {memory.nats_pid}), "
            f"postgres (postmaster {memory.postmaster_pid}: its own processes + this database's backends)"
        )
        background = await background_load(args.wait_quiet)
        idle: list[dict[str, dict[str, float]]] = []
        deadline = time.perf_counter() + args.idle_seconds
        while True:
            idle.append(await asyncio.to_thread(memory.sample))
            if time.perf_counter() >= deadline:
                break
            await asyncio.sleep(args.sample_seconds)
        baseline = {
            name: {key: statistics.median(s[name][key] for s in idle if name in s) for key in ("rss", "uss")}
            for name in idle[-1]
        }
        print(
            f"idle baseline ({len(idle)} samples over {args.idle_seconds:.0f}s): "
            f"RSS {total(baseline, 'rss') / 2**20:.0f} MiB, USS {total(baseline, 'uss') / 2**20:.0f} MiB "
            "(services, NATS, Postgres)"
        )

        meter = CpuMeter(None)
        for service in bench.stack.services:
            meter.add(service.name, service.pid)
        meter.add("model server (apart)", bench.model_server_pid)
        async with Watcher(bench.nats_url, bench.namespace) as watcher:
            posts: list[Post] = []
            accepted: list[str] = []
            samples: list[Sample] = []
            sse_ids: list[str] = []
            sse_latency: dict[str, float] = {}
            slots = asyncio.Semaphore(args.post_concurrency)
            sse_driver = MootDriver(client, "sse", 0.1, args.run_timeout)
            step = args.submit_seconds / max(args.runs, 1)
            sse_every = max(1, args.runs // max(args.sse_sample, 1)) if args.sse_sample else 0
            body = run_body(MEMBERS, ARBITER)
            busy = MachineBusy()
            cpu_before = meter.snapshot()
            busy.start()
            t0 = time.perf_counter()

            def now() -> float:
                return time.perf_counter() - t0

            async def follow(run_id: str, began: float) -> None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(args.run_timeout):
                        view = await sse_driver._follow_sse(run_id)
                    if view.get("status") == "completed":
                        sse_latency[run_id] = time.perf_counter() - began

            async def post(i: int) -> None:
                async with slots:
                    in_flight = len(accepted) - len(watcher.ended)
                    sent = now()
                    began = time.perf_counter()
                    try:
                        response = await client.post("/v1/runs", json=body)
                        seconds = time.perf_counter() - began
                        if response.status_code == 202:
                            run_id = response.json()["id"]
                            accepted.append(run_id)
                            posts.append(Post(sent, seconds, in_flight, 202, run_id))
                            if sse_every and i % sse_every == 0 and len(sse_ids) < args.sse_sample:
                                sse_ids.append(run_id)
                                followers.append(asyncio.create_task(follow(run_id, began)))
                        else:
                            posts.append(
                                Post(
                                    sent, seconds, in_flight, response.status_code, error=response.text[:160]
                                )
                            )
                    except httpx.HTTPError as exc:
                        posts.append(
                            Post(
                                sent, time.perf_counter() - began, in_flight, 0, error=f"{type(exc).__name__}"
                            )
                        )

            followers: list[asyncio.Task[None]] = []
            stop_sampling = asyncio.Event()

            async def sampler() -> None:
                last_print = -math.inf
                async with httpx.AsyncClient(timeout=10.0, trust_env=False) as side:
                    while not stop_sampling.is_set():
                        at = now()
                        open_requests = await model_open_requests(side, root)
                        mem = await asyncio.to_thread(memory.sample)
                        s = Sample(at, len(accepted), len(watcher.ended), open_requests, mem)
                        samples.append(s)
                        if at - last_print >= args.print_every:
                            last_print = at
                            print(
                                f"  t={at:6.1f}s accepted {s.accepted:6d}  ended {s.ended:6d}  in flight "
                                f"{s.in_flight:6d}  model server open {s.model_open:6d}  RSS "
                                f"{total(mem, 'rss') / 2**20:7.0f} MiB (+{(total(mem, 'rss') - total(baseline, 'rss')) / 2**20:.0f})",
                                flush=True,
                            )
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(stop_sampling.wait(), args.sample_seconds)

            sampling = asyncio.create_task(sampler())
            tasks: list[asyncio.Task[None]] = []
            for i in range(args.runs):
                due = i * step
                if due > now():
                    await asyncio.sleep(due - now())
                tasks.append(asyncio.create_task(post(i)))
            await asyncio.gather(*tasks)
            submit_end = now()
            last_accept = max((p.sent + p.seconds for p in posts if p.status == 202), default=0.0)
            print(f"submitted: {len(accepted)} accepted of {args.runs} in {submit_end:.1f}s")

            # The subscription is the clock; Postgres (every 5 s) is the record, in case the
            # subscription missed an event (core NATS delivery is at most once).
            wait_deadline = time.perf_counter() + args.run_timeout
            pg_statuses: dict[str, str] = {}
            conn = await asyncpg.connect(bench.database_url)
            try:
                while len(watcher.ended) < len(accepted) and time.perf_counter() < wait_deadline:
                    watcher.changed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            watcher.changed.wait(), min(5.0, wait_deadline - time.perf_counter())
                        )
                    missing = [r for r in accepted if r not in watcher.ended]
                    if missing and len(missing) <= 100:
                        rows = await conn.fetch(
                            "SELECT id, status FROM runs WHERE id = ANY($1::text[]) AND status <> 'running'",
                            missing,
                        )
                        pg_statuses.update({r["id"]: r["status"] for r in rows})
                        if len(pg_statuses) >= len(missing) and all(m in pg_statuses for m in missing):
                            break
            finally:
                await conn.close()
            all_ended = now()
            cpu_after = meter.snapshot()
            machine = busy.stop()
            stop_sampling.set()
            await sampling
            for task in followers:
                task.cancel()
            await asyncio.gather(*followers, return_exceptions=True)

    ended_kinds: dict[str, int] = {}
    missed = [r for r in accepted if r not in watcher.ended and r in pg_statuses]
    for run_id in accepted:
        kind = watcher.ended.get(run_id) or pg_statuses.get(run_id) or "not ended"
        ended_kinds[kind] = ended_kinds.get(kind, 0) + 1
    completed = ended_kinds.get("completed", 0)
    rows = await completed_rows(bench.database_url, accepted, len(accepted), args.db_timeout)

    peak = max(samples, key=lambda s: (s.in_flight, s.at))
    per_group = {
        name: {
            "baseline_rss_mib": round(baseline[name]["rss"] / 2**20, 1),
            "peak_rss_mib": round(peak.memory[name]["rss"] / 2**20, 1),
            "delta_rss_mib": round((peak.memory[name]["rss"] - baseline[name]["rss"]) / 2**20, 1),
            "delta_uss_mib": round((peak.memory[name]["uss"] - baseline[name]["uss"]) / 2**20, 1),
            "rss_kb_per_run": round(
                (peak.memory[name]["rss"] - baseline[name]["rss"]) / 1024 / max(peak.in_flight, 1), 2
            ),
            "processes": int(peak.memory[name]["n"]),
        }
        for name in peak.memory
        if name in baseline
    }
    delta_rss = total(peak.memory, "rss") - total(baseline, "rss")
    delta_uss = total(peak.memory, "uss") - total(baseline, "uss")
    max_rss_sample = max(samples, key=lambda s: total(s.memory, "rss"))

    ok_posts = [p for p in posts if p.status == 202]
    latencies = [p.seconds * 1000 for p in ok_posts]
    half = max(1, args.runs // 2)
    busy_latencies = [p.seconds * 1000 for p in ok_posts if p.in_flight >= half]
    cpu_rows, _ = CpuMeter.diff(cpu_before, cpu_after, max(completed, 1))
    stack_cpu = sum(
        r["cpu_s"]
        for r in cpu_rows
        if r["process"]
        not in (
            "model server (apart)",
            "everything else on the machine",
            "bench: driver (rest)",
            "bench: model server thread",
        )
    )
    errors: dict[str, int] = {}
    for p in posts:
        if p.status != 202:
            key = f"HTTP {p.status}: {p.error}"
            errors[key] = errors.get(key, 0) + 1
    return {
        "runs": args.runs,
        "accepted": len(accepted),
        "submit_seconds": round(submit_end, 2),
        "last_accept_seconds": round(last_accept, 2),
        "all_ended_seconds": round(all_ended, 2),
        "ended": ended_kinds,
        "terminal_events_missed_by_the_subscription": len(missed),
        "failure_reasons": await failure_reasons(bench.database_url, accepted),
        "completed": completed,
        "postgres_completed_rows": rows,
        "post_errors": errors,
        "post_ms": {
            "p50": _pct(latencies, 50),
            "p95": _pct(latencies, 95),
            "p99": _pct(latencies, 99),
            "max": max(latencies, default=float("nan")),
        },
        "post_ms_half_in_flight": {
            "posts": len(busy_latencies),
            "p50": _pct(busy_latencies, 50),
            "p99": _pct(busy_latencies, 99),
        },
        "peak": {
            "at_seconds": round(peak.at, 1),
            "in_flight": peak.in_flight,
            "model_server_open": peak.model_open,
            "delta_rss_mib": round(delta_rss / 2**20, 1),
            "delta_uss_mib": round(delta_uss / 2**20, 1),
            "rss_kb_per_run": round(delta_rss / 1024 / max(peak.in_flight, 1), 2),
            "uss_kb_per_run": round(delta_uss / 1024 / max(peak.in_flight, 1), 2),
            "model_server_rss_kb_per_open_request": round(
                (peak.memory["model server (apart)"]["rss"] - baseline["model server (apart)"]["rss"])
                / 1024
                / max(peak.model_open, 1),
                2,
            )
            if "model server (apart)" in peak.memory
            else None,
        },
        "max_rss": {
            "at_seconds": round(max_rss_sample.at, 1),
            "in_flight": max_rss_sample.in_flight,
            "delta_rss_mib": round((total(max_rss_sample.memory, "rss") - total(baseline, "rss")) / 2**20, 1),
        },
        "max_model_server_open": max((s.model_open for s in samples), default=0),
        "groups": per_group,
        "sse_sample": {
            "followed": len(sse_ids),
            "completed": len(sse_latency),
            "p50_s": _pct(list(sse_latency.values()), 50),
            "max_s": max(sse_latency.values(), default=float("nan")),
        },
        "cpu": cpu_rows,
        "stack_cpu_ms_per_run": round(1000 * stack_cpu / max(completed, 1), 1),
        "machine_busy_share": round(machine, 3),
        "background_cores": round(background, 2),
        "timeline": [
            {
                "at": round(s.at, 1),
                "accepted": s.accepted,
                "ended": s.ended,
                "model_open": s.model_open,
                "rss_mib": round(total(s.memory, "rss") / 2**20, 1),
            }
            for s in samples
        ],
    }


# --------------------------------------------------------------------------- output


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:.{digits}f}"


def report(result: dict[str, Any], args: argparse.Namespace, worker_concurrency: int) -> None:
    peak, post = result["peak"], result["post_ms"]
    print("\n== many runs in flight")
    print(
        f"  accepted {result['accepted']}/{result['runs']} runs; last accepted at {result['last_accept_seconds']:.1f}s "
        f"(target: within 60 s); every run ended {result['all_ended_seconds']:.1f}s after the first POST"
    )
    print(f"  ended: {result['ended']}; completed rows in Postgres: {result['postgres_completed_rows']}")
    for reason, count in result["failure_reasons"].items():
        print(f"    {count} x {reason}")
    if result["post_errors"]:
        print(f"  POST errors: {result['post_errors']}")
    print(
        f"  POST /v1/runs: p50 {fmt(post['p50'])} ms  p95 {fmt(post['p95'])} ms  p99 {fmt(post['p99'])} ms  "
        f"max {fmt(post['max'])} ms (target p99 <= {TARGET_POST_P99_MS:.0f} ms)"
    )
    half = result["post_ms_half_in_flight"]
    print(
        f"  ... sent with >= {args.runs // 2} runs in flight ({half['posts']} POSTs): p50 {fmt(half['p50'])} ms  "
        f"p99 {fmt(half['p99'])} ms"
    )
    print(
        f"  peak: {peak['in_flight']} runs in flight at t={peak['at_seconds']}s "
        f"({peak['model_server_open']} requests open at the model server)"
    )
    print(
        f"  memory over the idle baseline at the peak: RSS +{peak['delta_rss_mib']} MiB = "
        f"{peak['rss_kb_per_run']} KB per run in flight (target <= {TARGET_KB_PER_RUN:.0f} KB); "
        f"USS +{peak['delta_uss_mib']} MiB = {peak['uss_kb_per_run']} KB per run"
    )
    print(
        f"  largest RSS seen: +{result['max_rss']['delta_rss_mib']} MiB at t={result['max_rss']['at_seconds']}s"
    )
    print("  per process (RSS: idle -> at the peak, KB per run in flight):")
    for name, g in sorted(result["groups"].items(), key=lambda kv: -kv[1]["delta_rss_mib"]):
        print(
            f"    {name:<24} {g['baseline_rss_mib']:8.1f} -> {g['peak_rss_mib']:8.1f} MiB  "
            f"{g['rss_kb_per_run']:7.2f} KB/run  (USS {g['delta_uss_mib']:+.1f} MiB, {g['processes']} process(es))"
        )
    if peak.get("model_server_rss_kb_per_open_request") is not None:
        print(
            f"  model server (not counted): {peak['model_server_rss_kb_per_open_request']} KB per open request"
        )
    sse = result["sse_sample"]
    print(
        f"  SSE sample: {sse['completed']}/{sse['followed']} followed runs completed, latency p50 "
        f"{fmt(sse['p50_s'], 2)} s, max {fmt(sse['max_s'], 2)} s (critical path {2 * args.latency_ms / 1000:.0f} s)"
    )
    print(
        f"  CPU: stack (services, NATS, Postgres) {result['stack_cpu_ms_per_run']} ms per run; machine busy "
        f"{result['machine_busy_share']:.0%} of {psutil.cpu_count()} cores over the phase "
        f"({result['background_cores']:.2f} cores busy with other work before it)"
    )
    for row in result["cpu"]:
        if row["cpu_s"] >= 0.5:
            print(f"    {row['process']:<32} {row['cores']:5.2f} cores  {row['cpu_ms_per_run']:7.1f} ms/run")

    # Extrapolation to the target count: memory scales with runs in flight (per-run figure above).
    n = args.target_runs
    if n and n != result["runs"]:
        per_run_kb = peak["rss_kb_per_run"]
        print(f"\n== extrapolated to {n:,} runs in flight (per-run figures above, linear)")
        print(
            f"  memory: {per_run_kb * n / 2**20:.2f} GiB over idle (RSS; {peak['uss_kb_per_run'] * n / 2**20:.2f} GiB USS)"
        )
        print(
            f"  CPU: {result['stack_cpu_ms_per_run'] * n / 1000:.0f} CPU-s for the stack = "
            f"{result['stack_cpu_ms_per_run'] * n / 1000 / psutil.cpu_count():.0f} s of this machine's cores "
            f"(accepting them within 60 s needs {result['stack_cpu_ms_per_run'] * n / 1000 / 60:.1f} cores for moot alone)"
        )
        print(
            f"  open model calls: {3 * n:,} member calls at once; this machine: ephemeral ports "
            f"{ephemeral_ports():,} per destination, open-file limit {resource.getrlimit(resource.RLIMIT_NOFILE)[1]:,} "
            f"per process (hard), worker concurrency set here {worker_concurrency}"
        )

    print("\n== markdown")
    print(markdown(result, args, worker_concurrency))


def markdown(result: dict[str, Any], args: argparse.Namespace, worker_concurrency: int) -> str:
    peak, post = result["peak"], result["post_ms"]
    lines = [
        "| runs | accepted in | peak in flight | all ended | completed | POST p50 | POST p99 | "
        "RSS over idle | KB/run (RSS) | KB/run (USS) | stack CPU ms/run | machine busy |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| {result['runs']} | {result['last_accept_seconds']:.1f} s | {peak['in_flight']} | "
        f"{result['all_ended_seconds']:.0f} s | {result['completed']} | {fmt(post['p50'])} ms | "
        f"**{fmt(post['p99'])} ms** | {peak['delta_rss_mib']} MiB | **{peak['rss_kb_per_run']}** | "
        f"{peak['uss_kb_per_run']} | {result['stack_cpu_ms_per_run']} | {result['machine_busy_share']:.0%} |",
        "",
        "| process | idle RSS | at the peak | KB per run in flight |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, g in sorted(result["groups"].items(), key=lambda kv: -kv[1]["delta_rss_mib"]):
        lines.append(
            f"| {name} | {g['baseline_rss_mib']:.0f} MiB | {g['peak_rss_mib']:.0f} MiB | {g['rss_kb_per_run']:.2f} |"
        )
    lines.append(
        f"\n({args.workers} workers, MOOT_WORKER_CONCURRENCY={worker_concurrency}, "
        f"{args.latency_ms / 1000:.0f} s per call, submitted over {args.submit_seconds:.0f} s)"
    )
    return "\n".join(lines)


def ephemeral_ports() -> int:
    with contextlib.suppress(OSError, ValueError):
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(high) - int(low) + 1
    return 0


def raise_open_files(want: int) -> tuple[int, int]:
    """Raise this process's open-file limit (the stack's children inherit it) to `want` if the
    hard limit allows (or, as root, raise the hard limit too); the limits now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(soft, want)
    with contextlib.suppress(ValueError, OSError):
        if target > hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, target))
        else:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=10_000, help="runs submitted (default 10,000)")
    parser.add_argument("--submit-seconds", type=float, default=60.0, help="submission window (default 60)")
    parser.add_argument(
        "--latency-ms", type=float, default=30_000.0, help="model latency per call (default 30 s)"
    )
    parser.add_argument("--workers", type=int, default=2, help="member-worker processes (default 2)")
    parser.add_argument(
        "--worker-concurrency",
        type=int,
        default=None,
        help="MOOT_WORKER_CONCURRENCY (default ceil(3 x runs / workers) + 16: every member call at once)",
    )
    parser.add_argument(
        "--post-concurrency", type=int, default=256, help="POSTs in flight at most (default 256)"
    )
    parser.add_argument("--sse-sample", type=int, default=8, help="runs also followed over SSE (default 8)")
    parser.add_argument("--warmup", type=int, default=8, help="warm-up runs on instant models (default 8)")
    parser.add_argument(
        "--idle-seconds", type=float, default=5.0, help="idle memory baseline window (default 5)"
    )
    parser.add_argument(
        "--sample-seconds", type=float, default=1.0, help="memory sampling period (default 1)"
    )
    parser.add_argument("--print-every", type=float, default=5.0, help="progress line period (default 5 s)")
    parser.add_argument("--no-uss", action="store_true", help="RSS only (USS reads smaps: slower samples)")
    parser.add_argument(
        "--target-runs", type=int, default=10_000, help="extrapolate to this many (default 10,000)"
    )
    parser.add_argument(
        "--run-timeout",
        type=float,
        default=None,
        help="give up waiting for the runs (default 2 x latency + 600 s)",
    )
    parser.add_argument("--db-timeout", type=float, default=120.0, help="give up waiting for Postgres rows")
    parser.add_argument("--wait-quiet", type=float, default=0.0, help="wait up to S s for other load to drop")
    parser.add_argument("--data-dir", type=Path, default=None, help="logs and results (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--verbose", action="store_true", help="show the stack's progress")
    args = parser.parse_args(argv)
    if args.run_timeout is None:
        args.run_timeout = 2 * args.latency_ms / 1000 + 600
    return args


async def bench(args: argparse.Namespace) -> int:
    data_dir = (args.data_dir or Path(tempfile.mkdtemp(prefix="moot-inflight-"))).absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    member_calls = 3 * args.runs
    worker_concurrency = args.worker_concurrency or math.ceil(member_calls / args.workers) + 16
    # Each worker holds worker_concurrency sockets to the model server; the model server all of them.
    soft, hard = raise_open_files(member_calls + 4096)
    print(f"data dir: {data_dir}")
    print(
        f"machine: {psutil.cpu_count()} CPUs, Python {sys.version.split()[0]}, litellm {_version('litellm')}; "
        f"open files {soft}/{hard}; ephemeral ports {ephemeral_ports()}"
    )
    if member_calls + 1024 > soft:
        print(f"  warning: {member_calls} open model calls need more open files than {soft}", file=sys.stderr)
    if member_calls > ephemeral_ports():
        print(
            f"  warning: {member_calls} connections to one model server port exceed the {ephemeral_ports()} "
            "ephemeral ports of 127.0.0.1",
            file=sys.stderr,
        )
    pool = str(worker_concurrency + 64)
    extra_env = {
        "MOOT_WORKER_CONCURRENCY": str(worker_concurrency),
        "AIOHTTP_CONNECTOR_LIMIT": pool,
        "AIOHTTP_CONNECTOR_LIMIT_PER_HOST": pool,
        "MOOT_MAX_STREAMS_PER_KEY": str(args.sse_sample + args.warmup + 16),
    }
    print(
        f"workers {args.workers} x MOOT_WORKER_CONCURRENCY={worker_concurrency} (litellm's pool "
        f"{pool} connections per host); {args.runs} runs over {args.submit_seconds:.0f}s, "
        f"{args.latency_ms / 1000:g}s per call"
    )
    result: dict[str, Any] = {}
    async with BenchStack(
        data_dir,
        behaviours(args.latency_ms),
        workers=args.workers,
        extra_env=extra_env,
        max_recorded_requests=0,
        verbose=args.verbose,
    ) as bench_stack:
        print(bench_stack.describe())
        result = await measure(bench_stack, args)
        assert bench_stack.stack is not None
        restarts = {s.name: s.restarts for s in bench_stack.stack.services if s.restarts}
        if restarts:
            print(f"  service restarts: {restarts}")
            result["restarts"] = restarts
    report(result, args, worker_concurrency)
    logs = scan_logs(data_dir / "logs")
    print_log_findings(logs)
    result.update(
        command=" ".join([Path(sys.executable).name, *sys.argv]),
        args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        worker_concurrency=worker_concurrency,
        logs=logs,
    )
    (data_dir / "results.json").write_text(json.dumps(result, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nresults: {data_dir / 'results.json'}")
    return 0 if result.get("completed") == args.runs else 1


def main(argv: Sequence[str] | None = None) -> int:
    return run_benchmark(bench, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
