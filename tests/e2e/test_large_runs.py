"""Runs of the largest sizes the issue names complete through the whole stack (issue 10).

Before texts went by reference, each of these hung: the run state or a message passed NATS's
max_payload (1 MiB), the arbiter nacked its event until JetStream dropped it, and the run stayed
`running`. Each test checks what a user sees: the run ends `completed`, the API returns every
text in full, and the recorder wrote them to Postgres.
"""

from __future__ import annotations

import asyncio

import pytest

from moot.cli.client import MootClient, RunEventMessage
from moot.devstack.model_server import ModelServer
from support import wait_for_rows

pytestmark = pytest.mark.timeout(600)


async def _follow(client: MootClient, run_id: str) -> list[RunEventMessage]:
    async def collect() -> list[RunEventMessage]:
        return [e async for e in client.events(run_id)]

    return await asyncio.wait_for(collect(), timeout=480)


async def test_sixteen_members_with_long_answers_over_ten_iterations(
    client: MootClient, database_url: str
) -> None:
    created = await client.create_run(
        {
            "prompt": "Summarise the case for and against a four-day week.",
            "members": [{"model": "long", "count": 16}],
            "arbiter": "longarb",
            "min_iterations": 1,
            "max_iterations": 10,
        }
    )
    run_id = created["id"]
    events = await _follow(client, run_id)
    assert events[-1].type == "run.completed", events[-1].data
    run = await client.get_run(run_id)
    assert run["status"] == "completed" and len(run["iterations"]) == 10
    assert run["reason"].startswith("reached max_iterations (10)")
    last = run["iterations"][-1]
    assert len(last["members"]) == 16
    assert all(m["status"] == "completed" and len(m["text"]) > 3950 for m in last["members"])
    assert len(run["result"]["synthesis"]) > 3000

    calls = await wait_for_rows(
        database_url, "SELECT role, length(text) AS n FROM calls WHERE run_id = $1", run_id, 170, seconds=120
    )
    assert len(calls) == 170
    assert all(c["n"] > 3950 for c in calls if c["role"] == "member")
    (row,) = await wait_for_rows(
        database_url,
        "SELECT status, iterations FROM runs WHERE id = $1 AND status <> 'running'",
        run_id,
        1,
        seconds=120,
    )
    assert (row["status"], row["iterations"]) == ("completed", 10)


async def test_a_hundred_thousand_character_prompt_to_eight_members(
    client: MootClient, model_server: ModelServer, database_url: str
) -> None:
    model_server.reset()
    prompt = "Review this text. " + "All work and no play makes a dull panel. " * 2500
    assert len(prompt) >= 100_000
    created = await client.create_run(
        {"prompt": prompt, "members": [{"model": "m1", "count": 8}], "arbiter": "arb", "max_iterations": 1}
    )
    run_id = created["id"]
    events = await _follow(client, run_id)
    assert events[-1].type == "run.completed", events[-1].data
    run = await client.get_run(run_id)
    assert run["request"]["prompt"] == prompt
    # Every member got the whole prompt (resolved by the worker from the text store).
    member_requests = model_server.requests("m1")
    assert len(member_requests) == 8
    assert all(prompt in r["messages"][-1]["content"] for r in member_requests)
    recorded = await wait_for_rows(
        database_url, "SELECT prompt FROM runs WHERE id = $1", run_id, 1, seconds=120
    )
    assert recorded[0]["prompt"] == prompt


async def test_sixteen_debaters_fifteen_rounds_of_long_turns(client: MootClient, database_url: str) -> None:
    created = await client.create_run(
        {
            "mode": "debate",
            "prompt": "Should cities ban cars from their centres?",
            "members": [{"model": "turns", "count": 16}],
            "judge_mode": "display_only",
            "max_rounds": 15,
        }
    )
    run_id = created["id"]
    events = await _follow(client, run_id)
    assert events[-1].type == "run.completed", events[-1].data
    run = await client.get_run(run_id)
    assert run["status"] == "completed" and len(run["rounds"]) == 15
    assert all(len(r["turns"]) == 16 for r in run["rounds"])
    assert all(len(t["text"]) > 1980 for r in run["rounds"] for t in r["turns"])
    turns = await wait_for_rows(
        database_url, "SELECT length(text) AS n FROM calls WHERE run_id = $1", run_id, 240, seconds=120
    )
    assert len(turns) == 240 and all(t["n"] > 1980 for t in turns)
