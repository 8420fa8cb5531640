"""CPU per run at saturation: every process of the moot stack against the in-process loop (issue 14, #2).

    .venv/bin/python benchmarks/cpu_per_run.py [--runs N] [--concurrency C] [--telemetry off,on]

In one run of this script (see benchmarks/README.md for the options and how to read the output):

1. the project's test model server in this process, 50 ms per call; every run is the consortium
   of `consortium_throughput.py` (3 members + arbiter, one iteration: 4 model calls);
2. baseline: the in-process asyncio loop on litellm's cached client making the same calls
   (`consortium_throughput.Baseline`), C runs in flight; its CPU is this process's minus the
   model server thread;
3. for each telemetry setting, a fresh database, namespace and stack (gateway, W member workers,
   arbiter, recorder as processes) on NATS_URL / DATABASE_URL: warm-up, a few idle seconds to
   measure what NATS and Postgres use without runs, then N runs at C in flight (saturation), and
   the CPU of every service, of nats-server (found by its listening port), and of Postgres (the
   benchmark database's backends plus the server's own processes, idle subtracted). Telemetry
   "on" exports traces (and metrics) over OTLP/HTTP to a sink in a child process that accepts and
   drops them (`harness.OtlpSink`); "off" is the default: no OTLP endpoint;
4. optionally (`--profile`, on by default) a separate pass of runs on the same stack with py-spy
   sampling each service, digested into causes (`PROFILE_RULES`) with their share of samples and
   an estimate in CPU ms per run.

Prints per-phase details, then Markdown tables for docs/benchmarks.md. Everything started is
stopped on exit; the databases, streams and KV buckets created are deleted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).absolute().parent))

import asyncpg
import psutil
from consortium_throughput import (
    ARBITER,
    IDLE_LEAVES,
    MEMBERS,
    SCAFFOLDING,
    CpuMeter,
    PhaseResult,
    baseline_phase,
    bench_infrastructure,
    create_database,
    drop_database,
    models_file,
    moot_phase,
    print_phase,
    scan_logs,
    summarize_profile,
)
from harness import (
    OtlpSink,
    cpu_seconds,
    delete_namespace,
    listening_pid,
    postgres_processes,
    profile_categories,
    rates,
    run_benchmark,
    shorten_profile_paths,
)

from moot.devstack.embedded import Infrastructure
from moot.devstack.model_server import ModelServer
from moot.devstack.stack import Stack

NATS = "nats-server"
PG_DB = "postgres: benchmark db backends"
PG_SERVER = "postgres: server processes"
PG_OTHER = "postgres: other databases (not counted)"
SINK = "otlp sink (not counted)"
INFRA = (NATS, PG_DB, PG_SERVER)
SERVICES = ("gateway", "member-worker", "arbiter", "recorder")
PROFILED = ("gateway", "member-worker-1", "arbiter", "recorder")

# Causes in a service's busy samples. First the specific costs, each matched anywhere in a
# sample's stack, in this order (a cost lookup made by litellm's logging counts as a cost lookup);
# a regex is matched against every frame, `function (path/file.py:line)`.
SOCKET = "socket writes (sampled in send(); see the note on run-queue waits)"
LOOP = "asyncio event loop (scheduling, socket reads; no library frame)"
PROFILE_RULES: list[tuple[str, str]] = [
    (SOCKET, r"^_SelectorSocketTransport\.write \(asyncio/"),
    ("moot worker: second cost computation (calls._cost)", r"^_cost \(moot_member_worker/"),
    (
        "litellm: cost / model-info lookups",
        r"^(completion_cost|get_model_info|_get_model_info_helper|_cached_get_model_info|cost_per_token|"
        r"response_cost_calculator|Logging\._response_cost_calculator) \(",
    ),
    (
        "litellm: logging / callbacks (rest)",
        r"\(litellm_logging\.py|\(litellm/(litellm_core_utils/logging|integrations)/",
    ),
    (
        "OpenTelemetry: span processor + OTLP export (batching, protobuf, HTTP)",
        r"\(opentelemetry/(sdk/trace/export|sdk/metrics/_internal/export|exporter)/",
    ),
    ("stdlib logging (log records, handlers)", r"\(logging/__init__\.py"),
    (
        "anyio worker-thread hops (to_thread.run_sync and what runs there)",
        r"^(run_sync \(anyio/to_thread|WorkerThread\.run \(anyio/)",
    ),
]

# Otherwise a sample belongs to the code nearest its leaf that is neither the standard library
# nor the event loop's scaffolding: the library (or moot) that did the work.
OWNERS: dict[str, str] = {
    "litellm": "litellm: request/response path (rest)",
    "openai": "openai SDK + httpx (the model's HTTP call)",
    "httpx": "openai SDK + httpx (the model's HTTP call)",
    "httpcore": "openai SDK + httpx (the model's HTTP call)",
    "h11": "openai SDK + httpx (the model's HTTP call)",
    "aiohttp": "openai SDK + httpx (the model's HTTP call)",
    "nats": "nats-py client (publish, KV, fetch, socket writes)",
    "faststream": "faststream / fast_depends (per-message machinery)",
    "fast_depends": "faststream / fast_depends (per-message machinery)",
    "uvicorn": "HTTP server (uvicorn, starlette, fastapi, SSE)",
    "starlette": "HTTP server (uvicorn, starlette, fastapi, SSE)",
    "fastapi": "HTTP server (uvicorn, starlette, fastapi, SSE)",
    "sse_starlette": "HTTP server (uvicorn, starlette, fastapi, SSE)",
    "opentelemetry": "OpenTelemetry: spans, metrics, context (inline)",
    "pydantic": "pydantic",
    "pydantic_core": "pydantic",
    "asyncpg": "asyncpg",
    "anyio": "anyio",
}
_STDLIB = frozenset(sys.stdlib_module_names)


def owner(frame: str) -> str | None:
    if SCAFFOLDING.match(frame):
        return None
    file = frame.rsplit(" (", 1)[-1].rstrip(")").split(":", 1)[0]
    if file.startswith("faststream/opentelemetry/"):  # faststream's telemetry middleware
        return OWNERS["opentelemetry"]
    head = file.split("/", 1)[0].removesuffix(".py")
    if head in _STDLIB or not head or head.startswith("<"):
        return None
    if head == "moot" or head.startswith("moot_"):
        return f"moot code ({head})"
    return OWNERS.get(head, head)


@dataclass
class MootPhase:
    telemetry: str
    phase: PhaseResult
    idle_cores: dict[str, float] = field(default_factory=dict)  # infra CPU rate before the runs
    net_ms: dict[str, float] = field(default_factory=dict)  # infra ms/run with idle subtracted
    sink: dict[str, int] = field(default_factory=dict)
    profile_phase: PhaseResult | None = None
    profiles: dict[str, Any] = field(default_factory=dict)
    logs: dict[str, Any] = field(default_factory=dict)


class StackMeter(CpuMeter):
    """`CpuMeter` plus NATS (the process listening on the NATS port) and Postgres split into the
    benchmark database's backends, the server's own processes and other databases' backends,
    instead of "every process with that name on the machine"."""

    def __init__(self, model_server_tid: int | None, nats_pid: int | None, postmaster_pid: int | None):
        super().__init__(model_server_tid)
        self.nats = psutil.Process(nats_pid) if nats_pid else None
        self.postmaster_pid = postmaster_pid
        self.database = "\0"  # no database yet

    def infra_cpu(self) -> dict[str, float]:
        values = {NATS: cpu_seconds([self.nats]) if self.nats else 0.0}
        if self.postmaster_pid:
            groups = postgres_processes(self.postmaster_pid, self.database)
            values[PG_DB] = cpu_seconds(groups["database"])
            values[PG_SERVER] = cpu_seconds(groups["server"])
            values[PG_OTHER] = cpu_seconds(groups["other databases"])
        return values

    def snapshot(self) -> dict[str, float]:
        snap = super().snapshot()
        snap.pop("nats-server (all on machine)", None)
        snap.pop("postgres (all on machine)", None)
        snap.update(self.infra_cpu())
        return snap


def _port(url: str, default: int) -> int:
    return urlsplit(url).port or default


async def postmaster_pid(database_url: str) -> int | None:
    """The Postgres server's main process: the parent of this connection's backend."""
    with contextlib.suppress(Exception):
        conn = await asyncpg.connect(database_url)
        try:
            backend = await conn.fetchval("SELECT pg_backend_pid()")
            return psutil.Process(backend).ppid()  # while the backend exists
        finally:
            await conn.close()
    return None


def _rows(phase: PhaseResult) -> dict[str, dict[str, Any]]:
    return {r["process"]: r for r in phase.cpu}


def _ms(phase: PhaseResult, prefix: str) -> float:
    return sum(r["cpu_ms_per_run"] for p, r in _rows(phase).items() if p.startswith(prefix))


def baseline_ms(phase: PhaseResult) -> float:
    return _ms(phase, "bench: driver")


def moot_ms(mp: MootPhase) -> dict[str, float]:
    """CPU ms per run of the stack: services as measured, NATS and Postgres net of idle."""
    out = {s: round(_ms(mp.phase, s), 1) for s in SERVICES}
    out["nats"] = mp.net_ms.get(NATS, 0.0)
    out["postgres"] = round(mp.net_ms.get(PG_DB, 0.0) + mp.net_ms.get(PG_SERVER, 0.0), 1)
    out["total"] = round(sum(out.values()), 1)
    return out


# --------------------------------------------------------------------------- one telemetry setting


@contextlib.asynccontextmanager
async def moot_stack(
    server: ModelServer,
    infra: Infrastructure,
    meter: StackMeter,
    args: argparse.Namespace,
    data_dir: Path,
    telemetry: str,
) -> AsyncIterator[tuple[Stack, str, OtlpSink | None]]:
    """A fresh database and namespace, the OTLP sink when telemetry is on, and the stack on
    them; all removed afterwards."""
    namespace = f"bench_{secrets.token_hex(4)}"
    db_name = f"moot_cpu_{secrets.token_hex(6)}"
    database_url = await create_database(infra.database_url, db_name)
    sink: OtlpSink | None = None
    try:
        meter.database = db_name
        env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        if args.worker_concurrency:
            env["MOOT_WORKER_CONCURRENCY"] = str(args.worker_concurrency)
        if args.arbiter_concurrency:
            env["MOOT_ARBITER_CONCURRENCY"] = str(args.arbiter_concurrency)
        for var in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            env[var] = ""  # off unless on, whatever this shell has
        env["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"] = ""
        if telemetry == "on":
            sink = OtlpSink().start()
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.url  # SDK defaults otherwise, as in production
            meter.add(SINK, sink.pid)
        else:
            meter.processes.pop(SINK, None)
        print(
            f"\n== telemetry {telemetry}: database {db_name}, namespace {namespace}"
            + (f", OTLP sink {sink.url}" if sink else "")
        )
        started = time.perf_counter()
        async with Stack(
            data_dir,
            port=0,
            workers=args.workers,
            namespace=namespace,
            models_file=models_file(data_dir / "models.yaml", server.url),
            nats_url=infra.nats_url,
            database_url=database_url,
            extra_env=env,
            progress=(lambda m: print(f"  stack: {m}", file=sys.stderr)) if args.verbose else None,
        ) as stack:
            print(f"stack up in {time.perf_counter() - started:.1f}s (logs in {stack.log_dir})")
            for service in stack.services:
                meter.add(service.name, service.pid)
            yield stack, database_url, sink
    finally:
        if sink is not None:
            sink.stop()
        await delete_namespace(infra.nats_url, namespace)  # every stream and bucket, texts included
        await drop_database(infra.database_url, db_name)


async def measure_telemetry(
    server: ModelServer,
    infra: Infrastructure,
    meter: StackMeter,
    args: argparse.Namespace,
    data_dir: Path,
    telemetry: str,
) -> MootPhase:
    phase_dir = data_dir / f"telemetry-{telemetry}"
    phase_dir.mkdir(parents=True, exist_ok=True)
    async with moot_stack(server, infra, meter, args, phase_dir, telemetry) as (stack, database_url, sink):
        # Warm-up (imports, pools, litellm caches), unmeasured.
        quiet = argparse.Namespace(**{**vars(args), "runs": args.warmup, "warmup": 0, "profile": []})
        await moot_phase(server, stack, database_url, meter, quiet, phase_dir)
        # What NATS and Postgres use with the stack up and no runs (this stack's idle polling and
        # anyone else's work on shared servers): subtracted from the phase below.
        idle = await rates(meter.infra_cpu, args.idle_seconds)
        measured = argparse.Namespace(**{**vars(args), "warmup": 0, "profile": []})
        phase, _ = await moot_phase(server, stack, database_url, meter, measured, phase_dir)
        phase.name = f"moot, telemetry {telemetry}"
        mp = MootPhase(telemetry, phase, idle_cores={k: round(v, 3) for k, v in idle.items()})
        rows = _rows(phase)
        for label in INFRA:
            used = rows.get(label, {}).get("cpu_s", 0.0) - idle.get(label, 0.0) * phase.wall
            mp.net_ms[label] = round(1000 * max(0.0, used) / max(phase.completed, 1), 1)
        if sink is not None:
            with contextlib.suppress(Exception):
                mp.sink = await sink.stats()
        if args.profile and telemetry in args.profile_telemetry:
            mp.profile_phase, mp.profiles = await profiling_pass(
                server, stack, database_url, meter, args, phase_dir
            )
            mp.profile_phase.name = f"moot, telemetry {telemetry}, under py-spy"
    mp.logs = scan_logs(phase_dir / "logs")
    return mp


async def record_profile(pid: int, out: Path, args: argparse.Namespace) -> Path | None:
    """py-spy on one service after `--profile-delay` seconds, for `--profile-seconds`; like
    `consortium_throughput.profile_process`, plus `--full-filenames` (made relative to sys.path
    afterwards), so that namespace packages (opentelemetry) and litellm's submodules stay apart."""
    py_spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if py_spy is None:
        print("  py-spy not found (pip install 'py-spy==0.4.*' into the venv); no profile", file=sys.stderr)
        return None
    await asyncio.sleep(args.profile_delay)
    with out.with_suffix(".log").open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *(py_spy, "record", "--pid", str(pid), "--duration", str(int(args.profile_seconds))),
            *("--rate", str(args.profile_rate), "--nonblocking", "--threads", "--full-filenames"),
            *("--format", "raw", "--output", str(out)),
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            await proc.wait()
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
    if proc.returncode != 0:
        return None
    shorten_profile_paths(out)
    return out


