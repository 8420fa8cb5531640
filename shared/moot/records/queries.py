"""The run records in Postgres: table names, and reading a run back when NATS KV no longer has it.

The recorder service (`moot_recorder`) writes these tables from the run events; migration
`migrations/0001_initial.sql` defines them. Other services only read them, through this module.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from moot.views import AnyRunView, RunSummary, run_view_adapter

# One place for the table names: the recorder's writer and every reader use these.
RUNS_TABLE = "runs"
ITERATIONS_TABLE = "iterations"
CALLS_TABLE = "calls"
DEBATE_ROUNDS_TABLE = "debate_rounds"
STEPS_TABLE = "steps"  # every other protocol's steps (migrations/0004_steps.sql)
EVENTS_TABLE = "events"
TABLES = (RUNS_TABLE, ITERATIONS_TABLE, DEBATE_ROUNDS_TABLE, STEPS_TABLE, CALLS_TABLE, EVENTS_TABLE)


class _Fetcher(Protocol):
    """What `fetch_run_view` needs: an asyncpg Pool or Connection."""

    async def fetchrow(self, query: str, *args: Any) -> Any: ...


# `::text` for the jsonb columns: the result does not depend on the caller's type codecs.
_RUN_QUERY = f"""
SELECT id, mode, status, created_at, finished_at, reason, request::text AS request,
       view::text AS view, input_tokens, output_tokens, cost_usd, owner
FROM {RUNS_TABLE} WHERE id = $1
"""


async def fetch_run_view(pool: _Fetcher, run_id: str) -> AnyRunView | None:
    """The run as GET /v1/runs/{id} shows it, from Postgres; None when the recorder has no such run.

    A finished run returns the full view its run.completed/run.failed event carried, whatever
    its protocol. A run still running (or whose end the recorder has not seen yet) returns a
    minimal view built from the runs row: `result` is None there, and so are a debate's `final`;
    the protocol's steps (a consortium's `iterations`, a debate's `rounds`, a council's `answers`...)
    are empty (the events and the `iterations`, `debate_rounds` and `steps` rows hold what
    happened so far).
    """
    row = await pool.fetchrow(_RUN_QUERY, run_id)
    if row is None:
        return None
    if row["view"] is not None:
        return run_view_adapter.validate_json(row["view"])
    return run_view_adapter.validate_python(
        {
            "id": row["id"],
            "mode": row["mode"],
            "status": row["status"],
            "created_at": row["created_at"],
            "finished_at": row["finished_at"],
            "reason": row["reason"],
            "owner": row["owner"] or "",
            "request": json.loads(row["request"]),
            "usage": {
                "input_tokens": row["input_tokens"] or 0,
                "output_tokens": row["output_tokens"] or 0,
                "cost_usd": row["cost_usd"],
            },
        }
    )


# Who takes part, whatever the mode: the request's `members` (a Mixture-of-Agents': every layer's
# proposers), each {model, count}.
_RECENT_RUNS = f"""
SELECT id, mode, status, prompt, reason, created_at, finished_at, input_tokens, output_tokens, cost_usd,
       COALESCE(request->'members', jsonb_path_query_array(request, '$.layers[*][*]'))::text AS members
FROM {RUNS_TABLE} WHERE owner = $1 ORDER BY created_at DESC NULLS LAST LIMIT $2
"""


def _members(members: str | None) -> list[str]:
    """`["a", "b x2"]` from the request's member entries (each model once, its count when over 1)."""
    entries = json.loads(members) if members else []
    counts: dict[str, int] = {}
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("model"), str):
            counts[entry["model"]] = counts.get(entry["model"], 0) + int(entry.get("count") or 1)
    return [model if n == 1 else f"{model} x{n}" for model, n in counts.items()]


async def recent_runs(pool: Any, owner: str, limit: int) -> list[RunSummary]:
    """The owner's most recent runs, newest first (as recorded: a run appears within a batch)."""
    rows = await pool.fetch(_RECENT_RUNS, owner, limit)
    return [RunSummary.model_validate({**dict(r), "members": _members(r["members"])}) for r in rows]
