"""NATS and Postgres failing under load (issue 11): nothing accepted is lost, nothing recorded twice.

- NATS restarted: the nats-server (JetStream, file store) is SIGKILLed with hundreds of runs in
  flight and started again 3 s later on the same store and port; every client reconnects, the
  streams, consumers and KV come back from disk, and unacked messages are redelivered.
- Postgres down 30 s: the scenario's database refuses every connection (`ALLOW_CONNECTIONS false`,
  backends terminated) for 30 s. Runs go on (their state is in NATS); the recorder's writes fail
  and its batches are retried or redelivered until the database is back; the gateway's key cache
  (30 s) covers most of the outage for polling clients, new POSTs may be refused.
- Postgres down "20 minutes", shortened: the recorder's ack_wait is cut 15-fold (2 s instead of
  30 s, its retry delays and timeouts below it) and the outage lasts
  `MOOT_CHAOS_LONG_OUTAGE_SECONDS` (80 s): 40 redelivery cycles on the real path, as 20 minutes
  with the defaults. What a real 20 minutes adds is in docs/reliability.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from harness import Chaos, chaos_runs, check, mixed_runs

pytestmark = pytest.mark.chaos


async def test_nats_restarted_mid_load(work_dir: Path, server_url: str) -> None:
    async with Chaos("NATS killed and restarted (file store)", work_dir, server_url) as c:
        result = await c.scenario(mixed_runs(chaos_runs()), c.restart_nats)
    check(result)


async def test_postgres_down_30_s(work_dir: Path, server_url: str) -> None:
    async with Chaos("Postgres down 30 s", work_dir, server_url) as c:

        async def fault() -> None:
            await c.postgres_down(30)

        result = await c.scenario(mixed_runs(chaos_runs()), fault)
    check(result)


async def test_postgres_down_long_shortened(work_dir: Path, server_url: str) -> None:
    seconds = float(os.environ.get("MOOT_CHAOS_LONG_OUTAGE_SECONDS", "80"))
    env = {
        "MOOT_RECORDER_ACK_WAIT_SECONDS": "2",
        "MOOT_RECORDER_RETRY_DELAY_BASE_SECONDS": "0.1",
        "MOOT_RECORDER_RETRY_DELAY_MAX_SECONDS": "1.5",
        "MOOT_RECORDER_COMMAND_TIMEOUT_SECONDS": "1.5",
        "MOOT_RECORDER_CONNECT_TIMEOUT_SECONDS": "1.5",
    }
    name = f"Postgres down {seconds:.0f} s, recorder ack_wait 2 s (~{seconds * 15 / 60:.0f} min at 30 s)"
    async with Chaos(name, work_dir, server_url, env=env) as c:

        async def fault() -> None:
            await c.postgres_down(seconds)

        result = await c.scenario(mixed_runs(chaos_runs()), fault)
    check(result)
