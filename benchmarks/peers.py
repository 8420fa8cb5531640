"""Against the peers: the `llm-consortium` library and moot on the same workload, side by side.

    .venv/bin/python benchmarks/peers.py [--k 8,32,128] [--latency-ms 200] [--peer-version 0.8.0]

What it does (see benchmarks/README.md for every option and how to read the output):

1. starts the project's test model server in this process (`moot.devstack.model_server.ModelServer`)
   with `--latency-ms` per call; the arbiter answers well-formed tags with confidence 0.9, so a run
   of either system is one iteration: 3 member calls, then the arbiter (4 calls);
2. creates a virtual environment in a temporary folder and installs `llm-consortium` (pinned,
   `--peer-version`) and `llm` (`--llm-version`) from PyPI into it; `llm`'s
   `extra-openai-models.yaml` points the names m1, m2, m3 and arb at the model server;
3. for each K: a process of that venv runs K consortium runs at once through the library's Python
   API (`create_consortium(...).orchestrate(prompt)`, one run per thread, as an application would),
   `--runs-per-k` runs in all after a few warm-up runs, in a fresh user folder (so a fresh SQLite
   database); it reports each run's latency, its process CPU (`resource.getrusage`, every thread),
   and afterwards this process counts the records missing from its SQLite: each model response
   logged (4 per run), and with 0.6+ the run's `consortium_runs` row. llm's schema is created once
   before the threads start, and the model names resolved once, as the llm CLI does at start;
4. moot on the same workload in the same run: the stack as processes (`moot.devstack.stack.Stack`:
   gateway, W member workers, arbiter, recorder) on NATS_URL / DATABASE_URL in a fresh namespace and
   database; K runs in flight via `POST /v1/runs` followed over SSE, the same number of runs; CPU of
   every stack process, NATS and Postgres (psutil); records lost = of each run's `completed` row in
   `runs` and its 4 `calls` rows, those missing in Postgres. The gateway's open-streams guard
   (`MOOT_MAX_STREAMS_PER_KEY`, 64) is raised above K: the client follows every run over SSE.

Then the side-by-side table. The venv, the namespace's streams and buckets and the database are
removed at the end (`--keep-venv DIR` keeps and reuses a venv).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import asyncpg
import httpx
from consortium_throughput import (
    ARBITER,
    MEMBERS,
    PROMPT,
    CpuMeter,
    MootDriver,
    RunResult,
    _pct,
    background_load,
    bench_infrastructure,
    create_api_key,
    create_database,
    drop_database,
    models_file,
    run_concurrently,
    scan_logs,
)
from harness import delete_namespace, run_benchmark

from moot.devstack.embedded import Infrastructure
from moot.devstack.model_server import ModelServer
from moot.devstack.stack import Stack

PEER = "llm-consortium"
# 0.5: the newest whose import needs no scikit-learn (0.8.0 imports sklearn for a strategy it
# does not use here: `--peer-version 0.8.0 --peer-extra scikit-learn`).
PEER_VERSION = "0.5"
LLM_VERSION = "0.36"

# Runs inside the peer's venv. argv: K, runs, warm-up runs, results file. Uses only the library's
# documented Python API; its loggers print errors (e.g. "database is locked") to stdout.
PEER_DRIVER = textwrap.dedent(
    """
    import concurrent.futures, json, resource, sys, threading, time
    import llm
    from llm_consortium import create_consortium

    K, RUNS, WARMUP, OUT = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    PROMPT = sys.argv[5]
    MEMBERS, ARBITER = sys.argv[6].split(","), sys.argv[7]

    def one(_):
        started = time.perf_counter()
        orchestrator = create_consortium(
            models=MEMBERS, arbiter=ARBITER, confidence_threshold=0.8, max_iterations=1
        )
        try:
            result = orchestrator.orchestrate(PROMPT)
            synthesis = result["synthesis"]
            ok = bool(synthesis.get("synthesis")) and synthesis.get("confidence", 0) >= 0.8
            error = None if ok else "no synthesis / low confidence: " + repr(synthesis)[:200]
        except Exception as exc:
            ok, error = False, f"{type(exc).__name__}: {exc}"[:300]
        done = time.perf_counter()
        return {"id": getattr(orchestrator, "consortium_id", None), "ok": ok, "error": error,
                "latency": done - started, "started": started, "done": done}

    # Resolve the names once before the threads start: llm loads its plugins on first use, and
    # threads racing through that see "Unknown model" (an application would do this at start).
    for name in [*MEMBERS, ARBITER]:
        llm.get_model(name)
    # llm's schema, created once as the llm CLI does at start (threads creating it at once race).
    try:
        import sqlite_utils, llm_consortium
        from llm.migrations import migrate
        migrate(sqlite_utils.Database(llm_consortium.logs_db_path()))
    except Exception as exc:
        print("schema not created first:", type(exc).__name__, exc, flush=True)

    def cpu():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    with concurrent.futures.ThreadPoolExecutor(K) as pool:
        warm = list(pool.map(one, range(WARMUP)))
        cpu0, t0 = cpu(), time.perf_counter()
        results = list(pool.map(one, range(RUNS)))
        cpu1, t1 = cpu(), time.perf_counter()
    json.dump({"warmup": warm, "results": results, "cpu_s": cpu1 - cpu0, "started": t0,
               "threads_max": threading.active_count()}, open(OUT, "w"))
    """
)


@dataclass
class Row:
    system: str
    k: int
    runs: int
    completed: int
    runs_per_s: float
    p50: float
    p99: float
    cpu_ms_per_run: float  # the system's own processes (moot: services, NATS, Postgres)
    records_lost: int
    records_expected: int
    wall: float
    machine_busy_cores: float = 0.0
    background_cores: float = 0.0  # the machine's load from others, the second before the phase
    client_cpu_ms_per_run: float | None = None  # moot: the benchmark's HTTP/SSE client
    errors: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    cpu: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------- the peer


def make_venv(path: Path, args: argparse.Namespace) -> Path:
    python = path / "bin" / "python"
    if not python.exists():
        print(f"creating a venv for {PEER}=={args.peer_version} in {path}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
        started = time.perf_counter()
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             f"{PEER}=={args.peer_version}", f"llm=={args.llm_version}", *args.peer_extra],
            check=True,
        )  # fmt: skip
        print(f"  installed in {time.perf_counter() - started:.0f}s", flush=True)
    return python


def peer_home(root: Path, base_url: str) -> dict[str, str]:
    """A fresh user folder for llm and llm-consortium (its SQLite lives there): the environment."""
    config = root / "config"
    user = config / "io.datasette.llm"  # click.get_app_dir, where llm-consortium keeps its database
    user.mkdir(parents=True, exist_ok=True)
    models = [
        {"model_id": name, "model_name": name, "api_base": base_url, "can_stream": True}
        for name in (*MEMBERS, ARBITER)
    ]
    (user / "extra-openai-models.yaml").write_text(json.dumps(models))  # JSON is YAML
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LLM_"))}
    return {**env, "XDG_CONFIG_HOME": str(config), "LLM_USER_PATH": str(user), "HOME": str(root)}


def peer_records_lost(user: Path, run_ids: list[str | None], warmup: int) -> tuple[int, int, dict[str, int]]:
    """(records missing, records expected, rows per table) in the peer's SQLite.

    A record is a logged model response (4 per run: 3 members and the arbiter); with 0.6+ (runs
    by id in `consortium_logs.db`) also the run's `consortium_runs` row (`success`), so 5 per run.
    0.5 logs responses only, without a run id (`logs.db`: llm's `responses` table, or `turns` from
    llm 0.36 on), so its warm-up runs' responses are counted on both sides.
    """
    db = user / "consortium_logs.db"
    if not db.exists():
        db = user / "logs.db"
    per_run = len(MEMBERS) + 1
    if not db.exists():
        return per_run * len(run_ids), per_run * len(run_ids), {}
    conn = sqlite3.connect(db)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        counts = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in sorted(tables)}
        if None in run_ids:
            table = "turns" if "turns" in tables else "responses"
            expected = per_run * (len(run_ids) + warmup)
            return max(0, expected - counts.get(table, 0)), expected, counts
        status = (
            dict(conn.execute("SELECT id, status FROM consortium_runs").fetchall())
            if "consortium_runs" in tables
            else {}
        )
        members: dict[str, int] = {}
        if "consortium_members" in tables:
            query = "SELECT run_id, count(*) FROM consortium_members GROUP BY run_id"
            members = dict(conn.execute(query).fetchall())
    finally:
        conn.close()
    lost = sum((status.get(r) != "success") + max(0, per_run - members.get(r or "", 0)) for r in run_ids)
    return lost, (per_run + 1) * len(run_ids), counts


def peer_phase(
    python: Path, root: Path, server: ModelServer, meter: CpuMeter, k: int, args: argparse.Namespace
) -> Row:
    home = root / f"k{k}"
    env = peer_home(home, server.url)
    driver = root / "peer_driver.py"
    driver.write_text(PEER_DRIVER)
    out = home / "results.json"
    runs = runs_for(k, args)
    before = meter.snapshot()
    with (home / "stdout.log").open("wb") as log:
        proc = subprocess.run(
            [str(python), str(driver), str(k), str(runs), str(args.warmup), str(out), PROMPT, ",".join(MEMBERS), ARBITER],
            env=env, stdout=log, stderr=subprocess.STDOUT, timeout=args.run_timeout * (runs / k + 2), check=False,
        )  # fmt: skip
    after = meter.snapshot()
    if proc.returncode != 0 or not out.exists():
        tail = (home / "stdout.log").read_text(errors="replace")[-800:]
        raise RuntimeError(f"{PEER} driver failed ({proc.returncode}): {tail}")
    data = json.loads(out.read_text())
    results = data["results"]
    ok = [r for r in results if r["ok"]]
    wall = max(r["done"] for r in results) - data["started"]
    lost, expected, tables = peer_records_lost(
        home / "config" / "io.datasette.llm", [r["id"] for r in results], len(data["warmup"])
    )
    text = (home / "stdout.log").read_text(errors="replace")
    (args.data_dir_resolved / f"peer-k{k}.log").write_text(text)  # kept: the venv's folder is removed
    errors: dict[str, int] = {}
    for r in results:
        if not r["ok"]:
            errors[r["error"][:160]] = errors.get(r["error"][:160], 0) + 1
    row = Row(
        system=f"{PEER} {args.peer_version} (threads, 1 process)",
        k=k,
        runs=len(results),
        completed=len(ok),
        runs_per_s=len(ok) / wall,
        p50=_pct([r["latency"] for r in ok], 50),
        p99=_pct([r["latency"] for r in ok], 99),
        cpu_ms_per_run=1000 * data["cpu_s"] / max(len(ok), 1),
        records_lost=lost,
        records_expected=expected,
        wall=wall,
        errors=errors,
    )
    row.cpu, row.machine_busy_cores = CpuMeter.diff(before, after, max(len(ok), 1))
    locked = text.count("database is locked")
    logging_errors = text.count("Error ")
    row.notes.append(
        f"SQLite tables {tables}; log lines 'database is locked': {locked}, other logged errors: {logging_errors - locked}"
    )
    return row


# --------------------------------------------------------------------------- moot


async def moot_records_lost(database_url: str, run_ids: list[str]) -> int:
    """Records missing in Postgres: per run its `runs` row (`completed`) and 4 `calls` rows."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT r.id, r.status, (SELECT count(*) FROM calls c WHERE c.run_id = r.id) AS calls "
            "FROM runs r WHERE r.id = ANY($1::text[])",
            run_ids,
        )
    finally:
        await conn.close()
    per_run = len(MEMBERS) + 1
    found = {r["id"]: (r["status"] == "completed") + min(r["calls"], per_run) for r in rows}
    return sum(per_run + 1 - found.get(r, 0) for r in run_ids)


