"""The sweeper: ends runs whose deadline passed, publishes outboxes a crash left behind.

Every arbiter replica runs one (`run`), with no leader: what a sweep does to a run goes through
the run store's compare-and-set (`RunStore.sweep_one`), so two replicas sweeping the same run end
it once, and a republished outbox is dropped by JetStream's deduplication (message ids).

A pass (`sweep`) reads every run's envelope line, never its state (`RunStore.heads`), and
touches only the runs that need it:
- a running run past its deadline: `DeadlinePassed` ends it (`moot.protocols.base.end_at_deadline`);
- a non-empty outbox written more than `OUTBOX_GRACE` ago: its writer died between its write and
  its publish (an arbiter mid-outcome, or the gateway between storing a run and starting it), and
  no event may come to flush it. A younger one is left to its writer, which is publishing it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from moot.messages import utcnow
from moot.runtime.runstore import RunHead, RunStore

log = logging.getLogger(__name__)

# An outbox is published within milliseconds of its write; one this old was left by a crash.
OUTBOX_GRACE = timedelta(seconds=5)


@dataclass
class Sweep:
    """What one pass saw and did."""

    runs: int = 0
    running: int = 0
    ended: list[str] = field(default_factory=list)
    flushed: list[str] = field(default_factory=list)


def due(head: RunHead, now: datetime, grace: timedelta = OUTBOX_GRACE) -> bool:
    """Whether the run needs the sweeper: past its deadline while running, or a stale outbox."""
    stored = head.stored
    if stored.outbox and (head.written_at is None or now - head.written_at >= grace):
        return True
    return stored.deadline is not None and now >= stored.deadline and stored.running


async def sweep(store: RunStore, now: datetime | None = None, grace: timedelta = OUTBOX_GRACE) -> Sweep:
    """One pass over the bucket: every run that is due is swept (`RunStore.sweep_one`)."""
    now = now or utcnow()
    result = Sweep()
    todo: list[RunHead] = []
    async for head in store.heads():
        result.runs += 1
        result.running += head.stored.status == "running"
        if due(head, now, grace):
            todo.append(head)
    for head in todo:
        try:
            done = await store.sweep_one(head.run_id, now, seen=head.revision)
        except Exception:
            # NATS or KV trouble: the next pass tries again; other runs are still swept.
            log.exception("run %s: sweep failed", head.run_id)
            continue
        if "ended" in done:
            result.ended.append(head.run_id)
            log.info("run %s: deadline passed; ended", head.run_id)
        if "flushed" in done:
            result.flushed.append(head.run_id)
            log.warning("run %s: published an outbox left unpublished (a crash)", head.run_id)
    return result


async def run(get_store: Callable[[], RunStore], interval: float) -> None:
    """Sweep every `interval` seconds until cancelled; a failed pass is logged and retried."""
    while True:
        try:
            await sweep(get_store())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sweep failed; retrying in %.1f s", interval)
        await asyncio.sleep(interval)
