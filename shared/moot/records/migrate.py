"""Numbered SQL migrations: the one way moot's schema gets into Postgres.

The files are `moot/records/migrations/NNNN_name.sql` (package data), applied in order of their
number, each in its own transaction, and recorded in `schema_migrations` with a checksum of the
file. `moot migrate`, `moot up` and the deployments' migration Job (`python -m
moot.records.migrate`) apply them; the services never do: at start they wait until the schema is
current (`require_current`), so N replicas starting at once cannot race on DDL.

Runners take a Postgres advisory lock for the whole run, so concurrent runners apply each
migration once: the second one waits, then finds nothing left to do. A runner refuses a database
whose applied migrations are not the files it has (one was edited after being applied, or the
database was migrated by a newer moot), rather than guess.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

MIGRATIONS_TABLE = "schema_migrations"
FILE_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")
# One fixed key for every moot runner: pg_advisory_lock takes a bigint.
LOCK_KEY = int.from_bytes(hashlib.sha256(b"moot.records.migrate").digest()[:8], "big", signed=True)
RUN_IT = "run `moot migrate` (python -m moot.records.migrate; in Kubernetes the migration Job)"

_CREATE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,               -- SHA-256 of the file as applied
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """The schema cannot be brought to, or is not at, the version this moot needs."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str
    checksum: str

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


def checksum(sql: str) -> str:
    # Line endings normalized: a checkout that turns LF into CRLF has not changed the migration.
    return hashlib.sha256(sql.replace("\r\n", "\n").encode()).hexdigest()


def load_migrations(folder: Traversable | Path | None = None) -> tuple[Migration, ...]:
    """The migrations in `folder` (default: the package's), by version; numbered 1, 2, 3... without gaps."""
    folder = folder if folder is not None else resources.files("moot.records") / "migrations"
    found: list[Migration] = []
    for entry in folder.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = FILE_NAME.fullmatch(entry.name)
        if match is None:
            raise MigrationError(f"{entry.name}: a migration file is named NNNN_name.sql (lowercase name)")
        sql = entry.read_text(encoding="utf-8")
        found.append(Migration(int(match[1]), match[2], sql, checksum(sql)))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise MigrationError(f"{migration.label}: expected migration number {expected:04d} here")
    return tuple(found)


@dataclass(frozen=True)
class Applied:
    version: int
    name: str
    checksum: str


@dataclass
class SchemaState:
    """What the database has applied, compared with the migrations this moot knows."""

    known: Sequence[Migration]
    applied: dict[int, Applied] = field(default_factory=dict)

    @property
    def version(self) -> int:
        """The highest applied version (0: none)."""
        return max(self.applied, default=0)

    @property
    def latest(self) -> int:
        return self.known[-1].version if self.known else 0

    @property
    def pending(self) -> list[Migration]:
        return [m for m in self.known if m.version not in self.applied]

    @property
    def unknown(self) -> list[Applied]:
        """Applied migrations this moot does not have: a newer moot migrated the database."""
        known = {m.version for m in self.known}
        return [a for v, a in sorted(self.applied.items()) if v not in known]

    def changed(self) -> list[str]:
        """Why the applied migrations are not the files this moot has (empty: they are)."""
        problems = []
        for m in self.known:
            done = self.applied.get(m.version)
            if done is not None and (done.checksum != m.checksum or done.name != m.name):
                problems.append(
                    f"migration {m.label} was applied as {done.version:04d}_{done.name} with "
                    f"checksum {done.checksum[:12]}, but the file now has {m.checksum[:12]}: an "
                    "applied migration must not be edited (add a new one instead)"
                )
        if self.pending and self.pending[0].version < self.version:
            problems.append(
                f"migration {self.pending[0].label} is not applied but the later "
                f"{self.version:04d} is: the database and this moot disagree on the history"
            )
        return problems


async def read_state(conn: asyncpg.Connection, known: Sequence[Migration]) -> SchemaState:
    """The database's applied migrations (none when it has no `schema_migrations` yet)."""
    state = SchemaState(known)
    if await conn.fetchval("SELECT to_regclass($1)", MIGRATIONS_TABLE) is None:
        return state
    for row in await conn.fetch(f"SELECT version, name, checksum FROM {MIGRATIONS_TABLE}"):
        state.applied[row["version"]] = Applied(row["version"], row["name"], row["checksum"])
    return state