async def wait_recorded(database_url: str, run_ids: list[str], give_up_after: float) -> None:
    deadline = time.perf_counter() + give_up_after
    while time.perf_counter() < deadline:
        if not await moot_records_lost(database_url, run_ids):
            return
        await asyncio.sleep(0.2)


async def moot_phase(
    client: httpx.AsyncClient, database_url: str, meter: CpuMeter, k: int, args: argparse.Namespace
) -> Row:
    runs = runs_for(k, args)
    warm = MootDriver(client, "sse", 0.1, args.run_timeout)
    await run_concurrently(args.warmup, k, warm.run)
    driver = MootDriver(client, "sse", 0.1, args.run_timeout)
    before = meter.snapshot()
    started = time.perf_counter()
    results: list[RunResult] = await run_concurrently(runs, k, driver.run)
    after = meter.snapshot()
    ok = [r for r in results if r.ok]
    wall = max(r.done_at for r in results) - started
    ids = [r.run_id for r in results if r.run_id]
    await wait_recorded(database_url, ids, args.db_timeout)
    per_run = len(MEMBERS) + 2
    lost = await moot_records_lost(database_url, ids) + per_run * sum(1 for r in results if not r.run_id)
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            errors[(r.error or "?")[:160]] = errors.get((r.error or "?")[:160], 0) + 1
    cpu, busy = CpuMeter.diff(before, after, max(len(ok), 1))
    own = sum(c["cpu_s"] for c in cpu if not c["process"].startswith(("bench:", "everything else")))
    client_cpu = sum(c["cpu_s"] for c in cpu if c["process"] == "bench: driver (rest)")
    return Row(
        system=f"moot ({args.workers} workers, processes)",
        k=k,
        runs=len(results),
        completed=len(ok),
        runs_per_s=len(ok) / wall,
        p50=_pct([r.latency for r in ok], 50),
        p99=_pct([r.latency for r in ok], 99),
        cpu_ms_per_run=1000 * own / max(len(ok), 1),
        records_lost=lost,
        records_expected=per_run * len(results),
        wall=wall,
        machine_busy_cores=busy,
        client_cpu_ms_per_run=1000 * client_cpu / max(len(ok), 1),
        errors=errors,
        cpu=cpu,
    )


