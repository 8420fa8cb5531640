"""Helpers for the end-to-end tests: follow a run's SSE stream, read the recorder's rows."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from moot.cli.client import MootClient, RunEventMessage


async def follow(client: MootClient, run_id: str, last_event_id: str | None = None) -> list[RunEventMessage]:
    """Every event of the run (after `last_event_id`), until its end."""

    async def collect() -> list[RunEventMessage]:
        return [e async for e in client.events(run_id, last_event_id)]

    return await asyncio.wait_for(collect(), timeout=60)


async def rows(database_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def wait_for_rows(
    database_url: str, query: str, run_id: str, expected: int, *, seconds: float = 20
) -> list[asyncpg.Record]:
    """The query's rows once there are `expected` of them (the recorder writes in batches)."""
    found: list[asyncpg.Record] = []
    for _ in range(int(seconds / 0.2)):
        found = await rows(database_url, query, run_id)
        if len(found) >= expected:
            return found
        await asyncio.sleep(0.2)
    return found
