"""Consortium throughput: the moot stack against the single-process way the reference tools work.

    .venv/bin/python benchmarks/consortium_throughput.py [--runs N] [--concurrency C] [--workers W]

What it does (see benchmarks/README.md for every option and how to read the output):

1. starts the project's test model server in this process (`moot.devstack.model_server.ModelServer`)
   with a fixed per-call latency standing in for a provider; the arbiter model answers well-formed
   tags with confidence 0.9, so every run takes exactly one iteration = 4 model calls
   (3 members + arbiter);
2. baseline, in this process: for each run the 3 member calls in parallel, then the arbiter call,
   each through `litellm.acompletion(..., client=openai.AsyncOpenAI(...))` with a NEW client per
   call (a new httpx client and SSL context, as the reference tools do; the client is closed
   after its call), C runs in flight. Optionally a second baseline with litellm's own cached
   client (what a moot worker does, but in one process);
3. the moot stack as processes (`moot.devstack.stack.Stack`: gateway, W member workers, arbiter, recorder)
   on NATS_URL / DATABASE_URL when set (else testcontainers or embedded servers, per
   `moot.devstack.embedded`), in a database created for this benchmark and dropped afterwards: N runs
   submitted with `POST /v1/runs`, C in flight, each followed over SSE (or by polling) to its end;
   then the time until all of them are `completed` rows in Postgres;
4. CPU seconds per process (psutil) for each phase, optionally a py-spy profile of one or more
   services, and the warnings/errors found in the services' logs.

Everything started here is stopped on exit (also on Ctrl-C and SIGTERM); the NATS streams and
the KV bucket of the benchmark's namespace are deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

# litellm would otherwise download its price map at import (here and in the services).
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import asyncpg
import httpx
import litellm
import openai
import psutil
import yaml
from httpx_sse import aconnect_sse

from moot.devstack.embedded import Infrastructure, resolve_infrastructure, with_database
from moot.devstack.model_server import ModelServer
from moot.devstack.stack import Stack
from moot.protocols.consortium import prompts
from moot.protocols.consortium.parsing import extract_member_confidence, parse_arbiter

litellm.suppress_debug_info = True
litellm.telemetry = False

MEMBERS = ("m1", "m2", "m3")
ARBITER = "arb"
PROMPT = "Is it better to walk or to cycle 3 km to work in a city? Answer in two sentences."
TERMINAL = ("run.completed", "run.failed")


# --------------------------------------------------------------------------- results


@dataclass
class RunResult:
    ok: bool
    latency: float  # seconds, submit -> end seen by the client
    server_latency: float | None = None  # finished_at - created_at of the run view (moot only)
    submit_latency: float | None = None  # POST /v1/runs round trip (moot only)
    error: str | None = None
    run_id: str | None = None
    done_at: float = 0.0  # perf_counter when the client saw the end
    started_at: float = 0.0


@dataclass
class PhaseResult:
    name: str
    runs: int
    concurrency: int
    wall: float
    completed: int
    failed: int
    runs_per_s: float
    calls_per_s: float  # model calls the model server answered per second of the phase
    p50: float
    p95: float
    p99: float
    server_p50: float | None = None
    server_p95: float | None = None
    submit_p50: float | None = None
    submit_p95: float | None = None
    model_requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    # Completed runs/s per tenth of the phase (a falling curve means something grows with the runs).
    timeline: list[float] = field(default_factory=list)
    # p50 latency of the first and the last quarter of the runs (in order of submission).
    p50_first_quarter: float | None = None
    p50_last_quarter: float | None = None
    cpu: list[dict[str, Any]] = field(default_factory=list)
    machine_busy_cores: float = 0.0
    background_cores: float = 0.0  # machine load from others just before the phase
    cpu_ms_per_run: float = 0.0  # CPU of every process the benchmark involves (not "everything else")
    postgres_all_in: float | None = None  # seconds from the phase start until every run is a row
    postgres_lag: float | None = None  # seconds from the last run seen done until then
    postgres_rows: int | None = None
    # Rows of runs the client never saw finish (e.g. a POST that failed after the run was stored):
    # status -> count, a few seconds after the last run ended.
    postgres_unfinished: dict[str, int] = field(default_factory=dict)


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summarize(
    name: str, results: list[RunResult], concurrency: int, started: float, model_requests: int
) -> PhaseResult:
    done = [r for r in results if r.ok]
    end = max((r.done_at for r in results), default=started)
    wall = max(end - started, 1e-9)
    latencies = [r.latency for r in done]
    server = [r.server_latency for r in done if r.server_latency is not None]
    submit = [r.submit_latency for r in results if r.submit_latency is not None]
    errors = collections.Counter((r.error or "?")[:260] for r in results if not r.ok)
    slices = 10
    timeline = [0.0] * slices
    for r in done:
        timeline[min(slices - 1, int((r.done_at - started) / wall * slices))] += 1
    timeline = [round(n / (wall / slices), 1) for n in timeline]
    in_order = sorted(done, key=lambda r: r.started_at)
    quarter = max(1, len(in_order) // 4)
    return PhaseResult(
        name=name,
        runs=len(results),
        concurrency=concurrency,
        wall=wall,
        completed=len(done),
        failed=len(results) - len(done),
        runs_per_s=len(done) / wall,
        calls_per_s=model_requests / wall,
        p50=_pct(latencies, 50),
        p95=_pct(latencies, 95),
        p99=_pct(latencies, 99),
        server_p50=_pct(server, 50) if server else None,
        server_p95=_pct(server, 95) if server else None,
        submit_p50=_pct(submit, 50) if submit else None,
        submit_p95=_pct(submit, 95) if submit else None,
        model_requests=model_requests,
        errors=dict(errors.most_common(5)),
        timeline=timeline,
        p50_first_quarter=_pct([r.latency for r in in_order[:quarter]], 50) if in_order else None,
        p50_last_quarter=_pct([r.latency for r in in_order[-quarter:]], 50) if in_order else None,
    )


async def run_concurrently(
    count: int,
    concurrency: int,
    one: Callable[[int], Awaitable[RunResult]],
    stop_starting_after: float | None = None,
) -> list[RunResult]:
    """`count` runs, `concurrency` of them in flight at any time (a new one starts when one ends).

    With `stop_starting_after` (seconds), no run starts after that; those in flight finish.
    """
    results: list[RunResult] = []
    counter = iter(range(count))
    deadline = None if stop_starting_after is None else time.perf_counter() + stop_starting_after

    async def lane() -> None:
        for i in counter:
            if deadline is not None and time.perf_counter() > deadline:
                return
            began = time.perf_counter()
            result = await one(i)
            result.started_at = began
            results.append(result)

    await asyncio.gather(*(lane() for _ in range(min(concurrency, count))))
    return results


# --------------------------------------------------------------------------- CPU accounting


class CpuMeter:
    """CPU seconds per process (and per thread of this process) between two snapshots.

    Labels: the stack's services by name, `bench: model server thread` and `bench: driver (rest)`
    for this process, `nats-server` and `postgres` (every process of that name on the machine,
    summed: shared servers also work for others), and the whole machine's busy time.
    """

    def __init__(self, model_server_thread_id: int | None) -> None:
        self.processes: dict[str, psutil.Process] = {}
        self.model_server_tid = model_server_thread_id
        self.me = psutil.Process()

    def add(self, label: str, pid: int | None) -> None:
        if pid is None:
            return
        with contextlib.suppress(psutil.Error):
            self.processes[label] = psutil.Process(pid)

    @staticmethod
    def _cpu(proc: psutil.Process) -> float:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            return 0.0
        return t.user + t.system

    @staticmethod
    def _runq_wait(pid: int) -> float:
        """Seconds the process's live threads spent runnable but waiting for a CPU (Linux schedstat)."""
        total = 0
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pid}/task"):
                with (
                    contextlib.suppress(OSError, ValueError, IndexError),
                    open(f"/proc/{pid}/task/{task}/schedstat") as f,
                ):
                    total += int(f.read().split()[1])
        return total / 1e9

    def snapshot(self) -> dict[str, float]:
        snap = {label: self._cpu(p) for label, p in self.processes.items()}
        for label, p in self.processes.items():
            snap[f"_wait:{label}"] = self._runq_wait(p.pid)
            with contextlib.suppress(psutil.Error):
                snap[f"_sys:{label}"] = p.cpu_times().system
        total_me = self._cpu(self.me)
        server_thread = 0.0
        with contextlib.suppress(psutil.Error):
            for thread in self.me.threads():
                if thread.id == self.model_server_tid:
                    server_thread = thread.user_time + thread.system_time
        snap["bench: model server thread"] = server_thread
        snap["bench: driver (rest)"] = total_me - server_thread
        for name in ("nats-server", "postgres"):
            total = 0.0
            for proc in psutil.process_iter(["name"]):
                if proc.info["name"] == name:
                    total += self._cpu(proc)
            snap[f"{name} (all on machine)"] = total
        machine = psutil.cpu_times()
        snap["_machine_busy"] = machine.user + machine.system + getattr(machine, "nice", 0.0)
        snap["_machine_busy"] += getattr(machine, "irq", 0.0) + getattr(machine, "softirq", 0.0)
        snap["_at"] = time.perf_counter()
        return snap

    @staticmethod
    def diff(
        before: dict[str, float], after: dict[str, float], runs: int
    ) -> tuple[list[dict[str, Any]], float]:
        wall = max(after["_at"] - before["_at"], 1e-9)
        rows: list[dict[str, Any]] = []
        for label, value in after.items():
            if label.startswith("_"):
                continue
            used = max(0.0, value - before.get(label, 0.0))
            row = {
                "process": label,
                "cpu_s": round(used, 2),
                "cores": round(used / wall, 2),
                "cpu_ms_per_run": round(1000 * used / max(runs, 1), 1),
            }
            if f"_sys:{label}" in after and used > 0:
                kernel = after[f"_sys:{label}"] - before.get(f"_sys:{label}", 0.0)
                row["kernel_share"] = round(max(0.0, kernel) / used, 2)
            if f"_wait:{label}" in after:
                waited = after[f"_wait:{label}"] - before.get(f"_wait:{label}", 0.0)
                row["runq_wait_s"] = round(max(0.0, waited), 2)
            rows.append(row)
        busy = (after["_machine_busy"] - before["_machine_busy"]) / wall
        # What the machine spent beyond the processes above: other people's work, the kernel.
        others = max(0.0, busy * wall - sum(r["cpu_s"] for r in rows))
        rows.append(
            {
                "process": "everything else on the machine",
                "cpu_s": round(others, 2),
                "cores": round(others / wall, 2),
                "cpu_ms_per_run": round(1000 * others / max(runs, 1), 1),
            }
        )
        rows.sort(key=lambda r: -r["cpu_s"])
        return rows, busy


