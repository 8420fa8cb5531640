"""`GET /v1/runs/{id}/events?format=seed` on the running stack: a debate per judge mode, read as
raw bytes, against the event sequence the reference debate program sends for that debate.

The reference (`debate_event_stream`) writes each event as `data: <json.dumps(event)>` and a
blank line, nothing else, and stops after `debate_complete` or `error`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from moot.cli.client import MootClient
from moot.devstack.stack import Stack
from support import follow

FINAL = ["final_start", "final_chunk", "final_complete"]
JUDGE_STOP = "STOP - the positions are clear and the stronger one has emerged."
JUDGE_GO = "CONTINUE - there is more to argue."
CONCEDES = "CONVINCED: d2#1 made the stronger case."


def rounds(*speakers: int) -> list[str]:
    """The reference's events for rounds of so many speakers each."""
    return [t for n in speakers for t in ["round_start", *["round_model_complete"] * n, "round_complete"]]


def collapsed(types: list[str]) -> list[str]:
    """Consecutive `final_chunk`s as one: how many pieces a verdict streams in is the model's."""
    return [
        t for i, t in enumerate(types) if not (t == "final_chunk" and i and types[i - 1] == "final_chunk")
    ]


async def seed_stream(stack: Stack, api_key: str, run_id: str, **params: str) -> httpx.Response:
    """The whole response, read to its end (the stream closes by itself)."""
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60
    ) as http:

        async def read() -> httpx.Response:
            async with http.stream(
                "GET", f"/v1/runs/{run_id}/events", params={"format": "seed", **params}
            ) as r:
                await r.aread()
                return r

        return await asyncio.wait_for(read(), timeout=60)


def events_of(body: bytes) -> list[dict[str, Any]]:
    """Each event of the body, checked to be written as the reference wrote it: one `data:` line
    of `json.dumps` output and a blank line; no `event:`, `id:`, `retry:` or comment lines."""
    blocks = body.split(b"\n\n")
    assert blocks[-1] == b"", "the body ends with a blank line"
    events = []
    for block in blocks[:-1]:
        assert block.startswith(b"data: ") and b"\n" not in block, block[:80]
        payload = block.removeprefix(b"data: ")
        event = json.loads(payload)
        assert json.dumps(event).encode() == payload  # the reference's encoding, byte for byte
        events.append(event)
    return events


