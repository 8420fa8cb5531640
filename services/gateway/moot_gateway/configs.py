"""Saved run configurations in Postgres: named, versioned, per owner."""

from __future__ import annotations

import json
import re
from typing import Any

import asyncpg

from moot.requests import run_request_adapter

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
NAME_RULE = "1-63 characters: lowercase letters, digits, '.', '_' and '-', starting with a letter or digit"
# Version numbers are a Postgres `integer` (saved_configs.version): none is ever above this, and
# a larger number must not reach a query, where it cannot be encoded (asyncpg raises, a 500).
MAX_VERSION = 2**31 - 1
# A saved configuration is a run request without its prompt; validation needs one.
_PLACEHOLDER_PROMPT = "(prompt given per run)"


class ConfigError(ValueError):
    """A configuration refused for a reason of its own, at `loc` (a path in the body)."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


def check_config(config: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Validate a configuration as a run request would be: the request (with a placeholder prompt)
    and the configuration to store; pydantic's ValidationError if it is not one.

    Strictly, as the JSON it came as: the document promises each field's JSON type, so `"2"` is no
    integer and `false` no number here (pydantic's lax mode would store them as 2 and 0.0).
    ConfigError for a prompt, or for a text with a NUL character (see `nul_location`).
    """
    if "prompt" in config:
        raise ConfigError(("prompt",), "a saved configuration has no prompt: give the prompt per run")
    request = run_request_adapter.validate_python({**config, "prompt": _PLACEHOLDER_PROMPT}, strict=True)
    normalized = request.model_dump(mode="json", exclude={"prompt"}, exclude_defaults=False)
    loc = nul_location(normalized)
    if loc is not None:
        raise ConfigError(loc, "text with a NUL character (\\u0000) cannot be saved")
    return request, normalized


def nul_location(value: Any, loc: tuple[str | int, ...] = ()) -> tuple[str | int, ...] | None:
    """Where the first text with a NUL character is, or None: valid JSON, but Postgres text (and so
    jsonb) has no `\\u0000`, and the INSERT would fail (a 500). Pydantic already refuses unpaired
    surrogates in text fields and replaces them in free-form content when dumping."""
    if isinstance(value, str):
        return loc if "\x00" in value else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = nul_location(key, (*loc, key)) if isinstance(key, str) else None
        found = found or nul_location(item, (*loc, key))
        if found is not None:
            return found
    return None


def is_name(name: str) -> bool:
    """Whether `name` can be a saved configuration's name (NAME_RE, no trailing newline)."""
    return NAME_RE.fullmatch(name) is not None


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
    """The latest version, or the one asked for; None when the name is unknown or removed.

    A name that breaks NAME_RE or a version outside 1..MAX_VERSION cannot exist: None without a
    query. The routes of saved configurations refuse both already; a run's `config` and
    `config_version` and a chat completion's `model` (any text, NUL characters included, which
    Postgres cannot even take as a parameter) are checked only here.
    """
    if not is_name(name) or (version is not None and not 1 <= version <= MAX_VERSION):
        return None
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
