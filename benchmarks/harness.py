"""Pieces every stack benchmark needs that `consortium_throughput.py` does not already provide.

Import it after a `sys.path` insert of the benchmarks folder (benchmarks/ is not a package);
what `consortium_throughput.py` already has (CpuMeter, run_concurrently, percentiles, API keys,
databases, py-spy, log scan) is imported from there, not copied.

- `BenchStack`: NATS + Postgres (NATS_URL / DATABASE_URL, else embedded), a database created
  for the benchmark, the test model server as a separate process (an extra of the stack, so it
  shares no GIL with the driver), the moot services, an API key; on exit everything is stopped,
  the database dropped and every stream and KV bucket of the namespace deleted;
- `delete_namespace`: every stream and KV bucket of a namespace (runs, jobs, dead letters,
  advisories, run state, texts);
- `MachineBusy`: the machine's busy share over an interval (psutil.cpu_percent);
- `served_latency`: the model server's own per-call time, by direct calls (no moot, no litellm);
- `JobTap`: when each call job was published (a core NATS subscription on the jobs subject,
  which sees every job without taking it from the work queue);
- `read_run_events`: every message of the runs stream with the time JetStream stored it;
- `model_server_requests`: the model server's request log (arrival times), then a reset.

For CPU accounting (`cpu_per_run.py`): `listening_pid` (the process on a TCP port: the local
nats-server), `postgres_processes` (a server's processes split into one database's backends,
other databases' backends and the server's own), `cpu_seconds`, `rates` (idle rates over a
window); `OtlpSink` (an OTLP/HTTP receiver in a child process that accepts and drops every
export); `profile_categories` (a py-spy raw profile's busy samples grouped by regex rules and
by the library that did the work), `shorten_profile_paths` (a `--full-filenames` profile's paths
made relative to sys.path, unambiguous).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx
import nats
import psutil
import yaml
from nats.js.api import ConsumerConfig, DeliverPolicy

sys.path.insert(0, str(Path(__file__).resolve().parent))

from consortium_throughput import bench_infrastructure, create_api_key, create_database, drop_database

from moot.devstack.embedded import Infrastructure
from moot.devstack.stack import ServiceSpec, Stack, free_ports
from moot.runtime.subjects import Names

__all__ = [
    "BenchStack",
    "JobTap",
    "MachineBusy",
    "OtlpSink",
    "StoredEvent",
    "cpu_seconds",
    "delete_namespace",
    "listening_pid",
    "model_server_requests",
    "postgres_processes",
    "profile_categories",
    "rates",
    "read_run_events",
    "run_benchmark",
    "serve_otlp_sink",
    "served_latency",
    "shorten_profile_paths",
]


# --------------------------------------------------------------------------- the stack


class BenchStack:
    """`async with BenchStack(data_dir, models={...}) as bench:` the whole stack for one benchmark.

    `models` is the test model server's behaviours per model name (`ModelBehaviour` fields); the
    services' model list sends every one of those names to it. Attributes once entered:
    `gateway_url`, `headers` (the API key), `model_server_url` (ends in /v1), `model_server_pid`,
    `stack` (its `services` have names and pids), `nats_url`, `database_url`, `namespace`.
    """

    def __init__(
        self,
        data_dir: Path,
        models: Mapping[str, Mapping[str, Any]],
        *,
        workers: int = 2,
        extra_env: Mapping[str, str] | None = None,
        max_recorded_requests: int = 100_000,
        verbose: bool = False,
        services: Sequence[ServiceSpec] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.services = list(services) if services is not None else None  # None: the default line-up
        self.models = dict(models)
        self.workers = workers
        self.extra_env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", **(extra_env or {})}
        self.max_recorded_requests = max_recorded_requests
        self.verbose = verbose
        self.namespace = f"bench_{secrets.token_hex(4)}"
        self.db_name = f"moot_bench_{secrets.token_hex(6)}"
        self.infra: Infrastructure | None = None
        self.nats_url = ""
        self.database_url = ""
        self.gateway_url = ""
        self.headers: dict[str, str] = {}
        self.model_server_url = ""
        self.model_server_pid: int | None = None
        self.stack: Stack | None = None
        self._db_created = False

    def describe(self) -> str:
        assert self.infra is not None
        return (
            f"nats: {self.infra.kind['nats']} {self.nats_url}; postgres: {self.infra.kind['postgres']} "
            f"(database {self.db_name}, dropped afterwards); namespace {self.namespace} (deleted afterwards)"
        )

    async def __aenter__(self) -> BenchStack:
        try:
            await self._start()
        except BaseException:
            await self._cleanup()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._cleanup()

    async def _start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.infra = await bench_infrastructure(self.data_dir)
        self.nats_url = self.infra.nats_url
        self.database_url = await create_database(self.infra.database_url, self.db_name)
        self._db_created = True

        (port,) = free_ports(1)
        base = f"http://127.0.0.1:{port}"
        self.model_server_url = f"{base}/v1"
        server_config = {"models": self.models, "max_recorded_requests": self.max_recorded_requests}
        config_path = self.data_dir / "model-server.yaml"
        config_path.write_text(yaml.safe_dump(server_config, sort_keys=False))
        models_path = self.data_dir / "models.yaml"
        models_path.write_text(
            yaml.safe_dump(
                {
                    "model_list": [
                        {
                            "model_name": name,
                            "litellm_params": {
                                "model": f"openai/{name}",
                                "api_base": self.model_server_url,
                                "api_key": "test",
                            },
                        }
                        for name in self.models
                    ]
                },
                sort_keys=False,
            )
        )
        self.stack = Stack(
            self.data_dir,
            port=0,
            workers=self.workers,
            namespace=self.namespace,
            models_file=models_path,
            nats_url=self.nats_url,
            database_url=self.database_url,
            extra_env=self.extra_env,
            progress=(lambda m: print(f"  stack: {m}", file=sys.stderr)) if self.verbose else None,
            publish_home=False,
            services=self.services,
        )
        server = self.stack.add_process(
            "model-server",
            [
                sys.executable,
                "-m",
                "moot.devstack.model_server",
                "--port",
                str(port),
                "--config",
                str(config_path),
            ],
            ready_url=f"{base}/healthz",
        )
        await self.stack.start()
        self.model_server_pid = server.pid
        self.gateway_url = self.stack.gateway_url
        key = await create_api_key(self.database_url)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    async def _cleanup(self) -> None:
        if self.stack is not None:
            await self.stack.stop()
        if self.infra is not None:
            await delete_namespace(self.nats_url, self.namespace)
            if self._db_created:
                await drop_database(self.infra.database_url, self.db_name)
            await self.infra.close()
        shutil.rmtree(self.data_dir / "infra", ignore_errors=True)


async def delete_namespace(nats_url: str, namespace: str) -> list[str]:
    """Delete every stream and KV bucket of `namespace` (`<NS>_*` streams, `<ns>_*` buckets); their names.

    The known names are deleted by name; the server's stream list (paged, 256 a page on a shared
    server that holds many) is searched for any other stream of the namespace.
    """
    names = Names(namespace)
    prefixes = (f"{namespace.upper()}_", f"KV_{namespace}_")
    candidates = [
        names.runs_stream,
        names.jobs_stream,
        names.dead_stream,
        names.advisories_stream,
        f"KV_{names.state_bucket}",
        f"KV_{names.text_bucket}",
    ]
    deleted: list[str] = []
    with contextlib.suppress(Exception):
        nc = await nats.connect(nats_url, connect_timeout=2, max_reconnect_attempts=0)
        try:
            js = nc.jetstream()
            with contextlib.suppress(Exception):
                offset = 0
                while True:
                    page = [s.config.name for s in await js.streams_info(offset=offset)]
                    candidates += [s for s in page if s and s.startswith(prefixes) and s not in candidates]
                    if not page:
                        break
                    offset += len(page)
            for stream in candidates:
                with contextlib.suppress(Exception):
                    await js.delete_stream(stream)
                    deleted.append(stream)
        finally:
            await nc.close()
    return deleted


# --------------------------------------------------------------------------- machine load


class MachineBusy:
    """Share of the machine's CPUs busy between `start()` and `stop()` (0..1), via psutil.cpu_percent."""

    def __init__(self) -> None:
        self.share: float | None = None

    def start(self) -> None:
        psutil.cpu_percent(None)  # resets psutil's reference point

    def stop(self) -> float:
        self.share = psutil.cpu_percent(None) / 100
        return self.share


