"""Debates end to end, one per judge mode: the seed's SSE sequence, the streamed verdict, the rows."""

from __future__ import annotations

from typing import Any

import pytest

from moot.cli.client import MootClient, RunEventMessage
from moot.devstack.model_server import ModelServer
from support import follow, wait_for_rows

SEED_EVENTS = {
    "debate.started",
    "round.started",
    "turn.completed",
    "round.completed",
    "judge.decided",
    "debater.eliminated",
    "convergence.checked",
    "final.started",
    "final.chunk",
    "final.completed",
    "debate.completed",
    "debate.failed",
}


def seed_sequence(events: list[RunEventMessage]) -> list[str]:
    """The events a client of the reference program listens for, chunks collapsed into one."""
    names = [e.type for e in events if e.type in SEED_EVENTS]
    return [
        n for i, n in enumerate(names) if not (n == "final.chunk" and i and names[i - 1] == "final.chunk")
    ]


def rounds_of(n: int, speakers: int) -> list[str]:
    return [
        seq for _ in range(n) for seq in ["round.started", *["turn.completed"] * speakers, "round.completed"]
    ]


async def debate(client: MootClient, **body: Any) -> tuple[str, list[RunEventMessage], dict[str, Any]]:
    created = await client.create_run({"mode": "debate", "prompt": "Is a hot dog a sandwich?", **body})
    events = await follow(client, created["id"])
    return created["id"], events, await client.get_run(created["id"])


def streamed_verdict(events: list[RunEventMessage]) -> str:
    chunks = sorted((e.data["index"], e.data["delta"]) for e in events if e.type == "final.chunk")
    assert [i for i, _ in chunks] == list(range(len(chunks))), "chunks missing or repeated"
    return "".join(d for _, d in chunks)


async def test_external_judge_stops_early_and_streams_its_verdict(
    client: MootClient, database_url: str
) -> None:
    run_id, events, run = await debate(
        client,
        members=[{"model": "d1"}, {"model": "d2"}],
        judge_mode="external_judge",
        judge="judge_stop",
        max_rounds=4,
    )
    assert seed_sequence(events) == [
        "debate.started",
        *rounds_of(2, 2),
        "judge.decided",
        "final.started",
        "final.chunk",
        "final.completed",
        "debate.completed",
    ]
    assert events[-1].type == "run.completed"
    assert all(e.data["run_id"] == run_id for e in events)
    [decision] = [e.data for e in events if e.type == "judge.decided"]
    assert decision["continue"] is False and decision["round"] == 2
    # Round 2 is turn by turn: d1 speaks before d2.
    round2 = [e.data for e in events if e.type == "turn.completed" and e.data["round"] == 2]
    assert [t["label"] for t in round2] == ["d1#1", "d2#1"]

    verdict = streamed_verdict(events)
    [complete] = [e.data for e in events if e.type == "final.completed"]
    assert verdict == complete["text"] == run["result"]["text"]
    assert len([e for e in events if e.type == "final.chunk"]) > 1, "the verdict should arrive in pieces"
    assert run["status"] == "completed" and run["result"]["by"] == "judge"
    assert [r["decision"] for r in run["rounds"]] == [None, "stop"]

    [row] = await wait_for_rows(
        database_url, "SELECT * FROM runs WHERE id = $1 AND status = 'completed'", run_id, 1
    )
    assert row["mode"] == "debate"
    calls = await wait_for_rows(database_url, "SELECT * FROM calls WHERE run_id = $1", run_id, 6)
    assert sorted(c["role"] for c in calls) == ["debater"] * 4 + ["final", "judge"]
    stored = await wait_for_rows(database_url, "SELECT * FROM events WHERE run_id = $1", run_id, len(events))
    assert len(stored) == len(events)


async def test_self_convergence_eliminates_down_to_one(client: MootClient) -> None:
    _, events, run = await debate(
        client,
        members=[{"model": "concedes"}, {"model": "d2"}],
        judge_mode="self_convergence",
        max_rounds=3,
    )
    assert seed_sequence(events) == [
        "debate.started",
        *rounds_of(2, 2),
        "debater.eliminated",
        "convergence.checked",
        "final.started",
        "final.chunk",
        "final.completed",
        "debate.completed",
    ]
    [eliminated] = [e.data for e in events if e.type == "debater.eliminated"]
    assert eliminated["label"] == "concedes#1" and eliminated["convinced_by"] == "d2#1"
    [final] = [e.data for e in events if e.type == "final.started"]
    assert final["label"] == "d2#1" and final["by"] == "debater"
    assert streamed_verdict(events) == run["result"]["text"]
    assert [d["active"] for d in run["debaters"]] == [False, True]


TOOL = {
    "type": "function",
    "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
}
IMAGE = "data:image/png;base64,iVBORw0KGgo="


async def test_display_only_plays_every_round_with_duplicate_models(
    client: MootClient, model_server: ModelServer
) -> None:
    model_server.reset()
    _, events, run = await debate(
        client,
        members=[
            {"model": "d1", "count": 2},
            {"model": "d2", "tools": [TOOL], "images": [IMAGE], "system": "Be brief.", "temperature": 0.3},
        ],
        judge_mode="display_only",
        max_rounds=2,
    )
    assert seed_sequence(events) == ["debate.started", *rounds_of(2, 3), "debate.completed"]
    round2 = [e.data["label"] for e in events if e.type == "turn.completed" and e.data["round"] == 2]
    assert round2 == ["d1#1", "d1#2", "d2#1"]
    assert run["status"] == "completed" and run["result"] is None and run["final"] is None
    assert [e.data["seq"] for e in events] == [int(e.id) for e in events]

    # Per-debater options reach the model: system prompt, temperature, tools; images in round 1 only.
    d2 = model_server.requests("d2")
    assert len(d2) == 2
    for request in d2:
        assert request["messages"][0] == {"role": "system", "content": "Be brief."}
        assert request["params"]["tools"] == [TOOL] and request["params"]["temperature"] == 0.3
    first, second = (r["messages"][-1]["content"] for r in d2)
    assert isinstance(first, list) and any(p.get("type") == "image_url" for p in first)
    assert isinstance(second, str)


async def test_a_failing_judge_stops_the_debate_with_a_reason(client: MootClient) -> None:
    _, events, run = await debate(
        client,
        members=[{"model": "d1"}, {"model": "d2"}],
        judge_mode="external_judge",
        judge="broken",
        max_rounds=3,
    )
    assert "debate.failed" in [e.type for e in events]
    assert events[-1].type == "run.failed"
    assert run["status"] == "failed" and "judge" in run["reason"].lower()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"judge_mode": "external_judge"}, "judge"),
        ({"judge_mode": "display_only", "judge": "judge_stop"}, "judge"),
        ({"max_rounds": 21}, "max_rounds"),
        ({"format": "custom", "custom_prompt": "Discuss {question} with {nonsense}"}, "custom_prompt"),
        ({"format": "custom", "custom_prompt": "   "}, "custom_prompt"),
    ],
)
async def test_bad_debates_are_refused_at_submission(
    client: MootClient, body: dict[str, Any], field: str
) -> None:
    from moot.cli.client import GatewayError

    with pytest.raises(GatewayError) as info:
        await client.create_run(
            {"mode": "debate", "prompt": "p", "members": [{"model": "d1"}, {"model": "d2"}], **body}
        )
    assert info.value.status == 422
    assert field in str(info.value.detail)
