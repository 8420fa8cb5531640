"""A worker killed mid-call: another worker completes the call within 30 s of the kill (issue 11).

Two member-worker processes (one call at a time each) share the jobs of a real NATS; a run's one
member call goes to the test model server's slow model; the worker holding it is killed with
SIGKILL (no chance to hand the job back), the model is made quick, and the call's `call.completed`
must come from the other worker within 30 s: the job's `ack_wait` (20 s) runs out, JetStream
redelivers it, and the surviving worker's fetch loop takes it.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import nats
import pytest
import yaml
from nats.aio.msg import Msg

from moot.devstack.model_server import ModelServer
from moot.devstack.stack import free_ports
from moot.messages import CallCompleted
from moot.protocols import consortium
from moot.requests import ConsortiumRequest, MemberSpec
from moot.runtime.nats import ensure_topology, make_broker, open_texts, publish_all
from moot.runtime.runstore import RunStore
from moot.runtime.settings import MootSettings
from moot.runtime.subjects import Names

pytestmark = pytest.mark.chaos

RECOVERY_SECONDS = 30.0


class Worker:
    def __init__(self, name: str, port: int, env: dict[str, str], log: Path) -> None:
        self.name, self.port, self.log = name, port, log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moot_member_worker"],
                env={**env, "MOOT_HTTP_PORT": str(port)},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def calls_active(self, client: httpx.AsyncClient) -> float:
        text = (await client.get(f"{self.url}/metrics")).text
        found = re.search(r"^moot_worker_calls_active\S*\s+(\S+)$", text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def model_server() -> Iterator[ModelServer]:
    with ModelServer({"models": {"slow": {"latency_ms": 120_000}}}) as server:
        yield server


@pytest.fixture
async def workers(
    nats_url: str, namespace: str, model_server: ModelServer, tmp_path: Path
) -> AsyncIterator[list[Worker]]:
    models = tmp_path / "models.yaml"
    entry = {"model": "openai/slow", "api_base": model_server.url, "api_key": "sk-test"}
    models.write_text(yaml.safe_dump({"model_list": [{"model_name": "slow", "litellm_params": entry}]}))
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "MOOT_NAMESPACE": namespace,
        "MOOT_MODELS_FILE": str(models),
        "MOOT_WORKER_CONCURRENCY": "1",
        "MOOT_CALL_TIMEOUT_SECONDS": "300",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "PYTHONUNBUFFERED": "1",
    }
    started = [
        Worker(f"worker-{i}", port, env, tmp_path / f"worker-{i}.log")
        for i, port in enumerate(free_ports(2), start=1)
    ]
    try:
        async with httpx.AsyncClient(timeout=2.0) as client:
            deadline = time.monotonic() + 90
            for worker in started:
                while True:
                    assert worker.process.poll() is None, worker.log.read_text()[-3000:]
                    assert time.monotonic() < deadline, f"{worker.name} not ready"
                    try:
                        if (await client.get(f"{worker.url}/readyz")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.2)
        yield started
    finally:
        for worker in started:
            worker.stop()


async def test_killed_workers_call_is_completed_by_another_within_30_s(
    nats_url: str, namespace: str, model_server: ModelServer, workers: list[Worker]
) -> None:
    settings = MootSettings(NATS_URL=nats_url, namespace=namespace)
    names = Names(namespace)
    broker = make_broker(settings)
    await broker.connect()
    nc = await nats.connect(nats_url)
    try:
        js = broker.connection.jetstream()
        kv = await ensure_topology(js, names, settings)
        texts = await open_texts(js, names, settings)

        async def publish(items: list[tuple[str, str, bytes]]) -> None:
            await publish_all(broker, names, items)

        store = RunStore(kv=kv, names=names, publish=publish, texts=texts)
        run_id = uuid.uuid4().hex
        completed: asyncio.Queue[CallCompleted] = asyncio.Queue()

        async def on_completed(msg: Msg) -> None:
            await completed.put(CallCompleted.model_validate_json(msg.data))

        await nc.subscribe(names.run_event(run_id, "call.completed"), cb=on_completed)
        request = ConsortiumRequest(prompt="q", members=[MemberSpec(model="slow", count=1)], arbiter="slow")
        await store.create(run_id, "consortium", consortium.start(run_id, request, datetime.now(UTC)))

        # The call is in a worker's hands (it reached the model): find which worker, kill it.
        async with httpx.AsyncClient(timeout=2.0) as client:
            deadline = time.monotonic() + 30
            while not model_server.requests("slow"):
                assert time.monotonic() < deadline, "no worker called the model"
                await asyncio.sleep(0.1)
            holders = [w for w in workers if await w.calls_active(client) > 0]
        assert len(holders) == 1, [w.name for w in holders]
        victim = holders[0]
        survivor = next(w for w in workers if w is not victim)
        # Mid-call. JetStream redelivers ack_wait (20 s) after the job's last in_progress() (every
        # ~7 s), so the worst case is a kill just after a heartbeat: about 20 s plus the new call.
        await asyncio.sleep(3.0)
        victim.process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        victim.process.wait()
        model_server.set_model("slow", {"latency_ms": 1000})

        outcome = await asyncio.wait_for(completed.get(), timeout=RECOVERY_SECONDS + 15)
        recovered_in = time.monotonic() - killed_at
        print(f"call completed by {outcome.worker} {recovered_in:.1f} s after the kill")
        assert outcome.worker is not None and outcome.worker.endswith(f":{survivor.process.pid}")
        assert outcome.attempts == 2
        assert recovered_in < RECOVERY_SECONDS, recovered_in
        assert len(model_server.requests("slow")) == 2
    finally:
        await nc.close()
        await broker.stop()