async def moot_all(
    server: ModelServer, meter: CpuMeter, args: argparse.Namespace, data_dir: Path
) -> list[Row]:
    namespace = f"bench_{secrets.token_hex(4)}"
    db_name = f"moot_bench_peers_{secrets.token_hex(4)}"
    infra: Infrastructure | None = None
    database_url: str | None = None
    rows: list[Row] = []
    try:
        infra = await bench_infrastructure(data_dir)
        print(
            f"moot: nats {infra.kind['nats']}, postgres {infra.kind['postgres']}, namespace {namespace}",
            flush=True,
        )
        database_url = await create_database(infra.database_url, db_name)
        async with Stack(
            data_dir,
            port=0,
            workers=args.workers,
            namespace=namespace,
            models_file=models_file(data_dir / "models.yaml", server.url),
            nats_url=infra.nats_url,
            database_url=database_url,
            # One SSE stream per run in flight: above the per-key guard's default of 64.
            extra_env={
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "MOOT_MAX_STREAMS_PER_KEY": str(2 * max(args.k) + 16),
            },
            publish_home=False,
            progress=(lambda m: print(f"  stack: {m}", file=sys.stderr)) if args.verbose else None,
        ) as stack:
            for service in stack.services:
                meter.add(service.name, service.pid)
            key = await create_api_key(database_url)
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            kmax = max(args.k)
            limits = httpx.Limits(
                max_connections=kmax * 2 + 10, max_keepalive_connections=kmax * 2, keepalive_expiry=2.0
            )
            async with httpx.AsyncClient(
                base_url=stack.gateway_url, timeout=30.0, limits=limits, headers=headers, trust_env=False
            ) as client:
                for k in args.k:
                    background = await background_load(0)
                    row = await moot_phase(client, database_url, meter, k, args)
                    row.background_cores = background
                    rows.append(row)
                    print_row(row)
        return rows
    finally:
        if infra is not None:
            await delete_namespace(infra.nats_url, namespace)
            if database_url is not None:
                await drop_database(infra.database_url, db_name)
            await infra.close()
        shutil.rmtree(data_dir / "infra", ignore_errors=True)


