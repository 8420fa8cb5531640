"""The run records in Postgres: table names, and reading a run back when NATS KV no longer has it.

The recorder service (`moot_recorder`) writes these tables from the run events; its
`schema.sql` defines them. Other services only read them, through this module.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

# One place for the table names: the recorder's writer and every reader use these.
RUNS_TABLE = "runs"
ITERATIONS_TABLE = "iterations"
CALLS_TABLE = "calls"
DEBATE_ROUNDS_TABLE = "debate_rounds"
EVENTS_TABLE = "events"
TABLES = (RUNS_TABLE, ITERATIONS_TABLE, DEBATE_ROUNDS_TABLE, CALLS_TABLE, EVENTS_TABLE)


class _Fetcher(Protocol):
    """What `fetch_run_view` needs: an asyncpg Pool or Connection."""

    async def fetchrow(self, query: str, *args: Any) -> Any: ...


# `::text` for the jsonb columns: the result does not depend on the caller's type codecs.
_RUN_QUERY = f"""
SELECT id, mode, status, created_at, finished_at, reason, request::text AS request,
       view::text AS view, input_tokens, output_tokens, cost_usd, owner
FROM {RUNS_TABLE} WHERE id = $1
"""


async def fetch_run_view(pool: _Fetcher, run_id: str) -> dict[str, Any] | None:
    """The run as GET /v1/runs/{id} shows it, from Postgres; None when the recorder has no such run.

    A finished run returns the full view its run.completed/run.failed event carried, whatever
    its protocol. A run still running (or whose end the recorder has not seen yet) returns a
    minimal view with the same keys as its protocol's view, built from the runs row: `result`
    is None there, and so are a debate's `final`; a consortium's `iterations` and a debate's
    `debaters` and `rounds` are empty (the events and the `iterations` / `debate_rounds` rows
    hold what happened so far).
    """
    row = await pool.fetchrow(_RUN_QUERY, run_id)
    if row is None:
        return None
    if row["view"] is not None:
        view: dict[str, Any] = json.loads(row["view"])
        return view
    minimal: dict[str, Any] = {
        "id": row["id"],
        "mode": row["mode"],
        "status": row["status"],
        "created_at": row["created_at"].isoformat() if row["created_at"] else None,
        "finished_at": row["finished_at"].isoformat() if row["finished_at"] else None,
        "reason": row["reason"],
        "owner": row["owner"] or "",
        "config": None,  # kept in the view once the run ends
        "continued_from": None,
        "request": json.loads(row["request"]) if row["request"] is not None else None,
    }
    if row["mode"] == "debate":  # the keys of moot.protocols.debate.view
        minimal |= {"debaters": [], "rounds": [], "final": None, "result": None}
    else:  # the keys of moot.protocols.consortium.view
        minimal |= {"result": None, "iterations": []}
    minimal["usage"] = {
        "input_tokens": row["input_tokens"] or 0,
        "output_tokens": row["output_tokens"] or 0,
        "cost_usd": row["cost_usd"],
    }
    return minimal


_RECENT_RUNS = f"""
SELECT id, mode, status, prompt, reason, created_at, finished_at, input_tokens, output_tokens, cost_usd
FROM {RUNS_TABLE} WHERE owner = $1 ORDER BY created_at DESC NULLS LAST LIMIT $2
"""


async def recent_runs(pool: Any, owner: str, limit: int) -> list[dict[str, Any]]:
    """The owner's most recent runs, newest first (as recorded: a run appears within a batch)."""
    rows = await pool.fetch(_RECENT_RUNS, owner, limit)
    return [
        {
            **dict(r),
            "created_at": r["created_at"].isoformat() if r["created_at"] else None,
            "finished_at": r["finished_at"].isoformat() if r["finished_at"] else None,
        }
        for r in rows
    ]
