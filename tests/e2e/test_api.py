"""The API users build on: keys and owners, saved configurations, continuation, cancellation, listing."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from moot.cli.client import MootClient
from moot.devstack.model_server import ModelServer
from moot.devstack.stack import Stack
from support import follow, wait_for_rows

CONSORTIUM = {
    "mode": "consortium",
    "members": [{"model": "m1", "count": 2}],
    "arbiter": "arb",
    "max_iterations": 1,
}


@pytest.fixture
async def alice(stack: Stack, api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, headers={"Authorization": f"Bearer {api_key}"}
    ) as c:
        yield c


@pytest.fixture
async def bob(stack: Stack, other_api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, headers={"Authorization": f"Bearer {other_api_key}"}
    ) as c:
        yield c


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "Missing API key"),
        ({"Authorization": "Bearer moot_not-a-real-key"}, "Invalid API key"),
        ({"Authorization": "Basic abc"}, "Malformed Authorization header"),
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/runs"),
        ("GET", "/v1/runs"),
        ("GET", "/v1/runs/" + "a" * 32),
        ("GET", "/v1/runs/" + "a" * 32 + "/events"),
        ("POST", "/v1/runs/" + "a" * 32 + "/cancel"),
        ("GET", "/v1/consortiums"),
        ("PUT", "/v1/consortiums/x"),
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
    ],
)
async def test_every_v1_endpoint_needs_a_key(
    stack: Stack, method: str, path: str, headers: dict[str, str], message: str
) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway_url) as http:
        r = await http.request(method, path, headers=headers, json={})
    assert r.status_code == 401
    error = r.json()["error"]
    assert message in error["message"] and error["code"] == "invalid_api_key"
    assert r.headers["www-authenticate"].startswith("Bearer")


async def test_health_needs_no_key(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway_url) as http:
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/readyz")).status_code == 200


async def test_saved_configurations_are_versioned(alice: httpx.AsyncClient, bob: httpx.AsyncClient) -> None:
    r = await alice.put("/v1/consortiums/panel", json=CONSORTIUM)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1 and r.json()["config"]["arbiter"] == "arb"
    r = await alice.put("/v1/consortiums/panel", json={**CONSORTIUM, "confidence_threshold": 0.5})
    assert r.json()["version"] == 2

    latest = (await alice.get("/v1/consortiums/panel")).json()
    assert latest["version"] == 2 and latest["versions"] == [1, 2]
    assert latest["config"]["confidence_threshold"] == 0.5
    first = (await alice.get("/v1/consortiums/panel", params={"version": 1})).json()
    assert first["config"]["confidence_threshold"] == 0.8
    assert "panel" in [c["name"] for c in (await alice.get("/v1/consortiums")).json()["data"]]

    # Another owner sees nothing of it, and may use the same name for his own.
    assert (await bob.get("/v1/consortiums/panel")).status_code == 404
    assert (await bob.delete("/v1/consortiums/panel")).status_code == 404
    assert "panel" not in [c["name"] for c in (await bob.get("/v1/consortiums")).json()["data"]]
    assert (await bob.put("/v1/consortiums/panel", json=CONSORTIUM)).json()["version"] == 1

    assert (await alice.delete("/v1/consortiums/panel")).status_code == 204
    assert (await alice.get("/v1/consortiums/panel")).status_code == 404
    assert (await alice.delete("/v1/consortiums/panel")).status_code == 404
    assert (await bob.get("/v1/consortiums/panel")).status_code == 200


@pytest.mark.parametrize(
    ("name", "body", "field"),
    [
        ("Bad Name!", CONSORTIUM, "name"),
        ("-leading", CONSORTIUM, "name"),
        ("ok", {**CONSORTIUM, "members": []}, "members"),
        ("ok", {**CONSORTIUM, "prompt": "no prompts in a saved configuration"}, "prompt"),
        (
            "ok",
            {"mode": "debate", "members": [{"model": "d1"}, {"model": "d2"}], "judge_mode": "external_judge"},
            "judge",
        ),
        ("ok", {**CONSORTIUM, "mode": "poetry"}, "mode"),
    ],
)
async def test_bad_configurations_get_422_naming_the_field(
    alice: httpx.AsyncClient, name: str, body: dict[str, Any], field: str
) -> None:
    r = await alice.put(f"/v1/consortiums/{name}", json=body)
    assert r.status_code == 422
    assert any(e["param"].split(".")[-1] == field for e in r.json()["error"]["errors"]), r.json()


async def test_run_from_a_saved_configuration_with_overrides(
    alice: httpx.AsyncClient, client: MootClient
) -> None:
    await alice.put("/v1/consortiums/saved-run", json={**CONSORTIUM, "max_iterations": 3})
    await alice.put("/v1/consortiums/saved-run", json={**CONSORTIUM, "max_iterations": 2, "system": "v2"})
    created = await client.create_run({"config": "saved-run", "prompt": "Hello?", "max_iterations": 1})
    await follow(client, created["id"])
    run = await client.get_run(created["id"])
    assert run["status"] == "completed"
    assert run["config"] == {"name": "saved-run", "version": 2}
    assert run["request"]["max_iterations"] == 1 and run["request"]["system"] == "v2"
    old = await client.create_run({"config": "saved-run", "config_version": 1, "prompt": "Hello?"})
    assert (await client.get_run(old["id"]))["config"] == {"name": "saved-run", "version": 1}
    r = await alice.post("/v1/runs", json={"config": "nope", "prompt": "p"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "config"


async def test_continue_from_an_earlier_run(client: MootClient, model_server: ModelServer) -> None:
    first = await client.create_run({**CONSORTIUM, "prompt": "Name a colour."})
    await follow(client, first["id"])
    answer = (await client.get_run(first["id"]))["result"]["synthesis"]

    model_server.reset()
    second = await client.create_run(
        {**CONSORTIUM, "prompt": "And another one?", "continue_from": first["id"]}
    )
    await follow(client, second["id"])
    run = await client.get_run(second["id"])
    assert run["continued_from"] == first["id"]
    members = [r for r in model_server.requests("m1") if not r["arbiter"]]
    assert members and all(
        r["messages"][:2]
        == [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": answer}]
        for r in members
    )
    [arbiter] = [r for r in model_server.requests("arb") if r["arbiter"]]
    assert (
        "Name a colour." in arbiter["messages"][-1]["content"]
        and answer in arbiter["messages"][-1]["content"]
    )


async def test_continue_from_needs_a_finished_run_of_ones_own(
    client: MootClient, alice: httpx.AsyncClient, bob: httpx.AsyncClient
) -> None:
    first = await client.create_run({**CONSORTIUM, "prompt": "p"})
    await follow(client, first["id"])
    r = await bob.post("/v1/runs", json={**CONSORTIUM, "prompt": "q", "continue_from": first["id"]})
    assert r.status_code == 422 and r.json()["error"]["param"] == "continue_from"
    r = await alice.post("/v1/runs", json={**CONSORTIUM, "prompt": "q", "continue_from": "f" * 32})
    assert r.status_code == 422


async def test_cancel_stops_a_run_and_ends_its_stream(
    client: MootClient,
    alice: httpx.AsyncClient,
    bob: httpx.AsyncClient,
    database_url: str,
    model_server: ModelServer,
) -> None:
    prompt = f"slow {secrets.token_hex(4)}"
    created = await client.create_run(
        {
            "mode": "consortium",
            "prompt": prompt,
            "members": [{"model": "slowpoke", "count": 2}],
            "arbiter": "arb",
        }
    )
    run_id = created["id"]
    # Both member calls in flight (a job still queued at cancel time is skipped, not called).
    for _ in range(100):
        asked = [r for r in model_server.requests("slowpoke") if prompt in str(r["messages"])]
        if len(asked) == 2:
            break
        await asyncio.sleep(0.1)
    assert (await bob.post(f"/v1/runs/{run_id}/cancel")).status_code == 404
    r = await alice.post(f"/v1/runs/{run_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    events = await follow(client, run_id)
    assert events[-1].type == "run.cancelled"
    assert (await alice.post(f"/v1/runs/{run_id}/cancel")).status_code == 409

    # The calls that were in flight finish and are recorded, but the run does not move on.
    calls = await wait_for_rows(database_url, "SELECT * FROM calls WHERE run_id = $1", run_id, 2)
    assert len(calls) == 2 and all(c["role"] == "member" for c in calls)
    [row] = await wait_for_rows(
        database_url, "SELECT * FROM runs WHERE id = $1 AND status = 'cancelled'", run_id, 1
    )
    assert row["owner"] == "alice" and row["reason"] == "cancelled by the client"
    run = await client.get_run(run_id)
    assert run["status"] == "cancelled" and run["iterations"][0]["arbiter"] is None


async def test_runs_belong_to_their_owner(
    client: MootClient, bob: httpx.AsyncClient, alice: httpx.AsyncClient
) -> None:
    created = await client.create_run({**CONSORTIUM, "prompt": "mine"})
    run_id = created["id"]
    await follow(client, run_id)
    assert (await bob.get(f"/v1/runs/{run_id}")).status_code == 404
    assert (await bob.get(f"/v1/runs/{run_id}/events")).status_code == 404
    body = (await bob.get(f"/v1/runs/{run_id}")).json()
    assert "mine" not in str(body)

    for _ in range(50):  # the list comes from Postgres, written by the recorder in batches
        listed = (await alice.get("/v1/runs", params={"limit": 100})).json()["data"]
        if run_id in [r["id"] for r in listed]:
            break
        await asyncio.sleep(0.2)
    assert run_id in [r["id"] for r in listed]
    assert run_id not in [r["id"] for r in (await bob.get("/v1/runs")).json()["data"]]
    assert (await alice.get("/v1/runs", params={"limit": 0})).status_code == 422