async def profiling_pass(
    server: ModelServer,
    stack: Stack,
    database_url: str,
    meter: StackMeter,
    args: argparse.Namespace,
    phase_dir: Path,
) -> tuple[PhaseResult, dict[str, Any]]:
    """`--profile-runs` runs on the same stack with py-spy on each of `--profile` (not measured:
    py-spy takes CPU too); each profile digested by `summarize_profile` and `PROFILE_RULES`."""
    pids = {s.name: s.pid for s in stack.services if s.pid is not None}
    tasks = {
        name: asyncio.create_task(record_profile(pids[name], phase_dir / f"profile-{name}.txt", args))
        for name in args.profile
        if name in pids
    }
    missing = [n for n in args.profile if n not in pids]
    if missing:
        print(f"  no service named {missing} to profile (have: {', '.join(pids)})", file=sys.stderr)
    # No waiting for a quiet machine here: py-spy's window starts with this pass.
    passing = argparse.Namespace(
        **{**vars(args), "runs": args.profile_runs, "warmup": 0, "profile": [], "wait_quiet": 0.0}
    )
    try:
        phase, _ = await moot_phase(server, stack, database_url, meter, passing, phase_dir)
    except BaseException:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        raise
    outs = {name: await task for name, task in tasks.items()}
    if phase.wall < args.profile_delay + args.profile_seconds:
        print(
            f"  note: the profiling pass lasted {phase.wall:.1f}s, shorter than the profile window "
            f"({args.profile_delay:.0f}s + {args.profile_seconds:.0f}s): use more --profile-runs",
            file=sys.stderr,
        )
    profiles: dict[str, Any] = {}
    for name, out in outs.items():
        if out is not None:
            prof = summarize_profile(out, args.profile_seconds, args.profile_rate)
            prof["file"] = str(out)
            prof["causes"] = profile_categories(out, PROFILE_RULES, owner, IDLE_LEAVES, fallback=LOOP)
            profiles[name] = prof
    return phase, profiles