# --------------------------------------------------------------------------- baseline


def member_messages(prompt: str) -> list[dict[str, str]]:
    # Exactly what moot sends a member in iteration 1 (no system prompt in these runs).
    return [{"role": "user", "content": prompt + prompts.MEMBER_CONFIDENCE_HINT}]


def arbiter_messages(prompt: str, answers: list[tuple[str, str]]) -> list[dict[str, str]]:
    # The same arbiter prompt moot builds (moot.protocols.consortium.arbiter_prompt), iteration 1.
    responses = "\n".join(
        prompts.ARBITER_RESPONSE.format(
            fence=prompts.fence(text),
            model=model,
            instance=1,
            confidence=extract_member_confidence(text) or "not stated",
            text=text,
        )
        for model, text in answers
    )
    content = prompts.ARBITER_PROMPT.format(
        instructions="", prompt=prompt, iteration=1, responses=responses, history=""
    )
    return [{"role": "user", "content": content}]


def _describe(exc: BaseException) -> str:
    """The exception and its root cause (litellm wraps the transport's error twice)."""
    root = exc
    while (root.__cause__ or root.__context__) is not None and root is not (
        root.__cause__ or root.__context__
    ):
        root = root.__cause__ or root.__context__  # type: ignore[assignment]
    text = f"{type(exc).__name__}: {str(exc)[:100]}"
    if root is not exc:
        text += f" (root cause {type(root).__module__}.{type(root).__name__}: {str(root)[:80]})"
    return text


