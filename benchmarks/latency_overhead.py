"""Latency overhead: how much longer a run takes than the model calls it must make one after another.

    .venv/bin/python benchmarks/latency_overhead.py [--k 1,8,32] [--latency-ms 200] [--modes ...]

Issue 14, benchmark 1. For K = 1, 8, 32 runs in flight (a new run starts when one ends), for
consortiums (3 members + arbiter, exactly 2 iterations) and debates (3 debaters, 3 rounds, an
external judge that says CONTINUE, then its streamed verdict), each via SSE (`POST /v1/runs`,
then `/v1/runs/{id}/events` to the terminal event) and via the blocking chat endpoint (a saved
configuration, `POST /v1/chat/completions` without streaming): run latency p50/p99 as the client
sees it against the critical path = sequential calls x the model server's own per-call time,
measured by direct calls just before each cell (the baseline, same run). Target: p50 <= critical
path + 25 ms and p99 <= critical path + 60 ms while the machine is under half busy.

Sequential calls: a consortium iteration is the members in parallel, then the arbiter: 2 x 2 = 4.
A debate (moot.protocols.debate.machine): round 1 all at once (1), rounds 2 and 3 turn by turn
(3 + 3), the judge's checkpoint after round 2 (rounds 2..max_rounds-1 have one) (1), the final
verdict (1): 9.

Then where the overhead goes, per hop of each run's critical chain, from timestamps taken by
things moot does anyway or that watch from outside (no service code changed): the job's publish
(a core NATS subscription on the jobs subject), the model server's arrival time (its request log),
the worker's end of call (the outcome's `at`), the outcome stored in JetStream (the stream's
timestamp), the terminal event stored, the client's end.

Everything runs on NATS_URL / DATABASE_URL when set (else embedded servers), in a fresh
database and namespace deleted at the end (benchmarks/harness.py).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import psutil
from consortium_throughput import (
    CpuMeter,
    RunResult,
    _pct,
    _version,
    background_load,
    print_log_findings,
    run_concurrently,
    scan_logs,
)
from harness import (
    BenchStack,
    JobTap,
    MachineBusy,
    StoredEvent,
    model_server_requests,
    read_run_events,
    run_benchmark,
    served_latency,
)
from httpx_sse import aconnect_sse

MEMBERS = ("m1", "m2", "m3")
ARBITER = "arb"
DEBATERS = ("d1", "d2", "d3")
JUDGE = "judge"
PROMPT = "Is it better to walk or to cycle 3 km to work in a city? Answer in two sentences."
TERMINAL = ("run.completed", "run.failed", "run.cancelled")
SEQUENTIAL_CALLS = {"consortium": 4, "debate": 9}
CONFIG_NAMES = {"consortium": "bench-latency-consortium", "debate": "bench-latency-debate"}
TARGET_P50_MS = 25.0
TARGET_P99_MS = 60.0


def behaviours(latency_ms: float) -> dict[str, dict[str, Any]]:
    """The test model server's models. The arbiter is always unsure and asks for more: with
    max_iterations 2 every run does exactly 2 iterations. (Its `arbiter_confidence` list is a
    sequence per model name over the whole server, not per run, so [0.5, 0.9] would make only the
    benchmark's first arbiter call unsure.) The judge says CONTINUE, so all 3 rounds are played,
    and the same text is its streamed verdict."""
    base = {"latency_ms": latency_ms}
    return {
        **{m: base for m in (*MEMBERS, *DEBATERS)},
        ARBITER: {**base, "arbiter_confidence": 0.5, "arbiter_needs_iteration": True},
        JUDGE: {**base, "reply": "CONTINUE - there is more to argue on both sides of this."},
    }


def run_config(mode: str) -> dict[str, Any]:
    """The run request without its prompt (what a saved configuration holds)."""
    if mode == "consortium":
        return {
            "mode": "consortium",
            "members": [{"model": m} for m in MEMBERS],
            "arbiter": ARBITER,
            "max_iterations": 2,
        }
    return {
        "mode": "debate",
        "members": [{"model": d} for d in DEBATERS],
        "judge": JUDGE,
        "judge_mode": "external_judge",
        "max_rounds": 3,
    }


# --------------------------------------------------------------------------- driving runs


@dataclass
class Sample:
    """One run as the client saw it (epoch seconds, for matching with the services' clocks)."""

    tag: str
    began: float
    ended: float
    ok: bool
    run_id: str | None = None
    error: str | None = None


class Driver:
    def __init__(
        self, client: httpx.AsyncClient, mode: str, path: str, cell: str, run_timeout: float
    ) -> None:
        self.client = client
        self.mode = mode
        self.path = path
        self.cell = cell
        self.run_timeout = run_timeout
        self.samples: list[Sample] = []

    async def run(self, i: int) -> RunResult:
        tag = f"(case {self.cell}-{i:04d})"
        prompt = f"{PROMPT} {tag}"
        began, started = time.time(), time.perf_counter()
        run_id: str | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(self.run_timeout):
                if self.path == "sse":
                    run_id, error = await self._sse(prompt)
                else:
                    run_id, error = await self._chat(prompt)
        except TimeoutError:
            error = f"not finished after {self.run_timeout:.0f}s"
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        done, ended = time.perf_counter(), time.time()
        self.samples.append(Sample(tag, began, ended, error is None, run_id, error))
        return RunResult(ok=error is None, latency=done - started, error=error, run_id=run_id, done_at=done)

    async def _sse(self, prompt: str) -> tuple[str | None, str | None]:
        response = await self.client.post("/v1/runs", json={**run_config(self.mode), "prompt": prompt})
        if response.status_code != 202:
            return None, f"POST: HTTP {response.status_code}: {response.text[:120]}"
        run_id: str = response.json()["id"]
        timeout = httpx.Timeout(30.0, read=None)
        async with aconnect_sse(self.client, "GET", f"/v1/runs/{run_id}/events", timeout=timeout) as src:
            if src.response.status_code != 200:
                return run_id, f"SSE: HTTP {src.response.status_code}"
            async for sse in src.aiter_sse():
                if sse.event in TERMINAL:
                    status = json.loads(sse.data)["run"]["status"]
                    return run_id, None if status == "completed" else f"run {status}"
        return run_id, "SSE stream ended without a terminal event"

    async def _chat(self, prompt: str) -> tuple[str | None, str | None]:
        body = {"model": CONFIG_NAMES[self.mode], "messages": [{"role": "user", "content": prompt}]}
        response = await self.client.post("/v1/chat/completions", json=body)
        data = response.json()
        run_id = (data.get("moot") or {}).get("run_id") if isinstance(data, dict) else None
        if response.status_code != 200:
            return run_id, f"chat: HTTP {response.status_code}: {response.text[:120]}"
        return run_id, None


# --------------------------------------------------------------------------- checking the runs


def calls_of(view: dict[str, Any]) -> list[dict[str, Any]]:
    """Every call of a run view (consortium iterations or debate rounds, judge, final)."""
    calls: list[dict[str, Any]] = []
    if view.get("mode") == "debate":
        for rnd in view.get("rounds") or []:
            calls += rnd.get("turns") or []
            if rnd.get("judge"):
                calls.append(rnd["judge"])
        if view.get("final"):
            calls.append(view["final"])
    else:
        for it in view.get("iterations") or []:
            if isinstance(it, dict):
                calls += it.get("members") or []
                if it.get("arbiter"):
                    calls.append(it["arbiter"])
    return calls


def check_shape(mode: str, view: dict[str, Any]) -> str | None:
    """None when the run made exactly the calls the benchmark counts on, else what differs."""
    if view.get("status") != "completed":
        return f"status {view.get('status')}: {str(view.get('reason'))[:100]}"
    if any(c.get("status") != "completed" for c in calls_of(view)):
        return "a call did not complete"
    if mode == "consortium":
        its = view.get("iterations") or []
        decisions = [it.get("decision") for it in its if isinstance(it, dict)]
        sizes = [len(it.get("members") or []) for it in its if isinstance(it, dict)]
        if decisions != ["iterate", "stop"] or sizes != [3, 3] or len(calls_of(view)) != 8:
            return f"iterations: decisions {decisions}, members {sizes}"
        return None
    rounds = view.get("rounds") or []
    turns = [len(r.get("turns") or []) for r in rounds]
    judged = [r.get("decision") for r in rounds]
    final = view.get("final") or {}
    by = (view.get("result") or {}).get("by")
    if (
        turns != [3, 3, 3]
        or judged != [None, "continue", None]
        or final.get("status") != "completed"
        or by != "judge"
    ):
        return f"rounds: turns {turns}, judge {judged}, final {final.get('status')}, by {by}"
    return None


async def fetch_views(client: httpx.AsyncClient, run_ids: list[str]) -> dict[str, dict[str, Any]]:
    views: dict[str, dict[str, Any]] = {}
    sem = asyncio.Semaphore(8)

    async def one(run_id: str) -> None:
        async with sem:
            for _ in range(20):  # the chat path answers before the recorder may have the row
                response = await client.get(f"/v1/runs/{run_id}")
                if response.status_code == 200 and response.json().get("status") != "running":
                    views[run_id] = response.json()
                    return
                await asyncio.sleep(0.25)

    await asyncio.gather(*(one(r) for r in run_ids))
    return views


# --------------------------------------------------------------------------- per-hop analysis

HOPS = (
    ("intake", "client start -> first job published (POST, gateway, run state, outbox)"),
    ("dispatch", "previous step's outcome stored -> next job published (arbiter: fold, CAS, publish)"),
    ("pickup", "job published -> request at the model server (NATS, worker fetch, litellm before the call)"),
    ("call extra", "request at the model server -> worker's end of call, minus the served latency"),
    ("outcome", "worker's end of call -> outcome stored in JetStream (the worker's publish)"),
    ("run end", "last outcome stored -> terminal event stored (arbiter)"),
    ("to client", "terminal event stored -> client has the end (gateway SSE / chat response)"),
)


@dataclass
class HopReport:
    runs: int = 0
    # hop -> per-run total (ms) over the run's critical chain
    per_run: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    unexplained: list[float] = field(default_factory=list)
    worker_extra: list[float] = field(default_factory=list)  # latency_ms - served, per call
    steps: list[int] = field(default_factory=list)
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)


def analyse_hops(
    samples: list[Sample],
    views: dict[str, dict[str, Any]],
    events: dict[str, list[StoredEvent]],
    jobs: dict[str, float],
    arrivals: dict[tuple[str, str], list[float]],
    served: float,
) -> HopReport:
    """Split each run's latency along its critical chain of calls (see HOPS)."""
    report = HopReport()
    for s in samples:
        if not s.ok or s.run_id is None or s.run_id not in views:
            report.skipped["no run view"] += 1
            continue
        view = views[s.run_id]
        calls = calls_of(view)
        outcome = {
            e.data.get("call_id"): e
            for e in events.get(s.run_id, [])
            if e.type in ("call.completed", "call.failed")
        }
        terminal = next((e for e in events.get(s.run_id, []) if e.type in TERMINAL), None)
        chain: list[dict[str, Any]] = []
        for c in calls:
            ev = outcome.get(c["call_id"])
            pub = jobs.get(c["call_id"])
            if ev is None or pub is None or ev.at is None:
                break
            chain.append(
                {"id": c["call_id"], "model": c["model"], "pub": pub, "end": ev.at, "stored": ev.stored}
            )
            report.worker_extra.append(c.get("latency_ms", 0) - served * 1000)
        if len(chain) != len(calls) or terminal is None:
            report.skipped["events or jobs missing"] += 1
            continue
        # The model server's arrivals of this run, per model, in order, to the calls of that model in order.
        by_model: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for c in sorted(chain, key=lambda c: c["pub"]):
            by_model[c["model"]].append(c)
        matched = True
        for model, cs in by_model.items():
            seen = arrivals.get((s.tag, model), [])
            if len(seen) != len(cs):
                matched = False
                break
            for c, at in zip(cs, seen, strict=True):
                c["arrive"] = at
        if not matched:
            report.skipped["model server arrivals not matched"] += 1
            continue
        # Steps: jobs published together (one outbox) are one step of the chain.
        ordered = sorted(chain, key=lambda c: c["pub"])
        steps: list[list[dict[str, Any]]] = []
        for c in ordered:
            if steps and c["pub"] - steps[-1][0]["pub"] < 0.05:
                steps[-1].append(c)
            else:
                steps.append([c])
        totals: dict[str, float] = collections.defaultdict(float)
        trigger = s.began
        for n, step in enumerate(steps):
            crit = max(step, key=lambda c: c["stored"])
            totals["intake" if n == 0 else "dispatch"] += crit["pub"] - trigger
            totals["pickup"] += crit["arrive"] - crit["pub"]
            totals["call extra"] += crit["end"] - crit["arrive"] - served
            totals["outcome"] += crit["stored"] - crit["end"]
            trigger = crit["stored"]
        totals["run end"] += terminal.stored - trigger
        totals["to client"] += s.ended - terminal.stored
        report.runs += 1
        report.steps.append(len(steps))
        overhead = (s.ended - s.began - len(steps) * served) * 1000
        for hop, _ in HOPS:
            report.per_run[hop].append(totals[hop] * 1000)
        report.unexplained.append(overhead - sum(totals.values()) * 1000)
    return report


def arrivals_by_tag(requests: list[dict[str, Any]], tags: list[str]) -> dict[tuple[str, str], list[float]]:
    """(run tag, model) -> arrival times at the model server, in order."""
    found: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    wanted = set(tags)
    for r in requests:
        text = json.dumps(r.get("messages"))
        start = text.find("(case ")
        while start != -1:
            end = text.find(")", start)
            tag = text[start : end + 1]
            if tag in wanted:
                found[(tag, r["model"])].append(float(r["time"]))
                break
            start = text.find("(case ", start + 1)
    for times in found.values():
        times.sort()
    return found


# --------------------------------------------------------------------------- a cell


@dataclass
class Cell:
    mode: str
    path: str
    k: int
    runs: int = 0
    failed: int = 0
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    served_ms: float = math.nan  # model server p50 per call, direct calls at 3K in flight
    served_p99_ms: float = math.nan
    critical_ms: float = math.nan
    busy_share: float = math.nan  # the machine's busy share during the cell
    background_cores: float = 0.0
    wall_s: float = 0.0
    shape_errors: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    cpu: list[dict[str, Any]] = field(default_factory=list)
    hops: dict[str, dict[str, float]] = field(default_factory=dict)
    hops_runs: int = 0
    hops_skipped: dict[str, int] = field(default_factory=dict)
    worker_extra_p50_ms: float = math.nan

    @property
    def name(self) -> str:
        return f"{self.mode} / {self.path} / K={self.k}"

    @property
    def over_p50(self) -> float:
        return self.p50_ms - self.critical_ms

    @property
    def over_p99(self) -> float:
        return self.p99_ms - self.critical_ms

    @property
    def met(self) -> str:
        if self.failed or self.shape_errors or math.isnan(self.p50_ms):
            return "no (failures)"
        ok = self.over_p50 <= TARGET_P50_MS and self.over_p99 <= TARGET_P99_MS
        note = "" if self.busy_share < 0.5 else " (machine >= half busy)"
        return ("yes" if ok else "no") + note


async def run_cell(
    bench: BenchStack,
    client: httpx.AsyncClient,
    meter: CpuMeter,
    cell: Cell,
    index: int,
    args: argparse.Namespace,
) -> tuple[list[Sample], list[dict[str, Any]], dict[str, dict[str, Any]]]:
    # The cell's peak of calls in flight (round 1, or a consortium's members), at most 8: beyond
    # that a bare httpx client in one process is its own bottleneck (at 96 in flight it measured
    # ~1 s p50 and 5 s p99 per call while the model server answered moot's 96 calls in ~200 ms).
    peak = min(3 * cell.k, 8)
    waves = max(3, math.ceil(30 / peak))
    served = await served_latency(bench.model_server_url, MEMBERS[0], concurrency=peak, calls=peak * waves)
    cell.served_ms = _pct(served, 50) * 1000
    cell.served_p99_ms = _pct(served, 99) * 1000
    cell.critical_ms = SEQUENTIAL_CALLS[cell.mode] * cell.served_ms
    await model_server_requests(bench.model_server_url)  # drop the direct calls from the log
    cell.background_cores = await background_load(args.wait_quiet)

    driver = Driver(client, cell.mode, cell.path, f"{index:02d}", args.run_timeout)
    busy = MachineBusy()
    before = meter.snapshot()
    busy.start()
    started = time.perf_counter()
    results = await run_concurrently(cell.runs, cell.k, driver.run)
    cell.wall_s = time.perf_counter() - started
    cell.busy_share = busy.stop()
    after = meter.snapshot()
    cell.cpu, _ = CpuMeter.diff(before, after, len(results))

    ok = [r.latency for r in results if r.ok]
    cell.failed = len(results) - len(ok)
    cell.p50_ms = _pct(ok, 50) * 1000
    cell.p99_ms = _pct(ok, 99) * 1000
    cell.errors = dict(
        collections.Counter((r.error or "?")[:200] for r in results if not r.ok).most_common(4)
    )

    requests = await model_server_requests(bench.model_server_url)
    views = await fetch_views(client, [s.run_id for s in driver.samples if s.run_id])
    for s in driver.samples:
        if s.ok and s.run_id:
            problem = check_shape(cell.mode, views[s.run_id]) if s.run_id in views else "no view"
            if problem:
                cell.shape_errors += 1
                cell.errors[f"shape: {problem}"] = cell.errors.get(f"shape: {problem}", 0) + 1
    return driver.samples, requests, views


def summarize_hops(cell: Cell, report: HopReport) -> None:
    cell.hops_runs = report.runs
    cell.hops_skipped = dict(report.skipped)
    for hop, _ in HOPS:
        values = report.per_run.get(hop) or []
        if values:
            cell.hops[hop] = {"p50": round(_pct(values, 50), 1), "mean": round(statistics.fmean(values), 1)}
    if report.unexplained:
        cell.hops["(rest)"] = {
            "p50": round(_pct(report.unexplained, 50), 1),
            "mean": round(statistics.fmean(report.unexplained), 1),
        }
    if report.worker_extra:
        cell.worker_extra_p50_ms = round(_pct(report.worker_extra, 50), 1)


# --------------------------------------------------------------------------- output


def _ms(value: float) -> str:
    return "-" if value != value else f"{value:.0f}"


def results_table(cells: list[Cell]) -> str:
    lines = [
        "| mode | path | K | runs | p50 ms | p99 ms | critical path ms | p50 - critical | p99 - critical "
        "| target met | machine busy |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for c in cells:
        lines.append(
            f"| {c.mode} | {c.path} | {c.k} | {c.runs - c.failed}"
            f"{f' ({c.failed} failed)' if c.failed else ''} | {_ms(c.p50_ms)} | {_ms(c.p99_ms)} | "
            f"{_ms(c.critical_ms)} ({SEQUENTIAL_CALLS[c.mode]} x {c.served_ms:.1f}) | "
            f"+{_ms(c.over_p50)} | +{_ms(c.over_p99)} | {c.met} | {c.busy_share:.0%} |"
        )
    return "\n".join(lines)


def hops_table(cells: list[Cell]) -> str:
    names = [h for h, _ in HOPS] + ["(rest)"]
    lines = [
        "| mode | path | K | " + " | ".join(names) + " | worker latency_ms - served |",
        "| --- | --- | ---: | " + " | ".join("---:" for _ in names) + " | ---: |",
    ]
    for c in cells:
        cols = [_ms(c.hops[h]["p50"]) if h in c.hops else "-" for h in names]
        lines.append(
            f"| {c.mode} | {c.path} | {c.k} | " + " | ".join(cols) + f" | {_ms(c.worker_extra_p50_ms)} |"
        )
    return "\n".join(lines)


def print_cell(cell: Cell) -> None:
    print(
        f"\n== {cell.name}: {cell.runs} runs ({cell.failed} failed, {cell.shape_errors} not of the expected shape) "
        f"in {cell.wall_s:.1f}s"
    )
    print(
        f"  served per call p50 {cell.served_ms:.1f} ms p99 {cell.served_p99_ms:.1f} ms "
        f"(direct, {min(3 * cell.k, 8)} in flight)"
        f"; critical path {SEQUENTIAL_CALLS[cell.mode]} x {cell.served_ms:.1f} = {cell.critical_ms:.0f} ms"
    )
    print(
        f"  run latency p50 {cell.p50_ms:.0f} ms (+{cell.over_p50:.0f}), p99 {cell.p99_ms:.0f} ms "
        f"(+{cell.over_p99:.0f}); target met: {cell.met}"
    )
    print(
        f"  machine busy {cell.busy_share:.0%} of {psutil.cpu_count()} CPUs during the cell "
        f"({cell.background_cores:.2f} cores busy with other work just before)"
    )
    for error, count in cell.errors.items():
        print(f"    {count} x {error}")
    top = [r for r in cell.cpu if r["cpu_s"] >= 0.05][:7]
    print("  CPU: " + ", ".join(f"{r['process']} {r['cores']:.2f}" for r in top))


def print_hops(cell: Cell) -> None:
    print(f"\n-- {cell.name}: overhead per run by hop, ms (p50 / mean over {cell.hops_runs} runs)")
    if cell.hops_skipped:
        print(f"   runs left out: {cell.hops_skipped}")
    for hop, what in [*HOPS, ("(rest)", "latency - served x steps - the hops above (should be ~0)")]:
        if hop in cell.hops:
            h = cell.hops[hop]
            print(f"   {hop:<11} {h['p50']:7.1f} / {h['mean']:7.1f}   {what}")
    print(f"   worker-reported latency_ms - served, per call (p50): {cell.worker_extra_p50_ms:.1f}")


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--k", default="1,8,32", help="runs in flight, comma-separated (default 1,8,32)")
    parser.add_argument("--modes", default="consortium,debate", help="consortium,debate")
    parser.add_argument("--paths", default="sse,chat", help="sse,chat")
    parser.add_argument("--runs-k1", type=int, default=30, help="runs per cell at K=1 (default 30)")
    parser.add_argument(
        "--runs",
        type=int,
        default=100,
        help="at least this many runs per cell for K>1, in whole waves (default 100)",
    )
    parser.add_argument(
        "--latency-ms", type=float, default=200.0, help="model latency per call (default 200)"
    )
    parser.add_argument("--workers", type=int, default=2, help="member-worker processes (default 2)")
    parser.add_argument(
        "--worker-concurrency",
        type=int,
        default=64,
        help="MOOT_WORKER_CONCURRENCY (default 64: 2 workers hold K=32's 96 member calls at once; "
        "the service's own default is 32)",
    )
    parser.add_argument(
        "--warmup", type=int, default=4, help="unmeasured runs per mode and path first (default 4)"
    )
    parser.add_argument("--wait-quiet", type=float, default=0.0, help="wait up to S s for other load to drop")
    parser.add_argument("--run-timeout", type=float, default=60.0)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    args.k = [int(k) for k in args.k.split(",") if k.strip()]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    return args


def cells_of(args: argparse.Namespace) -> list[Cell]:
    cells = []
    for mode in args.modes:
        for path in args.paths:
            for k in args.k:
                runs = args.runs_k1 if k == 1 else k * math.ceil(args.runs / k)
                cells.append(Cell(mode, path, k, runs=runs))
    return cells


async def bench(args: argparse.Namespace) -> int:
    data_dir = (args.data_dir or Path(tempfile.mkdtemp(prefix="moot-latency-"))).absolute()
    print(f"data dir: {data_dir}")
    print(
        f"machine: {psutil.cpu_count()} logical CPUs, Python {sys.version.split()[0]}, litellm {_version('litellm')}"
    )
    cells = cells_of(args)
    extra_env = {"MOOT_WORKER_CONCURRENCY": str(args.worker_concurrency)}
    collected: list[tuple[Cell, list[Sample], list[dict[str, Any]], dict[str, dict[str, Any]]]] = []
    async with BenchStack(
        data_dir, behaviours(args.latency_ms), workers=args.workers, extra_env=extra_env, verbose=args.verbose
    ) as bench_stack:
        print(bench_stack.describe())
        print(
            f"model server: {bench_stack.model_server_url} (own process, {args.latency_ms:.0f} ms per call)"
        )
        meter = CpuMeter(None)
        assert bench_stack.stack is not None
        for service in bench_stack.stack.services:
            meter.add(service.name, service.pid)
        meter.add("model server (process)", bench_stack.model_server_pid)
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=100, keepalive_expiry=2.0)
        async with (
            httpx.AsyncClient(
                base_url=bench_stack.gateway_url,
                timeout=60.0,
                limits=limits,
                headers=bench_stack.headers,
                trust_env=False,
            ) as client,
            JobTap(bench_stack.nats_url, bench_stack.namespace) as tap,
        ):
            for mode in args.modes:
                response = await client.put(f"/v1/consortiums/{CONFIG_NAMES[mode]}", json=run_config(mode))
                if response.status_code != 200:
                    print(
                        f"saving the {mode} configuration: HTTP {response.status_code} {response.text[:200]}"
                    )
                    return 1
            if args.warmup:
                for mode in args.modes:
                    for path in args.paths:
                        warm = Driver(client, mode, path, "warm", args.run_timeout)
                        done = await run_concurrently(args.warmup, min(args.warmup, 4), warm.run)
                        bad = [r.error for r in done if not r.ok]
                        if bad:
                            print(f"  warm-up {mode}/{path}: {len(bad)} failed: {bad[:2]}", file=sys.stderr)
                await model_server_requests(bench_stack.model_server_url)
            for index, cell in enumerate(cells):
                samples, requests, views = await run_cell(bench_stack, client, meter, cell, index, args)
                print_cell(cell)
                collected.append((cell, samples, requests, views))
            # Every event of every run, with the time JetStream stored it.
            stored = await read_run_events(bench_stack.nats_url, bench_stack.namespace)
            jobs = dict(tap.published)
        events: dict[str, list[StoredEvent]] = collections.defaultdict(list)
        for e in stored:
            events[e.run_id].append(e)
        for cell, samples, requests, views in collected:
            arrivals = arrivals_by_tag(requests, [s.tag for s in samples])
            summarize_hops(cell, analyse_hops(samples, views, events, jobs, arrivals, cell.served_ms / 1000))
            print_hops(cell)
        logs = scan_logs(data_dir / "logs")

    print("\n== results (Markdown)\n")
    print(results_table(cells))
    print(
        f"\nTarget: p50 ≤ critical path + {TARGET_P50_MS:.0f} ms and p99 ≤ critical path + {TARGET_P99_MS:.0f} ms "
        "while the machine is under half busy. Critical path = sequential calls x the model server's p50 per "
        "call measured by direct calls just before the cell (consortium: 2 iterations x (members ∥, arbiter) = 4; "
        "debate: round 1 ∥, 3 + 3 turns, judge after round 2, final verdict = 9)."
    )
    print("\n== where the overhead goes: per run, summed over its critical chain, p50 ms (Markdown)\n")
    print(hops_table(cells))
    print()
    for hop, what in HOPS:
        print(f"- {hop}: {what}")
    print_log_findings(logs)

    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "cells": [
            {**asdict(c), "over_p50_ms": c.over_p50, "over_p99_ms": c.over_p99, "target_met": c.met}
            for c in cells
        ],
        "logs": logs,
    }
    (data_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nresults: {data_dir / 'results.json'}")
    return 0 if all(c.failed == 0 and c.shape_errors == 0 for c in cells) else 1


def main(argv: Sequence[str] | None = None) -> int:
    return run_benchmark(bench, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