# --------------------------------------------------------------------------- output


def print_moot(mp: MootPhase) -> None:
    print_phase(mp.phase)
    print(
        "  idle before the runs (cores): "
        + ", ".join(f"{k} {v:.3f}" for k, v in mp.idle_cores.items())
        + "; net of idle (ms/run): "
        + ", ".join(f"{k} {v:.1f}" for k, v in mp.net_ms.items())
    )
    if mp.sink:
        print(f"  OTLP sink received: {mp.sink}")
    if mp.profile_phase is not None:
        print(
            f"  profiling pass: {mp.profile_phase.completed} runs, {mp.profile_phase.runs_per_s:.1f} runs/s (not measured)"
        )
    for name, found in mp.logs.items():
        print(f"  log {name}: {found['counts']}; e.g. {found['messages'][:2]}")


def service_ms(mp: MootPhase, service: str) -> float:
    """CPU ms per run of one service instance (member-worker-1 stands for each worker)."""
    return float(_rows(mp.phase).get(service, {}).get("cpu_ms_per_run", 0.0))


def estimates(mp: MootPhase, name: str) -> list[tuple[str, float, float]]:
    """(cause, share of busy samples %, ~CPU ms per run), largest estimate first.

    py-spy samples wall time: a thread that is runnable but has no CPU is sampled where it
    stands, and on a saturated machine that is mostly right after a socket write woke the peer
    (nats-server). So the socket-write samples are not spread over the CPU time; instead that
    cause gets the service's kernel time (all its syscalls, from psutil), and the others share its
    user time in proportion to their samples.
    """
    row = _rows(mp.phase).get(name, {})
    ms = float(row.get("cpu_ms_per_run", 0.0))
    kernel = float(row.get("kernel_share", 0.0))
    categories = mp.profiles[name]["causes"]["categories"]
    socket = next((share for label, share, _ in categories if label == SOCKET), 0.0)
    out = []
    for label, share, _n in categories:
        if label == SOCKET:
            est = ms * kernel
        else:
            est = share / max(100.0 - socket, 1e-9) * ms * (1 - kernel)
        out.append((label, share, round(est, 2)))
    return sorted(out, key=lambda x: -x[2])


