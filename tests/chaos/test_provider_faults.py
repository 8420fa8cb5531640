"""Provider faults under load (issue 11): every run still ends, and ends once.

The test model server plays the providers. Members, arbiters, debaters and judges are drawn from:

- `p429s`: 429 on the first attempt, `Retry-After: 1` (seconds);
- `p429d`: 429 on the first attempt, `Retry-After` as an HTTP-date 2 s ahead;
- `p500`: 500 on 30% of the attempts (seeded);
- `pslow`: 1-4 s answers against a call timeout of 3 s (`MOOT_CALL_TIMEOUT_SECONDS`): a timeout
  is retried, so most calls get through and a few give up after `MOOT_CALL_MAX_ATTEMPTS`;
- `pbad`: a body that is not JSON (truncated), every time;
- `jcut`: a judge whose streamed verdict is cut after 5 chunks, every time (the debate's final call);

beside the well-behaved `m1..m3`, `arb`, `d1`, `d2`, `judge`. The fault is present from the start;
`fault_after` only marks when the clock of "time to recover" starts (when 40% are accepted).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from harness import RUN_BUDGET_SECONDS, Chaos, chaos_runs, check, consortium, debate

pytestmark = pytest.mark.chaos

FAULTY: dict[str, dict[str, Any]] = {
    "p429s": {"latency_ms": 300, "fail_first": 1, "error_status": 429, "retry_after": 1},
    "p429d": {
        "latency_ms": 300,
        "fail_first": 1,
        "error_status": 429,
        "retry_after": 2,
        "retry_after_http_date": True,
    },
    "p500": {"latency_ms": 300, "error_rate": 0.3, "error_status": 500},
    "pslow": {"latency_ms": 2500, "latency_jitter_ms": 1500},
    "pbad": {"latency_ms": 100, "malformed_json": True},
    "jcut": {
        "latency_ms": 200,
        "reply": "STOP - the positions are clear; the first debater made the stronger case by far, "
        "with evidence the second never answered, and the verdict follows from that.",
        "chunk_delay_ms": 20,
        "stream_break_after": 5,
    },
}


def faulty_runs(n: int, seed: int = 29) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    members = ["m1", "m2", "p429s", "p429d", "p500", "pslow", "pbad"]
    bodies = []
    for i in range(n):
        if rng.random() < 0.6:
            arbiter = rng.choice(["arb", "arb", "p429d", "p500", "pslow"])
            bodies.append(consortium(i, rng, rng.sample(members, rng.choice([2, 3])), arbiter))
        else:
            debaters = rng.sample(["d1", "p429s", "p429d", "p500", "pslow"], 2)
            bodies.append(debate(i, rng, debaters, judge=rng.choice(["judge", "jcut", "p429s"])))
    return bodies


async def test_provider_faults_mixed(work_dir: Path, server_url: str) -> None:
    env = {"MOOT_CALL_TIMEOUT_SECONDS": "3", "MOOT_CALL_MAX_ATTEMPTS": "4"}
    async with Chaos(
        "provider faults (429 s/date, 500, timeouts, non-JSON, cut stream)",
        work_dir,
        server_url,
        behaviours=FAULTY,
        env=env,
    ) as c:

        async def fault() -> None:
            return None

        result = await c.scenario(faulty_runs(chaos_runs()), fault)
        assert c.models is not None
        stats = c.models.stats(requests=False)["models"]
        result.notes.append(
            "model requests/errors: "
            + ", ".join(f"{m} {s['requests']}/{s['errors']}" for m, s in sorted(stats.items()))
        )
    check(result)
    # Nothing here fails by the clock: the budget is far above a run's length.
    assert not any("deadline" in reason for reason in result.failed), (RUN_BUDGET_SECONDS, result.failed)
