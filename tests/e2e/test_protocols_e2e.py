"""A council, a vote (with and without escalation) and a Mixture-of-Agents, end to end.

Through the HTTP API and the official `openai` client against the running stack (conftest.py):
what each run asks of which model is counted twice, in the run's view and in what the test
model server received, so "3 + 3 + 1 calls" is what the providers would have billed. The CLI's
commands for these modes are in test_cli_protocols.py.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import openai
import pytest

from moot.cli.client import MootClient, RunEventMessage
from moot.devstack.model_server import ModelServer
from moot.devstack.stack import Stack
from support import follow, wait_for_rows


def _received(model_server: ModelServer, *models: str) -> dict[str, int]:
    return {m: len(model_server.requests(m)) for m in models}


def _steps(events: list[RunEventMessage]) -> list[tuple[str, int, str]]:
    return [(e.type, e.data["step"], e.data["name"]) for e in events if e.type.startswith("step.")]


async def _run(client: MootClient, body: dict[str, Any]) -> tuple[dict[str, Any], list[RunEventMessage]]:
    created = await client.create_run(body)
    assert created["mode"] == body["mode"]
    events = await follow(client, created["id"])
    return await client.get_run(created["id"]), events


async def test_a_council_of_three_makes_three_answers_three_reviews_one_chairman(
    client: MootClient, model_server: ModelServer, database_url: str
) -> None:
    model_server.reset()
    run, events = await _run(
        client,
        {
            "mode": "council",
            "prompt": "What is the capital of Australia?",
            "members": [{"model": "ranker", "count": 3}],
            "chairman": "chair",
        },
    )
    assert run["status"] == "completed", run["reason"]
    assert _received(model_server, "ranker", "chair") == {"ranker": 6, "chair": 1}
    assert [c["status"] for c in run["answers"]] == ["completed"] * 3
    assert len(run["reviews"]) == 3 and run["chairman"]["model"] == "chair"
    assert run["result"] == {"text": "The capital of Australia is Canberra.", "model": "chair"}

    # Each reviewer saw the two other answers under letters, and its ranking reads back to members.
    for review in run["reviews"]:
        assert sorted(review["letters"]) == ["A", "B"]
        assert review["label"] not in review["letters"].values()
        assert review["ranking"] == [review["letters"]["B"], review["letters"]["A"]]
    ranking = run["ranking"]
    assert [r["rank"] for r in ranking] == [1, 2, 3]
    assert sorted(r["label"] for r in ranking) == ["ranker#1", "ranker#2", "ranker#3"]
    assert sum(r["score"] for r in ranking) == 3  # three reviews of two answers: 1 + 0 points each
    assert ranking[0]["score"] >= ranking[1]["score"] >= ranking[2]["score"]

    # The chairman was told the answers and the aggregate ranking.
    [chair] = model_server.requests("chair")
    asked = chair["messages"][-1]["content"]
    assert "What is the capital of Australia?" in asked and "ranker#1" in asked

    assert _steps(events) == [
        ("step.started", 1, "answers"),
        ("step.completed", 1, "answers"),
        ("step.started", 2, "reviews"),
        ("step.completed", 2, "reviews"),
        ("step.started", 3, "chairman"),
        ("step.completed", 3, "chairman"),
    ]
    reviews_done = next(e for e in events if e.type == "step.completed" and e.data["name"] == "reviews")
    assert [r["label"] for r in reviews_done.data["data"]["ranking"]] == [r["label"] for r in ranking]
    assert events[0].type == "run.created" and events[-1].type == "run.completed"

    # Recorded generically: one `steps` row per step, every call, the run's view.
    steps = await wait_for_rows(
        database_url, "SELECT step, name, data FROM steps WHERE run_id = $1 AND completed_at IS NOT NULL"
        " ORDER BY step", run["id"], 3,
    )  # fmt: skip
    assert [(s["step"], s["name"]) for s in steps] == [(1, "answers"), (2, "reviews"), (3, "chairman")]
    calls = await wait_for_rows(database_url, "SELECT role FROM calls WHERE run_id = $1", run["id"], 7)
    assert Counter(c["role"] for c in calls) == {"member": 3, "reviewer": 3, "chairman": 1}
    [recorded] = await wait_for_rows(
        database_url, "SELECT mode, iterations FROM runs WHERE id = $1 AND status = 'completed'", run["id"], 1
    )
    assert (recorded["mode"], recorded["iterations"]) == ("council", 3)


async def test_a_vote_of_five_identical_samples_answers_with_full_agreement(
    client: MootClient, model_server: ModelServer
) -> None:
    model_server.reset()
    run, events = await _run(
        client,
        {
            "mode": "vote",
            "prompt": "What is two times four?",
            "members": [{"model": "eight", "count": 5}],
            "answer_format": "number",
            "escalate": {"mode": "consortium", "arbiter": "m1"},
        },
    )
    assert run["status"] == "completed", run["reason"]
    assert _received(model_server, "eight", "m1") == {"eight": 5, "m1": 0}
    assert run["agreement"] == 1.0 and not run["escalated"] and run["escalation"] is None
    assert run["result"]["by"] == "vote" and "8" in run["result"]["text"]
    assert [(t["count"], len(t["voters"])) for t in run["tally"]] == [(5, 5)]
    assert [v["normalized"] for v in run["votes"]] == [run["majority"]] * 5
    votes = next(e for e in events if e.type == "step.completed")
    assert votes.data["name"] == "votes" and votes.data["data"]["agreement"] == 1.0


async def test_a_split_vote_escalates_to_a_consortium_without_asking_anyone_twice(
    client: MootClient, model_server: ModelServer
) -> None:
    model_server.reset()
    run, events = await _run(
        client,
        {
            "mode": "vote",
            "prompt": "What is two times four?",
            "members": [{"model": "eight", "count": 2}, {"model": "nine", "count": 2}],
            "answer_format": "number",
            "agreement_threshold": 0.6,
            "escalate": {"mode": "consortium", "arbiter": "m1"},
        },
    )
    assert run["status"] == "completed", run["reason"]
    # 4 votes, then 1 arbiter call, confident enough to stop: no member is asked again.
    assert _received(model_server, "eight", "nine", "m1") == {"eight": 2, "nine": 2, "m1": 1}
    assert run["agreement"] == 0.5 and run["escalated"]
    assert run["result"]["by"] == "consortium"
    escalation = run["escalation"]
    assert escalation["mode"] == "consortium" and len(escalation["iterations"]) == 1
    seeded = escalation["iterations"][0]["members"]
    assert [m["call_id"] for m in seeded] == [v["call_id"] for v in run["votes"]]
    assert run["result"]["text"] == escalation["result"]["synthesis"]
    types = [e.type for e in events]
    assert types.count("call.completed") == 5 and "iteration.completed" in types
    assert types[-1] == "run.completed"


async def test_a_two_layer_mixture_of_three_proposers(client: MootClient, model_server: ModelServer) -> None:
    model_server.reset()
    proposers = [{"model": m} for m in ("m1", "m2", "m3")]
    run, events = await _run(
        client,
        {
            "mode": "moa",
            "prompt": "Why is the sky blue?",
            "layers": [proposers, proposers],
            "aggregator": "chair",
        },
    )
    assert run["status"] == "completed", run["reason"]
    assert _received(model_server, "m1", "m2", "m3", "chair") == {"m1": 2, "m2": 2, "m3": 2, "chair": 1}
    assert [len(layer["calls"]) for layer in run["layers"]] == [3, 3]
    assert run["result"]["model"] == "chair" and run["aggregator"]["status"] == "completed"
    # Layer 2 saw layer 1's answers; layer 1 saw only the question.
    first, second = model_server.requests("m1")
    assert "m2's answer" not in first["messages"][-1]["content"]
    assert "m2's answer" in second["messages"][-1]["content"]
    assert [n for _, n, _ in _steps(events)][::2] == [1, 2, 3]
    # The runs list names who took part, whatever the mode (here every layer's proposers).
    for _ in range(50):
        listed = [r for r in await client.list_runs(100) if r["id"] == run["id"]]
        if listed:
            break
        await asyncio.sleep(0.2)
    assert listed[0]["members"] == ["m1 x2", "m2 x2", "m3 x2"] and listed[0]["mode"] == "moa"


@pytest.fixture(scope="module")
async def saved_modes(stack: Stack, api_key: str) -> None:
    async with MootClient(stack.gateway_url, api_key=api_key) as c:
        await c.save_config(
            "round-table",
            {"mode": "council", "members": [{"model": "ranker", "count": 3}], "chairman": "chair"},
        )
        await c.save_config(
            "ballot",
            {
                "mode": "vote",
                "members": [{"model": "eight", "count": 3}],
                "answer_format": "number",
                "escalate": {"mode": "consortium", "arbiter": "m1"},
            },
        )
        await c.save_config(
            "mixture", {"mode": "moa", "layers": [[{"model": "m1"}, {"model": "m2"}]], "aggregator": "chair"}
        )


@pytest.mark.parametrize(
    ("model", "answer"),
    [("round-table", "The capital of Australia is Canberra."), ("ballot", "8"), ("mixture", None)],
)
async def test_the_openai_endpoint_runs_every_mode(
    stack: Stack, api_key: str, saved_modes: None, model: str, answer: str | None
) -> None:
    async with openai.AsyncOpenAI(base_url=f"{stack.gateway_url}/v1", api_key=api_key, max_retries=0) as oai:
        models = {m.id: m for m in (await oai.models.list()).data}
        assert (models[model].model_extra or {})["moot"]["mode"] == {
            "round-table": "council", "ballot": "vote", "mixture": "moa"
        }[model]  # fmt: skip
        completion = await oai.chat.completions.create(
            model=model,
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is 2*4?"},
            ],
        )
        content = completion.choices[0].message.content
        assert content
        if answer is not None:
            assert answer in content
        streamed = await oai.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "And again?"}], stream=True
        )
        pieces = [c.choices[0].delta.content or "" async for c in streamed if c.choices]
        assert "".join(pieces).strip()


async def test_a_split_vote_escalates_to_a_judged_debate_whose_first_round_is_the_votes(
    client: MootClient, model_server: ModelServer
) -> None:
    model_server.reset()
    run, events = await _run(
        client,
        {
            "mode": "vote",
            "prompt": "What is two times four?",
            "members": [{"model": "eight", "count": 2}, {"model": "nine", "count": 2}],
            "answer_format": "number",
            "escalate": {"mode": "debate", "judge": "judge_stop", "max_rounds": 3},
        },
    )
    assert run["status"] == "completed", run["reason"]
    # Round 1 is the votes; round 2 asks each debater once; the judge stops it, then gives the verdict.
    assert _received(model_server, "eight", "nine", "judge_stop") == {"eight": 4, "nine": 4, "judge_stop": 2}
    debate = run["escalation"]
    assert debate["mode"] == "debate" and [r["number"] for r in debate["rounds"]] == [1, 2]
    assert [t["call_id"] for t in debate["rounds"][0]["turns"]] == [v["call_id"] for v in run["votes"]]
    assert run["result"]["by"] == "debate" and run["result"]["text"] == debate["result"]["text"]
    types = [e.type for e in events]
    assert types.index("step.completed") < types.index("round.completed") < types.index("judge.decided")
    assert "final.chunk" in types and types[-1] == "run.completed"
