"""A consortium end to end: all four services as processes, real NATS and Postgres, the test model server.

One stack serves the whole module (starting five Python processes costs seconds); each test
runs its own runs and checks what a user sees: the HTTP API, the SSE stream, the Postgres rows.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from moot.client import MootClient, RunEventMessage
from moot.stack import ServiceSpec, Stack, default_services
from moot.testing.model_server import ModelServer

MEMBERS = ["m1", "m2", "m3"]


@pytest.fixture(scope="module")
async def model_server() -> AsyncIterator[ModelServer]:
    behaviours: dict[str, Any] = {name: {"latency_ms": 20} for name in MEMBERS}
    behaviours.update(
        {
            # First synthesis unsure and asking for more, second sure: exactly two iterations.
            "arb": {"arbiter_confidence": [0.5, 0.9], "arbiter_needs_iteration": [True, False]},
            "flaky": {"fail_first": 1, "error_status": 503, "retry_after": 0.2},
            "broken": {"error_rate": 1.0, "error_status": 400},
            "garbled": {"arbiter": "garbage"},
        }
    )
    async with ModelServer({"models": behaviours}) as server:
        yield server


@pytest.fixture(scope="module")
async def stack(
    model_server: ModelServer, nats_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    data_dir = tmp_path_factory.mktemp("stack")
    models_file = Path(data_dir) / "models.yaml"
    names = ["m1", "m2", "m3", "arb", "flaky", "broken", "garbled"]
    models_file.write_text(
        yaml.safe_dump(
            {
                "model_list": [
                    {
                        "model_name": n,
                        "litellm_params": {
                            "model": f"openai/{n}",
                            "api_base": model_server.url,
                            "api_key": "sk-test-secret",
                        },
                    }
                    for n in names
                ]
            }
        )
    )
    namespace = f"e2e_{secrets.token_hex(4)}"
    # Two workers and two arbiters: jobs are shared, and runs are advanced without double decisions.
    services = [
        ServiceSpec(s.name, s.argv, instances=2) if s.name == "arbiter" else s
        for s in default_services(workers=2, port=0)
    ]
    async with Stack(
        data_dir,
        port=0,
        workers=2,
        namespace=namespace,
        models_file=models_file,
        nats_url=nats_url,
        database_url=database_url,
        services=services,
        # Two calls at a time per worker: six member calls need both workers.
        extra_env={"MOOT_WORKER_CONCURRENCY": "2", "MOOT_WORKER_BACKOFF_BASE_SECONDS": "0.2"},
        progress=None,
    ) as running:
        yield running


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[MootClient]:
    async with MootClient(stack.gateway_url) as c:
        yield c


async def _follow(client: MootClient, run_id: str, last_event_id: str | None = None) -> list[RunEventMessage]:
    async def collect() -> list[RunEventMessage]:
        return [e async for e in client.events(run_id, last_event_id)]

    return await asyncio.wait_for(collect(), timeout=60)


async def _rows(database_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


async def _wait_for_rows(database_url: str, query: str, run_id: str, expected: int) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = []
    for _ in range(100):
        rows = await _rows(database_url, query, run_id)
        if len(rows) >= expected:
            return rows
        await asyncio.sleep(0.2)
    return rows


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

    events = await _follow(client, run_id)
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
    resumed = await _follow(client, run_id, last_event_id=events[4].id)
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
    calls = await _wait_for_rows(database_url, "SELECT * FROM calls WHERE run_id = $1", run_id, 14)
    assert len(calls) == 14
    assert sum(c["role"] == "arbiter" for c in calls) == 2
    iterations = await _wait_for_rows(
        database_url, "SELECT * FROM iterations WHERE run_id = $1 ORDER BY number", run_id, 2
    )
    assert [i["number"] for i in iterations] == [1, 2]
    assert [i["decision"] for i in iterations] == ["iterate", "stop"]
    event_rows = await _wait_for_rows(
        database_url, "SELECT * FROM events WHERE run_id = $1", run_id, len(events)
    )
    assert len(event_rows) == len(events)
    [row] = await _wait_for_rows(
        database_url, "SELECT * FROM runs WHERE id = $1 AND status = 'completed'", run_id, 1
    )
    assert row["mode"] == "consortium"
    # The provider key never reaches the record.
    dump = await _rows(database_url, "SELECT payload::text AS p FROM events WHERE run_id = $1", run_id)
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
    events = await _follow(client, created["id"])
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
    events = await _follow(client, created["id"])
    assert events[-1].type == "run.failed"
    run = await client.get_run(created["id"])
    assert run["status"] == "failed"
    assert "every member call failed in iteration 1" in run["reason"]


async def test_malformed_arbiter_output_is_recorded(client: MootClient) -> None:
    created = await client.create_run(
        {"prompt": "p", "members": [{"model": "m1"}], "arbiter": "garbled", "max_iterations": 2}
    )
    await _follow(client, created["id"])
    run = await client.get_run(created["id"])
    assert run["status"] == "completed"
    verdicts = [it["verdict"] for it in run["iterations"]]
    assert len(verdicts) == 2  # no readable confidence: it can only stop at max_iterations
    assert all(v["malformed"] and v["confidence"] is None for v in verdicts)
    assert "reached max_iterations (2)" in run["reason"]


async def test_bad_requests_get_clear_errors(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway_url) as http:
        r = await http.post("/v1/runs", json={"prompt": "p", "members": [], "arbiter": "a"})
        assert r.status_code == 422
        assert any(err["loc"][-1] == "members" for err in r.json()["detail"])
        r = await http.post(
            "/v1/runs", json={"prompt": "p", "members": [{"model": "a", "count": 0}], "arbiter": "a"}
        )
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "count"
        r = await http.post(
            "/v1/runs", json={"mode": "poetry", "prompt": "p", "members": [{"model": "a"}], "arbiter": "a"}
        )
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "mode"
        r = await http.get("/v1/runs/" + "0" * 32)
        assert r.status_code == 404
        r = await http.get("/v1/runs/not-a-run/events")
        assert r.status_code == 404
        assert (await http.get("/readyz")).status_code == 200
        assert (await http.get("/healthz")).json()["status"] == "ok"
