"""The admin commands' database, and `moot migrate`.

The database is `DATABASE_URL`, else the running local stack's (`moot.devstack.home`: whatever
Postgres `moot up` uses), else the embedded Postgres an earlier `moot up` left in the data dir
(`--data-dir`, `$MOOT_DATA_DIR`, else the user data directory), started for the command and
stopped after it. With none of these the command says where it looked instead of making a new
database nobody's gateway reads.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg

from moot.cli.common import CliError, err, out
from moot.devstack import home
from moot.records.migrate import MigrationError, load_migrations, migrate, read_state


def _postgres_running(pgdata: Path) -> bool:
    """True when a server (of another process, e.g. `moot up`) already serves `pgdata`."""
    if not (pgdata / "postmaster.pid").exists():
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs, at pgserver's import
        from pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(pgdata)
    return info is not None and info.is_running()


def embedded_postgres(data_dir: Path) -> Any:
    """The embedded server of `data_dir`; its `stop()` stops it only if this command started it."""
    from moot.devstack.embedded import start_postgres

    running = _postgres_running(Path(data_dir).expanduser().resolve() / "postgres")
    # cleanup_mode None: stop() just lets go of the server; "stop": stops it unless others hold it.
    return start_postgres(Path(data_dir), cleanup_mode=None if running else "stop")


@asynccontextmanager
async def admin_connection(given_dir: str | None) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the database, its schema not touched."""
    url = os.environ.get("DATABASE_URL")
    where = "DATABASE_URL"
    server = None
    data_dir = home.data_dir(given_dir)
    stack = None if url else home.running_stack(data_dir)
    if stack is not None:
        url, where = stack.database_url, f"the database of the moot stack running from {data_dir}"
    elif not url:
        if not home.has_embedded_postgres(data_dir):
            raise CliError(
                f"no moot stack found: none is running from {data_dir} and it holds no database."
                " Start one with `moot up` (or point at it with --data-dir / MOOT_DATA_DIR), or set"
                " DATABASE_URL"
            )
        try:
            server = await asyncio.to_thread(embedded_postgres, data_dir)
        except Exception as exc:
            raise CliError(f"the embedded Postgres in {data_dir} failed to start: {exc}") from exc
        url, where = server.url, f"the embedded Postgres in {data_dir}"
    try:
        try:
            conn = await asyncpg.connect(url, timeout=10)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise CliError(f"cannot connect to {where}: {exc}") from exc
        try:
            yield conn
        finally:
            await conn.close()
    finally:
        if server is not None:
            await server.stop()


async def apply_migrations(conn: asyncpg.Connection) -> list[str]:
    """Apply the pending migrations; the labels of those applied. A refusal is a CliError."""
    try:
        return [m.label for m in await migrate(conn)]
    except MigrationError as exc:
        raise CliError(f"cannot migrate the database: {exc}") from exc


@asynccontextmanager
async def migrated_connection(data_dir: str | None) -> AsyncIterator[asyncpg.Connection]:
    """`admin_connection`, migrated first: on a fresh database an admin command just works."""
    async with admin_connection(data_dir) as conn:
        for label in await apply_migrations(conn):
            err(f"moot: applied migration {label}")
        yield conn


async def migrate_command(args: argparse.Namespace) -> int:
    """`moot migrate`: apply the pending migrations, say which, and the version reached."""
    async with admin_connection(args.data_dir) as conn:
        applied = await apply_migrations(conn)
        version = (await read_state(conn, load_migrations())).version
    for label in applied:
        out(f"applied {label}\n")
    out(f"schema is current: version {version:04d}" + ("" if applied else " (nothing to apply)") + "\n")
    return 0


def data_dir_option() -> argparse.ArgumentParser:
    """A parent parser with `--data-dir`, for every command that talks to Postgres directly."""
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--data-dir",
        default=None,
        help="without DATABASE_URL: the database of the local stack of this data dir (default:"
        " $MOOT_DATA_DIR, else the user data directory, where `moot up` keeps it)",
    )
    return where


def add_command(sub: Any) -> None:
    """`moot migrate` under the CLI's subcommands."""
    sub.add_parser(
        "migrate",
        parents=[data_dir_option()],
        help="apply the database's pending schema migrations (services only check them)",
    )
