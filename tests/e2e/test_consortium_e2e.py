"""A consortium end to end: all four services as processes, real NATS and Postgres, the test model server.

One stack serves every e2e test (see conftest.py); each test runs its own runs and checks what a
user sees: the HTTP API, the SSE stream, the Postgres rows.
"""

from __future__ import annotations

import httpx
import pytest

from moot.cli.client import MootClient
from moot.devstack.model_server import ModelServer
from moot.devstack.stack import Stack
from support import follow, rows, wait_for_rows

MEMBERS = ["m1", "m2", "m3"]


async def test_three_models_two_instances_two_iterations(
    client: MootClient, model_server: ModelServer, database_url: str
) -> None:
    model_server.reset()
    created = await client.create_run(
        {
            "mode": "consortium",
            "prompt": "Name a prime number.",
            "members": [{"model": m, "count": 2} for m in MEMBERS],
            "arbiter": "arb",
            "system": "Answer in one sentence.",
        }
    )
    run_id = created["id"]
    assert created["status"] == "running" and created["links"]["events"] == f"/v1/runs/{run_id}/events"

    events = await follow(client, run_id)
    types = [e.type for e in events]
    per_iteration = ["iteration.started", *["call.completed"] * 6, "call.completed", "iteration.completed"]
    assert types == ["run.created", *per_iteration, *per_iteration, "run.completed"]
    assert all(e.data["run_id"] == run_id for e in events)
    ids = [int(e.id) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    # Within an iteration the six member answers precede the arbiter's.
    first = events[1:10]
    assert [e.data["role"] for e in first[1:8]] == ["member"] * 6 + ["arbiter"]
    assert [e.data["decision"] for e in events if e.type == "iteration.completed"] == ["iterate", "stop"]

    # A client reconnecting after the 5th event gets exactly the rest.
    resumed = await follow(client, run_id, last_event_id=events[4].id)
    assert [e.id for e in resumed] == [e.id for e in events[5:]]

    run = await client.get_run(run_id)
    assert run["status"] == "completed"
    assert run["result"]["confidence"] == pytest.approx(0.9)
    assert run["result"]["synthesis"]
    assert len(run["iterations"]) == 2
    for it in run["iterations"]:
        assert sorted((m["model"], m["instance"]) for m in it["members"]) == sorted(
            (m, i) for m in MEMBERS for i in (1, 2)
        )
        assert all(m["status"] == "completed" and m["text"] for m in it["members"])
        assert it["arbiter"]["status"] == "completed"
    assert run["usage"]["input_tokens"] > 0 and run["usage"]["output_tokens"] > 0
    workers = {m["worker"] for it in run["iterations"] for m in it["members"]}
    assert len(workers) == 2, f"both worker processes should share the jobs, got {workers}"

    # What the models were sent: 14 calls; iteration 2 continues each instance's own conversation.
    requests = model_server.requests()
    assert len(requests) == 14
    second_round = [r for r in requests if not r["arbiter"] and len(r["messages"]) == 4]
    assert len(second_round) == 6
    for r in second_round:
        assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant", "user"]
    assert all(r["authorization"] for r in requests)

    # The durable record, written by the recorder.
    calls = await wait_for_rows(database_url, "SELECT * FROM calls WHERE run_id = $1", run_id, 14)
    assert len(calls) == 14
    assert sum(c["role"] == "arbiter" for c in calls) == 2
    iterations = await wait_for_rows(
        database_url,
        "SELECT * FROM iterations WHERE run_id = $1 AND decision IS NOT NULL ORDER BY number",
        run_id,
        2,
    )
    assert [i["number"] for i in iterations] == [1, 2]
    assert [i["decision"] for i in iterations] == ["iterate", "stop"]
    event_rows = await wait_for_rows(
        database_url, "SELECT * FROM events WHERE run_id = $1", run_id, len(events)
    )
    assert len(event_rows) == len(events)
    [row] = await wait_for_rows(
        database_url, "SELECT * FROM runs WHERE id = $1 AND status = 'completed'", run_id, 1
    )
    assert row["mode"] == "consortium"
    # The provider key never reaches the record.
    dump = await rows(database_url, "SELECT payload::text AS p FROM events WHERE run_id = $1", run_id)
    assert not any("sk-test-secret" in r["p"] for r in dump)


async def test_retryable_errors_are_retried_and_hard_errors_recorded(client: MootClient) -> None:
    created = await client.create_run(
        {
            "prompt": "p",
            "members": [{"model": "flaky"}, {"model": "broken"}, {"model": "m1"}],
            "arbiter": "arb",
            "max_iterations": 1,
        }
    )
    events = await follow(client, created["id"])
    outcomes = {
        e.data["model"]: e for e in events if e.type.startswith("call.") and e.data["role"] == "member"
    }
    assert outcomes["flaky"].type == "call.completed" and outcomes["flaky"].data["attempts"] == 2
    assert outcomes["broken"].type == "call.failed" and outcomes["broken"].data["attempts"] == 1
    assert "BadRequest" in outcomes["broken"].data["error_type"]
    run = await client.get_run(created["id"])
    assert run["status"] == "completed"


async def test_every_member_failing_fails_the_run(client: MootClient) -> None:
    created = await client.create_run(
        {"prompt": "p", "members": [{"model": "broken", "count": 2}], "arbiter": "arb"}
    )
    events = await follow(client, created["id"])
    assert events[-1].type == "run.failed"
    run = await client.get_run(created["id"])
    assert run["status"] == "failed"
    assert "every member call failed in iteration 1" in run["reason"]


async def test_malformed_arbiter_output_is_recorded(client: MootClient) -> None:
    created = await client.create_run(
        {"prompt": "p", "members": [{"model": "m1"}], "arbiter": "garbled", "max_iterations": 2}
    )
    await follow(client, created["id"])
    run = await client.get_run(created["id"])
    assert run["status"] == "completed"
    verdicts = [it["verdict"] for it in run["iterations"]]
    assert len(verdicts) == 2  # no readable confidence: it can only stop at max_iterations
    assert all(v["malformed"] and v["confidence"] is None for v in verdicts)
    assert "reached max_iterations (2)" in run["reason"]


async def test_bad_requests_get_clear_errors(stack: Stack, api_key: str) -> None:
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=stack.gateway_url, headers=headers) as http:
        r = await http.post("/v1/runs", json={"prompt": "p", "members": [], "arbiter": "a"})
        assert r.status_code == 422
        assert any(e["param"] == "members" for e in r.json()["error"]["errors"])
        r = await http.post(
            "/v1/runs", json={"prompt": "p", "members": [{"model": "a", "count": 0}], "arbiter": "a"}
        )
        assert r.status_code == 422 and r.json()["error"]["param"].endswith(".count")
        r = await http.post(
            "/v1/runs", json={"mode": "poetry", "prompt": "p", "members": [{"model": "a"}], "arbiter": "a"}
        )
        assert r.status_code == 422 and r.json()["error"]["param"] == "mode"
        r = await http.get("/v1/runs/" + "0" * 32)
        assert r.status_code == 404
        r = await http.get("/v1/runs/not-a-run/events")
        assert r.status_code == 404
        assert (await http.get("/readyz")).status_code == 200
        assert (await http.get("/healthz")).json()["status"] == "ok"
