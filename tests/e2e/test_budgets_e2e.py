"""Token and USD budgets through the whole stack: a run whose next calls could exceed its budget
ends before them, with what the test model server reported as its usage."""

from __future__ import annotations

import re

from moot.cli.client import MootClient
from support import follow


def spent_in(reason: str) -> str:
    """The spend a budget stop names ("... would be exceeded: 3747 spent, ...")."""
    match = re.search(r"would be exceeded: (\S+) spent", reason)
    assert match, reason
    return match[1]


async def test_a_consortium_out_of_tokens_completes_with_its_last_synthesis(client: MootClient) -> None:
    # "longarb" always asks for another iteration; its syntheses (about 600 tokens) are quoted
    # to the members and the arbiter of later iterations, so five iterations (about 24,000
    # tokens, as the test model server counts them) cannot fit in 4,500, while the first one
    # (about 900) does.
    created = await client.create_run(
        {
            "prompt": "What is 2+2?",
            "members": [{"model": "m1", "count": 2}],
            "arbiter": "longarb",
            "max_iterations": 5,
            "budget": {"tokens": 4500},
        }
    )
    events = await follow(client, created["id"])
    assert events[-1].type == "run.completed"
    run = await client.get_run(created["id"])
    assert run["status"] == "completed" and run["stop_reason"] == "budget"
    assert run["reason"].startswith("token budget of 4500 would be exceeded: ")
    finished = [it for it in run["iterations"] if it["verdict"] is not None]
    assert 1 <= len(finished) < 5 and len(run["iterations"]) == len(finished)  # none opened after
    assert f"the run ends with the synthesis of iteration {len(finished)}" in run["reason"]
    assert run["result"]["synthesis"] == finished[-1]["verdict"]["synthesis"]
    # What it spent is the usage the calls reported, summed, and what the stop was decided on.
    usage = run["usage"]
    calls = [c for it in run["iterations"] for c in [*it["members"], it["arbiter"]]]
    assert usage["input_tokens"] == sum(c["usage"]["input_tokens"] for c in calls) > 0
    assert usage["output_tokens"] == sum(c["usage"]["output_tokens"] for c in calls) > 0
    assert spent_in(run["reason"]) == str(usage["input_tokens"] + usage["output_tokens"])
    assert not any(e.type == "iteration.started" and e.data["iteration"] > len(finished) for e in events)


async def test_a_consortium_out_of_dollars_completes_with_its_first_synthesis(client: MootClient) -> None:
    # "priced" costs $0.001 a token: each member call (about 60 tokens) about $0.06. The first
    # calls go ahead (no cost known yet); the arbiter is reserved at the costliest call, $0.12 +
    # $0.06 fits in $0.20; its own cost is unknown (no price), so counts as nothing; iteration 2's
    # two members would take $0.12 + $0.12: the run ends before them.
    created = await client.create_run(
        {
            "prompt": "What is 2+2?",
            "members": [{"model": "priced", "count": 2}],
            "arbiter": "longarb",
            "max_iterations": 5,
            "budget": {"usd": 0.2},
        }
    )
    await follow(client, created["id"])
    run = await client.get_run(created["id"])
    assert run["status"] == "completed" and run["stop_reason"] == "budget", run["reason"]
    assert run["reason"].startswith("USD budget of $0.2 would be exceeded: ")
    assert run["reason"].endswith(
        "the next 2 calls may cost up to $0.12; the run ends with the synthesis of iteration 1"
    )
    assert len(run["iterations"]) == 1
    assert 0 < run["usage"]["cost_usd"] <= 0.2
    assert spent_in(run["reason"]) == f"${run['usage']['cost_usd']:.6f}".rstrip("0").rstrip(".")


async def test_a_debate_out_of_tokens_fails_with_an_error_then_run_failed(client: MootClient) -> None:
    # Two debaters and a judge that always lets them go on: five rounds take about 5,000 tokens;
    # round 1 and 2 and the judge's first decision fit in 1,200.
    created = await client.create_run(
        {
            "mode": "debate",
            "prompt": "Is a hot dog a sandwich?",
            "members": [{"model": "d1"}, {"model": "d2"}],
            "judge_mode": "external_judge",
            "judge": "judge_go",
            "max_rounds": 5,
            "budget": {"tokens": 1200},
        }
    )
    events = await follow(client, created["id"])
    assert [e.type for e in events[-2:]] == ["debate.failed", "run.failed"]
    assert not any(e.type == "final.started" for e in events)
    run = await client.get_run(created["id"])
    assert run["status"] == "failed" and run["stop_reason"] == "budget"
    assert run["reason"].startswith("token budget of 1200 would be exceeded: ")
    assert run["reason"].endswith(", before any result") and run["result"] is None
    assert events[-2].data["message"] == run["reason"]
    assert 2 <= len(run["rounds"]) < 5
    # Every call shown was issued and answered: the budget stopped the next one before it.
    calls = [c for r in run["rounds"] for c in [*r["turns"], *([r["judge"]] if r["judge"] else [])]]
    assert all(c["status"] == "completed" for c in calls)
    usage = run["usage"]
    assert spent_in(run["reason"]) == str(usage["input_tokens"] + usage["output_tokens"])
