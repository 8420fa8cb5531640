"""Every accepted run ends, and outages are clean (issue 11): the gateway against NATS and Postgres
that go away, and runs whose end only the record (or the state) still knows.

The gateway runs in-process (its lifespan, an ASGI client). The NATS a test stops is its own
embedded server, never the session's, which other tests share.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import nats
import nats.errors
import pytest

from moot.devstack.embedded import Infrastructure, start_nats
from moot.messages import CancelRequested
from moot.records.accounts import NO_LIMITS, create_key
from moot.records.migrate import migrate
from moot.runtime.runstore import RunStore
from moot.runtime.settings import MootSettings
from moot.runtime.subjects import Names
from moot.views import ConsortiumView
from moot_gateway import auth
from moot_gateway.auth import KeyCache
from moot_gateway.deps import Clients
from moot_gateway.main import create_app

RUN = {"mode": "consortium", "prompt": "Is P = NP?", "members": [{"model": "m1"}], "arbiter": "arb"}


class Gateway:
    def __init__(self, http: httpx.AsyncClient, clients: Clients) -> None:
        self.http, self.clients = http, clients


@asynccontextmanager
async def running_gateway(nats_url: str, database_url: str, namespace: str) -> AsyncIterator[Gateway]:
    # No workers here: runs are stored and read, never called, so any model name will do.
    settings = MootSettings(
        nats_url=nats_url,
        database_url=database_url,
        namespace=namespace,
        schema_wait_seconds=5,
        allow_unlisted_models=True,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw", timeout=30) as http:
            yield Gateway(http, app.state.clients)


async def _drop_namespace(nats_url: str, namespace: str) -> None:
    """The shared server outlives the test: remove what the gateway made there."""
    names = Names(namespace)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for stream in (names.runs_stream, names.jobs_stream):
            await js.delete_stream(stream)
        await js.delete_key_value(names.state_bucket)
        await js.delete_key_value(names.text_bucket)
    finally:
        await nc.close()


async def _key(database_url: str, owner: str | None = None) -> dict[str, str]:
    """A new key's header; for an owner of its own unless named (the session's database is shared)."""
    owner = owner or f"outage-{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(database_url)
    try:
        _, key = await create_key(conn, owner, owner, NO_LIMITS)
    finally:
        await conn.close()
    return {"Authorization": f"Bearer {key}"}


async def _run_keys(nats_url: str, namespace: str) -> list[str]:
    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(Names(namespace).state_bucket)
        try:
            return sorted(await kv.keys())
        except nats.js.errors.NoKeysError:
            return []
    finally:
        await nc.close()


def _assert_unavailable(response: httpx.Response, dependency: str) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == "5"
    error = response.json()["error"]
    assert error["code"] == "dependency_unavailable" and dependency in error["message"]


async def _sse(http: httpx.AsyncClient, path: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    """Every event of an SSE stream that ends (each {event, id, data}); fails if it does not end."""

    async def read() -> list[dict[str, Any]]:
        async with http.stream("GET", path, headers=headers) as response:
            assert response.status_code == 200, await response.aread()
            events: list[dict[str, Any]] = []
            current: dict[str, Any] = {}
            async for line in response.aiter_lines():
                if not line:
                    if "data" in current:
                        events.append(current)
                    current = {}
                    continue
                field, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if field == "data":
                    current["data"] = json.loads(value)
                elif field in ("event", "id"):
                    current[field] = value
            return events

    return await asyncio.wait_for(read(), timeout=30)


# --------------------------------------------------------------------------------------- NATS


async def test_nats_unreachable_post_runs_is_503_with_retry_after_and_stores_nothing(
    server_tmp_path: Any, database_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_nats(server_tmp_path)
    try:
        alice = await _key(database_url)
        async with running_gateway(server.url, database_url, namespace) as gw:
            accepted = await gw.http.post("/v1/runs", json=RUN, headers=alice)
            assert accepted.status_code == 202, accepted.text
            store = gw.clients.store
            kept = [accepted.json()["id"]]

            # The write reaches KV but its answer is lost: refused, and the state taken back.
            real_create = store.kv.create

            async def create_then_lose_the_answer(*args: Any, **kwargs: Any) -> int:
                await real_create(*args, **kwargs)
                raise nats.errors.TimeoutError

            with monkeypatch.context() as patch:
                patch.setattr(store.kv, "create", create_then_lose_the_answer)
                _assert_unavailable(await gw.http.post("/v1/runs", json=RUN, headers=alice), "nats")
            assert await _run_keys(server.url, namespace) == kept

            await server.stop()
            for _ in range(100):
                if not gw.clients.broker.connection.is_connected:
                    break
                await asyncio.sleep(0.05)
            refused = await gw.http.post("/v1/runs", json=RUN, headers=alice)
            _assert_unavailable(refused, "nats")
            ready = await gw.http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json() == {"status": "not ready", "nats": "down", "kv": "down", "postgres": "ok"}
    finally:
        await server.stop()
    # Back on the same data: the KV bucket holds the first run only.
    server = await start_nats(server_tmp_path)
    try:
        assert await _run_keys(server.url, namespace) == kept
    finally:
        await server.stop()


# ----------------------------------------------------------------------------------- Postgres


@pytest.fixture
async def own_database(empty_database: Callable[[], Awaitable[str]]) -> str:
    """A migrated database of this test's own, since the test makes it unavailable."""
    url = await empty_database()
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return url