# --------------------------------------------------------------------------- model server


async def served_latency(
    base_url: str, model: str, *, concurrency: int, calls: int, prompt: str = "ping"
) -> list[float]:
    """Seconds per call of direct `POST {base_url}/chat/completions`, `concurrency` at a time.

    What the model server itself takes per call at that load (plus a bare httpx client), with no
    moot and no litellm in between: the unit of a run's critical path.
    """
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    times: list[float] = []
    remaining = iter(range(calls))
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60.0, trust_env=False) as client:
        # A first, untimed wave opens the connections: connection set-up is not a call's time.
        await asyncio.gather(*(client.post("/chat/completions", json=body) for _ in range(concurrency)))

        async def lane() -> None:
            for _ in remaining:
                began = time.perf_counter()
                response = await client.post("/chat/completions", json=body)
                response.raise_for_status()
                times.append(time.perf_counter() - began)

        await asyncio.gather(*(lane() for _ in range(concurrency)))
    return times


async def model_server_requests(base_url: str, *, reset: bool = True) -> list[dict[str, Any]]:
    """The model server's request log (each with `model`, `messages`, `time` = arrival, epoch s)."""
    root = base_url.removesuffix("/v1")
    async with httpx.AsyncClient(base_url=root, timeout=60.0, trust_env=False) as client:
        response = await client.get("/_control/stats", params={"requests": "true"})
        response.raise_for_status()
        requests: list[dict[str, Any]] = response.json()["requests"]
        if reset:
            (await client.post("/_control/reset")).raise_for_status()
    return requests


