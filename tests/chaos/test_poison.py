"""Poison under load (issue 11): what cannot be processed is set aside, and everything else goes on.

Two kinds of poison while N mixed runs are in flight:

- messages on the jobs subject that are not call jobs: bytes that are not JSON, and JSON that is
  not a `CallJob`. The member worker must not loop on them (they would hold their place in the
  work queue and, redelivered forever, a worker): each becomes a dead letter (`<NS>_DEAD`);
- runs that call `ppoison`, a model that answers 400 to every request (not retryable): as a
  member its call fails and the iteration goes on with the others; as an arbiter the run fails.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import nats
import pytest
from harness import Chaos, chaos_runs, check, consortium, mixed_runs

from moot.runtime.subjects import Names

pytestmark = pytest.mark.chaos

POISON_MESSAGES = [b"\x00\xffnot a job at all", b'{"run_id": "no-such-run", "what": "half a job"}']


def poisoned_runs(n: int, seed: int = 41) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    bodies = mixed_runs(n, seed)
    for i in range(0, n, 10):  # one run in ten calls the poison model: as a member, or as the arbiter
        if i % 20:
            bodies[i] = consortium(i, rng, ["m1", "ppoison"])
        else:
            bodies[i] = consortium(i, rng, ["m1", "m2"], arbiter="ppoison")
    return bodies


async def test_poison_jobs_and_a_model_that_always_refuses(work_dir: Path, server_url: str) -> None:
    behaviours = {"ppoison": {"latency_ms": 100, "error_rate": 1.0, "error_status": 400}}
    async with Chaos(
        "poison: undecodable jobs + a model answering 400", work_dir, server_url, behaviours=behaviours
    ) as c:
        names = Names(c.namespace)

        async def fault() -> None:
            nc = await nats.connect(c.nats.url)
            try:
                js = nc.jetstream()
                for n, payload in enumerate(POISON_MESSAGES):
                    await js.publish(names.call_jobs, payload, headers={"Nats-Msg-Id": f"poison-{n}"})
            finally:
                await nc.close()
            c.notes.append(f"{len(POISON_MESSAGES)} undecodable messages published to {names.call_jobs}")

        result = await c.scenario(poisoned_runs(chaos_runs()), fault)

        nc = await nats.connect(c.nats.url)
        try:
            js = nc.jetstream()
            # The work queue empties: no poison left in it, nothing held by a worker.
            deadline = time.monotonic() + 60
            while True:
                jobs = await js.stream_info(names.jobs_stream)
                consumer = await js.consumer_info(names.jobs_stream, names.worker_consumer)
                if (
                    jobs.state.messages == 0 and consumer.num_ack_pending == 0
                ) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(1)
            dead = await js.stream_info(names.dead_stream)
            result.notes.append(
                f"jobs left in the work queue: {jobs.state.messages}, held: {consumer.num_ack_pending}; "
                f"dead letters: {dead.state.messages}"
            )
        finally:
            await nc.close()
    check(result)
    assert jobs.state.messages == 0 and consumer.num_ack_pending == 0
    assert dead.state.messages >= len(POISON_MESSAGES)
