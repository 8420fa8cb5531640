"""Whether a key may start one more run, and open one more event stream.

Run admission (`admit`) enforces the key's runs per minute, concurrent runs and daily spend with
state in Postgres (`moot.records.limits`), so every gateway replica counts the same runs. A key's
own limits (`moot keys create --rpm ...`) win over the deployment's defaults (`GatewaySettings`).
A refusal is a 429 with `Retry-After`, and changes nothing.

While Postgres cannot be reached the limits are not enforced: runs are still accepted (keys seen
lately keep working through an outage, `moot_gateway.auth`), and a warning says so.

Event streams (`StreamSlots`) are counted per replica, in memory: a stream lives on one replica,
and its count must not outlive a replica that crashed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated

import asyncpg
from fastapi import Depends

from moot.records import limits
from moot.records.accounts import Limits, Principal
from moot_gateway.auth import PrincipalDep
from moot_gateway.deps import Clients, ClientsDep
from moot_gateway.errors import DEPENDENCY_ERRORS, ApiError, EveryMinute
from moot_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

# Admission waits this long for Postgres (and the key's lock) before it lets the run in unchecked.
ADMISSION_TIMEOUT_SECONDS = 5.0
# When a key is at its concurrent runs: how soon to try again (runs end at any time).
CONCURRENCY_RETRY_SECONDS = 5
# What makes admission let a run in unchecked: Postgres unreachable or too slow.
_UNREACHABLE: tuple[type[BaseException], ...] = (TimeoutError, *DEPENDENCY_ERRORS)


@dataclass(frozen=True)
class Effective:
    """The limits that apply to a key: its own where set, else the defaults; 0 = none."""

    rpm: int
    max_concurrent_runs: int
    usd_per_day: float

    @classmethod
    def of(cls, own: Limits, defaults: GatewaySettings) -> Effective:
        return cls(
            rpm=defaults.default_rpm if own.rpm is None else own.rpm,
            max_concurrent_runs=(
                defaults.default_max_concurrent_runs
                if own.max_concurrent_runs is None
                else own.max_concurrent_runs
            ),
            usd_per_day=defaults.default_usd_per_day if own.usd_per_day is None else own.usd_per_day,
        )

    @property
    def any(self) -> bool:
        return bool(self.rpm or self.max_concurrent_runs or self.usd_per_day)


def refused(refusal: limits.Refusal) -> ApiError:
    over_spend = refusal.limit == "usd_per_day"
    return ApiError(
        429,
        refusal.message,
        type="insufficient_quota" if over_spend else "rate_limit_exceeded",
        code=refusal.limit,
        headers={"Retry-After": str(refusal.retry_after)},
    )


async def admit(clients: Clients, principal: Principal, run_id: str, deadline_seconds: float) -> None:
    """Count `run_id` against its key, or raise a 429 saying which limit and when to try again."""
    effective = Effective.of(principal.limits, clients.gateway)
    try:
        async with asyncio.timeout(ADMISSION_TIMEOUT_SECONDS):
            refusal = await _admit(clients, principal.key_id, run_id, deadline_seconds, effective)
    except _UNREACHABLE as exc:
        _unchecked_warning.warn(
            "per-key limits not enforced: Postgres unavailable (%r); runs are admitted unchecked", exc
        )
        return
    if refusal is not None:
        raise refused(refusal)


async def _admit(
    clients: Clients, key_id: str, run_id: str, deadline_seconds: float, effective: Effective
) -> limits.Refusal | None:
    async with clients.pool.acquire() as conn, conn.transaction():
        now = await limits.lock_key(conn, key_id)
        if effective.rpm:
            refusal = await limits.take_rate(conn, key_id, effective.rpm, now)
            if refusal is not None:
                return refusal
        if effective.usd_per_day:
            spent = await limits.spent_today(conn, key_id, now)
            if spent >= effective.usd_per_day:
                return limits.over_day(spent, effective.usd_per_day, now)
        if effective.max_concurrent_runs:
            refusal = await _concurrency(clients, conn, key_id, now, effective.max_concurrent_runs)
            if refusal is not None:
                return refusal
        await limits.admit(conn, run_id, key_id, now, deadline_seconds)
    return None


async def _concurrency(
    clients: Clients, conn: asyncpg.Connection, key_id: str, now: datetime, most: int
) -> limits.Refusal | None:
    """At the limit, the active runs are checked against the run store: those that ended stop counting."""
    active = await limits.active_runs(conn, key_id, now)
    if len(active) < most:
        return None
    grace_from = now - limits.ADMISSION_GRACE
    # Asked all at once: the key's lock is held meanwhile.
    states = await asyncio.gather(*(clients.store.stored_running(run_id) for run_id, _ in active))
    ended = [
        run_id
        for (run_id, admitted_at), running in zip(active, states, strict=True)
        # No state: ended long ago (expired), or admitted a moment ago and not stored yet.
        if running is False or (running is None and admitted_at < grace_from)
    ]
    await limits.mark_ended(conn, ended)
    if len(active) - len(ended) < most:
        return None
    return limits.Refusal(
        "max_concurrent_runs",
        f"this key may have {most} runs under way at once and has {len(active) - len(ended)};"
        " try again when one has ended",
        CONCURRENCY_RETRY_SECONDS,
    )


async def forget(clients: Clients, run_id: str) -> None:
    """An admitted run whose submission failed after all: it does not count. Best effort."""
    try:
        async with asyncio.timeout(ADMISSION_TIMEOUT_SECONDS):
            await limits.forget(clients.pool, run_id)
    except _UNREACHABLE as exc:
        log.warning(
            "run %s: could not release its admission (%r); it stops counting at its deadline", run_id, exc
        )


_unchecked_warning = EveryMinute(log)


class StreamSlots:
    """Open event streams per key on this replica, at most `most` each."""

    def __init__(self) -> None:
        self.open: Counter[str] = Counter()

    @asynccontextmanager
    async def hold(self, key_id: str, most: int) -> AsyncIterator[None]:
        if self.open[key_id] >= most:
            raise ApiError(
                429,
                f"this key has {most} event streams open on this server, the most it may;"
                " close one or try again later",
                type="rate_limit_exceeded",
                code="max_streams_per_key",
                headers={"Retry-After": str(CONCURRENCY_RETRY_SECONDS)},
            )
        self.open[key_id] += 1
        try:
            yield
        finally:
            self.open[key_id] -= 1
            if not self.open[key_id]:
                del self.open[key_id]


streams = StreamSlots()


async def stream_slot(clients: ClientsDep, principal: PrincipalDep) -> AsyncIterator[None]:
    """A dependency for event streams: holds one of the key's stream slots while the stream is open."""
    async with streams.hold(principal.key_id, clients.gateway.max_streams_per_key):
        yield


StreamSlotDep = Annotated[None, Depends(stream_slot)]