# --------------------------------------------------------------------------- NATS taps


@dataclass
class JobTap:
    """Publish time (epoch s, as this process received it) of every call job, by call id.

    A core subscription on the jobs subject: JetStream delivers each published job to it too,
    without it being a consumer of the work queue. The time is when this process's event loop
    handled the message, so a busy driver makes it late by its own loop delay.
    """

    nats_url: str
    namespace: str
    published: dict[str, float] = field(default_factory=dict)
    _nc: Any = None

    async def __aenter__(self) -> JobTap:
        self._nc = await nats.connect(self.nats_url, connect_timeout=2)

        async def seen(msg: Any) -> None:
            at = time.time()
            with contextlib.suppress(ValueError, KeyError, TypeError):
                self.published.setdefault(json.loads(msg.data)["call_id"], at)

        await self._nc.subscribe(Names(self.namespace).call_jobs, cb=seen)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._nc is not None:
            await self._nc.close()


@dataclass
class StoredEvent:
    run_id: str
    type: str
    stored: float  # epoch seconds: when JetStream stored it
    data: dict[str, Any]

    @property
    def at(self) -> float | None:
        """The event's own `at` (set by the service that made it), epoch seconds."""
        value = self.data.get("at")
        return datetime.fromisoformat(value).timestamp() if isinstance(value, str) else None


async def read_run_events(nats_url: str, namespace: str, idle: float = 1.0) -> list[StoredEvent]:
    """Every message of the namespace's runs stream, in order, with its JetStream store time."""
    names = Names(namespace)
    prefix = f"{namespace}.runs."
    events: list[StoredEvent] = []
    nc = await nats.connect(nats_url, connect_timeout=2)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(
            names.runs_wildcard,
            stream=names.runs_stream,
            ordered_consumer=True,
            config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
        )
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=idle)
                except nats.errors.TimeoutError:
                    break
                run_id, _, event_type = msg.subject.removeprefix(prefix).partition(".")
                with contextlib.suppress(ValueError):
                    events.append(
                        StoredEvent(
                            run_id, event_type, msg.metadata.timestamp.timestamp(), json.loads(msg.data)
                        )
                    )
                if msg.metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
    finally:
        await nc.close()
    return events


# --------------------------------------------------------------------------- process CPU, OTLP sink, profiles
# (added for cpu_per_run.py; generic)


def listening_pid(port: int) -> int | None:
    """Pid of the process with a TCP socket listening on `port` (any address); None if not
    visible (nothing listening, another user's process without privileges, a container)."""
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return int(conn.pid)
    return None


def postgres_processes(postmaster_pid: int, database: str) -> dict[str, list[psutil.Process]]:
    """A Postgres server's processes by role, from their process titles
    (`postgres: <cluster>: <user> <database> <host>(<port>) <state>` for a client backend):

    - "database": backends (and autovacuum workers) of `database`;
    - "other databases": client backends of any other database;
    - "server": the postmaster and its own processes (checkpointer, background and WAL writers,
      launchers), which work for every database.
    """
    groups: dict[str, list[psutil.Process]] = {"database": [], "other databases": [], "server": []}
    try:
        postmaster = psutil.Process(postmaster_pid)
        children = postmaster.children()
    except psutil.Error:
        return groups
    groups["server"].append(postmaster)
    for child in children:
        try:
            title = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if database in title.split():
            groups["database"].append(child)
        elif re.search(r"\(\d+\)|\[local\]", title):
            groups["other databases"].append(child)
        else:
            groups["server"].append(child)
    return groups


def cpu_seconds(processes: Iterable[psutil.Process]) -> float:
    """User + system CPU seconds of those of the processes that still exist."""
    total = 0.0
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


async def rates(read: Callable[[], dict[str, float]], seconds: float) -> dict[str, float]:
    """Rate of change per second of each counter `read()` returns (CPU seconds, say) over `seconds`."""
    loop = asyncio.get_running_loop()
    before, at = read(), loop.time()
    await asyncio.sleep(seconds)
    after, wall = read(), max(loop.time() - at, 1e-9)
    return {k: (v - before.get(k, 0.0)) / wall for k, v in after.items()}


