"""Numbered migrations against real Postgres: applied once, refused when history disagrees,
adopting databases made before them, and services that only wait for them."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats
import pytest
from nats.js.errors import NotFoundError

from moot.records.migrate import MIGRATIONS_TABLE, MigrationError, load_migrations, migrate, require_current
from moot.runtime.settings import MootSettings
from moot.runtime.subjects import Names
from moot_recorder.main import create_app
from moot_recorder.settings import RecorderSettings

OLD_SCHEMAS = Path(__file__).parent / "old_schemas"
KNOWN = load_migrations()
LATEST = KNOWN[-1].version
TABLES = (
    "runs",
    "iterations",
    "calls",
    "debate_rounds",
    "steps",
    "events",
    "api_keys",
    "saved_configs",
    "key_rates",
    "key_runs",
    "evals",
    "eval_items",
)

MakeDatabase = Callable[[], Awaitable[str]]


@asynccontextmanager
async def connection(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


async def history(url: str) -> list[tuple[int, str, str]]:
    async with connection(url) as conn:
        rows = await conn.fetch(f"SELECT version, name, checksum FROM {MIGRATIONS_TABLE} ORDER BY version")
    return [(r["version"], r["name"], r["checksum"]) for r in rows]


async def existing_tables(url: str) -> set[str]:
    async with connection(url) as conn:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r["tablename"] for r in rows}


async def catalog(url: str) -> dict[str, Any]:
    """Everything about the schema a migration decides: columns in order, indexes, constraints."""
    async with connection(url) as conn:
        columns = await conn.fetch(
            """SELECT table_name, ordinal_position, column_name, data_type, is_nullable, column_default
               FROM information_schema.columns WHERE table_schema = 'public' AND table_name <> $1
               ORDER BY table_name, ordinal_position""",
            MIGRATIONS_TABLE,
        )
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname"
        )
        constraints = await conn.fetch(
            """SELECT conrelid::regclass::text AS tbl, conname, pg_get_constraintdef(oid) AS def
               FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY tbl, conname"""
        )
    return {
        "columns": [tuple(r) for r in columns],
        "indexes": [tuple(r) for r in indexes],
        "constraints": [tuple(r) for r in constraints],
    }


# --------------------------------------------------------------------------------------------- runner


def test_the_package_holds_numbered_migrations() -> None:
    assert [m.label for m in KNOWN] == [
        "0001_initial",
        "0002_accounts",
        "0003_key_limits",
        "0004_steps",
        "0005_evals",
    ]
    assert all(len(m.checksum) == 64 for m in KNOWN)


async def test_fresh_database_migrates_to_latest_and_then_applies_nothing(
    empty_database: MakeDatabase,
) -> None:
    url = await empty_database()
    async with connection(url) as conn:
        applied = await migrate(conn)
        assert [m.label for m in applied] == [m.label for m in KNOWN]
        assert await migrate(conn) == []
        assert await require_current(conn, wait_seconds=0) == LATEST
    assert await history(url) == [(m.version, m.name, m.checksum) for m in KNOWN]
    assert set(TABLES) | {MIGRATIONS_TABLE} == await existing_tables(url)


async def test_concurrent_runners_apply_each_migration_once(empty_database: MakeDatabase) -> None:
    url = await empty_database()
    conns = [await asyncpg.connect(url) for _ in range(4)]
    pool = await asyncpg.create_pool(url, min_size=1, max_size=2)
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns), migrate(pool), migrate(pool))
    finally:
        await pool.close()
        for c in conns:
            await c.close()
    labels = [m.label for applied in results for m in applied]
    assert sorted(labels) == [m.label for m in KNOWN]
    assert await history(url) == [(m.version, m.name, m.checksum) for m in KNOWN]


async def test_an_edited_applied_migration_is_refused(empty_database: MakeDatabase, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    folder.mkdir()
    for entry in (resources.files("moot.records") / "migrations").iterdir():
        if entry.name.endswith(".sql"):
            (folder / entry.name).write_text(entry.read_text(encoding="utf-8"), encoding="utf-8")
    url = await empty_database()
    async with connection(url) as conn:
        await migrate(conn, load_migrations(folder))
        first = folder / "0001_initial.sql"
        first.write_text(
            first.read_text() + "\nCREATE INDEX IF NOT EXISTS calls_model_idx ON calls (model);\n"
        )
        (folder / f"{LATEST + 1:04d}_more.sql").write_text("CREATE TABLE more (id int);\n")
        edited = load_migrations(folder)
        with pytest.raises(MigrationError, match=r"0001_initial .* must not be edited"):
            await migrate(conn, edited)
        with pytest.raises(MigrationError, match="must not be edited"):
            await require_current(conn, wait_seconds=5, migrations=edited)  # at once, not after 5 s
        # Refused as a whole: the new one is not applied either.
        assert await conn.fetchval("SELECT to_regclass('more')") is None
    assert [v for v, _, _ in await history(url)] == [m.version for m in KNOWN]


async def test_a_database_migrated_by_a_newer_moot(empty_database: MakeDatabase, caplog: Any) -> None:
    """The runner refuses it; a service runs on it (a rolled-back release must keep working)."""
    url = await empty_database()
    older = KNOWN[:1]
    async with connection(url) as conn:
        await migrate(conn)
        with pytest.raises(
            MigrationError,
            match=r"does not know \(0002_accounts, 0003_key_limits, 0004_steps, 0005_evals\).*newer moot",
        ):
            await migrate(conn, older)
        with caplog.at_level(logging.WARNING, logger="moot.records.migrate"):
            assert await require_current(conn, wait_seconds=0, migrations=older) == LATEST
    assert "does not know" in caplog.text


def test_files_are_numbered_without_gaps(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1;")
    (tmp_path / "0003_c.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="0003_c: expected migration number 0002"):
        load_migrations(tmp_path)
    (tmp_path / "0002_B.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        load_migrations(tmp_path)


# --------------------------------------------------------------------------------------------- adoption


@pytest.mark.parametrize(
    "old_files",
    [
        # The schema as the recorder and the gateway applied it at every start until migrations.
        ("recorder_schema.sql", "gateway_schema.sql"),
        # The first recorder's, before API keys: runs has no owner column yet.
        ("recorder_schema_first_release.sql",),
    ],
)
async def test_a_database_made_before_migrations_is_adopted(
    empty_database: MakeDatabase, old_files: tuple[str, ...]
) -> None:
    old, fresh = await empty_database(), await empty_database()
    async with connection(old) as conn:
        for name in old_files:
            async with conn.transaction():  # as the services applied them
                await conn.execute((OLD_SCHEMAS / name).read_text())
        await conn.execute("INSERT INTO runs (id, mode, prompt) VALUES ('run_old', 'consortium', 'hi')")
        applied = await migrate(conn)
        assert [m.label for m in applied] == [m.label for m in KNOWN]
        assert await conn.fetchval("SELECT prompt FROM runs WHERE id = 'run_old'") == "hi"
        await conn.execute("UPDATE runs SET owner = 'alice' WHERE id = 'run_old'")
    async with connection(fresh) as conn:
        await migrate(conn)
    # The adopted database is the one a fresh migration makes, column order included.
    assert await catalog(old) == await catalog(fresh)


async def test_old_gateway_tables_keep_their_keys(empty_database: MakeDatabase) -> None:
    from moot.records.accounts import KEY_PREFIX, Limits, authenticate, hash_key

    url = await empty_database()
    key = KEY_PREFIX + "made-by-an-old-gateway"
    async with connection(url) as conn:
        for name in ("recorder_schema.sql", "gateway_schema.sql"):
            await conn.execute((OLD_SCHEMAS / name).read_text())
        # As the gateway of then wrote it (no limit columns yet).
        await conn.execute(
            "INSERT INTO api_keys (id, owner, name, key_hash) VALUES ('key_old', 'before', 'before', $1)",
            hash_key(key),
        )
        await migrate(conn)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=1)
    try:
        principal = await authenticate(pool, key)
    finally:
        await pool.close()
    assert principal is not None and principal.owner == "before"
    assert principal.limits == Limits()  # the deployment's defaults apply to it


# --------------------------------------------------------------------------------------------- services


async def _delete_topology(nats_url: str, namespace: str) -> None:
    """The namespace's streams and bucket: the NATS server may be shared with other runs."""
    names = Names(namespace)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for stream in (names.runs_stream, names.jobs_stream):
            try:
                await js.delete_stream(stream)
            except NotFoundError:
                pass
        try:
            await js.delete_key_value(names.state_bucket)
        except NotFoundError:
            pass
    finally:
        await nc.close()


