"""The infrastructure the other tests stand on: embedded servers and the session fixtures."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import nats
import pytest
from nats.js.api import StreamConfig

from moot.devstack import embedded
from moot.devstack.embedded import (
    EmbeddedPostgres,
    Infrastructure,
    docker_available,
    resolve_infrastructure,
    start_nats,
    start_postgres,
    with_database,
)
from moot.texts import NATS_MAX_PAYLOAD_BYTES


async def test_embedded_nats_jetstream_round_trip(tmp_path: Path, namespace: str) -> None:
    server = await start_nats(tmp_path)
    try:
        assert server.url.startswith("nats://127.0.0.1:")
        nc = await nats.connect(server.url)
        try:
            assert nc.max_payload == NATS_MAX_PAYLOAD_BYTES  # set explicitly (a config file)
            js = nc.jetstream()
            stream = f"{namespace.upper()}_S"
            await js.add_stream(StreamConfig(name=stream, subjects=[f"{namespace}.>"]))
            ack = await js.publish(f"{namespace}.hello", b"world")
            assert ack.stream == stream
            msg = await js.get_msg(stream, ack.seq)
            assert msg.data == b"world"
            assert msg.subject == f"{namespace}.hello"
        finally:
            await nc.close()
        log = (tmp_path / "nats" / "nats-server.log").read_text()
        assert "Using configuration file" in log  # where max_payload is set (1 MiB is also the default)
    finally:
        assert await server.stop() == 0
    assert not server.running()
    await server.stop()  # idempotent


async def test_embedded_nats_keeps_streams_across_restarts(tmp_path: Path) -> None:
    """`moot up` relies on this: the JetStream store lives in the data dir."""
    server = await start_nats(tmp_path)
    nc = await nats.connect(server.url)
    await nc.jetstream().add_stream(StreamConfig(name="KEEP", subjects=["keep.>"]))
    await nc.jetstream().publish("keep.x", b"1")
    await nc.close()
    await server.stop()

    server = await start_nats(tmp_path)
    try:
        nc = await nats.connect(server.url)
        info = await nc.jetstream().stream_info("KEEP")
        assert info.state.messages == 1
        await nc.close()
    finally:
        await server.stop()


async def test_embedded_postgres_query_and_create_database(server_tmp_path: Path) -> None:
    pg = await asyncio.to_thread(start_postgres, server_tmp_path)
    try:
        assert pg.url.startswith("postgresql://postgres@/postgres?host=/")
        conn = await asyncpg.connect(pg.url)
        try:
            assert await conn.fetchval("SELECT 40 + 2") == 42
            await conn.execute("CREATE DATABASE other_db")
        finally:
            await conn.close()
        conn = await asyncpg.connect(pg.url_for("other_db"))
        try:
            assert await conn.fetchval("SELECT current_database()") == "other_db"
        finally:
            await conn.close()
    finally:
        await pg.stop()
    with pytest.raises((OSError, asyncpg.PostgresError)):
        await asyncpg.connect(pg.url, timeout=2)


async def test_embedded_postgres_with_awkward_data_dir(server_tmp_path: Path) -> None:
    """Long paths exceed the unix socket limit; spaces and `&` break pg_ctl's shell line."""
    data_dir = server_tmp_path / "my projects & more" / ("x" * 100)
    data_dir.mkdir(parents=True)
    pg: EmbeddedPostgres = await asyncio.to_thread(start_postgres, data_dir)
    try:
        assert len(str(pg.socket_dir)) < 90
        conn = await asyncpg.connect(pg.url)
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
    finally:
        await pg.stop()


async def test_resolve_prefers_given_urls(tmp_path: Path) -> None:
    infra = await resolve_infrastructure(
        tmp_path, nats_url="nats://example:4222", database_url="postgresql://x/y"
    )
    assert infra.kind == {"nats": "external", "postgres": "external"}
    assert (infra.nats_url, infra.database_url) == ("nats://example:4222", "postgresql://x/y")
    await infra.close()  # nothing was started, nothing to stop


async def test_resolve_falls_back_to_embedded(server_tmp_path: Path) -> None:
    infra = await resolve_infrastructure(server_tmp_path, use_docker=False)
    try:
        assert infra.kind == {"nats": "embedded", "postgres": "embedded"}
        nc = await nats.connect(infra.nats_url)
        await nc.jetstream().account_info()
        await nc.close()
        conn = await asyncpg.connect(infra.database_url)
        await conn.close()
    finally:
        await infra.close()


class _FakeContainer:
    stopped = 0

    def stop(self) -> None:
        _FakeContainer.stopped += 1


async def test_resolve_uses_testcontainers_when_docker_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No Docker engine here: stand-ins for the container starters check the wiring only.
    monkeypatch.setattr(embedded, "docker_available", lambda: True)
    monkeypatch.setattr(embedded, "_start_nats_container", lambda: ("nats://docker:1", _FakeContainer()))
    monkeypatch.setattr(
        embedded, "_start_postgres_container", lambda: ("postgresql://d@docker/p", _FakeContainer())
    )
    _FakeContainer.stopped = 0
    infra = await resolve_infrastructure(tmp_path, database_url="postgresql://given/db")
    assert infra.kind == {"nats": "testcontainers", "postgres": "external"}
    assert infra.nats_url == "nats://docker:1"
    await infra.close()
    assert _FakeContainer.stopped == 1


async def test_resolve_falls_back_to_embedded_when_a_container_fails(
    server_tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pull() -> tuple[str, object]:
        raise RuntimeError("image pull failed")

    monkeypatch.setattr(embedded, "docker_available", lambda: True)
    monkeypatch.setattr(embedded, "_start_nats_container", no_pull)
    infra = await resolve_infrastructure(server_tmp_path, database_url="postgresql://given/db")
    try:
        assert infra.kind == {"nats": "embedded", "postgres": "external"}
    finally:
        await infra.close()
    with pytest.raises(RuntimeError, match="image pull failed"):
        await resolve_infrastructure(server_tmp_path, database_url="postgresql://given/db", use_docker=True)


def test_docker_available_is_quick() -> None:
    started = time.monotonic()
    assert isinstance(docker_available(timeout=1), bool)
    assert time.monotonic() - started < 5


def test_with_database_keeps_everything_but_the_name() -> None:
    assert (
        with_database("postgresql://postgres@/postgres?host=/tmp/s", "db1")
        == "postgresql://postgres@/db1?host=/tmp/s"
    )
    assert with_database("postgresql://u:p@h:5/test", "db2") == "postgresql://u:p@h:5/db2"


async def test_session_database_is_new_and_unique(infrastructure: Infrastructure, database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        name = await conn.fetchval("SELECT current_database()")
        assert name.startswith("moot_test_")
        assert name != await _server_default_database(infrastructure)
        # Fresh means created by this session under a new name; its tables may already exist by
        # now, made by tests that ran earlier in this same session.
        suffix = name.removeprefix("moot_test_")
        assert len(suffix) == 12 and all(c in "0123456789abcdef" for c in suffix)
    finally:
        await conn.close()


async def test_nats_fixture_url_works(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().account_info()
    finally:
        await nc.close()


def test_namespaces_are_unique_and_valid(namespace: str) -> None:
    from moot.runtime.subjects import Names

    assert Names(namespace).namespace == namespace
    assert namespace.startswith("t_") and len(namespace) == 10


async def _server_default_database(infrastructure: Infrastructure) -> str:
    conn = await asyncpg.connect(infrastructure.database_url)
    try:
        return str(await conn.fetchval("SELECT current_database()"))
    finally:
        await conn.close()
