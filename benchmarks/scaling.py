"""Horizontal scaling: throughput with 1, 2 and 4 member-worker processes, each capped, and with
2 arbiters and 2 gateways.

    .venv/bin/python benchmarks/scaling.py [--workers 1,2,4] [--cap 4] [--latency-ms 500]

Issue 14, benchmark 4. Target: "Throughput with 1, 2 and 4 member-worker processes when each
worker caps its concurrent calls: >= 1.8x at 2 and >= 3.2x at 4; and with 2 arbiters and 2
gateways, no loss of throughput."

Every run: 3 members + arbiter, one iteration (4 model calls) at the test model server (its own
process) with `--latency-ms` per call. Each worker holds at most `--cap` calls at once
(`MOOT_WORKER_CONCURRENCY`), so W workers can finish at most W x cap / latency calls per second,
i.e. W x cap / (4 x latency) runs per second: that bound, not the CPU, must limit throughput, so
the calls are long enough (default 500 ms: at 4 workers x 4 calls the bound is 8 runs/s, under
1 core of moot's CPU on this machine; at 200 ms it would be 20 runs/s, about all of the 2 cores).

One phase per setting, each on a new stack (benchmarks/harness.py `BenchStack`, fresh database
and namespace, deleted after): W workers with 1 gateway and 1 arbiter for each W of `--workers`;
then `--ha-workers` workers (default the largest W) with 2 gateways and 2 arbiters, the POSTs
round-robin between the two gateways. Each phase: warm-up runs on instant models, then a batch of
runs (default: as many as the bound allows in `--seconds`, 20) POSTed at once; completion is
watched on a core NATS subscription to the terminal events; throughput = completed runs / (last
end - first POST). A closed loop of C runs in flight measured over a window would count whole
waves of runs (all runs of a wave end together behind the capped workers' queue); a batch does
not. The baseline is the 1-worker phase of the same run: the ratios are W workers / 1 worker,
and 2 arbiters + 2 gateways / 1 + 1 at the same W.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
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
    ARBITER,
    MEMBERS,
    CpuMeter,
    MootDriver,
    _version,
    background_load,
    print_log_findings,
    scan_logs,
)
from harness import BenchStack, MachineBusy, run_benchmark
from many_in_flight import WARM_ARBITER, WARM_MEMBERS, Watcher, run_body

from moot.devstack.stack import ServiceSpec, default_services

TARGETS = {2: 1.8, 4: 3.2}
CALLS_PER_RUN = 4


class ScaledStack(BenchStack):
    """A `BenchStack` with `gateways` gateways and `arbiters` arbiters (`ServiceSpec.instances`)."""

    def __init__(self, *args: Any, gateways: int = 1, arbiters: int = 1, **kwargs: Any) -> None:
        workers = kwargs.get("workers", 2)
        counts = {"gateway": gateways, "arbiter": arbiters, "member-worker": workers}
        services = [
            ServiceSpec(s.name, s.argv, instances=counts.get(s.name, s.instances))
            for s in default_services(workers=workers, port=0)
        ]
        super().__init__(*args, services=services, **kwargs)

    @property
    def gateway_urls(self) -> list[str]:
        assert self.stack is not None
        return [
            f"http://127.0.0.1:{s.port}"
            for s in self.stack.services
            if s.name == "gateway" or s.name.startswith("gateway-")
        ]


@dataclass
class Phase:
    name: str
    workers: int
    gateways: int
    arbiters: int
    runs: int
    runs_per_s: float
    bound_runs_per_s: float
    calls_per_s: float
    makespan: float
    completed: int
    failed: int
    submit_seconds: float
    machine_busy: float
    background_cores: float
    model_server_max_open: int
    cpu: list[dict[str, Any]] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)


def behaviours(latency_ms: float) -> dict[str, dict[str, Any]]:
    slow = {"latency_ms": latency_ms}
    arbiter = {"arbiter": "well_formed", "arbiter_confidence": 0.9}
    return {
        **{m: slow for m in MEMBERS},
        ARBITER: {**slow, **arbiter},
        **{m: {} for m in WARM_MEMBERS},
        WARM_ARBITER: arbiter,
    }


async def model_server_stats(base_url: str, reset: bool) -> dict[str, Any]:
    root = base_url.removesuffix("/v1")
    async with httpx.AsyncClient(base_url=root, timeout=10.0, trust_env=False) as client:
        stats: dict[str, Any] = (await client.get("/_control/stats", params={"requests": "false"})).json()
        if reset:
            await client.post("/_control/reset")
    return stats


async def phase(
    args: argparse.Namespace, data_dir: Path, workers: int, gateways: int, arbiters: int
) -> Phase:
    plural = {1: ""}
    name = (
        f"{workers} worker{plural.get(workers, 's')}, {gateways} gateway{plural.get(gateways, 's')}, "
        f"{arbiters} arbiter{plural.get(arbiters, 's')}"
    )
    bound = workers * args.cap / (CALLS_PER_RUN * args.latency_ms / 1000)
    runs = args.runs or max(args.min_runs, round(bound * args.seconds))
    print(f"\n== {name}: {runs} runs", flush=True)
    extra_env = {"MOOT_WORKER_CONCURRENCY": str(args.cap)}
    scaled = ScaledStack(
        data_dir,
        behaviours(args.latency_ms),
        workers=workers,
        gateways=gateways,
        arbiters=arbiters,
        extra_env=extra_env,
        verbose=args.verbose,
    )
    async with scaled as bench:
        assert bench.stack is not None
        print(f"  {bench.describe()}")
        urls = scaled.gateway_urls
        print(f"  gateways: {', '.join(urls)}; {len(bench.stack.services)} service processes")
        limits = httpx.Limits(
            max_connections=args.post_concurrency + 8, max_keepalive_connections=args.post_concurrency + 8
        )
        clients = [
            httpx.AsyncClient(base_url=u, headers=bench.headers, limits=limits, timeout=60.0, trust_env=False)
            for u in urls
        ]
        try:
            if args.warmup:  # on instant models, through every gateway
                warm = [MootDriver(c, "sse", 0.1, args.run_timeout) for c in clients]
                for d in warm:
                    d.body = lambda: run_body(WARM_MEMBERS, WARM_ARBITER)  # type: ignore[method-assign]
                done = await asyncio.gather(*(warm[i % len(warm)].run(i) for i in range(args.warmup)))
                if not all(r.ok for r in done):
                    print(f"  warm-up failures: {[r.error for r in done if not r.ok][:3]}")
            background = await background_load(args.wait_quiet)
            await model_server_stats(bench.model_server_url, reset=True)
            meter = CpuMeter(None)
            for service in bench.stack.services:
                meter.add(service.name, service.pid)
            meter.add("model server (apart)", bench.model_server_pid)
            busy = MachineBusy()
            body = run_body(MEMBERS, ARBITER)
            accepted: list[str] = []
            errors: dict[str, int] = {}
            slots = asyncio.Semaphore(args.post_concurrency)

            async def post(i: int) -> None:
                async with slots:
                    try:
                        response = await clients[i % len(clients)].post("/v1/runs", json=body)
                    except httpx.HTTPError as exc:
                        errors[f"POST: {type(exc).__name__}"] = (
                            errors.get(f"POST: {type(exc).__name__}", 0) + 1
                        )
                        return
                    if response.status_code == 202:
                        accepted.append(response.json()["id"])
                    else:
                        key = f"POST: HTTP {response.status_code}: {response.text[:100]}"
                        errors[key] = errors.get(key, 0) + 1

            async with Watcher(bench.nats_url, bench.namespace) as watcher:
                before = meter.snapshot()
                busy.start()
                t0 = time.perf_counter()
                await asyncio.gather(*(post(i) for i in range(runs)))
                submitted = time.perf_counter() - t0
                deadline = time.perf_counter() + args.run_timeout
                while len(watcher.ended) < len(accepted) and time.perf_counter() < deadline:
                    watcher.changed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(watcher.changed.wait(), deadline - time.perf_counter())
                after = meter.snapshot()
                machine = busy.stop()
            stats = await model_server_stats(bench.model_server_url, reset=False)
        finally:
            for c in clients:
                await c.aclose()

    ends = [watcher.ended_at[r] for r in accepted if r in watcher.ended_at]
    makespan = max(ends, default=t0) - t0
    completed = sum(1 for r in accepted if watcher.ended.get(r) == "completed")
    for r in accepted:
        kind = watcher.ended.get(r, "not ended")
        if kind != "completed":
            errors[f"run {kind}"] = errors.get(f"run {kind}", 0) + 1
    cpu, _ = CpuMeter.diff(before, after, max(completed, 1))
    result = Phase(
        name=name,
        workers=workers,
        gateways=gateways,
        arbiters=arbiters,
        runs=runs,
        runs_per_s=completed / max(makespan, 1e-9),
        bound_runs_per_s=bound,
        calls_per_s=int(stats.get("total_requests", 0)) / max(makespan, 1e-9),
        makespan=makespan,
        completed=completed,
        failed=runs - completed,
        submit_seconds=submitted,
        machine_busy=machine,
        background_cores=background,
        model_server_max_open=int(stats.get("max_in_flight", -1)),
        cpu=cpu,
        errors=errors,
    )
    print(
        f"  {result.runs_per_s:.2f} runs/s: {completed}/{runs} completed {makespan:.1f}s after the first POST "
        f"(all POSTed in {submitted:.1f}s); bound {bound:.2f} = {workers} x {args.cap} calls / "
        f"({CALLS_PER_RUN} x {args.latency_ms / 1000:g} s), {result.runs_per_s / bound:.0%} of it; "
        f"{result.calls_per_s:.1f} model calls/s, at most {result.model_server_max_open} open at the model server"
    )
    print(
        f"  machine busy {machine:.0%} of {psutil.cpu_count()} cores "
        f"({background:.2f} cores busy with other work before)"
    )
    for row in cpu:
        if row["cores"] >= 0.02:
            print(f"    {row['process']:<32} {row['cores']:5.2f} cores  {row['cpu_ms_per_run']:7.1f} ms/run")
    for error, count in errors.items():
        print(f"    {count} x {error}")
    return result


def markdown(phases: list[Phase], args: argparse.Namespace) -> str:
    base = next((p for p in phases if p.workers == 1 and p.gateways == 1 and p.arbiters == 1), None)
    lines = [
        "| setting | runs | runs/s | bound | of bound | ratio | target | model calls/s | failures | machine busy |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in phases:
        ha = p.gateways > 1 or p.arbiters > 1
        same = next(
            (q for q in phases if q.workers == p.workers and q.gateways == 1 and q.arbiters == 1), None
        )
        if ha:
            ratio = p.runs_per_s / same.runs_per_s if same and same.runs_per_s else float("nan")
            what, target = f"{ratio:.2f}x of 1 + 1", ">= 1x"
        else:
            ratio = p.runs_per_s / base.runs_per_s if base and base.runs_per_s else float("nan")
            what, target = (
                f"{ratio:.2f}x of 1 worker",
                f">= {TARGETS[p.workers]}x" if p.workers in TARGETS else "",
            )
        lines.append(
            f"| {p.name} | {p.runs} | {p.runs_per_s:.2f} | {p.bound_runs_per_s:.2f} | "
            f"{p.runs_per_s / p.bound_runs_per_s:.0%} | **{what}** | {target} | {p.calls_per_s:.1f} | "
            f"{p.failed} | {p.machine_busy:.0%} |"
        )
    lines.append(
        f"\n(every worker capped at {args.cap} calls, {args.latency_ms:.0f} ms per call; each phase a batch "
        "of runs POSTed at once, runs/s = completed / (last end - first POST))"
    )
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--workers", default="1,2,4", help="worker counts, one phase each (default 1,2,4)")
    parser.add_argument(
        "--ha-workers",
        type=int,
        default=None,
        help="workers of the 2 gateways + 2 arbiters phase (default: largest)",
    )
    parser.add_argument("--no-ha", action="store_true", help="skip the 2 gateways + 2 arbiters phase")
    parser.add_argument(
        "--cap", type=int, default=4, help="MOOT_WORKER_CONCURRENCY of every worker (default 4)"
    )
    parser.add_argument(
        "--latency-ms", type=float, default=500.0, help="model latency per call (default 500)"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=20.0,
        help="size each batch to last about this long at the bound (default 20)",
    )
    parser.add_argument("--runs", type=int, default=None, help="runs per phase (default: bound x --seconds)")
    parser.add_argument(
        "--min-runs", type=int, default=16, help="at least this many runs per phase (default 16)"
    )
    parser.add_argument(
        "--post-concurrency", type=int, default=16, help="POSTs in flight at most (default 16)"
    )
    parser.add_argument(
        "--warmup", type=int, default=8, help="warm-up runs on instant models per phase (default 8)"
    )
    parser.add_argument("--run-timeout", type=float, default=300.0, help="give up waiting for a phase's runs")
    parser.add_argument("--wait-quiet", type=float, default=0.0, help="wait up to S s for other load to drop")
    parser.add_argument("--data-dir", type=Path, default=None, help="logs and results (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    if args.ha_workers is None:
        args.ha_workers = max(args.workers)
    return args


async def bench(args: argparse.Namespace) -> int:
    data_dir = (args.data_dir or Path(tempfile.mkdtemp(prefix="moot-scaling-"))).absolute()
    data_dir.mkdir(parents=True, exist_ok=True)
    print(f"data dir: {data_dir}")
    print(
        f"machine: {psutil.cpu_count()} CPUs, Python {sys.version.split()[0]}, litellm {_version('litellm')}"
    )
    settings = [(w, 1, 1) for w in args.workers]
    if not args.no_ha:
        settings.append((args.ha_workers, 2, 2))
    phases: list[Phase] = []
    logs: dict[str, Any] = {}
    for workers, gateways, arbiters in settings:
        sub = data_dir / f"w{workers}-g{gateways}-a{arbiters}"
        phases.append(await phase(args, sub, workers, gateways, arbiters))
        for log_name, found in scan_logs(sub / "logs").items():
            logs[f"{sub.name}/{log_name}"] = found

    base = next((p for p in phases if p.workers == 1 and p.gateways == 1), None)
    print("\n== summary")
    met = True
    for p in phases:
        if base is not None and p is not base and p.gateways == 1 and base.runs_per_s:
            ratio = p.runs_per_s / base.runs_per_s
            goal = TARGETS.get(p.workers)
            verdict = (
                "" if goal is None else (" (target met)" if ratio >= goal else f" (target {goal}x NOT met)")
            )
            met = met and (goal is None or ratio >= goal)
            print(f"  {p.workers} workers / 1 worker: {ratio:.2f}x{verdict}")
        if p.gateways > 1 or p.arbiters > 1:
            same = next(
                (q for q in phases if q.workers == p.workers and q.gateways == 1 and q.arbiters == 1), None
            )
            if same is not None and same.runs_per_s:
                ratio = p.runs_per_s / same.runs_per_s
                print(f"  {p.name} / 1 gateway + 1 arbiter at {p.workers} workers: {ratio:.2f}x")
    print_log_findings(logs)
    print("\n== markdown")
    print(markdown(phases, args))
    results = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "phases": [asdict(p) for p in phases],
        "logs": logs,
    }
    (data_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nresults: {data_dir / 'results.json'}")
    return 0 if all(p.failed == 0 for p in phases) and met else 1


def main(argv: Sequence[str] | None = None) -> int:
    return run_benchmark(bench, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
