"""The chaos harness: a whole moot under load, a fault injected mid-run, and the books checked.

One `Chaos` per scenario owns everything it breaks: its own nats-server (JetStream on a file
store, on a fixed loopback port so that a killed server comes back where the services look for
it) or, with `nats_nodes=3`, its own 3-node JetStream cluster (`NatsCluster`: every stream and
KV bucket with 3 replicas, the services given every node's URL), its own database on the shared Postgres (created, migrated, dropped; taken "down" by refusing
connections to it), the test model server (in this process, a behaviour per model name) and a
`Stack` running the services as processes: gateway, 2 member workers, 2 arbiters, recorder. The
stack's supervisor restarts a killed child, as Kubernetes would.

`Chaos.scenario` submits N runs (consortiums of 2-3 members and short debates, mixed), injects
the fault once part of them is accepted, waits until every accepted run is final in the API, lets
the recorder catch up, then counts from the API and Postgres:

- submitted / accepted / rejected (a POST that got no 2xx: the client knows it was not accepted);
- completed, failed (reasons grouped), cancelled;
- lost: accepted but never final in the API; final in the API but missing, still `running` or
  with another status in Postgres once the recorder caught up; and any run in the database that
  nobody was told about (a POST cut by a crash) that is not final. Must be 0;
- duplicates: more calls recorded for a run than its request asks for (member instances per
  iteration, one arbiter per iteration, debaters per round, one judge call per round, one final),
  more iterations or rounds than allowed, more than one end event. Primary keys make two rows
  with one id impossible, so these count work done twice under different ids. Must be 0;
- time to recover: from the fault to the last run seen final.

Each scenario prints one table row and appends a JSON line to `$MOOT_CHAOS_RESULTS` (default
`.moot/chaos/results.jsonl`); `tests/chaos/report.py` turns those lines into the table of
`docs/reliability.md`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import random
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import report
import yaml
from nats.js.api import StreamConfig

from moot.devstack.embedded import find_nats_server, nats_jetstream_ok, with_database
from moot.devstack.model_server import ModelServer
from moot.devstack.stack import ManagedProcess, ServiceSpec, Stack, default_services, free_ports
from moot.records.accounts import NO_LIMITS, create_key
from moot.records.migrate import migrate
from moot.runtime.subjects import Names
from moot.texts import NATS_MAX_PAYLOAD_BYTES

REPO = Path(__file__).resolve().parents[2]
FINAL = frozenset({"completed", "failed", "cancelled"})
END_EVENTS = ("run.completed", "run.failed", "run.cancelled")

# What every scenario's runs call: slow enough (about a second a call) that hundreds of calls are
# in flight when the fault hits.
BASE_BEHAVIOURS: dict[str, dict[str, Any]] = {
    **{name: {"latency_ms": 800, "latency_jitter_ms": 400} for name in ("m1", "m2", "m3")},
    **{name: {"latency_ms": 600, "latency_jitter_ms": 300} for name in ("d1", "d2")},
    "arb": {"latency_ms": 300, "arbiter_confidence": 0.9},
    "judge": {
        "latency_ms": 200,
        "reply": "STOP - the positions are clear and the stronger one has emerged in the exchange.",
        "chunk_delay_ms": 20,
    },
}

# Service environment for every scenario: sweeps every second (deadlines, outboxes a crash left),
# short provider backoff; the rest is the services' defaults.
BASE_ENV: dict[str, str] = {
    "MOOT_SWEEP_INTERVAL_SECONDS": "1",
    "MOOT_WORKER_BACKOFF_BASE_SECONDS": "0.2",
    "MOOT_WORKER_BACKOFF_MAX_SECONDS": "5",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "PYTHONUNBUFFERED": "1",
}

# A run that has not ended this long after acceptance is ended by the sweeper (failed, or
# completed with its last synthesis): far above a run's normal length under load, and below
# the harness's wait, so that a run the system forgot still shows up as "deadline" in the table.
RUN_BUDGET_SECONDS = 240
FINAL_WAIT_SECONDS = RUN_BUDGET_SECONDS + 90
RECORDER_CATCH_UP_SECONDS = 120.0


def chaos_runs() -> int:
    """Runs per scenario: `MOOT_CHAOS_RUNS`, default 200."""
    return int(os.environ.get("MOOT_CHAOS_RUNS", "200"))


# --------------------------------------------------------------------------- run requests


def consortium(i: int, rng: random.Random, members: list[str], arbiter: str = "arb") -> dict[str, Any]:
    return {
        "mode": "consortium",
        "prompt": f"Chaos question {i}: is the system still standing?",
        "members": [{"model": m} for m in members],
        "arbiter": arbiter,
        # One iteration in three is asked twice, so some runs are between iterations at the fault.
        "min_iterations": 2 if rng.random() < 0.33 else 1,
        "max_iterations": 2,
        "budget": {"seconds": RUN_BUDGET_SECONDS},
    }


def debate(i: int, rng: random.Random, debaters: list[str], judge: str = "judge") -> dict[str, Any]:
    judged = rng.random() < 0.6
    body: dict[str, Any] = {
        "mode": "debate",
        "prompt": f"Chaos motion {i}: this house would restart the server.",
        "members": [{"model": d} for d in debaters],
        "max_rounds": 2 if judged else rng.choice([2, 3]),
        "budget": {"seconds": RUN_BUDGET_SECONDS},
    }
    if judged:  # ends with the judge's streamed verdict
        body |= {"judge_mode": "external_judge", "judge": judge}
    return body


def mixed_runs(n: int, seed: int = 11) -> list[dict[str, Any]]:
    """`n` run requests: about 60% consortiums of 2-3 members, 40% debates of 2 debaters."""
    rng = random.Random(seed)
    bodies = []
    for i in range(n):
        if rng.random() < 0.6:
            bodies.append(consortium(i, rng, rng.sample(["m1", "m2", "m3"], rng.choice([2, 3]))))
        else:
            bodies.append(debate(i, rng, ["d1", "d2"]))
    return bodies


# --------------------------------------------------------------------------- NATS


class NatsServer:
    """nats-server with JetStream on a file store, on a fixed port, that can be killed and restarted.

    `name` names the server (and its directory under `data_dir`); `cluster` is a config block
    (`cluster { ... }`) that makes it a node of a cluster (see `NatsCluster`).
    """

    def __init__(self, data_dir: Path, name: str = "nats", ports: list[int] | None = None) -> None:
        self.binary = find_nats_server()
        self.name = name
        self.dir = data_dir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port, self.monitor_port = ports or free_ports(2)
        self.url = f"nats://127.0.0.1:{self.port}"
        self.log_path = self.dir / "nats-server.log"
        self.config = self.dir / "nats-server.conf"
        self.configure()
        self.process: subprocess.Popen[bytes] | None = None

    def configure(self, cluster: str = "") -> None:
        self.config.write_text(f"server_name: {self.name}\nmax_payload: {NATS_MAX_PAYLOAD_BYTES}\n{cluster}")

    def _launch(self) -> subprocess.Popen[bytes]:
        argv = [
            str(self.binary),
            "--config", str(self.config),
            "--addr", "127.0.0.1",
            "--port", str(self.port),
            "--http_port", str(self.monitor_port),
            "--jetstream",
            "--store_dir", str(self.dir),
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            log.write(f"\n=== {time.strftime('%H:%M:%S')} {shlex.join(argv)}\n".encode())
            log.flush()
            return subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    async def launch(self) -> None:
        self.process = await asyncio.to_thread(self._launch)

    async def ready(self, ready_seconds: float = 30.0) -> None:
        """Return once JetStream answers on this server."""
        assert self.process is not None
        deadline = time.monotonic() + ready_seconds
        while not await nats_jetstream_ok(self.url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nats-server {self.name} did not start; see {self.log_path}")
            await asyncio.sleep(0.1)

    async def start(self, ready_seconds: float = 30.0) -> None:
        """Start the server on its port and store; return once JetStream answers."""
        await self.launch()
        await self.ready(ready_seconds)

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(15)

    async def stop(self) -> None:
        await asyncio.to_thread(self.kill, signal.SIGTERM)


class NatsCluster:
    """A JetStream cluster of `size` nats-servers on loopback (the production shape of NATS):
    each its own server name, client port, cluster port (routes to every other node) and file
    store. `url` lists every node, comma-separated, as `NATS_URL` takes it."""

    CLUSTER = "moot_chaos"

    def __init__(self, data_dir: Path, size: int = 3) -> None:
        ports = free_ports(3 * size)
        self.nodes = [NatsServer(data_dir, f"nats-{i + 1}", ports[3 * i : 3 * i + 2]) for i in range(size)]
        routes = [ports[3 * i + 2] for i in range(size)]
        for node, port in zip(self.nodes, routes, strict=True):
            others = ", ".join(f"nats-route://127.0.0.1:{p}" for p in routes if p != port)
            node.configure(
                f"cluster {{\n  name: {self.CLUSTER}\n  listen: 127.0.0.1:{port}\n  routes: [{others}]\n}}\n"
            )
        self.url = ",".join(node.url for node in self.nodes)

    def node(self, name: str) -> NatsServer:
        return next(n for n in self.nodes if n.name == name)

    async def start(self, ready_seconds: float = 90.0) -> None:
        """Start every node at once (JetStream needs a quorum to elect its meta leader); return
        once each answers and a stream replicated on every node can be created."""
        for node in self.nodes:
            await node.launch()
        await asyncio.gather(*(node.ready(ready_seconds) for node in self.nodes))
        await self.replicated(ready_seconds)

    async def replicated(self, within: float) -> None:
        """Create and delete a stream with a replica on every node, retried until it works (the
        cluster elects its leaders a few seconds after the nodes answer)."""
        deadline = time.monotonic() + within
        nc = await nats.connect(self.url.split(","), connect_timeout=2)
        try:
            js = nc.jetstream(timeout=5.0)
            while True:
                try:
                    await js.add_stream(
                        StreamConfig(
                            name="CHAOS_READY", subjects=["chaos.ready"], num_replicas=len(self.nodes)
                        )
                    )
                    await js.publish("chaos.ready", b"1", stream="CHAOS_READY")
                    await js.delete_stream("CHAOS_READY")
                    return
                except Exception as exc:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the NATS cluster did not get ready: {exc!r}") from exc
                    await asyncio.sleep(0.5)
        finally:
            await nc.close()

    async def leader(self, stream: str) -> str:
        """The name of the node leading `stream` (its Raft group)."""
        nc = await nats.connect(self.url.split(","), connect_timeout=2)
        try:
            info = await nc.jetstream(timeout=5.0).stream_info(stream)
        finally:
            await nc.close()
        assert info.cluster is not None and info.cluster.leader, info
        return info.cluster.leader

    async def stop(self) -> None:
        await asyncio.gather(*(node.stop() for node in self.nodes))


# --------------------------------------------------------------------------- results


@dataclass
class Result:
    """What one scenario counted; `report.row` makes it a line of the table in docs/reliability.md."""

    scenario: str
    submitted: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    completed: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    cancelled: int = 0
    lost: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    unknown_runs: int = 0  # runs in the database the client was never told about
    double_outcomes: int = 0  # calls with both call.completed and call.failed (the first one counts)
    recover_seconds: float | None = None  # fault to the last run final in the API
    recorded_seconds: float | None = None  # fault to the last run final in Postgres
    wall_seconds: float = 0.0
    restarts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    command: str = ""
    at: str = ""

    @property
    def lost_total(self) -> int:
        return sum(self.lost.values())

    @property
    def duplicates_total(self) -> int:
        return sum(self.duplicates.values())

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())


_VOLATILE = re.compile(r"[0-9a-f]{32}|\d+(\.\d+)?")


def reason_group(reason: str | None) -> str:
    """A failure reason without its run ids and numbers, short: runs failing alike group together."""
    text = _VOLATILE.sub("#", " ".join((reason or "no reason").split()))
    return text if len(text) <= 90 else text[:87] + "..."


def record(result: Result) -> None:
    """Print the scenario's row and append it to the results file."""
    result.command = os.environ.get("MOOT_CHAOS_COMMAND") or shlex.join(
        ["pytest", *sys.argv[1:]] if "pytest" in sys.argv[0] else sys.argv
    )
    result.at = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"\nchaos {result.scenario}: {json.dumps(asdict(result), default=str)}")
    print(report.row(asdict(result)), flush=True)
    path = Path(os.environ.get("MOOT_CHAOS_RESULTS") or REPO / ".moot" / "chaos" / "results.jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as out:
        out.write(json.dumps(asdict(result), default=str) + "\n")


# --------------------------------------------------------------------------- the harness


@dataclass
class Submitted:
    index: int
    body: dict[str, Any]
    run_id: str | None = None
    error: str | None = None
    status: str | None = None
    final_at: float | None = None
    reason: str | None = None
    stop_reason: str | None = None


class Chaos:
    """One scenario's moot: own NATS, own database, the test model server and the services."""

    def __init__(
        self,
        name: str,
        work_dir: Path,
        server_url: str,
        *,
        behaviours: Mapping[str, Mapping[str, Any]] | None = None,
        env: Mapping[str, str] | None = None,
        workers: int = 2,
        arbiters: int = 2,
        nats_nodes: int = 1,
    ) -> None:
        self.name = name
        self.work_dir = work_dir
        self.server_url = server_url
        self.behaviours = {**BASE_BEHAVIOURS, **(behaviours or {})}
        self.env = {**BASE_ENV, **(env or {})}
        if nats_nodes > 1:  # every stream and KV bucket on every node
            self.env.setdefault("MOOT_NATS_REPLICAS", str(nats_nodes))
        self.workers = workers
        self.arbiters = arbiters
        self.database = f"moot_chaos_{uuid.uuid4().hex[:10]}"
        self.database_url = with_database(server_url, self.database)
        self.namespace = f"chaos_{secrets.token_hex(3)}"
        self.nats: NatsServer | NatsCluster = (
            NatsCluster(work_dir, nats_nodes) if nats_nodes > 1 else NatsServer(work_dir)
        )
        self.models: ModelServer | None = None
        self.stack: Stack | None = None
        self.api_key = ""
        self.http: httpx.AsyncClient | None = None
        self.runs: list[Submitted] = []
        self.fault_at: float | None = None
        self.recorded_at: float | None = None
        self.notes: list[str] = []

    # ----------------------------------------------------------------- life cycle

    async def __aenter__(self) -> Chaos:
        try:
            await self._start()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def _start(self) -> None:
        admin = await asyncpg.connect(self.server_url)
        try:
            await admin.execute(f'CREATE DATABASE "{self.database}"')
        finally:
            await admin.close()
        conn = await asyncpg.connect(self.database_url)
        try:
            await migrate(conn)
            _, self.api_key = await create_key(conn, "chaos", limits=NO_LIMITS)
        finally:
            await conn.close()
        await self.nats.start()
        self.models = ModelServer({"models": self.behaviours})
        await self.models.__aenter__()
        models_file = self.work_dir / "models.yaml"
        entries = [
            {
                "model_name": name,
                "litellm_params": {"model": f"openai/{name}", "api_base": self.models.url, "api_key": "sk-x"},
            }
            for name in self.behaviours
        ]
        models_file.write_text(yaml.safe_dump({"model_list": entries}))
        services = [
            ServiceSpec(s.name, s.argv, instances=self.arbiters) if s.name == "arbiter" else s
            for s in default_services(workers=self.workers, port=0)
        ]
        self.stack = Stack(
            self.work_dir / "stack",
            port=0,
            namespace=self.namespace,
            models_file=models_file,
            nats_url=self.nats.url,
            database_url=self.database_url,
            services=services,
            extra_env=self.env,
            ready_timeout=180.0,
            # A deployment restarts a crashed service for as long as it takes; so does this one
            # (the default gives up after 5 quick restarts, which a 30 s outage can exhaust).
            max_restarts=1000,
            restart_backoff_max=2.0,
            progress=None,
        )
        await self.stack.start()
        self.http = httpx.AsyncClient(
            base_url=self.stack.gateway_url,
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=30.0,
            limits=httpx.Limits(max_connections=32),
            trust_env=False,
        )

    async def __aexit__(self, *exc: object) -> None:
        if self.http is not None:
            await self.http.aclose()
        if self.stack is not None:
            await self.stack.stop()
        if self.models is not None:
            await self.models.__aexit__()
        await self.nats.stop()
        with contextlib.suppress(Exception):
            admin = await asyncpg.connect(self.server_url)
            try:
                await admin.execute(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS true')
                await admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            finally:
                await admin.close()

    # ----------------------------------------------------------------- faults

    def child(self, name: str) -> ManagedProcess:
        """The service instance called `name` (`gateway`, `recorder`, `arbiter-1`, `member-worker-2`)."""
        assert self.stack is not None
        return next(c for c in self.stack.services if c.name == name)

    def kill9(self, name: str) -> int:
        """SIGKILL the service instance (its whole process group); the supervisor restarts it."""
        child = self.child(name)
        assert child.pid is not None, f"{name} is not running"
        pid = child.pid
        os.killpg(pid, signal.SIGKILL)
        self.notes.append(f"kill -9 {name} (pid {pid})")
        return pid

    async def restart_nats(self, down_seconds: float = 3.0) -> None:
        """kill -9 the NATS server, leave it down a moment, start it again on the same file store."""
        assert isinstance(self.nats, NatsServer)
        await asyncio.to_thread(self.nats.kill, signal.SIGKILL)
        await asyncio.sleep(down_seconds)
        await self.nats.start()
        self.notes.append(f"nats-server killed, back after {down_seconds:.0f} s on its file store")

    async def restart_nats_node(self, down_seconds: float = 5.0, stream: str | None = None) -> None:
        """kill -9 the cluster node leading `stream` (default: the runs stream) mid-load, leave
        it down `down_seconds`, start it again on its file store (it catches up)."""
        assert isinstance(self.nats, NatsCluster)
        stream = stream or Names(self.namespace).runs_stream
        try:
            name = await self.nats.leader(stream)
        except Exception as exc:  # no answer in time: any node will do
            name = self.nats.nodes[0].name
            self.notes.append(f"leader of {stream} unknown ({type(exc).__name__}), killed {name}")
        node = self.nats.node(name)
        await asyncio.to_thread(node.kill, signal.SIGKILL)
        await asyncio.sleep(down_seconds)
        await node.start(ready_seconds=60.0)
        try:
            after = await self.nats.leader(stream)
        except Exception as exc:  # mid-election: the note says so, the scenario goes on
            after = f"unknown ({type(exc).__name__})"
        self.notes.append(
            f"{len(self.nats.nodes)}-node JetStream cluster, R{len(self.nats.nodes)}: kill -9 {name} "
            f"(leader of {stream}), back after {down_seconds:.0f} s on its file store; leader now {after}"
        )

    async def postgres_down(self, seconds: float) -> None:
        """The database refuses every connection for `seconds`: existing ones are terminated too."""
        admin = await asyncpg.connect(self.server_url)
        try:
            await admin.execute(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS false')
            ended = time.monotonic() + seconds
            # Again after a moment: a connection being opened while the first sweep ran.
            while time.monotonic() < ended:
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = $1 AND pid <> pg_backend_pid()",
                    self.database,
                )
                await asyncio.sleep(min(5.0, max(0.0, ended - time.monotonic())))
            await admin.execute(f'ALTER DATABASE "{self.database}" ALLOW_CONNECTIONS true')
        finally:
            await admin.close()
        self.notes.append(f"database refused connections for {seconds:.0f} s")

    # ----------------------------------------------------------------- load

    async def _submit(self, run: Submitted, retry_for: float = 60.0) -> None:
        """POST the run. Retried, as a client would, only when the request surely created nothing:
        no connection (`ConnectError`: nothing was sent) or a 503 (refused before accepting);
        anything else (a connection cut mid-request, another error) is final: `rejected`."""
        assert self.http is not None
        give_up = time.monotonic() + retry_for
        delay = 0.2
        while True:
            retryable = False
            try:
                response = await self.http.post("/v1/runs", json=run.body)
            except httpx.ConnectError as exc:
                run.error, retryable = type(exc).__name__, True
            except httpx.HTTPError as exc:
                run.error = type(exc).__name__
            else:
                if response.status_code < 300:
                    run.run_id, run.error = response.json()["id"], None
                    return
                run.error, retryable = f"HTTP {response.status_code}", response.status_code == 503
            if not retryable or time.monotonic() + delay > give_up:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def submit(
        self,
        bodies: list[dict[str, Any]],
        concurrency: int = 16,
        reached: tuple[int, asyncio.Event] | None = None,
    ) -> None:
        """POST every body (`concurrency` at a time); a failed POST is `rejected`, never retried:
        the API has no idempotency key, so a retry could start the run twice. `reached` = (n,
        event): the event is set once n runs are accepted."""
        self.runs = [Submitted(i, body) for i, body in enumerate(bodies)]
        limit = asyncio.Semaphore(concurrency)
        accepted = 0

        async def one(run: Submitted) -> None:
            nonlocal accepted
            async with limit:
                await self._submit(run)
            accepted += run.run_id is not None
            if reached is not None and accepted >= reached[0]:
                reached[1].set()

        await asyncio.gather(*(one(run) for run in self.runs))

    def accepted(self) -> list[Submitted]:
        return [r for r in self.runs if r.run_id is not None]

    async def wait_final(self, within: float = FINAL_WAIT_SECONDS) -> None:
        """Poll the API until every accepted run is final (or `within` seconds have passed)."""
        assert self.http is not None
        deadline = time.monotonic() + within
        limit = asyncio.Semaphore(8)
        answers: collections.Counter[str] = collections.Counter()

        async def poll(run: Submitted) -> None:
            assert self.http is not None
            async with limit:
                try:
                    response = await self.http.get(f"/v1/runs/{run.run_id}", timeout=10.0)
                except httpx.HTTPError as exc:
                    answers[type(exc).__name__] += 1
                    return  # the gateway may be down or restarting: ask again next round
            answers[f"HTTP {response.status_code}"] += 1
            if response.status_code != 200:
                return
            body = response.json()
            if body.get("status") in FINAL:
                run.status = body["status"]
                run.final_at = time.monotonic()
                run.reason = body.get("reason")
                run.stop_reason = body.get("stop_reason")

        while time.monotonic() < deadline:
            pending = [r for r in self.accepted() if r.status is None]
            if not pending:
                break
            await asyncio.gather(*(poll(r) for r in pending))
            await asyncio.sleep(1.0)
        if set(answers) - {"HTTP 200"}:  # the API failed some polls: say how
            self.notes.append("API polls: " + ", ".join(f"{k} x{v}" for k, v in answers.most_common()))

    async def scenario(
        self,
        bodies: list[dict[str, Any]],
        fault: Callable[[], Coroutine[Any, Any, None]],
        *,
        fault_after: float = 0.4,
    ) -> Result:
        """Submit `bodies`, run `fault` once `fault_after` of them are accepted, wait, count."""
        started = time.monotonic()
        enough = asyncio.Event()
        submitting = asyncio.create_task(
            self.submit(bodies, reached=(int(fault_after * len(bodies)), enough))
        )
        waiting = asyncio.create_task(enough.wait())
        await asyncio.wait([submitting, waiting], return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        self.fault_at = time.monotonic()
        faulting = asyncio.create_task(fault())
        await submitting
        await faulting
        await self.wait_final()
        result = await self.count()
        result.wall_seconds = time.monotonic() - started
        return result

    # ----------------------------------------------------------------- the books

    async def count(self) -> Result:
        """Tally the scenario from the API (already polled) and Postgres (after the recorder)."""
        result = Result(self.name, submitted=len(self.runs), notes=self.notes)
        accepted = self.accepted()
        result.accepted = len(accepted)
        result.rejected = dict(collections.Counter(r.error for r in self.runs if r.error))
        never_final = [r for r in accepted if r.status is None]
        if never_final:
            result.lost["never final in the API"] = len(never_final)
        finals = [r for r in accepted if r.status is not None]
        for run in finals:
            if run.status == "completed":
                result.completed += 1
            elif run.status == "cancelled":
                result.cancelled += 1
        failed = collections.Counter(reason_group(r.reason) for r in finals if r.status == "failed")
        result.failed = dict(failed)
        deadline_completed = sum(1 for r in finals if r.status == "completed" and r.stop_reason == "deadline")
        if deadline_completed:
            result.notes.append(f"{deadline_completed} completed at their deadline")
        if finals and self.fault_at is not None:
            result.recover_seconds = max(r.final_at or 0.0 for r in finals) - self.fault_at

        conn = await self._connect_when_up()
        try:
            by_id = {r.run_id: r for r in finals if r.run_id}
            rows = await self._recorded(conn, list(by_id))
            if self.recorded_at is not None and self.fault_at is not None:
                result.recorded_seconds = self.recorded_at - self.fault_at
            missing = [i for i in by_id if i not in rows]
            running = [i for i in by_id if rows.get(i) == "running"]
            other = [i for i in by_id if rows.get(i) not in (None, "running", by_id[i].status)]
            for label, ids in (("not in Postgres", missing), ("running in Postgres", running)):
                if ids:
                    result.lost[label] = len(ids)
            if other:
                result.lost["other status in Postgres"] = len(other)
            known = {r.run_id for r in accepted}
            unknown = await conn.fetch(
                "SELECT id, status FROM runs WHERE NOT (id = ANY($1::text[]))", list(known)
            )
            result.unknown_runs = len(unknown)
            if unknown_open := [u for u in unknown if u["status"] not in FINAL]:
                result.lost["unacknowledged run not final"] = len(unknown_open)
            result.duplicates = await self._duplicates(conn)
            result.double_outcomes = await conn.fetchval(
                "SELECT count(*) FROM (SELECT split_part(event_id, ':call.', 1) FROM events "
                "WHERE type IN ('call.completed', 'call.failed') GROUP BY 1 HAVING count(*) > 1) AS d"
            )
        finally:
            await conn.close()
        assert self.stack is not None
        result.restarts = {c.name: len(c.pids) - 1 for c in self.stack.services if len(c.pids) > 1}
        return result

    async def _connect_when_up(self, within: float = 60.0) -> asyncpg.Connection:
        deadline = time.monotonic() + within
        while True:
            try:
                return await asyncpg.connect(self.database_url, timeout=5)
            except (OSError, asyncpg.PostgresError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(1.0)

    async def _recorded(self, conn: asyncpg.Connection, ids: list[str]) -> dict[str, str]:
        """Each run's status in Postgres, once every run is final there or the recorder stalls."""
        deadline = time.monotonic() + RECORDER_CATCH_UP_SECONDS
        while True:
            rows = await conn.fetch("SELECT id, status FROM runs WHERE id = ANY($1::text[])", ids)
            status = {r["id"]: r["status"] for r in rows}
            if all(status.get(i) in FINAL for i in ids):
                self.recorded_at = time.monotonic()
                return status
            if time.monotonic() > deadline:
                return status
            await asyncio.sleep(1.0)

    async def _duplicates(self, conn: asyncpg.Connection) -> dict[str, int]:
        """Work recorded more often than the run's request allows (see the module docstring)."""
        found: collections.Counter[str] = collections.Counter()
        requests = {
            r["id"]: (r["mode"], json.loads(r["request"]) if isinstance(r["request"], str) else r["request"])
            for r in await conn.fetch("SELECT id, mode, request FROM runs")
        }
        for row in await conn.fetch(
            "SELECT run_id, iteration, role, count(*) AS n FROM calls GROUP BY run_id, iteration, role"
        ):
            _, request = requests.get(row["run_id"], (None, None))
            if not request:
                continue
            instances = sum(int(m.get("count", 1)) for m in request.get("members", []))
            allowed = {
                "member": instances,
                "arbiter": 1,
                "debater": instances,
                "judge": 1,
                "conviction": instances,
                "final": 1,
            }.get(row["role"], instances)
            if row["n"] > allowed:
                found[f"{row['role']} calls over the request"] += 1
        for row in await conn.fetch("SELECT run_id, max(number) AS n FROM iterations GROUP BY run_id"):
            _, request = requests.get(row["run_id"], (None, None))
            if request and row["n"] > int(request.get("max_iterations", 3)):
                found["iterations over max_iterations"] += 1
        for row in await conn.fetch("SELECT run_id, max(round) AS n FROM debate_rounds GROUP BY run_id"):
            _, request = requests.get(row["run_id"], (None, None))
            if request and row["n"] > int(request.get("max_rounds", 3)):
                found["rounds over max_rounds"] += 1
        ended_twice = await conn.fetch(
            "SELECT run_id FROM events WHERE type = ANY($1::text[]) GROUP BY run_id HAVING count(*) > 1",
            list(END_EVENTS),
        )
        if ended_twice:
            found["runs ended twice"] = len(ended_twice)
        return dict(found)


def check(result: Result) -> None:
    """Record the scenario, then what the issue requires: nothing lost, nothing twice, all final."""
    record(result)
    assert result.accepted > 0, result.rejected
    assert result.lost_total == 0, result.lost
    assert result.duplicates_total == 0, result.duplicates
    assert result.completed + result.failed_total + result.cancelled == result.accepted