def print_profiles(mp: MootPhase, top: int) -> None:
    for name, prof in mp.profiles.items():
        ms = service_ms(mp, name)
        causes = prof["causes"]
        print(
            f"\n== py-spy, telemetry {mp.telemetry}: {name} ({causes['busy_samples']} busy samples, "
            f"{prof['busy_share_of_one_core']:.0%} of a core sampled busy; {ms:.1f} CPU ms/run measured; {prof['file']})"
        )
        print("  causes: share of busy samples, ~CPU ms/run (see estimates()):")
        for label, share, est in estimates(mp, name)[:top]:
            print(f"    {share:5.1f}%  {est:5.2f}  {label}")
            for frame, fshare in causes["frames"].get(label, [])[:3]:
                print(f"                    {fshare:5.1f}%  {frame}")
        print("  hottest leaf functions: " + "; ".join(f"{f} {s}%" for f, s in prof["self_by_function"][:6]))
        print("  inclusive: " + "; ".join(f"{f} {s}%" for f, s in prof["inclusive"][:14]))


def markdown(baseline: PhaseResult, moots: list[MootPhase]) -> str:
    base = baseline_ms(baseline)
    lines = [
        "| setup | runs | runs/s | gateway | member workers | arbiter | recorder | NATS | Postgres | **stack total** | in-process loop | **ratio** | machine busy |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| in-process loop, litellm cached client | {baseline.completed} | {baseline.runs_per_s:.1f} | | | | | | | | {base:.1f} | 1 | {baseline.machine_busy_cores:.2f} |",
    ]
    for mp in moots:
        m = moot_ms(mp)
        lines.append(
            f"| moot, telemetry {mp.telemetry} | {mp.phase.completed} | {mp.phase.runs_per_s:.1f} | {m['gateway']:.1f} | "
            f"{m['member-worker']:.1f} | {m['arbiter']:.1f} | {m['recorder']:.1f} | {m['nats']:.1f} | {m['postgres']:.1f} | "
            f"**{m['total']:.1f}** | {base:.1f} | **{m['total'] / max(base, 1e-9):.2f}x** | {mp.phase.machine_busy_cores:.2f} |"
        )
    return "\n".join(lines)