# --------------------------------------------------------------------------- output


def runs_for(k: int, args: argparse.Namespace) -> int:
    return args.runs_per_k or max(2 * k, 48)


def print_row(row: Row) -> None:
    print(f"\n== {row.system}, K={row.k}")
    print(f"  runs/s {row.runs_per_s:.2f} ({row.completed} of {row.runs} completed in {row.wall:.1f}s)")
    print(f"  latency p50 {row.p50:.3f}s  p99 {row.p99:.3f}s")
    client = (
        f" (+ {row.client_cpu_ms_per_run:.0f} ms in the benchmark's client)"
        if row.client_cpu_ms_per_run
        else ""
    )
    print(
        f"  CPU {row.cpu_ms_per_run:.0f} ms per run{client}; machine busy {row.machine_busy_cores:.2f} cores"
    )
    print(f"  records lost {row.records_lost} of {row.records_expected}")
    for error, n in row.errors.items():
        print(f"    {n} x {error}")
    for note in row.notes:
        print(f"  {note}")
    for c in row.cpu:
        if c["cpu_s"] >= 0.1:
            print(f"    {c['process']:<32} {c['cores']:5.2f} cores {c['cpu_ms_per_run']:7.1f} ms/run")


def markdown_table(rows: list[Row]) -> str:
    lines = [
        "| system | K | runs | runs/s | p50 | p99 | CPU ms/run | records lost | machine busy (others before) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in sorted(rows, key=lambda r: (r.k, r.system)):
        lines.append(
            f"| {r.system} | {r.k} | {r.runs} | {r.runs_per_s:.1f} | {r.p50:.2f} s | {r.p99:.2f} s | "
            f"{r.cpu_ms_per_run:.0f} | {r.records_lost} of {r.records_expected} | {r.machine_busy_cores:.2f} ({r.background_cores:.2f}) |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--k", default="8,32,128", help="runs in flight, comma-separated (8,32,128)")
    parser.add_argument("--runs-per-k", type=int, default=None, help="runs per K (default max(2K, 48))")
    parser.add_argument("--latency-ms", type=float, default=200.0, help="model latency per call (200)")
    parser.add_argument("--warmup", type=int, default=4, help="unmeasured runs before each K (4)")
    parser.add_argument("--workers", type=int, default=2, help="moot member-worker processes (2)")
    parser.add_argument("--peer-version", default=PEER_VERSION, help=f"{PEER} version ({PEER_VERSION})")
    parser.add_argument("--llm-version", default=LLM_VERSION, help=f"llm version ({LLM_VERSION})")
    parser.add_argument("--peer-extra", action="append", default=[], help="more packages for the venv")
    parser.add_argument("--keep-venv", type=Path, default=None, help="create (or reuse) the peer's venv here")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--no-moot", action="store_true")
    parser.add_argument("--run-timeout", type=float, default=120.0)
    parser.add_argument("--db-timeout", type=float, default=60.0)
    parser.add_argument("--data-dir", type=Path, default=None, help="logs and results (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    args.k = [int(x) for x in str(args.k).split(",") if x.strip()]
    return args


async def bench(args: argparse.Namespace) -> int:
    data_dir = (args.data_dir or Path(tempfile.mkdtemp(prefix="moot-bench-peers-"))).absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    args.data_dir_resolved = data_dir
    print(f"data dir: {data_dir}; K = {args.k}; {args.latency_ms:.0f} ms per call", flush=True)
    behaviour = {"latency_ms": args.latency_ms}
    config = {
        "models": {
            **{m: behaviour for m in MEMBERS},
            ARBITER: {**behaviour, "arbiter": "well_formed", "arbiter_confidence": 0.9},
        }
    }
    rows: list[Row] = []
    peer_root = Path(tempfile.mkdtemp(prefix="moot-bench-peer-"))
    try:
        async with ModelServer(config) as server:
            thread = server._thread
            meter = CpuMeter(thread.native_id if thread is not None else None)
            if not args.no_peer:
                venv = args.keep_venv.absolute() if args.keep_venv else peer_root / "venv"
                python = await asyncio.to_thread(make_venv, venv, args)
                for k in args.k:
                    background = await background_load(0)
                    row = await asyncio.to_thread(peer_phase, python, peer_root, server, meter, k, args)
                    row.background_cores = background
                    rows.append(row)
                    print_row(row)
            if not args.no_moot:
                rows += await moot_all(server, meter, args, data_dir)
    finally:
        shutil.rmtree(peer_root, ignore_errors=True)

    print("\n== summary")
    print(markdown_table(rows))
    for k in args.k:
        peer = next((r for r in rows if r.k == k and r.system.startswith(PEER)), None)
        moot = next((r for r in rows if r.k == k and r.system.startswith("moot")), None)
        if peer and moot and peer.runs_per_s and moot.cpu_ms_per_run:
            print(
                f"K={k}: moot / {PEER}: {moot.runs_per_s / peer.runs_per_s:.2f}x runs/s, "
                f"{peer.cpu_ms_per_run / moot.cpu_ms_per_run:.2f}x less CPU per run"
            )
    logs = scan_logs(data_dir / "logs") if (data_dir / "logs").exists() else {}
    for name, found in logs.items():
        print(f"  {name}: {found['counts']}")
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": [asdict(r) for r in rows],
        "logs": logs,
    }
    (data_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nresults: {data_dir / 'results.json'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_benchmark(bench, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