class Baseline:
    """One process, no queue: members in parallel, then the arbiter, per run.

    `per_call_client=True`: a new `openai.AsyncOpenAI` (new httpx client, new SSL context) for
    every call, handed to litellm with `client=` and closed after the call: the reference tools'
    behaviour. False: no `client=`, so litellm reuses its cached client (what a moot worker does).
    """

    def __init__(self, base_url: str, per_call_client: bool) -> None:
        self.base_url = base_url
        self.per_call_client = per_call_client

    async def call(self, model: str, messages: list[dict[str, str]]) -> str:
        params: dict[str, Any] = {
            "model": f"openai/{model}",
            "api_base": self.base_url,
            "api_key": "test",
            "messages": messages,
            "num_retries": 0,
            "timeout": 240,
        }
        if not self.per_call_client:
            response = await litellm.acompletion(**params)
        else:
            client = openai.AsyncOpenAI(api_key="test", base_url=self.base_url, max_retries=0)
            try:
                response = await litellm.acompletion(**params, client=client)
            finally:
                await client.close()
        return response.choices[0].message.content or ""

    async def run(self, _: int) -> RunResult:
        started = time.perf_counter()
        try:
            texts = await asyncio.gather(*(self.call(m, member_messages(PROMPT)) for m in MEMBERS))
            verdict_text = await self.call(
                ARBITER, arbiter_messages(PROMPT, list(zip(MEMBERS, texts, strict=True)))
            )
            verdict = parse_arbiter(verdict_text)
            ok = verdict.confidence is not None and not verdict.malformed
            error = None if ok else f"arbiter answer not readable: {verdict.problems}"
        except Exception as exc:
            ok, error = False, _describe(exc)
        done = time.perf_counter()
        return RunResult(ok=ok, latency=done - started, error=error, done_at=done)


# --------------------------------------------------------------------------- moot driver


class MootDriver:
    def __init__(
        self, client: httpx.AsyncClient, follow: str, poll_interval: float, run_timeout: float
    ) -> None:
        self.client = client
        self.follow = follow
        self.poll_interval = poll_interval
        self.run_timeout = run_timeout
        self.run_ids: list[str] = []

    @staticmethod
    def body() -> dict[str, Any]:
        return {
            "mode": "consortium",
            "prompt": PROMPT,
            "members": [{"model": m} for m in MEMBERS],
            "arbiter": ARBITER,
            "max_iterations": 1,
        }

    async def run(self, _: int) -> RunResult:
        started = time.perf_counter()
        try:
            response = await self.client.post("/v1/runs", json=self.body())
        except httpx.HTTPError as exc:
            done = time.perf_counter()
            return RunResult(False, done - started, error=f"POST: {type(exc).__name__}: {exc}", done_at=done)
        submitted = time.perf_counter()
        if response.status_code != 202:
            return RunResult(
                False,
                submitted - started,
                error=f"POST: HTTP {response.status_code}: {response.text[:120]}",
                done_at=submitted,
            )
        run_id = response.json()["id"]
        self.run_ids.append(run_id)
        try:
            async with asyncio.timeout(self.run_timeout):
                if self.follow == "sse":
                    view = await self._follow_sse(run_id)
                else:
                    view = await self._poll(run_id)
        except TimeoutError:
            done = time.perf_counter()
            return RunResult(
                False, done - started, error=f"not finished after {self.run_timeout:.0f}s", run_id=run_id
            )
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            done = time.perf_counter()
            return RunResult(
                False, done - started, error=f"follow: {type(exc).__name__}: {exc}", run_id=run_id
            )
        done = time.perf_counter()
        status = view.get("status")
        server = None
        if view.get("created_at") and view.get("finished_at"):
            server = (
                datetime.fromisoformat(view["finished_at"]) - datetime.fromisoformat(view["created_at"])
            ).total_seconds()
        return RunResult(
            ok=status == "completed",
            latency=done - started,
            server_latency=server,
            submit_latency=submitted - started,
            error=None if status == "completed" else f"run {status}: {str(view.get('reason'))[:120]}",
            run_id=run_id,
            done_at=done,
        )

    async def _follow_sse(self, run_id: str) -> dict[str, Any]:
        timeout = httpx.Timeout(30.0, read=None)
        async with aconnect_sse(self.client, "GET", f"/v1/runs/{run_id}/events", timeout=timeout) as src:
            if src.response.status_code != 200:
                raise ValueError(f"SSE: HTTP {src.response.status_code}")
            async for sse in src.aiter_sse():
                if sse.event in TERMINAL:
                    run: dict[str, Any] = json.loads(sse.data)["run"]
                    return run
        raise ValueError("SSE stream ended without run.completed/run.failed")

    async def _poll(self, run_id: str) -> dict[str, Any]:
        while True:
            await asyncio.sleep(self.poll_interval)
            response = await self.client.get(f"/v1/runs/{run_id}")
            if response.status_code == 200:
                view: dict[str, Any] = response.json()
                if view.get("status") != "running":
                    return view


