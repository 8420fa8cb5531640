"""Saved run configurations in Postgres: named, versioned, per owner."""

from __future__ import annotations

import json
import re
from typing import Any

import asyncpg

from moot.requests import run_request_adapter

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
NAME_RULE = "1-63 characters: lowercase letters, digits, '.', '_' and '-', starting with a letter or digit"
# A saved configuration is a run request without its prompt; validation needs one.
_PLACEHOLDER_PROMPT = "(prompt given per run)"


def check_config(config: dict[str, Any]) -> dict[str, Any]:
    """Validate a configuration as a run request would be; pydantic's ValidationError if it is not one."""
    if "prompt" in config:
        raise ValueError("a saved configuration has no prompt: give the prompt per run")
    request = run_request_adapter.validate_python({**config, "prompt": _PLACEHOLDER_PROMPT})
    return request.model_dump(mode="json", exclude={"prompt"}, exclude_defaults=False)


def _row(r: asyncpg.Record) -> dict[str, Any]:
    return {
        "name": r["name"],
        "version": r["version"],
        "config": json.loads(r["config"]),
        "created_at": r["created_at"].isoformat(),
    }


async def put(pool: asyncpg.Pool, owner: str, name: str, config: dict[str, Any]) -> dict[str, Any]:
    """Store a new version; numbers are never reused, so a run's recorded version stays meaningful."""
    async with pool.acquire() as conn, conn.transaction():
        # Serialise writers of one name so two PUTs cannot take the same version number.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"{owner}/{name}")
        version = await conn.fetchval(
            "SELECT coalesce(max(version), 0) + 1 FROM saved_configs WHERE owner = $1 AND name = $2",
            owner,
            name,
        )
        row = await conn.fetchrow(
            "INSERT INTO saved_configs (owner, name, version, config) VALUES ($1, $2, $3, $4::jsonb)"
            " RETURNING name, version, config::text AS config, created_at",
            owner,
            name,
            version,
            json.dumps(config),
        )
    return _row(row)


async def get(pool: asyncpg.Pool, owner: str, name: str, version: int | None = None) -> dict[str, Any] | None:
    """The latest version, or the one asked for; None when the name is unknown or removed."""
    row = await pool.fetchrow(
        "SELECT name, version, config::text AS config, created_at FROM saved_configs"
        " WHERE owner = $1 AND name = $2 AND deleted_at IS NULL AND ($3::int IS NULL OR version = $3)"
        " ORDER BY version DESC LIMIT 1",
        owner,
        name,
        version,
    )
    return _row(row) if row else None


async def versions(pool: asyncpg.Pool, owner: str, name: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT name, version, config::text AS config, created_at FROM saved_configs"
        " WHERE owner = $1 AND name = $2 AND deleted_at IS NULL ORDER BY version",
        owner,
        name,
    )
    return [_row(r) for r in rows]


async def latest_all(pool: asyncpg.Pool, owner: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT DISTINCT ON (name) name, version, config::text AS config, created_at FROM saved_configs"
        " WHERE owner = $1 AND deleted_at IS NULL ORDER BY name, version DESC",
        owner,
    )
    return [_row(r) for r in rows]


async def delete(pool: asyncpg.Pool, owner: str, name: str) -> bool:
    status = await pool.execute(
        "UPDATE saved_configs SET deleted_at = now() WHERE owner = $1 AND name = $2 AND deleted_at IS NULL",
        owner,
        name,
    )
    return not status.endswith(" 0")