async def debate_seen(
    client: MootClient, stack: Stack, api_key: str, **body: Any
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A debate's seed stream, read while it runs, and the run afterwards."""
    created = await client.create_run({"mode": "debate", "prompt": "Is a hot dog a sandwich?", **body})
    response = await seed_stream(stack, api_key, created["id"])
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = events_of(response.content)
    await follow(client, created["id"])  # the run itself goes on to its end
    return events, await client.get_run(created["id"])


def check_rounds(events: list[dict[str, Any]], run: dict[str, Any], names: dict[str, str]) -> None:
    """Every turn says its debater's full answer; a round's `responses` are its turns in the
    order they came (the reference's); `names` maps each debater's label to its name here."""
    turns = {(r["number"], names[t["label"]]): t["text"] for r in run["rounds"] for t in r["turns"]}
    came: dict[int, list[dict[str, Any]]] = {}
    for e in events:
        if e["type"] == "round_model_complete":
            data = e["data"]
            assert data["response"] == turns[(data["round"], data["model"])]
            came.setdefault(data["round"], []).append({"model": data["model"], "response": data["response"]})
        elif e["type"] == "round_complete":
            assert e["data"]["responses"] == came[e["data"]["round"]]
        elif e["type"] == "round_start":
            active = [names[s] for s in run["rounds"][e["data"]["round"] - 1]["speakers"]]
            assert e["data"]["active_models"] == active


def check_final(events: list[dict[str, Any]], run: dict[str, Any], model: str) -> None:
    [start] = [e["data"] for e in events if e["type"] == "final_start"]
    [complete] = [e["data"] for e in events if e["type"] == "final_complete"]
    chunks = [e["data"]["chunk"] for e in events if e["type"] == "final_chunk"]
    assert start == {"model": model}
    assert complete == {"model": model, "response": run["result"]["text"]}
    assert "".join(chunks) == run["result"]["text"]


PAIR = {"d1#1": "d1", "d2#1": "d2"}


async def test_external_judge_that_stops(client: MootClient, stack: Stack, api_key: str) -> None:
    events, run = await debate_seen(
        client, stack, api_key, members=[{"model": "d1"}, {"model": "d2"}], judge="judge_stop", max_rounds=4
    )
    assert collapsed([e["type"] for e in events]) == [
        "debate_start",
        *rounds(2, 2),
        "judge_decision",
        *FINAL,
        "debate_complete",
    ]
    assert events[0]["data"] == {
        "max_rounds": 4,
        "format": "free_discussion",
        "judge_mode": "external_judge",
        "models": ["d1", "d2"],
    }
    [decision] = [e["data"] for e in events if e["type"] == "judge_decision"]
    assert decision == {"round": 2, "continue": False, "reasoning": JUDGE_STOP}
    assert events[-1] == {"type": "debate_complete"}
    check_rounds(events, run, PAIR)
    check_final(events, run, "judge_stop")


async def test_external_judge_that_goes_on_to_the_last_round(
    client: MootClient, stack: Stack, api_key: str
) -> None:
    events, run = await debate_seen(
        client, stack, api_key, members=[{"model": "d1"}, {"model": "d2"}], judge="judge_go", max_rounds=3
    )
    assert collapsed([e["type"] for e in events]) == [
        "debate_start",
        *rounds(2, 2),
        "judge_decision",
        *rounds(2),
        *FINAL,
        "debate_complete",
    ]
    [decision] = [e["data"] for e in events if e["type"] == "judge_decision"]
    assert decision == {"round": 2, "continue": True, "reasoning": JUDGE_GO}
    check_rounds(events, run, PAIR)
    check_final(events, run, "judge_go")


async def test_self_convergence(client: MootClient, stack: Stack, api_key: str) -> None:
    events, run = await debate_seen(
        client,
        stack,
        api_key,
        members=[{"model": "concedes"}, {"model": "d2"}],
        judge_mode="self_convergence",
        max_rounds=3,
    )
    assert collapsed([e["type"] for e in events]) == [
        "debate_start",
        *rounds(2, 2),
        "model_eliminated",
        "convergence_status",
        *FINAL,
        "debate_complete",
    ]
    assert events[0]["data"]["judge_mode"] == "self_convergence"
    eliminated, status = (
        e["data"] for e in events if e["type"] in {"model_eliminated", "convergence_status"}
    )
    assert eliminated == {"round": 2, "model": "concedes", "convinced_by": "d2", "reasoning": CONCEDES}
    assert status == {"round": 2, "eliminated": ["concedes"], "remaining": ["d2"]}
    check_rounds(events, run, {"concedes#1": "concedes", "d2#1": "d2"})
    check_final(events, run, "d2")


async def test_display_only(client: MootClient, stack: Stack, api_key: str) -> None:
    """Two debaters of one model: named by their labels, where the reference would have said `d1` twice."""
    events, run = await debate_seen(
        client, stack, api_key, members=[{"model": "d1", "count": 2}, {"model": "d2"}], max_rounds=2
    )
    assert [e["type"] for e in events] == ["debate_start", *rounds(3, 3), "debate_complete"]
    assert events[0]["data"] == {
        "max_rounds": 2,
        "format": "free_discussion",
        "judge_mode": "display_only",
        "models": ["d1#1", "d1#2", "d2"],
    }
    check_rounds(events, run, {"d1#1": "d1#1", "d1#2": "d1#2", "d2#1": "d2"})
    assert run["result"] is None


async def test_a_failing_judge_ends_the_stream_with_error(
    client: MootClient, stack: Stack, api_key: str
) -> None:
    events, run = await debate_seen(
        client, stack, api_key, members=[{"model": "d1"}, {"model": "d2"}], judge="broken", max_rounds=3
    )
    assert [e["type"] for e in events] == ["debate_start", *rounds(2, 2), "error"]
    assert events[-1] == {"type": "error", "data": {"message": run["reason"]}}
    assert run["status"] == "failed"


async def test_the_format_is_checked_before_the_stream(
    client: MootClient, stack: Stack, api_key: str
) -> None:
    consortium = await client.create_run({"prompt": "p", "members": [{"model": "m1"}], "arbiter": "arb"})
    refused = await seed_stream(stack, api_key, consortium["id"])
    assert refused.status_code == 409
    assert refused.json()["error"]["param"] == "format"

    bogus = await seed_stream(stack, api_key, consortium["id"], format="reference")
    assert bogus.status_code == 422 and bogus.json()["error"]["param"] == "format"

    moot = await seed_stream(stack, api_key, consortium["id"], format="moot")
    assert moot.status_code == 200
    assert moot.content.startswith(b"event: run.created\n") and b"\nid: " in moot.content


async def test_another_owners_debate_is_not_found(
    client: MootClient, stack: Stack, other_api_key: str
) -> None:
    created = await client.create_run(
        {"mode": "debate", "prompt": "p", "members": [{"model": "d1"}, {"model": "d2"}]}
    )
    response = await seed_stream(stack, other_api_key, created["id"])
    assert response.status_code == 404
