"""Session-wide test infrastructure: one NATS and one Postgres for the whole run.

Where they come from follows `moot.devstack.embedded.resolve_infrastructure`: `NATS_URL` / `DATABASE_URL`
from the environment if set, else testcontainers if Docker answers, else embedded servers under
the session's tmp dir. Isolation between tests comes from names, not servers: each session gets
its own database (migrated, as `moot migrate` would) and each test its own NATS namespace.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from moot.devstack.embedded import Infrastructure, resolve_infrastructure, with_database
from moot.records.migrate import migrate

# Test modules may import litellm at collection time, before any fixture runs; without this it
# would try to download its price map.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture(scope="session", autouse=True)
def _litellm_offline() -> Iterator[None]:
    """Keep litellm (in this process and in child processes) off the network for its cost map."""
    previous = os.environ.get("LITELLM_LOCAL_MODEL_COST_MAP")
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    yield
    if previous is None:
        os.environ.pop("LITELLM_LOCAL_MODEL_COST_MAP", None)
    else:
        os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = previous


@pytest.fixture(scope="session", autouse=True)
def _own_moot_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests (and the CLI processes they start) never see a developer's local stack: the stack's
    home (`moot.devstack.home`) is a directory of this session's own."""
    previous = os.environ.get("MOOT_DATA_DIR")
    os.environ["MOOT_DATA_DIR"] = str(tmp_path_factory.mktemp("moot-home"))
    yield
    if previous is None:
        os.environ.pop("MOOT_DATA_DIR", None)
    else:
        os.environ["MOOT_DATA_DIR"] = previous


@contextlib.contextmanager
def _server_dir(factory: pytest.TempPathFactory, name: str) -> Iterator[Path]:
    """A directory for embedded servers' data: a pytest tmp dir, except when running as root.

    As root, pgserver runs postgres as an unprivileged `pgserver` user and opens up the data
    dir's parents for it. pytest resets /tmp/pytest-of-root to 0700 whenever a session starts,
    so a concurrent pytest run would lock that user out and crash the server (PANIC on
    pg_control). Root therefore gets a directory directly under /tmp, removed afterwards.
    """
    if os.geteuid() != 0:
        yield factory.mktemp(name)
        return
    path = Path(tempfile.mkdtemp(prefix=f"moot-{name}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
async def infrastructure(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Infrastructure]:
    """NATS + Postgres for the session; embedded ones keep their data in a temporary dir."""
    with _server_dir(tmp_path_factory, "infra") as data_dir:
        infra = await resolve_infrastructure(
            data_dir,
            nats_url=os.environ.get("NATS_URL") or None,
            database_url=os.environ.get("DATABASE_URL") or None,
        )
        try:
            yield infra
        finally:
            await infra.close()


@pytest.fixture
def server_tmp_path(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Like `tmp_path`, but safe as the data dir of an embedded Postgres (see `_server_dir`)."""
    with _server_dir(tmp_path_factory, "server") as path:
        yield path


@pytest.fixture(scope="session")
def nats_url(infrastructure: Infrastructure) -> str:
    return infrastructure.nats_url


async def _create_database(server_url: str) -> tuple[str, str]:
    """A new empty database on the server: (its name, its URL)."""
    name = f"moot_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name, with_database(server_url, name)


async def _drop_database(server_url: str, name: str) -> None:
    admin = await asyncpg.connect(server_url)
    try:
        # FORCE (PostgreSQL 13+): pools of services that outlive their test must not keep
        # the database alive.
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
async def database_url(infrastructure: Infrastructure) -> AsyncIterator[str]:
    """URL of a fresh database created and migrated for this session, dropped after it.

    A shared server may hold databases of earlier or concurrent runs; a new name per session
    means tests never see leftovers and never clash. Migrated here, since services only wait
    for the schema (`moot migrate` applies it).
    """
    name, url = await _create_database(infrastructure.database_url)
    try:
        conn = await asyncpg.connect(url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield url
    finally:
        await _drop_database(infrastructure.database_url, name)


@pytest.fixture
async def empty_database(infrastructure: Infrastructure) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """Makes new, unmigrated databases (their URLs) for one test; drops them after it."""
    made: list[str] = []

    async def make() -> str:
        name, url = await _create_database(infrastructure.database_url)
        made.append(name)
        return url

    try:
        yield make
    finally:
        for name in made:
            await _drop_database(infrastructure.database_url, name)


@pytest.fixture
def namespace() -> str:
    """A namespace no other test uses: prefixes all subjects, streams, consumers and KV of a test."""
    return f"t_{uuid.uuid4().hex[:8]}"
