"""The `moot up` supervisor, run against tiny stand-in children (not the real services).

Infrastructure URLs are given explicitly, so the stack starts no servers and the fake children
never connect to anything: these tests are about process supervision (and, in the last one, the
migrations the stack applies before starting the services).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import yaml

from moot.devstack import stack as stack_module
from moot.devstack.stack import ManagedProcess, ServiceSpec, Stack, StackError, free_ports
from moot.records.migrate import load_migrations

NATS = "nats://127.0.0.1:1"
DATABASE = "postgresql://postgres@/postgres?host=/nowhere"

# A stand-in service: serves /readyz (and /env, to inspect what it was given) on $MOOT_HTTP_PORT.
FAKE_SERVICE = textwrap.dedent(
    """
    import argparse, json, os, signal, sys, threading, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    parser = argparse.ArgumentParser()
    parser.add_argument("--port-env", default="MOOT_HTTP_PORT")
    parser.add_argument("--port", type=int)
    parser.add_argument("--ready-after", type=float, default=0.0)
    parser.add_argument("--exit-after", type=float)
    parser.add_argument("--ignore-sigterm", action="store_true")
    parser.add_argument("--path", default="/readyz")
    args = parser.parse_args()
    if args.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    started = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == args.path:
                ok = time.monotonic() - started >= args.ready_after
                body, code = (b"ok", 200) if ok else (b"starting", 503)
            elif self.path == "/env":
                keep = ("NATS_URL", "DATABASE_URL", "MOOT_NAMESPACE", "MOOT_MODELS_FILE", "MOOT_HTTP_PORT")
                env = {"pid": os.getpid(), **{k: os.environ.get(k) for k in keep}}
                body, code = json.dumps(env).encode(), 200
            else:
                body, code = b"no", 404
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    if args.exit_after is not None:
        threading.Timer(args.exit_after, lambda: os._exit(3)).start()
    port = args.port or int(os.environ[args.port_env])
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    server.serve_forever()
    """
)


@pytest.fixture
def fake_service(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake_service.py"
    script.write_text(FAKE_SERVICE)
    return [sys.executable, str(script)]


def _spec(name: str, fake: list[str], *args: str, instances: int = 1, port: int | None = None) -> ServiceSpec:
    return ServiceSpec(name, (*fake, *args), instances=instances, port=port)


def _stack(tmp_path: Path, services: list[ServiceSpec], messages: list[str], **kwargs: object) -> Stack:
    options: dict[str, object] = {
        "namespace": "t_stack",
        "nats_url": NATS,
        "database_url": DATABASE,
        "migrate": False,  # DATABASE is nowhere: these stand-ins need no schema
        "ready_timeout": 10.0,
        "stop_grace": 2.0,
        "restart_backoff": 0.05,
        "progress": messages.append,
        **kwargs,
    }
    return Stack(tmp_path / "data", services=services, **options)  # type: ignore[arg-type]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still "exists"; asyncio reaps our children, so treat a reaped one as dead.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


async def _wait_ready_again(client: httpx.AsyncClient, child: ManagedProcess, old_pid: int) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if child.pid != old_pid and child.running():
            try:
                if (await client.get(f"http://127.0.0.1:{child.port}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"{child.name} was not restarted")


async def test_starts_restarts_and_stops_children(tmp_path: Path, fake_service: list[str]) -> None:
    (gateway_port,) = free_ports(1)
    models = tmp_path / "models.yaml"
    messages: list[str] = []
    stack = _stack(
        tmp_path,
        [
            _spec("gateway", fake_service, port=gateway_port),
            _spec("member-worker", fake_service, instances=2),
            _spec("arbiter", fake_service, "--ready-after", "0.6"),
        ],
        messages,
        models_file=models,
    )
    assert stack.gateway_url == f"http://127.0.0.1:{gateway_port}"
    await stack.start()
    try:
        assert [c.name for c in stack.services] == [
            "gateway",
            "member-worker-1",
            "member-worker-2",
            "arbiter",
        ]
        assert all(c.running() and c.ready for c in stack.services)
        assert "waiting for: arbiter" in messages  # the slow one is reported as the one missing
        assert any(m.startswith("ready: arbiter") for m in messages)
        assert len({c.port for c in stack.services}) == 4

        async with httpx.AsyncClient(trust_env=False) as client:
            env = (await client.get(f"{stack.gateway_url}/env")).json()
            assert env["NATS_URL"] == NATS
            assert env["DATABASE_URL"] == DATABASE
            assert env["MOOT_NAMESPACE"] == "t_stack"
            assert env["MOOT_MODELS_FILE"] == str(models)
            assert env["MOOT_HTTP_PORT"] == str(gateway_port)

            # An unexpected exit is followed by a restart on the same port.
            worker = stack.services[1]
            old_pid = worker.pid
            assert old_pid is not None
            os.kill(old_pid, signal.SIGKILL)
            await _wait_ready_again(client, worker, old_pid)
            assert worker.restarts == 1
            for _ in range(50):  # the stack's own re-check runs every 0.2 s
                if worker.ready:
                    break
                await asyncio.sleep(0.1)
            assert "ready again: member-worker-1" in messages
            assert any("member-worker-1 exited with code -9" in m for m in messages)

        for name in ("gateway", "member-worker-1", "member-worker-2", "arbiter"):
            assert (tmp_path / "data" / "logs" / f"{name}.log").exists()
        assert (tmp_path / "data" / "logs" / "member-worker-1.log").read_text().count("moot up starts") == 2
    finally:
        await stack.stop()
    pids = [pid for c in stack.services for pid in c.pids]
    assert len(pids) == 5
    assert not any(_alive(pid) for pid in pids)
    assert all(not c.running() for c in stack.services)
    await stack.stop()  # idempotent


async def test_extra_process_and_test_model_server_start_first(
    tmp_path: Path, fake_service: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # `python -m fake_model_server --port N` stands in for moot.devstack.model_server.
    script = tmp_path / "fake_service.py"
    (tmp_path / "fake_model_server.py").write_text(
        f"import runpy, sys\nsys.argv[1:1] = ['--path', '/healthz']\nrunpy.run_path({str(script)!r})\n"
    )
    monkeypatch.setattr(stack_module, "TEST_MODEL_SERVER_MODULE", "fake_model_server")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    (extra_port,) = free_ports(1)

    messages: list[str] = []
    stack = _stack(tmp_path, [_spec("gateway", fake_service)], messages, test_model_server=True)
    extra = stack.add_process(
        "helper",
        [*fake_service, "--port-env", "HELPER_PORT"],
        env={"HELPER_PORT": str(extra_port)},
        ready_url=f"http://127.0.0.1:{extra_port}/readyz",
    )
    async with stack:
        assert [p.name for p in stack.extras] == ["helper", "model-server"]
        gateway = stack.services[0]
        for p in stack.extras:
            assert p.ready and p.started_at < gateway.started_at
        ready = [m.split()[1] for m in messages if m.startswith("ready:")]
        assert ready.index("gateway") > max(ready.index("helper"), ready.index("model-server"))

        models_file = tmp_path / "data" / "models.test.yaml"
        config = yaml.safe_load(models_file.read_text())
        url = stack.test_model_server_url
        assert url is not None
        assert config == {
            "model_list": [
                {
                    "model_name": name,
                    "litellm_params": {"model": f"openai/{name}", "api_base": f"{url}/v1", "api_key": "test"},
                }
                for name in ("fast", "slow", "arbiter")
            ]
        }
        async with httpx.AsyncClient(trust_env=False) as client:
            assert (await client.get(f"{url}/healthz")).status_code == 200
            env = (await client.get(f"{stack.gateway_url}/env")).json()
        assert env["MOOT_MODELS_FILE"] == str(models_file)
        assert "listening on" in (tmp_path / "data" / "logs" / "model-server.log").read_text()
    assert not extra.running()
    with pytest.raises(RuntimeError):
        stack.add_process("late", ["true"])


async def test_crash_loop_gives_up_and_cleans_up(tmp_path: Path, fake_service: list[str]) -> None:
    messages: list[str] = []
    stack = _stack(
        tmp_path,
        [_spec("gateway", fake_service), _spec("recorder", fake_service, "--exit-after", "0")],
        messages,
        max_restarts=2,
    )
    with pytest.raises(StackError, match="recorder exited with code 3, 2 restarts already"):
        await stack.start()
    recorder = stack.services[1]
    assert len(recorder.pids) == 3
    assert not any(c.running() for c in stack.services)
    assert stack.failure is not None


async def test_not_ready_in_time(tmp_path: Path, fake_service: list[str]) -> None:
    messages: list[str] = []
    stack = _stack(
        tmp_path, [_spec("arbiter", fake_service, "--ready-after", "60")], messages, ready_timeout=1.0
    )
    with pytest.raises(StackError, match=r"not ready after 1s: arbiter \(see .*arbiter.log\)"):
        await stack.start()
    assert not stack.services[0].running()


async def test_child_ignoring_sigterm_is_killed(tmp_path: Path, fake_service: list[str]) -> None:
    messages: list[str] = []
    stack = _stack(tmp_path, [_spec("gateway", fake_service, "--ignore-sigterm")], messages, stop_grace=0.5)
    await stack.start()
    started = time.monotonic()
    await stack.stop()
    assert time.monotonic() - started < 3
    process = stack.services[0].process
    assert process is not None and process.returncode == -signal.SIGKILL
    assert any("did not stop within" in m for m in messages)


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals need the main thread"
)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
async def test_run_forever_stops_on_sigterm_and_when_its_terminal_closes(
    tmp_path: Path, fake_service: list[str], sig: signal.Signals
) -> None:
    messages: list[str] = []
    stack = _stack(tmp_path, [_spec("gateway", fake_service)], messages)
    before = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as in a terminal (not under nohup)
    try:
        runner = asyncio.create_task(stack.run_forever())
        while not (stack.services and stack.services[0].ready):
            assert not runner.done(), messages
            await asyncio.sleep(0.05)
        os.kill(os.getpid(), sig)  # handled by the stack's loop signal handler
        assert await asyncio.wait_for(runner, 10) == 0
    finally:
        signal.signal(signal.SIGHUP, before)
    assert not stack.services[0].running()
    assert any(m.startswith(f"{sig.name}: stopping") for m in messages)


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signals need the main thread"
)
async def test_under_nohup_a_closed_terminal_leaves_the_stack_running(
    tmp_path: Path, fake_service: list[str]
) -> None:
    messages: list[str] = []
    stack = _stack(tmp_path, [_spec("gateway", fake_service)], messages)
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # what `nohup moot up &` starts with
    try:
        runner = asyncio.create_task(stack.run_forever())
        while not (stack.services and stack.services[0].ready):
            assert not runner.done(), messages
            await asyncio.sleep(0.05)
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.sleep(0.5)
        assert not runner.done() and stack.services[0].running(), messages
        os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(runner, 10) == 0
    finally:
        signal.signal(signal.SIGHUP, before)


async def test_run_forever_gives_up_on_a_failing_child(tmp_path: Path, fake_service: list[str]) -> None:
    messages: list[str] = []
    stack = _stack(
        tmp_path,
        [_spec("gateway", fake_service), _spec("arbiter", fake_service, "--exit-after", "0.5")],
        messages,
        max_restarts=1,
    )
    assert await asyncio.wait_for(stack.run_forever(), 15) == 1
    assert stack.failure is not None and "arbiter" in stack.failure
    assert not any(c.running() for c in stack.services)


async def test_migrates_the_database_once_before_the_services_start(
    tmp_path: Path, fake_service: list[str], empty_database: Callable[[], Awaitable[str]]
) -> None:
    url = await empty_database()
    first: list[str] = []
    async with _stack(
        tmp_path / "1", [_spec("gateway", fake_service)], first, database_url=url, migrate=True
    ):
        pass
    applied = [m for m in first if m.startswith("applied migration")]
    assert applied == [f"applied migration {m.label}" for m in load_migrations()]
    ready = next(i for i, m in enumerate(first) if m.startswith("ready: gateway"))
    assert first.index(applied[-1]) < ready

    again: list[str] = []
    async with _stack(
        tmp_path / "2", [_spec("gateway", fake_service)], again, database_url=url, migrate=True
    ):
        pass
    assert not any(m.startswith("applied migration") for m in again)
    assert any(m.startswith("ready: gateway") for m in again)
