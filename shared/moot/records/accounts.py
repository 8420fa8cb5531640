"""API keys and their owners, in Postgres. Used by the gateway (authentication) and `moot keys`.

The tables (`api_keys`, `saved_configs`) are created by migration 0002 (`moot.records.migrate`),
the per-key limits by 0003 (enforced by the gateway: `moot.records.limits`).

A key is shown once, when it is created; only its SHA-256 is stored. Keys are 256-bit random
strings, so a plain hash is enough (there is nothing to brute-force, unlike passwords).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

KEY_PREFIX = "moot_"
OWNER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


@dataclass(frozen=True)
class Limits:
    """A key's own limits. None: the deployment's default applies; 0: no limit for this key."""

    rpm: int | None = None  # runs started per minute
    max_concurrent_runs: int | None = None
    usd_per_day: float | None = None  # spend of the runs started in a UTC day

    def described(self) -> str:
        def one(value: float | None, unit: str) -> str:
            return "default" if value is None else ("unlimited" if value == 0 else f"{value:g}{unit}")

        return (
            f"rpm {one(self.rpm, '')}, concurrent runs {one(self.max_concurrent_runs, '')},"
            f" per day {one(self.usd_per_day, ' USD')}"
        )


# A key that no limit applies to (tests, benchmarks, an operator's own tools).
NO_LIMITS = Limits(rpm=0, max_concurrent_runs=0, usd_per_day=0)
# The key `moot up` makes for its user: one person on their own machine, generous limits.
LOCAL_KEY_LIMITS = Limits(rpm=6000, max_concurrent_runs=1000, usd_per_day=0)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the owner of the key, the key, and the key's own limits."""

    owner: str
    key_id: str
    limits: Limits = Limits()


@dataclass(frozen=True)
class KeyInfo:
    id: str
    owner: str
    name: str
    created_at: datetime
    revoked_at: datetime | None
    limits: Limits = Limits()


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _checked(limits: Limits) -> Limits:
    for name in ("rpm", "max_concurrent_runs", "usd_per_day"):
        value = getattr(limits, name)
        if value is not None and value < 0:
            raise ValueError(f"{name} must be 0 (no limit) or more, not {value}")
    return limits


def _limits(row: asyncpg.Record) -> Limits:
    return Limits(
        rpm=row["rpm"], max_concurrent_runs=row["max_concurrent_runs"], usd_per_day=row["usd_per_day"]
    )


async def create_key(
    conn: asyncpg.Connection, name: str, owner: str | None = None, limits: Limits = Limits()
) -> tuple[str, str]:
    """A new key for `owner` (default: the name); returns (key id, the key, shown only now)."""
    owner = owner or name
    if not OWNER_RE.match(owner):
        raise ValueError(f"owner/name {owner!r}: use letters, digits and . _ @ - (at most 64)")
    _checked(limits)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = "key_" + secrets.token_hex(6)
    await conn.execute(
        "INSERT INTO api_keys (id, owner, name, key_hash, rpm, max_concurrent_runs, usd_per_day)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        key_id,
        owner,
        name,
        hash_key(key),
        limits.rpm,
        limits.max_concurrent_runs,
        limits.usd_per_day,
    )
    return key_id, key


# What `set_limits` leaves as it is (None there means: back to the deployment's default).
UNCHANGED: Any = object()


async def set_limits(
    conn: asyncpg.Connection,
    key_id: str,
    *,
    rpm: int | None = UNCHANGED,
    max_concurrent_runs: int | None = UNCHANGED,
    usd_per_day: float | None = UNCHANGED,
) -> Limits | None:
    """Change some of a key's limits (None: back to the default); the key's limits after, or None
    when there is no active key `key_id`. Gateways apply the change within their auth cache time."""
    changes = {
        name: value
        for name, value in (
            ("rpm", rpm),
            ("max_concurrent_runs", max_concurrent_runs),
            ("usd_per_day", usd_per_day),
        )
        if value is not UNCHANGED
    }
    for name, value in changes.items():
        if value is not None and value < 0:
            raise ValueError(f"{name} must be 0 (no limit) or more, not {value}")
    assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(changes, start=2))
    row = await conn.fetchrow(
        f"UPDATE api_keys SET {assignments or 'id = id'} WHERE id = $1 AND revoked_at IS NULL"
        " RETURNING rpm, max_concurrent_runs, usd_per_day",
        key_id,
        *changes.values(),
    )
    return _limits(row) if row else None


