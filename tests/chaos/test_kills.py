"""kill -9 of each service mid-run, under a few hundred runs in flight (issue 11).

Each scenario: a fresh moot (2 member workers, 2 arbiters, recorder, gateway as processes), N
mixed runs (`MOOT_CHAOS_RUNS`, 200), one service instance SIGKILLed once 40% of the runs are
accepted; its supervisor restarts it, as a deployment would. Every accepted run must end, be
recorded as it ended, and no work may be recorded twice.

- arbiter: its unacked outcomes are redelivered to the other arbiter (or itself once back); an
  outbox it wrote but did not publish is published by the next outcome of the run or the sweeper;
- recorder: its unacked batch is redelivered after the consumer's ack_wait (30 s);
- gateway: runs already accepted do not need it; POSTs in flight at the kill fail (`rejected`,
  and any run such a POST created must end too: `unknown_runs`);
- member worker: its jobs come back after the job ack_wait (20 s) to the other worker.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import Chaos, chaos_runs, check, mixed_runs

pytestmark = pytest.mark.chaos


@pytest.mark.parametrize("victim", ["arbiter-1", "recorder", "gateway", "member-worker-1"])
async def test_kill_9_mid_run(victim: str, work_dir: Path, server_url: str) -> None:
    async with Chaos(f"kill -9 {victim.removesuffix('-1')}", work_dir, server_url) as c:

        async def fault() -> None:
            c.kill9(victim)

        result = await c.scenario(mixed_runs(chaos_runs()), fault)
    check(result)
