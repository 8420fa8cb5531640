"""Per-key limits on a real Postgres (`moot.records.limits`): the rate limiter's arithmetic on the
database's clock, and admissions from several "replicas" (connections) at once counting once."""

from __future__ import annotations

import asyncio
import secrets
from datetime import datetime, timedelta

import asyncpg
import pytest

from moot.records import limits
from moot.records.accounts import Limits, authenticate, create_key, set_limits


@pytest.fixture
async def pool(database_url: str) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=8)
    yield pool
    await pool.close()


def _key() -> str:
    return "key_" + secrets.token_hex(6)


async def _take(pool: asyncpg.Pool, key_id: str, rpm: int, at: datetime) -> limits.Refusal | None:
    async with pool.acquire() as conn, conn.transaction():
        await limits.lock_key(conn, key_id)
        return await limits.take_rate(conn, key_id, rpm, at)


async def test_rpm_is_a_bucket_of_rpm_refilled_at_rpm_per_minute(pool: asyncpg.Pool) -> None:
    key_id, t0 = _key(), datetime(2026, 11, 30, 12, 0, 0).astimezone()
    assert [await _take(pool, key_id, 5, t0) for _ in range(5)] == [None] * 5
    sixth = await _take(pool, key_id, 5, t0 + timedelta(seconds=1))
    assert sixth is not None and sixth.limit == "rpm" and sixth.retry_after == 11
    # One run every 12 s after the burst, and no more.
    assert await _take(pool, key_id, 5, t0 + timedelta(seconds=12)) is None
    assert await _take(pool, key_id, 5, t0 + timedelta(seconds=13)) is not None
    # A key left alone for a minute has its whole bucket again.
    later = t0 + timedelta(minutes=3)
    assert [await _take(pool, key_id, 5, later) for _ in range(5)] == [None] * 5
    assert await _take(pool, key_id, 5, later) is not None


async def test_replicas_admitting_at_once_never_exceed_the_concurrent_runs(pool: asyncpg.Pool) -> None:
    """Twenty admissions at once, as many gateway replicas would make them: exactly the limit gets in."""
    key_id, most = _key(), 3

    async def one(i: int) -> bool:
        async with pool.acquire() as conn, conn.transaction():
            now = await limits.lock_key(conn, key_id)
            if len(await limits.active_runs(conn, key_id, now)) >= most:
                return False
            await limits.admit(conn, f"run-{key_id}-{i}", key_id, now, deadline_seconds=60)
            return True

    admitted = await asyncio.gather(*(one(i) for i in range(20)))
    assert sum(admitted) == most
    async with pool.acquire() as conn:
        now = await limits.lock_key(conn, key_id)
        active = await limits.active_runs(conn, key_id, now)
        assert len(active) == most
        await limits.mark_ended(conn, [active[0][0]])
        assert len(await limits.active_runs(conn, key_id, now)) == most - 1
        # A run whose deadline has long passed stops counting, whether or not it was seen ending.
        much_later = now + timedelta(seconds=60) + limits.EXPIRY_MARGIN + timedelta(seconds=1)
        assert await limits.active_runs(conn, key_id, much_later) == []


async def test_daily_spend_counts_the_recorded_calls_of_the_runs_started_today(pool: asyncpg.Pool) -> None:
    key_id = _key()
    async with pool.acquire() as conn:
        now = await limits.lock_key(conn, key_id)
        yesterday = now - timedelta(days=1)
        for run_id, started in ((f"today-{key_id}", now), (f"yesterday-{key_id}", yesterday)):
            await limits.admit(conn, run_id, key_id, started, deadline_seconds=60)
            await conn.execute(
                "INSERT INTO calls (call_id, run_id, iteration, role, model, instance, status, cost_usd,"
                " at, stream_seq) VALUES ($1, $2, 1, 'member', 'm', 1, 'completed', 0.25, $3, 1)",
                f"{run_id}:1",
                run_id,
                started,
            )
        assert await limits.spent_today(conn, key_id, now) == 0.25
        refusal = limits.over_day(0.25, 0.2, now)
        assert refusal.limit == "usd_per_day" and 0 < refusal.retry_after <= 86_400


async def test_a_keys_limits_are_set_changed_and_reset_to_the_default(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        key_id, key = await create_key(conn, "limited", limits=Limits(rpm=5, usd_per_day=1.5))
        principal = await authenticate(pool, key)
        assert principal is not None and principal.limits == Limits(rpm=5, usd_per_day=1.5)
        assert await set_limits(conn, key_id, max_concurrent_runs=2) == Limits(5, 2, 1.5)
        assert await set_limits(conn, key_id, rpm=None) == Limits(None, 2, 1.5)  # back to the default
        assert await set_limits(conn, "key_nobody", rpm=1) is None
        with pytest.raises(ValueError, match="rpm must be 0"):
            await set_limits(conn, key_id, rpm=-1)