# --------------------------------------------------------------------------- py-spy


# Leaf frames where a thread waits rather than computes. py-spy's own idle detection does not
# work in every VM (with --nonblocking it cannot check the syscall), so they are dropped here.
IDLE_LEAVES = (
    "EpollSelector.select (",
    "Condition.wait (",
    "_worker (concurrent/futures/thread.py",
    "Event.wait (",
    "Thread.join (",
    "_wait_for_tstate_lock (",
)
# Frames every busy sample of an event-loop process sits under: not informative.
SCAFFOLDING = re.compile(
    r"^(<module>|main|serve|_run_module_as_main|_run_code|Server\.run|asyncio_run|Runner\.run|"
    r"BaseEventLoop\.(run_until_complete|run_forever|_run_once)|Handle\._run|Thread\.(run|_bootstrap.*)|"
    r"Context\.run) \(|^run \(uvicorn/"
)


def summarize_profile(path: Path, seconds: float, rate: int, top: int = 15) -> dict[str, Any]:
    """Digest of a py-spy `--format raw` file (with --threads): samples per thread, then for the
    samples that are not waiting: self time per module and inclusive time per function."""
    line_no = re.compile(r":\d+\)$")
    threads: collections.Counter[str] = collections.Counter()
    self_module: collections.Counter[str] = collections.Counter()
    self_func: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = busy = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [line_no.sub(")", f) for f in stack.split(";")]
        thread = "?"
        if frames and frames[0].startswith("thread ("):
            thread = frames[0].split("): ", 1)[-1] if "): " in frames[0] else frames[0]
            frames = frames[1:]
        total += count
        if not frames or frames[-1].startswith(IDLE_LEAVES):
            continue
        busy += count
        threads[thread] += count
        self_func[frames[-1]] += count
        self_module[_module_of(frames[-1])] += count
        for frame in set(frames):
            if not SCAFFOLDING.match(frame):
                inclusive[frame] += count

    def share(c: int) -> float:
        return round(100 * c / max(busy, 1), 1)

    expected = max(seconds * rate, 1)
    return {
        "samples": total,
        "busy_samples": busy,
        # Not CPU time: a runnable thread waiting for a CPU (a saturated machine) is sampled as busy.
        "busy_share_of_one_core": round(busy / expected, 2),
        "threads": {t: round(c / expected, 2) for t, c in threads.most_common(6)},
        "self_by_module": [(m, share(c)) for m, c in self_module.most_common(top)],
        "self_by_function": [(f, share(c)) for f, c in self_func.most_common(top)],
        "inclusive": [(f, share(c)) for f, c in inclusive.most_common(top * 4)],
    }


def _module_of(frame: str) -> str:
    """`write (asyncio/selector_events.py)` -> `asyncio`; py-spy prints paths relative to sys.path."""
    file = frame.rsplit(" (", 1)[-1].rstrip(")")
    head = file.split("/", 1)[0]
    return head.removesuffix(".py") or "?"


async def profile_process(pid: int, out: Path, seconds: float, rate: int) -> Path | None:
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        print("  py-spy not found (pip install 'py-spy==0.4.*' into the venv); no profile", file=sys.stderr)
        return None
    log = out.with_suffix(".log")
    with log.open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            str(rate),
            "--nonblocking",
            "--threads",
            "--format",
            "raw",
            "--output",
            str(out),
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            await proc.wait()
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
    return out if proc.returncode == 0 else None


# --------------------------------------------------------------------------- logs


def scan_logs(log_dir: Path) -> dict[str, dict[str, Any]]:
    """Per log file: how many ERROR / WARNING / Traceback lines, and a few distinct messages."""
    found: dict[str, dict[str, Any]] = {}
    stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")
    run_id = re.compile(r"\b[0-9a-f]{32}\b")
    for path in sorted(log_dir.glob("*.log")):
        counts: collections.Counter[str] = collections.Counter()
        samples: collections.Counter[str] = collections.Counter()
        for line in path.read_text(errors="replace").splitlines():
            kind = next((k for k in ("ERROR", "CRITICAL", "WARNING", "Traceback") if k in line), None)
            if kind is None:
                continue
            counts[kind] += 1
            samples[run_id.sub("<run>", stamp.sub("", line))[:220]] += 1
        if counts:
            found[path.name] = {"counts": dict(counts), "messages": samples.most_common(4)}
    return found