class _SinkHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a collector offers
    stats: collections.Counter[str] = collections.Counter()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        self.stats[f"requests {self.path}"] += 1
        self.stats[f"bytes {self.path}"] += length
        self.send_response(200)  # an empty Export*ServiceResponse is zero bytes of protobuf
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        body = json.dumps(dict(self.stats)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def serve_otlp_sink() -> None:
    """What the `OtlpSink` child runs: prints its port, then serves until terminated."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SinkHandler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


class OtlpSink:
    """An OTLP/HTTP receiver on 127.0.0.1 in a child process (`pid`, for CPU accounting): answers
    every POST (/v1/traces, /v1/metrics, /v1/logs) with 200 and an empty response and keeps only
    counts (`await stats()`). Services export to it with `OTEL_EXPORTER_OTLP_ENDPOINT=sink.url`
    as they would to a collector, without the collector's work in their figures."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> OtlpSink:
        code = "import harness; harness.serve_otlp_sink()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent,
        )
        assert self.proc.stdout is not None
        port = self.proc.stdout.readline().strip()
        if not port.isdigit():
            self.stop()
            raise RuntimeError("the OTLP sink did not start")
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stats(self) -> dict[str, int]:
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            result: dict[str, int] = (await client.get(self.url + "/")).json()
            return result

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def profile_categories(
    path: Path,
    rules: Sequence[tuple[str, str]],
    owner: Callable[[str], str | None] | None = None,
    idle_leaves: tuple[str, ...] = (),
    fallback: str = "other",
) -> dict[str, Any]:
    """The busy samples of a py-spy `--format raw` profile (collapsed stacks, `--threads` or not)
    grouped by cause.

    A sample goes to the first of `rules` (ordered (label, regex)) whose regex matches any of its
    frames (`function (file.py:line)`); else to `owner(frame)` of the frame nearest the leaf for
    which it is not None (the code that did the work, e.g. a library, skipping the standard
    library it called); else to `fallback`. Samples whose leaf starts with one of `idle_leaves` are
    waits and left out. Returns the busy sample count and `[(label, share %, samples)]`, largest
    first: what the samples of a cause cost, an upper bound of what removing that work would save;
    and per cause the frames that put samples there.
    """
    compiled = [(label, re.compile(pattern)) for label, pattern in rules]
    counts: collections.Counter[str] = collections.Counter()
    where: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    line_no = re.compile(r":\d+\)$")
    busy = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        if frames and frames[0].startswith("thread ("):
            frames = frames[1:]
        if not frames or frames[-1].startswith(idle_leaves):
            continue
        count = int(count_text)
        busy += count
        label, frame = fallback, frames[-1]
        found = next(((lb, f) for lb, rx in compiled for f in frames if rx.search(f)), None)
        if found is None and owner is not None:
            found = next(((lb, f) for f in reversed(frames) if (lb := owner(f)) is not None), None)
        if found is not None:
            label, frame = found
        counts[label] += count
        where[label][line_no.sub(")", frame)] += count

    def share(n: int) -> float:
        return round(100 * n / max(busy, 1), 1)

    return {
        "busy_samples": busy,
        "categories": [(lb, share(n), n) for lb, n in counts.most_common()],
        # The frame that put each sample in its category (the rule's match, the owning frame,
        # or the leaf), top 4 per category, with their share of all busy samples.
        "frames": {lb: [(f, share(n)) for f, n in c.most_common(4)] for lb, c in where.items()},
    }


def shorten_profile_paths(path: Path, roots: Sequence[str] = tuple(sys.path)) -> None:
    """Rewrite a py-spy profile taken with `--full-filenames` in place: each file path relative to
    the longest of `roots` (this interpreter's `sys.path` by default) that contains it, so
    `.../site-packages/opentelemetry/trace/__init__.py` reads `opentelemetry/trace/__init__.py`
    (py-spy's own shortening would print `trace/__init__.py` for a namespace package)."""
    prefixes = sorted({r.rstrip("/") + "/" for r in roots if r.startswith("/")}, key=len, reverse=True)

    def short(match: re.Match[str]) -> str:
        file = match.group(1)
        for prefix in prefixes:
            if file.startswith(prefix):
                return f"({file[len(prefix) :]}:"
        return match.group(0)

    pattern = re.compile(r"\((/[^():;]+):")
    path.write_text(pattern.sub(short, path.read_text(errors="replace")))


def run_benchmark(bench: Callable[[Any], Awaitable[int]], args: Any) -> int:
    """Run a benchmark's `bench(args)` to its end: SIGTERM cancels it as Ctrl-C does, so its
    `async with` blocks stop every process they started; the exit code (130 when interrupted)."""

    async def runner() -> int:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await bench(args)

    try:
        return asyncio.run(runner())
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