async def _allow_connections(server_url: str, database_url: str, allow: bool) -> None:
    name = urlsplit(database_url).path.lstrip("/")
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allow).lower()}')
        if not allow:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
    finally:
        await admin.close()


async def test_postgres_unreachable_seen_keys_work_unknown_get_503_runs_go_on(
    nats_url: str,
    own_database: str,
    infrastructure: Infrastructure,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every request asks Postgres (nothing fresh), so what is shown is the stale-while-error path.
    monkeypatch.setattr(auth, "_cache", KeyCache(fresh_seconds=0))
    alice = await _key(own_database)
    unknown = {"Authorization": "Bearer moot_" + uuid.uuid4().hex}
    try:
        async with running_gateway(nats_url, own_database, namespace) as gw:
            assert (await gw.http.get("/v1/runs", headers=alice)).status_code == 200  # key seen
            await _allow_connections(infrastructure.database_url, own_database, False)
            try:
                accepted = await gw.http.post("/v1/runs", json=RUN, headers=alice)
                assert accepted.status_code == 202, accepted.text
                run = await gw.http.get(f"/v1/runs/{accepted.json()['id']}", headers=alice)
                assert run.status_code == 200 and run.json()["status"] == "running"  # from KV
                _assert_unavailable(await gw.http.post("/v1/runs", json=RUN, headers=unknown), "postgres")
                # What only Postgres holds is a 503 too, never a 500.
                _assert_unavailable(await gw.http.get("/v1/runs", headers=alice), "postgres")
                ready = await gw.http.get("/readyz")
                assert ready.status_code == 200
                assert ready.json() == {"status": "degraded", "nats": "ok", "kv": "ok", "postgres": "down"}
            finally:
                await _allow_connections(infrastructure.database_url, own_database, True)
            assert (await gw.http.get("/v1/runs", headers=unknown)).status_code == 401
            assert (await gw.http.get("/readyz")).json()["status"] == "ready"
    finally:
        await _drop_namespace(nats_url, namespace)


# ---------------------------------------------------------------------- streams that end


async def _record_finished_run(database_url: str, owner: str) -> ConsortiumView:
    """A run as the recorder leaves it once finished, and nothing of it in NATS."""
    run_id = uuid.uuid4().hex
    at = datetime.now(UTC)
    view = ConsortiumView.model_validate(
        {
            "id": run_id,
            "status": "completed",
            "created_at": at,
            "finished_at": at,
            "reason": "confident enough",
            "owner": owner,
            "request": RUN,
            "result": {"synthesis": "Nobody knows yet.", "confidence": 0.9},
        }
    )
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO runs (id, mode, status, prompt, request, reason, view, created_at, finished_at, owner)"
            " VALUES ($1, 'consortium', 'completed', $2, $3::jsonb, $4, $5::jsonb, $6, $6, $7)",
            run_id,
            RUN["prompt"],
            json.dumps(RUN),
            view.reason,
            view.model_dump_json(),
            at,
            owner,
        )
    finally:
        await conn.close()
    return view