async def list_keys(conn: asyncpg.Connection) -> list[KeyInfo]:
    rows = await conn.fetch(
        "SELECT id, owner, name, created_at, revoked_at, rpm, max_concurrent_runs, usd_per_day"
        " FROM api_keys ORDER BY created_at"
    )
    return [
        KeyInfo(
            id=r["id"],
            owner=r["owner"],
            name=r["name"],
            created_at=r["created_at"],
            revoked_at=r["revoked_at"],
            limits=_limits(r),
        )
        for r in rows
    ]


async def revoke_key(conn: asyncpg.Connection, key_id: str) -> bool:
    status = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", key_id
    )
    return status.endswith(" 1")


@dataclass(frozen=True)
class RevokedKey:
    """A key that existed and was revoked: refused, and told so."""

    key_id: str
    revoked_at: datetime


async def authenticate(pool: asyncpg.Pool, key: str) -> Principal | RevokedKey | None:
    """The principal behind a key; RevokedKey when it was revoked; None when it is unknown."""
    if not key.startswith(KEY_PREFIX):
        return None
    row = await pool.fetchrow(
        "SELECT id, owner, rpm, max_concurrent_runs, usd_per_day, revoked_at FROM api_keys WHERE key_hash = $1",
        hash_key(key),
    )
    if row is None:
        return None
    if row["revoked_at"] is not None:
        return RevokedKey(key_id=row["id"], revoked_at=row["revoked_at"])
    return Principal(owner=row["owner"], key_id=row["id"], limits=_limits(row))


async def principal_of_key(pool: asyncpg.Pool, key_id: str) -> Principal | None:
    """The principal of an active key, by its id (work resumed on a key's behalf); None if revoked."""
    row = await pool.fetchrow(
        "SELECT owner, rpm, max_concurrent_runs, usd_per_day FROM api_keys WHERE id = $1 AND revoked_at IS NULL",
        key_id,
    )
    return Principal(owner=row["owner"], key_id=key_id, limits=_limits(row)) if row else None


def _read_key(path: Path) -> str | None:
    return path.read_text().strip() if path.exists() else None


def _write_key(path: Path, key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")


async def ensure_local_key(conn: asyncpg.Connection, key_file: str) -> str:
    """The local stack's ready-to-use key: the one kept in `key_file` if it still works, else a new one.

    The file is readable by its owner only; it is the single place the plaintext is kept.
    """
    path = Path(key_file)
    key = await asyncio.to_thread(_read_key, path)
    if key:
        found = await conn.fetchval(
            "SELECT id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", hash_key(key)
        )
        if found:
            # A key made before keys had limits gets the local ones; limits set since are kept.
            await conn.execute(
                "UPDATE api_keys SET rpm = coalesce(rpm, $2), max_concurrent_runs ="
                " coalesce(max_concurrent_runs, $3), usd_per_day = coalesce(usd_per_day, $4) WHERE id = $1",
                found,
                LOCAL_KEY_LIMITS.rpm,
                LOCAL_KEY_LIMITS.max_concurrent_runs,
                LOCAL_KEY_LIMITS.usd_per_day,
            )
            return key
    _, key = await create_key(conn, "local", limits=LOCAL_KEY_LIMITS)
    await asyncio.to_thread(_write_key, path, key)
    return key


async def local_key(database_url: str, data_dir: str) -> str:
    """`ensure_local_key` for a stack whose data lives in `data_dir`."""
    conn = await asyncpg.connect(database_url)
    try:
        return await ensure_local_key(conn, f"{data_dir}/local-api-key")
    finally:
        await conn.close()