def print_log_findings(logs: dict[str, dict[str, Any]], where: str = "the service logs") -> None:
    """What `scan_logs` found, for people: counts per log, then each message and how often."""
    if not logs:
        return
    print(f"\n== warnings and errors in {where}")
    for name, found in logs.items():
        print(f"  {name}: {found['counts']}")
        for message, count in found["messages"]:
            print(f"    {count} x {message}")


# --------------------------------------------------------------------------- infrastructure


async def bench_infrastructure(data_dir: Path) -> Infrastructure:
    """NATS and Postgres for a benchmark: `NATS_URL` / `DATABASE_URL` when set, else embedded
    servers (or testcontainers) under `data_dir`."""
    return await resolve_infrastructure(
        data_dir / "infra",
        nats_url=os.environ.get("NATS_URL") or None,
        database_url=os.environ.get("DATABASE_URL") or None,
    )


def models_file(path: Path, base_url: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "model_list": [
                    {
                        "model_name": name,
                        "litellm_params": {
                            "model": f"openai/{name}",
                            "api_base": base_url,
                            "api_key": "test",
                        },
                    }
                    for name in (*MEMBERS, ARBITER)
                ]
            },
            sort_keys=False,
        )
    )
    return path


async def create_api_key(database_url: str) -> str | None:
    """A key for the gateway, written to the stack's database (what `moot keys create` does);
    None for a moot without API keys."""
    try:
        from moot.records import accounts
        from moot.records.migrate import migrate
    except ImportError:
        return None
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn)  # the stack has applied them already; a no-op then, but never a missing table
        _, key = await accounts.create_key(conn, "bench", limits=accounts.NO_LIMITS)
    finally:
        await conn.close()
    return str(key)


async def create_database(admin_url: str, name: str) -> str:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(admin_url, name)


async def drop_database(admin_url: str, name: str) -> None:
    with contextlib.suppress(Exception):
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def delete_nats_topology(nats_url: str, namespace: str) -> None:
    """Remove every stream and KV bucket of the benchmark's namespace (a shared server keeps them)."""
    from harness import delete_namespace  # here: harness imports this module

    with contextlib.suppress(Exception):
        await delete_namespace(nats_url, namespace)


async def wait_for_rows(
    database_url: str, run_ids: list[str], expected: int, give_up_after: float
) -> tuple[int, float]:
    """Poll until `expected` of `run_ids` are completed rows; (rows, perf_counter when reached/given up)."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.perf_counter() + give_up_after
        rows = 0
        while True:
            rows = await conn.fetchval(
                "SELECT count(*) FROM runs WHERE status = 'completed' AND id = ANY($1::text[])", run_ids
            )
            now = time.perf_counter()
            if rows >= expected or now > deadline:
                return rows, now
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def unfinished_runs(database_url: str, finished_ids: list[str], settle: float = 5.0) -> dict[str, int]:
    """Status counts of the rows that are not among the runs the client saw complete (warm-up
    runs and runs whose POST failed included), after letting stragglers settle."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.perf_counter() + settle
        while True:
            rows = await conn.fetch(
                "SELECT status, count(*) AS n FROM runs WHERE NOT (id = ANY($1::text[])) GROUP BY status",
                finished_ids,
            )
            counts = {r["status"]: r["n"] for r in rows}
            if not counts.get("running") or time.perf_counter() > deadline:
                return counts
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


def _own_cpu_per_run(phase: PhaseResult) -> float:
    rows = [r for r in phase.cpu if r["process"] != "everything else on the machine"]
    return round(sum(r["cpu_ms_per_run"] for r in rows), 1)


def _machine_busy() -> float:
    t = psutil.cpu_times()
    return t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


async def background_load(wait: float) -> float:
    """Cores the machine keeps busy while this benchmark idles (1 s samples); with `wait`, wait up
    to that many seconds for it to drop below 0.25 cores."""
    deadline = time.perf_counter() + wait
    while True:
        before, at = _machine_busy(), time.perf_counter()
        await asyncio.sleep(1.0)
        busy = (_machine_busy() - before) / (time.perf_counter() - at)
        if busy < 0.25 or time.perf_counter() >= deadline:
            if busy >= 0.25:
                print(f"  note: {busy:.2f} cores busy with other work before this phase", file=sys.stderr)
            return busy
        await asyncio.sleep(2.0)


def model_requests(server: ModelServer) -> int:
    total: int = server.stats(requests=False)["total_requests"]
    return total


# --------------------------------------------------------------------------- phases


