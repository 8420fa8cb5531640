"""Deadlines through the whole stack: the arbiters' sweepers end a run whose budget ran out, and
its event stream ends with it."""

from __future__ import annotations

from moot.cli.client import MootClient
from support import follow


async def test_a_run_out_of_time_before_any_synthesis_fails_and_its_stream_ends(client: MootClient) -> None:
    created = await client.create_run(
        {
            "prompt": "slow",
            "members": [{"model": "slowpoke", "count": 2}],  # 3 s per answer
            "arbiter": "arb",
            "budget": {"seconds": 2},
        }
    )
    events = await follow(client, created["id"])
    assert events[-1].type == "run.failed"
    # Ended by the deadline, not by an answer: no member call completed before it.
    assert not any(e.type == "call.completed" for e in events)
    run = await client.get_run(created["id"])
    assert run["status"] == "failed" and run["stop_reason"] == "deadline"
    assert run["reason"].startswith("deadline of 2 s passed during iteration 1")
    assert run["deadline"] is not None and run["result"] is None


async def test_a_run_out_of_time_after_an_iteration_completes_with_its_synthesis(client: MootClient) -> None:
    # "longarb" always asks for another iteration and "steady" members take 0.3 s, so 20
    # iterations cannot fit in the 4-second budget whatever the machine, while the first one
    # (two member calls and the arbiter's) ends well before it: the deadline, not the maximum,
    # ends the run, after at least one synthesis.
    created = await client.create_run(
        {
            "prompt": "slow",
            "members": [{"model": "steady", "count": 2}],
            "arbiter": "longarb",
            "max_iterations": 20,
            "budget": {"seconds": 4},
        }
    )
    events = await follow(client, created["id"])
    assert events[-1].type == "run.completed"
    assert any(e.type == "iteration.completed" for e in events)
    run = await client.get_run(created["id"])
    assert run["status"] == "completed" and run["stop_reason"] == "deadline"
    assert "the run ends with the synthesis of iteration" in run["reason"]
    assert run["result"]["confidence"] == 0.5 and run["result"]["synthesis"].startswith("Synthesis")
