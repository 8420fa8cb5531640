"""Per-key limits as Postgres keeps them, so that every gateway replica enforces the same ones.

Three limits, each checked when a run is admitted (`POST /v1/runs`, `POST /v1/chat/completions`),
all under one per-key advisory lock, in one transaction: a refused run changes nothing.

- **Runs per minute** (`rpm`): the generic cell rate algorithm (GCRA), one timestamp per key
  (`key_rates.tat`): a bucket of `rpm` runs, refilled at `rpm` per minute. A fresh key may start
  `rpm` runs at once; after that one every `60 / rpm` seconds. A refusal says when the next one
  fits (`Retry-After`).
- **Concurrent runs** (`max_concurrent_runs`): the key's rows in `key_runs` that are `active`. A
  row stops counting when its run is seen ended (the gateway asks the run store about the active
  rows once the key is at its limit: `mark_ended`) or when its deadline has long passed
  (`expires_at`), whatever happened to the run.
- **Spend per UTC day** (`usd_per_day`): the cost of the calls of the runs the key started that
  day, as the recorder has written them (`calls.cost_usd`). It is checked before a run starts, not
  during: a key can overshoot its day by what its runs in flight spend (each bounded by its own
  budget, `moot.requests.Budget`).

Times are the database's (`clock_timestamp()`), so replicas with skewed clocks agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

# A run's row stops counting against its key's concurrent runs this long after its deadline, even
# if nobody saw it end (the sweeper ends every run at its deadline; this is the backstop).
EXPIRY_MARGIN = timedelta(minutes=5)
# A run admitted this recently may not be in the run store yet: `mark_ended` leaves it counted.
ADMISSION_GRACE = timedelta(seconds=30)
PERIOD_SECONDS = 60.0


@dataclass(frozen=True)
class Refusal:
    """Why a run is not admitted, and when trying again makes sense."""

    limit: str  # "rpm" | "max_concurrent_runs" | "usd_per_day"
    message: str
    retry_after: int  # seconds


async def lock_key(conn: asyncpg.Connection, key_id: str) -> datetime:
    """Serialise admissions of one key across replicas until the transaction ends; the database's now."""
    now: datetime = await conn.fetchval(
        "SELECT clock_timestamp() FROM (SELECT pg_advisory_xact_lock(hashtextextended($1, 7)))  AS locked",
        f"moot.key:{key_id}",
    )
    return now


async def take_rate(conn: asyncpg.Connection, key_id: str, rpm: int, now: datetime) -> Refusal | None:
    """Count one run against `rpm` (GCRA); a refusal when the bucket is empty. Under `lock_key`."""
    interval = timedelta(seconds=PERIOD_SECONDS / rpm)
    tat: datetime | None = await conn.fetchval("SELECT tat FROM key_rates WHERE key_id = $1", key_id)
    new_tat = max(tat or now, now) + interval
    ahead = (new_tat - now).total_seconds()
    if ahead > PERIOD_SECONDS:
        wait = math.ceil(ahead - PERIOD_SECONDS)
        return Refusal(
            "rpm",
            f"rate limit: this key may start {rpm} runs per minute; try again in {wait} s",
            max(1, wait),
        )
    await conn.execute(
        "INSERT INTO key_rates (key_id, tat) VALUES ($1, $2)"
        " ON CONFLICT (key_id) DO UPDATE SET tat = EXCLUDED.tat",
        key_id,
        new_tat,
    )
    return None


def _day_start(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


async def spent_today(conn: asyncpg.Connection, key_id: str, now: datetime) -> float:
    """USD spent by the calls of the runs `key_id` started this UTC day (as recorded so far)."""
    spent = await conn.fetchval(
        "SELECT coalesce(sum(c.cost_usd), 0) FROM key_runs k JOIN calls c ON c.run_id = k.run_id"
        " WHERE k.key_id = $1 AND k.created_at >= $2",
        key_id,
        _day_start(now),
    )
    return float(spent)


def over_day(spent: float, usd_per_day: float, now: datetime) -> Refusal:
    tomorrow = _day_start(now) + timedelta(days=1)
    return Refusal(
        "usd_per_day",
        f"daily spend limit reached: this key's runs have spent {spent:.4f} USD today (UTC), its limit"
        f" is {usd_per_day:g} USD per day; it resets at 00:00 UTC",
        max(1, math.ceil((tomorrow - now).total_seconds())),
    )


async def active_runs(conn: asyncpg.Connection, key_id: str, now: datetime) -> list[tuple[str, datetime]]:
    """(run id, admitted at) of the key's runs that count against its concurrent runs."""
    rows = await conn.fetch(
        "SELECT run_id, created_at FROM key_runs WHERE key_id = $1 AND active AND expires_at > $2",
        key_id,
        now,
    )
    return [(r["run_id"], r["created_at"]) for r in rows]


async def mark_ended(conn: asyncpg.Connection, run_ids: list[str]) -> None:
    if run_ids:
        await conn.execute("UPDATE key_runs SET active = false WHERE run_id = ANY($1::text[])", run_ids)


async def admit(
    conn: asyncpg.Connection, run_id: str, key_id: str, now: datetime, deadline_seconds: float
) -> None:
    """Record the run as the key's (counted from now on). Under `lock_key`. A run id admitted
    before (an evaluation submitting again the run its gateway died submitting) stays as it was."""
    await conn.execute(
        "INSERT INTO key_runs (run_id, key_id, created_at, expires_at) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (run_id) DO NOTHING",
        run_id,
        key_id,
        now,
        now + timedelta(seconds=deadline_seconds) + EXPIRY_MARGIN,
    )


async def forget(conn: asyncpg.Connection | asyncpg.Pool, run_id: str) -> None:
    """The run was admitted but not accepted after all (its submission failed): it never counted."""
    await conn.execute("DELETE FROM key_runs WHERE run_id = $1", run_id)