@pytest.mark.parametrize("module", ["moot_recorder", "moot_gateway"])
async def test_a_service_on_an_unmigrated_database_names_moot_migrate(
    empty_database: MakeDatabase, nats_url: str, namespace: str, module: str
) -> None:
    url = await empty_database()
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "NATS_URL": nats_url,
        "MOOT_NAMESPACE": namespace,
        "MOOT_SCHEMA_WAIT_SECONDS": "1",
        "MOOT_HTTP_PORT": "0",
        "MOOT_HTTP_HOST": "127.0.0.1",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await _delete_topology(nats_url, namespace)
    log = err.decode()
    assert proc.returncode != 0, log
    assert "waiting for `moot migrate`" in log
    assert f"this moot needs {LATEST:04d}" in log and "run `moot migrate`" in log
    assert await existing_tables(url) == set(), "a service must not apply the schema"


async def test_recorder_waits_for_the_migration_then_becomes_ready(
    empty_database: MakeDatabase, nats_url: str, namespace: str, caplog: Any
) -> None:
    url = await empty_database()
    settings = MootSettings(nats_url=nats_url, database_url=url, namespace=namespace, schema_wait_seconds=30)
    app = create_app(settings, RecorderSettings())

    ready = asyncio.Event()
    release = asyncio.Event()

    async def run_service() -> None:
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as http:
                if (await http.get("/readyz")).status_code == 200:
                    ready.set()
            await release.wait()

    try:
        with caplog.at_level(logging.WARNING, logger="moot.records.migrate"):
            service = asyncio.create_task(run_service())
            for _ in range(200):
                if "waiting for `moot migrate`" in caplog.text:
                    break
                await asyncio.sleep(0.05)
            assert "waiting for `moot migrate`" in caplog.text
            assert not ready.is_set()
            async with connection(url) as conn:
                await migrate(conn)
            await asyncio.wait_for(ready.wait(), 10)
            release.set()
            await asyncio.wait_for(service, 10)
    finally:
        release.set()
        await _delete_topology(nats_url, namespace)