async def baseline_phase(
    server: ModelServer, meter: CpuMeter, args: argparse.Namespace, per_call_client: bool
) -> PhaseResult:
    name = "baseline: new client per call" if per_call_client else "baseline: litellm cached client"
    baseline = Baseline(server.url, per_call_client)
    if args.warmup:
        await run_concurrently(args.warmup, args.concurrency, baseline.run)
    background = await background_load(args.wait_quiet)
    requests_before = await asyncio.to_thread(model_requests, server)
    before = meter.snapshot()
    started = time.perf_counter()
    if args.baseline_runs:
        results = await run_concurrently(args.baseline_runs, args.concurrency, baseline.run)
    else:  # time-boxed: as many runs as start within --baseline-seconds
        results = await run_concurrently(10**9, args.concurrency, baseline.run, args.baseline_seconds)
    after = meter.snapshot()
    requests = await asyncio.to_thread(model_requests, server) - requests_before
    phase = summarize(name, results, args.concurrency, started, requests)
    phase.cpu, phase.machine_busy_cores = CpuMeter.diff(before, after, phase.completed)
    phase.cpu_ms_per_run = _own_cpu_per_run(phase)
    phase.background_cores = background
    return phase


async def moot_phase(
    server: ModelServer,
    stack: Stack,
    database_url: str,
    meter: CpuMeter,
    args: argparse.Namespace,
    data_dir: Path,
) -> tuple[PhaseResult, dict[str, Any]]:
    # keepalive_expiry below uvicorn's 5 s keep-alive timeout: otherwise a request sent on a
    # connection the server is closing at that moment fails with ReadError (not moot's fault).
    limits = httpx.Limits(
        max_connections=args.concurrency * 2 + 10,
        max_keepalive_connections=args.concurrency * 2,
        keepalive_expiry=2.0,
    )
    key = await create_api_key(database_url)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, timeout=30.0, limits=limits, headers=headers, trust_env=False
    ) as client:
        if args.warmup:
            warm = MootDriver(client, args.follow, args.poll_interval, args.run_timeout)
            warm_results = await run_concurrently(args.warmup, args.concurrency, warm.run)
            bad = [r.error for r in warm_results if not r.ok]
            if bad:
                print(f"  warm-up: {len(bad)} of {len(warm_results)} runs failed: {bad[:2]}", file=sys.stderr)

        driver = MootDriver(client, args.follow, args.poll_interval, args.run_timeout)
        services = {s.name: s for s in stack.services}
        profiles: dict[str, Any] = {}
        profile_tasks: dict[str, asyncio.Task[Path | None]] = {}

        async def delayed_profile(name: str, pid: int) -> Path | None:
            await asyncio.sleep(args.profile_delay)
            return await profile_process(
                pid, data_dir / f"profile-{name}.txt", args.profile_seconds, args.profile_rate
            )

        for name in args.profile:
            if name not in services or services[name].pid is None:
                print(
                    f"  no service named {name!r} to profile (have: {', '.join(services)})", file=sys.stderr
                )
                continue
            pid = services[name].pid
            assert pid is not None
            profile_tasks[name] = asyncio.create_task(delayed_profile(name, pid))

        background = await background_load(args.wait_quiet)
        requests_before = await asyncio.to_thread(model_requests, server)
        before = meter.snapshot()
        started = time.perf_counter()
        try:
            results = await run_concurrently(args.runs, args.concurrency, driver.run)
        finally:
            after = meter.snapshot()
        requests = await asyncio.to_thread(model_requests, server) - requests_before
        phase = summarize(f"moot: {args.workers} worker(s)", results, args.concurrency, started, requests)
        phase.cpu, phase.machine_busy_cores = CpuMeter.diff(before, after, phase.completed)
        phase.cpu_ms_per_run = _own_cpu_per_run(phase)
        phase.background_cores = background
        if phase.wall < args.profile_delay + args.profile_seconds and profile_tasks:
            print(
                f"  note: the phase lasted {phase.wall:.1f}s, shorter than the profile window "
                f"({args.profile_delay:.0f}s + {args.profile_seconds:.0f}s): busy shares are diluted",
                file=sys.stderr,
            )

        # Time until every run the API reported completed is a completed row in Postgres.
        measured_ids = [r.run_id for r in results if r.ok and r.run_id]
        last_done = max((r.done_at for r in results), default=started)
        rows, reached = await wait_for_rows(database_url, measured_ids, len(measured_ids), args.db_timeout)
        phase.postgres_rows = rows
        if rows >= len(measured_ids):
            phase.postgres_all_in = reached - started
            phase.postgres_lag = max(0.0, reached - last_done)

        phase.postgres_unfinished = await unfinished_runs(database_url, measured_ids)

        for name, task in profile_tasks.items():
            out = await task
            if out is not None:
                profiles[name] = summarize_profile(out, args.profile_seconds, args.profile_rate)
                profiles[name]["file"] = str(out)
    return phase, profiles


# --------------------------------------------------------------------------- output


def _fmt(value: float | None, unit: str = "", digits: int = 2) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:.{digits}f}{unit}"