def markdown_profiles(moots: list[MootPhase], top: int) -> str:
    out = []
    for mp in moots:
        if not mp.profiles:
            continue
        out.append(
            f"\nTelemetry {mp.telemetry}: share of each service's busy samples, and that share of the "
            "service's measured CPU ms per run\n"
        )
        out.append("| service | cause | share of samples | ~CPU ms/run | mostly in |")
        out.append("| --- | --- | ---: | ---: | --- |")
        for name, prof in mp.profiles.items():
            ms = service_ms(mp, name)
            for label, share, est in estimates(mp, name)[:top]:
                frames = "; ".join(
                    f"`{f}` {fs:.0f} %" for f, fs in prof["causes"]["frames"].get(label, [])[:2]
                )
                out.append(f"| {name} ({ms:.1f} ms/run) | {label} | {share:.0f} % | {est:.1f} | {frames} |")
    return "\n".join(out)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=800, help="measured runs per telemetry setting (default 800)")
    p.add_argument("--concurrency", "-c", type=int, default=48, help="runs in flight (default 48)")
    p.add_argument("--workers", type=int, default=2, help="member-worker processes (default 2)")
    p.add_argument("--latency-ms", type=float, default=50.0, help="model latency per call (default 50)")
    p.add_argument("--warmup", type=int, default=32, help="unmeasured runs before each phase (default 32)")
    p.add_argument(
        "--baseline-seconds", type=float, default=20.0, help="time box of the baseline (default 20)"
    )
    p.add_argument("--baseline-runs", type=int, default=None, help="fixed number of baseline runs instead")
    p.add_argument("--telemetry", default="off,on", help="settings to measure, in order (default off,on)")
    p.add_argument(
        "--idle-seconds", type=float, default=3.0, help="idle window for NATS/Postgres (default 3)"
    )
    p.add_argument(
        "--profile",
        default=",".join(PROFILED),
        help=f"services to profile with py-spy in a separate pass ('' for none; default {','.join(PROFILED)})",
    )
    p.add_argument("--profile-telemetry", default="off,on", help="settings to profile (default off,on)")
    p.add_argument("--profile-runs", type=int, default=600, help="runs of the profiling pass (default 600)")
    p.add_argument("--profile-seconds", type=float, default=10.0)
    p.add_argument("--profile-delay", type=float, default=2.0, help="seconds into the pass")
    p.add_argument("--profile-rate", type=int, default=100, help="samples per second")
    p.add_argument("--top", type=int, default=8, help="causes per service in the tables")
    p.add_argument(
        "--wait-quiet", type=float, default=0.0, help="wait up to S s for foreign load < 0.25 cores"
    )
    p.add_argument("--follow", choices=("sse", "poll"), default="sse")
    p.add_argument("--poll-interval", type=float, default=0.1)
    p.add_argument("--run-timeout", type=float, default=120.0)
    p.add_argument("--db-timeout", type=float, default=60.0)
    p.add_argument("--worker-concurrency", type=int, default=None, help="MOOT_WORKER_CONCURRENCY")
    p.add_argument("--arbiter-concurrency", type=int, default=None, help="MOOT_ARBITER_CONCURRENCY")
    p.add_argument(
        "--data-dir", type=Path, default=None, help="logs, profiles, results (default: a temp dir)"
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    args.telemetry = [t.strip() for t in args.telemetry.split(",") if t.strip()]
    args.profile_telemetry = [t.strip() for t in args.profile_telemetry.split(",") if t.strip()]
    args.profile = [s.strip() for s in args.profile.split(",") if s.strip()]
    if any(t not in ("off", "on") for t in args.telemetry + args.profile_telemetry):
        p.error("--telemetry and --profile-telemetry take off and/or on")
    return args


async def bench(args: argparse.Namespace) -> int:
    data_dir = (args.data_dir or Path(tempfile.mkdtemp(prefix="moot-cpu-"))).absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"data dir: {data_dir}; machine: {psutil.cpu_count()} logical CPUs, Python {sys.version.split()[0]}"
    )
    behaviour = {"latency_ms": args.latency_ms}
    config = {
        "models": {
            **{m: behaviour for m in MEMBERS},
            ARBITER: {**behaviour, "arbiter": "well_formed", "arbiter_confidence": 0.9},
        }
    }
    moots: list[MootPhase] = []
    infra = await bench_infrastructure(data_dir)
    try:
        nats_pid = listening_pid(_port(infra.nats_url, 4222))
        pg_pid = await postmaster_pid(infra.database_url)
        print(
            f"nats: {infra.kind['nats']} {infra.nats_url} (pid {nats_pid}); "
            f"postgres: {infra.kind['postgres']} (postmaster pid {pg_pid})"
        )
        if nats_pid is None or pg_pid is None:
            print(
                "  note: NATS or Postgres process not visible here: its CPU is missing from the totals",
                file=sys.stderr,
            )
        async with ModelServer(config) as server:
            thread = server._thread
            meter = StackMeter(thread.native_id if thread is not None else None, nats_pid, pg_pid)
            print(f"model server: {server.url} ({args.latency_ms:.0f} ms per call)")
            baseline = await baseline_phase(server, meter, args, per_call_client=False)
            baseline.name = "in-process loop, litellm cached client"
            print_phase(baseline)
            for telemetry in args.telemetry:
                mp = await measure_telemetry(server, infra, meter, args, data_dir, telemetry)
                moots.append(mp)
                print_moot(mp)
                print_profiles(mp, args.top)
    finally:
        await infra.close()
        shutil.rmtree(data_dir / "infra", ignore_errors=True)

    base = baseline_ms(baseline)
    print("\n== summary (CPU ms per run)")
    print(markdown(baseline, moots))
    for mp in moots:
        total = moot_ms(mp)["total"]
        print(
            f"moot, telemetry {mp.telemetry}: {total:.1f} ms/run = {total / max(base, 1e-9):.2f}x the in-process loop "
            f"({base:.1f} ms/run); target <= 2x (stretch 1.5x): {'met' if total <= 2 * base else 'NOT met'}"
        )
    print(markdown_profiles(moots, args.top))
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "baseline": asdict(baseline),
        "baseline_ms_per_run": base,
        "moot": [{**asdict(mp), "ms_per_run": moot_ms(mp)} for mp in moots],
    }
    (data_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    print(
        f"\nresults: {data_dir / 'results.json'}; profiles (collapsed stacks) under {data_dir}/telemetry-*/"
    )
    failed = baseline.failed + sum(mp.phase.failed for mp in moots)
    return 0 if failed == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    return run_benchmark(bench, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