# --------------------------------------------------------------------------------------------- commands


async def _command(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_moot_migrate_and_python_m_migrate(empty_database: MakeDatabase) -> None:
    url = await empty_database()
    env = {**os.environ, "DATABASE_URL": url}
    code, out, err = await _command(env, "-m", "moot.cli", "migrate")
    assert code == 0, err
    assert out.splitlines() == [
        *(f"applied {m.label}" for m in KNOWN),
        f"schema is current: version {LATEST:04d}",
    ]
    code, out, err = await _command(env, "-m", "moot.cli", "migrate")
    assert (code, out) == (0, f"schema is current: version {LATEST:04d} (nothing to apply)\n"), err
    assert await history(url) == [(m.version, m.name, m.checksum) for m in KNOWN]

    # What the Kubernetes Job and the compose service run; the URL may also come as an option.
    code, out, err = await _command(
        {**os.environ, "DATABASE_URL": ""}, "-m", "moot.records.migrate", "--database-url", url
    )
    assert (code, out) == (0, f"schema is current: version {LATEST:04d}\n"), err

    async with connection(url) as conn:
        await conn.execute(
            f"INSERT INTO {MIGRATIONS_TABLE} (version, name, checksum) VALUES (99, 'from_the_future', 'x')"
        )
    code, out, err = await _command(env, "-m", "moot.cli", "migrate")
    assert code == 1 and "moot: cannot migrate the database" in err and "0099_from_the_future" in err, err
    code, out, err = await _command(env, "-m", "moot.records.migrate")
    assert code == 1 and "migrate: refused" in err and "newer moot" in err, err


async def test_python_m_migrate_without_a_database() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    code, _, err = await _command(env, "-m", "moot.records.migrate")
    assert code == 2 and "set DATABASE_URL or pass --database-url" in err, err