def print_phase(phase: PhaseResult) -> None:
    print(f"\n== {phase.name}  (runs {phase.runs}, concurrency {phase.concurrency})")
    print(
        f"  completed runs/s     {phase.runs_per_s:8.2f}   ({phase.completed} completed in {phase.wall:.1f}s)"
    )
    print(
        f"  model calls/s        {phase.calls_per_s:8.2f}   ({phase.model_requests} requests at the model server)"
    )
    print(
        f"  run latency          p50 {_fmt(phase.p50, 's', 3)}  p95 {_fmt(phase.p95, 's', 3)}  p99 {_fmt(phase.p99, 's', 3)}"
    )
    if phase.server_p50 is not None:
        print(
            f"  server-side latency  p50 {_fmt(phase.server_p50, 's', 3)}  p95 {_fmt(phase.server_p95, 's', 3)}"
        )
    if phase.submit_p50 is not None:
        print(
            f"  POST /v1/runs        p50 {_fmt(phase.submit_p50, 's', 3)}  p95 {_fmt(phase.submit_p95, 's', 3)}"
        )
    print(
        f"  p50 first/last 1/4   {_fmt(phase.p50_first_quarter, 's', 3)} / {_fmt(phase.p50_last_quarter, 's', 3)}"
    )
    print(f"  runs/s per 1/10      {' '.join(f'{x:.1f}' for x in phase.timeline)}")
    print(f"  failures             {phase.failed}")
    for error, count in phase.errors.items():
        print(f"    {count} x {error}")
    if phase.postgres_rows is not None:
        print(
            f"  all runs in Postgres {_fmt(phase.postgres_all_in, 's', 2)} after the first submit "
            f"({_fmt(phase.postgres_lag, 's', 2)} after the last run ended; {phase.postgres_rows} rows)"
        )
    if phase.postgres_unfinished:
        print(f"  other rows in Postgres (warm-up, failed POSTs): {phase.postgres_unfinished}")
    print(
        f"  CPU {phase.cpu_ms_per_run:.0f} ms per run in all involved processes; machine busy "
        f"{phase.machine_busy_cores:.2f} of {psutil.cpu_count()} cores "
        f"({phase.background_cores:.2f} busy with other work just before):"
    )
    for row in phase.cpu:
        if row["cpu_s"] >= 0.05:
            wait = f"  waited {row['runq_wait_s']:.1f}s for a CPU" if "runq_wait_s" in row else ""
            if "kernel_share" in row:
                wait = f"  {row['kernel_share']:.0%} in the kernel;" + wait
            print(
                f"    {row['process']:<32} {row['cores']:5.2f} cores  "
                f"{row['cpu_ms_per_run']:7.1f} ms/run  ({row['cpu_s']:.1f}s){wait}"
            )


def print_profile(name: str, prof: dict[str, Any]) -> None:
    print(
        f"\n== py-spy: {name}  ({prof['samples']} samples, {prof['busy_samples']} not waiting = "
        f"{prof['busy_share_of_one_core']:.0%} of the window; {prof['file']})"
    )
    print("  busy samples per thread (share of the window): ")
    print("    " + ", ".join(f"{t} {s:.0%}" for t, s in prof["threads"].items()))
    print("  self time by module: " + ", ".join(f"{m} {s}%" for m, s in prof["self_by_module"][:8]))
    print("  hottest leaf functions: ")
    for func, share in prof["self_by_function"][:6]:
        print(f"    {share:5.1f}%  {func}")
    print("  inclusive (share of busy samples):")
    for func, share in prof["inclusive"][:24]:
        print(f"    {share:5.1f}%  {func}")