@asynccontextmanager
async def _connection(db: asyncpg.Connection | asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as conn:
            yield conn
    else:
        yield db


async def migrate(
    db: asyncpg.Connection | asyncpg.Pool, migrations: Sequence[Migration] | None = None
) -> list[Migration]:
    """Apply the pending migrations, each in its own transaction; returns those applied.

    Raises MigrationError, applying nothing, when the database's history is not this moot's.
    """
    known = load_migrations() if migrations is None else migrations
    async with _connection(db) as conn:
        # A session lock, not a transaction's: it spans the check and every migration's transaction.
        await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
        try:
            await conn.execute(_CREATE_TABLE)
            state = await read_state(conn, known)
            if state.unknown:
                newer = ", ".join(f"{a.version:04d}_{a.name}" for a in state.unknown)
                raise MigrationError(
                    f"the database has migrations this moot does not know ({newer}): it was migrated "
                    f"by a newer moot; this one knows up to {state.latest:04d}"
                )
            problems = state.changed()
            if problems:
                raise MigrationError("; ".join(problems))
            applied = []
            for migration in state.pending:
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        f"INSERT INTO {MIGRATIONS_TABLE} (version, name, checksum) VALUES ($1, $2, $3)",
                        migration.version,
                        migration.name,
                        migration.checksum,
                    )
                log.info("applied migration %s", migration.label)
                applied.append(migration)
            return applied
        finally:
            if not conn.is_closed():  # a lost connection has released the lock with it
                await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)


async def require_current(
    db: asyncpg.Connection | asyncpg.Pool,
    *,
    wait_seconds: float = 60.0,
    interval: float = 1.0,
    migrations: Sequence[Migration] | None = None,
) -> int:
    """Wait until the database has every migration this moot knows; returns its version.

    For services at start: they read the schema, never change it. Waits up to `wait_seconds`
    (the migration Job may still be running), logging that it waits for `moot migrate`, then
    raises MigrationError saying to run it. An edited applied migration fails at once. A database
    migrated further by a newer moot is accepted with a warning, so rolling back a release does
    not stop every service (migrations only add to the schema; see docs/architecture.md).
    """
    known = load_migrations() if migrations is None else migrations
    deadline = time.monotonic() + wait_seconds
    next_report = 0.0
    while True:
        async with _connection(db) as conn:
            state = await read_state(conn, known)
        problems = state.changed()
        if problems:
            raise MigrationError("; ".join(problems))
        if not state.pending:
            if state.unknown:
                log.warning(
                    "the database has migrations this moot does not know (up to %04d; this moot knows "
                    "up to %04d): running on it",
                    state.version,
                    state.latest,
                )
            return state.version
        waiting = ", ".join(m.label for m in state.pending)
        if time.monotonic() >= deadline:
            raise MigrationError(
                f"the database schema is at version {state.version:04d}, this moot needs "
                f"{state.latest:04d} (missing: {waiting}): {RUN_IT}; services do not apply it"
            )
        if time.monotonic() >= next_report:
            log.warning(
                "waiting for `moot migrate`: the database schema is at version %04d, this moot needs "
                "%04d (missing: %s)",
                state.version,
                state.latest,
                waiting,
            )
            next_report = time.monotonic() + 10.0
        await asyncio.sleep(max(0.0, min(interval, deadline - time.monotonic())))


# --------------------------------------------------------------------------- python -m


async def _connect(url: str, wait: float) -> asyncpg.Connection:
    """A connection, retried for `wait` seconds: in compose or Kubernetes Postgres may come up after us."""
    deadline = time.monotonic() + wait
    delay = 0.5
    while True:
        try:
            return await asyncpg.connect(url, timeout=10)
        except (OSError, asyncpg.CannotConnectNowError, TimeoutError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            # The URL may carry a password: the error type only.
            log.warning("database not reachable (%s); retrying in %.1fs", type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def _run(url: str, wait: float) -> None:
    conn = await _connect(url, wait)
    try:
        applied = await migrate(conn)
        for migration in applied:
            print(f"applied {migration.label}", flush=True)
        version = (await read_state(conn, load_migrations())).version
        print(f"schema is current: version {version:04d}", flush=True)
    finally:
        await conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m moot.records.migrate`: apply the pending migrations; 0 once the schema is current."""
    parser = argparse.ArgumentParser(
        prog="python -m moot.records.migrate", description="Apply moot's pending schema migrations."
    )
    parser.add_argument(
        "--database-url", default=os.environ.get("DATABASE_URL") or None, help="default: $DATABASE_URL"
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=60.0,
        help="seconds to retry while Postgres is not reachable (default 60)",
    )
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("no database: set DATABASE_URL or pass --database-url")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_run(args.database_url, args.wait))
    except MigrationError as exc:
        print(f"migrate: refused: {exc}", file=sys.stderr)
        return 1
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(f"migrate: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