async def test_sse_of_a_run_only_postgres_remembers_ends_with_its_terminal_event(
    nats_url: str, database_url: str, namespace: str
) -> None:
    owner = f"o{uuid.uuid4().hex[:8]}"
    alice = await _key(database_url, owner)
    view = await _record_finished_run(database_url, owner)
    try:
        async with running_gateway(nats_url, database_url, namespace) as gw:
            events = await _sse(gw.http, f"/v1/runs/{view.id}/events", alice)
    finally:
        await _drop_namespace(nats_url, namespace)
    assert [e["event"] for e in events] == ["run.completed"]
    (end,) = events
    assert "id" not in end  # no stream sequence to resume from
    assert end["data"]["seq"] is None and end["data"]["reason"] == "confident enough"
    assert ConsortiumView.model_validate(end["data"]["run"]) == view


async def _end_without_telling(gw: Gateway, run_id: str) -> None:
    """Cancel the run in KV but lose its `run.cancelled`: a terminal event that is never published."""

    async def lost(_: list[tuple[str, str, bytes]]) -> None:
        return None

    store = gw.clients.store
    silent = RunStore(kv=store.kv, names=store.names, publish=lost, texts=store.texts)
    assert await silent.apply(run_id, CancelRequested(run_id=run_id))


async def test_sse_of_a_live_run_ends_when_the_run_ends_unannounced(
    nats_url: str, database_url: str, namespace: str
) -> None:
    alice = await _key(database_url)
    try:
        async with running_gateway(nats_url, database_url, namespace) as gw:
            run_id = (await gw.http.post("/v1/runs", json=RUN, headers=alice)).json()["id"]
            follow = asyncio.create_task(_sse(gw.http, f"/v1/runs/{run_id}/events", alice))
            await asyncio.sleep(1.5)  # the stream has replayed what there is and waits
            assert not follow.done()
            await _end_without_telling(gw, run_id)
            events = await follow
    finally:
        await _drop_namespace(nats_url, namespace)
    assert [e["event"] for e in events] == ["run.created", "iteration.started", "run.cancelled"]
    assert "id" not in events[-1] and events[-1]["data"]["run"]["status"] == "cancelled"


async def test_blocking_chat_completion_answers_when_the_run_ends_unannounced(
    nats_url: str, database_url: str, namespace: str
) -> None:
    alice = await _key(database_url)
    try:
        async with running_gateway(nats_url, database_url, namespace) as gw:
            saved = {k: v for k, v in RUN.items() if k != "prompt"}
            assert (await gw.http.put("/v1/consortiums/panel", json=saved, headers=alice)).status_code == 200
            chat = {"model": "panel", "messages": [{"role": "user", "content": "Is P = NP?"}]}
            answer = asyncio.create_task(gw.http.post("/v1/chat/completions", json=chat, headers=alice))
            for _ in range(100):
                if run_ids := await _run_keys(nats_url, namespace):
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.5)
            assert not answer.done()
            await _end_without_telling(gw, run_ids[0])
            response = await asyncio.wait_for(answer, timeout=30)
    finally:
        await _drop_namespace(nats_url, namespace)
    assert response.status_code == 424, response.text
    assert (
        response.json()["error"]["code"] == "run_failed"
        and "cancelled" in response.json()["error"]["message"]
    )
