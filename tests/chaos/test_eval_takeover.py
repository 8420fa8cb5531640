"""An evaluation outlives the gateway driving it (issue 18, docs/eval.md).

The gateway that accepted an evaluation drives it under a lease. Here it is SIGKILLed mid-way,
while runs of the evaluation are being submitted and waited for; its supervisor restarts it, as
a deployment would. The evaluation must complete on its own (the restarted gateway, or any
other, takes over the lapsed lease) with every item scored once, and the model server must have
been asked each question exactly as often as the strategies ask it: no question paid twice, none
skipped, whatever the kill interrupted (an item written but its run not yet stored, a run
stored but not yet waited for, a result not yet written).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import Chaos

from moot.eval import datasets

pytestmark = pytest.mark.chaos

QUESTIONS = 40


async def _status(http: httpx.AsyncClient, eval_id: str) -> dict[str, Any] | None:
    try:
        response = await http.get(f"/v1/evals/{eval_id}")
    except httpx.TransportError:
        return None  # the gateway is down or restarting
    return response.json() if response.status_code == 200 else None


async def test_an_evaluation_is_taken_over_when_its_gateway_is_killed(
    work_dir: Path, server_url: str
) -> None:
    behaviours = {"solver": {"latency_ms": 150, "latency_jitter_ms": 100, "solver_accuracy": 0.6, "seed": 5}}
    env = {"MOOT_EVAL_LEASE_SECONDS": "3", "MOOT_EVAL_POLL_SECONDS": "1"}
    async with Chaos(
        "kill -9 gateway mid-evaluation", work_dir, server_url, behaviours=behaviours, env=env
    ) as c:
        assert c.http is not None and c.models is not None
        body = {
            "questions": [q.model_dump(exclude_none=True) for q in datasets.arithmetic(QUESTIONS, seed=9)],
            "strategies": [
                {"name": "single", "run": {"mode": "vote", "members": [{"model": "solver"}]}},
                {"name": "vote3", "run": {"mode": "vote", "members": [{"model": "solver", "count": 3}]}},
            ],
            "concurrency": 6,
        }
        accepted = await c.http.post("/v1/evals", json=body)
        assert accepted.status_code == 202, accepted.text
        eval_id = accepted.json()["id"]

        # Kill the gateway a third of the way in.
        async with asyncio.timeout(120):
            while True:
                state = await _status(c.http, eval_id)
                if state is not None and state["progress"]["done"] >= 25:
                    break
                await asyncio.sleep(0.1)
        killed_at = time.monotonic()
        c.kill9("gateway")

        async with asyncio.timeout(240):
            while True:
                await asyncio.sleep(0.5)
                state = await _status(c.http, eval_id)
                if state is not None and state["status"] != "running":
                    break
        print(f"\nevaluation completed {time.monotonic() - killed_at:.1f} s after the kill")
        assert state["status"] == "completed", state
        assert state["progress"] == {"done": 2 * QUESTIONS, "total": 2 * QUESTIONS}
        items = (await c.http.get(f"/v1/evals/{eval_id}/items")).json()["data"]
        assert len(items) == 2 * QUESTIONS
        assert len({i["run_id"] for i in items}) == 2 * QUESTIONS
        assert {i["status"] for i in items} == {"completed"}
        # One call per question alone, three in the vote: the kill cost no call twice.
        requests = c.models.stats(requests=False)["models"]["solver"]["requests"]
        assert requests == QUESTIONS + 3 * QUESTIONS
