"""API keys and their owners, in Postgres. Used by the gateway (authentication) and `moot keys`.

The tables (`api_keys`, `saved_configs`) are created by migration 0002 (`moot.records.migrate`).

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

import asyncpg

KEY_PREFIX = "moot_"
OWNER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the owner of the key."""

    owner: str
    key_id: str


@dataclass(frozen=True)
class KeyInfo:
    id: str
    owner: str
    name: str
    created_at: datetime
    revoked_at: datetime | None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def create_key(conn: asyncpg.Connection, name: str, owner: str | None = None) -> tuple[str, str]:
    """A new key for `owner` (default: the name); returns (key id, the key, shown only now)."""
    owner = owner or name
    if not OWNER_RE.match(owner):
        raise ValueError(f"owner/name {owner!r}: use letters, digits and . _ @ - (at most 64)")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    key_id = "key_" + secrets.token_hex(6)
    await conn.execute(
        "INSERT INTO api_keys (id, owner, name, key_hash) VALUES ($1, $2, $3, $4)",
        key_id,
        owner,
        name,
        hash_key(key),
    )
    return key_id, key


async def list_keys(conn: asyncpg.Connection) -> list[KeyInfo]:
    rows = await conn.fetch(
        "SELECT id, owner, name, created_at, revoked_at FROM api_keys ORDER BY created_at"
    )
    return [KeyInfo(**dict(r)) for r in rows]


async def revoke_key(conn: asyncpg.Connection, key_id: str) -> bool:
    status = await conn.execute(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", key_id
    )
    return status.endswith(" 1")


async def authenticate(pool: asyncpg.Pool, key: str) -> Principal | None:
    """The principal behind a key, or None when it is unknown or revoked."""
    if not key.startswith(KEY_PREFIX):
        return None
    row = await pool.fetchrow(
        "SELECT id, owner FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", hash_key(key)
    )
    return Principal(owner=row["owner"], key_id=row["id"]) if row else None


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
            "SELECT 1 FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL", hash_key(key)
        )
        if found:
            return key
    _, key = await create_key(conn, "local")
    await asyncio.to_thread(_write_key, path, key)
    return key


async def local_key(database_url: str, data_dir: str) -> str:
    """`ensure_local_key` for a stack whose data lives in `data_dir`."""
    conn = await asyncpg.connect(database_url)
    try:
        return await ensure_local_key(conn, f"{data_dir}/local-api-key")
    finally:
        await conn.close()