def markdown_table(phases: list[PhaseResult]) -> str:
    head = (
        "| setup | C | runs | runs/s | model calls/s | p50 | p95 | failures | all in Postgres | CPU ms/run |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    lines = [head]
    for p in phases:
        lines.append(
            f"| {p.name} | {p.concurrency} | {p.runs} | {p.runs_per_s:.1f} | {p.calls_per_s:.1f} | "
            f"{_fmt(p.p50, ' s', 3)} | {_fmt(p.p95, ' s', 3)} | {p.failed} | "
            f"{_fmt(p.postgres_all_in, ' s', 1) if p.postgres_rows is not None else 'n/a'} | "
            f"{p.cpu_ms_per_run:.0f} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=600, help="measured moot runs (default 600)")
    parser.add_argument("--concurrency", "-c", type=int, default=16, help="runs in flight (default 16)")
    parser.add_argument("--workers", type=int, default=2, help="member-worker processes (default 2)")
    parser.add_argument(
        "--baseline-runs",
        type=int,
        default=None,
        help="measured runs per baseline (default: as many as start within --baseline-seconds)",
    )
    parser.add_argument(
        "--baseline-seconds", type=float, default=15.0, help="time box of each baseline (default 15)"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="before each phase wait up to this many seconds for other load on the machine to drop "
        "below 0.25 cores (default 0: only report it)",
    )
    parser.add_argument("--latency-ms", type=float, default=50.0, help="model latency per call (default 50)")
    parser.add_argument(
        "--warmup", type=int, default=16, help="unmeasured runs before each phase (default 16)"
    )
    parser.add_argument("--follow", choices=("sse", "poll"), default="sse", help="how to wait for a run")
    parser.add_argument(
        "--poll-interval", type=float, default=0.1, help="seconds between polls (--follow poll)"
    )
    parser.add_argument("--run-timeout", type=float, default=120.0, help="give up on a run after this")
    parser.add_argument("--db-timeout", type=float, default=60.0, help="give up waiting for Postgres rows")
    parser.add_argument("--no-baseline", action="store_true", help="skip both baselines")
    parser.add_argument(
        "--no-cached-baseline", action="store_true", help="skip the baseline with litellm's cached client"
    )
    parser.add_argument("--no-moot", action="store_true", help="skip the moot stack (baselines only)")
    parser.add_argument(
        "--worker-concurrency",
        type=int,
        default=None,
        help="MOOT_WORKER_CONCURRENCY (default: the service's)",
    )
    parser.add_argument(
        "--arbiter-concurrency",
        type=int,
        default=None,
        help="MOOT_ARBITER_CONCURRENCY (default: the service's)",
    )
    parser.add_argument(
        "--profile",
        default="",
        help="comma-separated service names to profile with py-spy during the moot phase "
        "(gateway, member-worker-1, arbiter, recorder, ...)",
    )
    parser.add_argument("--profile-seconds", type=float, default=10.0)
    parser.add_argument("--profile-delay", type=float, default=3.0, help="seconds into the phase")
    parser.add_argument("--profile-rate", type=int, default=100, help="samples per second")
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="logs, profiles, results (default: a temp dir)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--verbose", action="store_true", help="show the stack's progress messages")
    args = parser.parse_args(argv)
    args.profile = [p.strip() for p in args.profile.split(",") if p.strip()]
    return args


async def bench(args: argparse.Namespace) -> int:
    data_dir = (args.data_dir or Path(tempfile.mkdtemp(prefix="moot-bench-"))).absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    print(f"data dir: {data_dir}")
    print(
        f"machine: {psutil.cpu_count()} logical CPUs, Python {sys.version.split()[0]}, "
        f"litellm {_version('litellm')}, openai {_version('openai')}"
    )
    behaviour = {"latency_ms": args.latency_ms}
    config = {
        "models": {
            **{m: behaviour for m in MEMBERS},
            ARBITER: {**behaviour, "arbiter": "well_formed", "arbiter_confidence": 0.9},
        }
    }
    phases: list[PhaseResult] = []
    profiles: dict[str, Any] = {}
    logs: dict[str, Any] = {}
    async with ModelServer(config) as server:
        thread = server._thread  # the server's thread, for per-thread CPU accounting
        meter = CpuMeter(thread.native_id if thread is not None else None)
        print(f"model server: {server.url} (in this process, {args.latency_ms:.0f} ms per call)")

        if not args.no_baseline:
            variants = [True] if args.no_cached_baseline else [True, False]
            for per_call in variants:
                phase = await baseline_phase(server, meter, args, per_call)
                phases.append(phase)
                print_phase(phase)

        if not args.no_moot:
            phase, profiles = await run_moot(server, meter, args, data_dir)
            phases.append(phase)
            print_phase(phase)
            for name, prof in profiles.items():
                print_profile(name, prof)
            logs = scan_logs(data_dir / "logs")

    print("\n== summary")
    print(markdown_table(phases))
    moot = next((p for p in phases if p.name.startswith("moot")), None)
    for p in phases:
        if moot is not None and p is not moot and p.runs_per_s > 0:
            print(f"moot / {p.name}: {moot.runs_per_s / p.runs_per_s:.2f}x runs/s")
    if logs:
        print_log_findings(logs)
    elif not args.no_moot:
        print("\nno warnings or errors in the service logs")

    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "phases": [asdict(p) for p in phases],
        "profiles": profiles,
        "logs": logs,
    }
    (data_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nresults: {data_dir / 'results.json'}")
    return 0 if all(p.failed == 0 for p in phases) else 1


async def run_moot(
    server: ModelServer, meter: CpuMeter, args: argparse.Namespace, data_dir: Path
) -> tuple[PhaseResult, dict[str, Any]]:
    namespace = f"bench_{secrets.token_hex(4)}"
    db_name = f"moot_bench_{secrets.token_hex(6)}"
    infra: Infrastructure | None = None
    database_url: str | None = None
    try:
        infra = await bench_infrastructure(data_dir)
        print(
            f"nats: {infra.kind['nats']} {infra.nats_url}; postgres: {infra.kind['postgres']} "
            f"(database {db_name}, dropped afterwards); namespace {namespace}"
        )
        database_url = await create_database(infra.database_url, db_name)
        extra_env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        if args.worker_concurrency:
            extra_env["MOOT_WORKER_CONCURRENCY"] = str(args.worker_concurrency)
        if args.arbiter_concurrency:
            extra_env["MOOT_ARBITER_CONCURRENCY"] = str(args.arbiter_concurrency)
        started = time.perf_counter()
        async with Stack(
            data_dir,
            port=0,
            workers=args.workers,
            namespace=namespace,
            models_file=models_file(data_dir / "models.yaml", server.url),
            nats_url=infra.nats_url,
            database_url=database_url,
            extra_env=extra_env,
            progress=(lambda m: print(f"  stack: {m}", file=sys.stderr)) if args.verbose else None,
        ) as stack:
            print(
                f"stack up in {time.perf_counter() - started:.1f}s: {stack.gateway_url} (logs in {stack.log_dir})"
            )
            for service in stack.services:
                meter.add(service.name, service.pid)
            phase, profiles = await moot_phase(server, stack, database_url, meter, args, data_dir)
            restarts = {s.name: s.restarts for s in stack.services if s.restarts}
            if restarts or stack.failure:
                print(f"  service restarts during the benchmark: {restarts} {stack.failure or ''}")
        return phase, profiles
    finally:
        if infra is not None:
            await delete_nats_topology(infra.nats_url, namespace)
            if database_url is not None:
                await drop_database(infra.database_url, db_name)
            await infra.close()
        # Embedded servers' data is not worth keeping; logs, profiles and results are.
        shutil.rmtree(data_dir / "infra", ignore_errors=True)


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def main(argv: Sequence[str] | None = None) -> int:
    from harness import run_benchmark  # here: harness imports this module

    return run_benchmark(bench, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
