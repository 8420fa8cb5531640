"""A shared deployment's guardrails, through the public surface: per-key limits set with
`moot keys`, the model allow-list, and the gate in front of request bodies.

Every limit here is enforced with its state in Postgres (`moot.records.limits`), so it holds across
gateway replicas; the e2e stack's gateway is one of them, and the limits do not depend on which.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from moot.devstack.stack import Stack
from support import rows, wait_for_rows


async def _keys(database_url: str, *args: str) -> tuple[str, str]:
    """`moot keys ...` as a user runs it; (stdout, stderr). Fails the test on a non-zero exit."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "moot.cli", "keys", *args,
        env={**os.environ, "DATABASE_URL": database_url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode(), err.decode()


async def _new_key(database_url: str, name: str, *limits: str) -> tuple[str, str]:
    """(key id, key) of a new key made by `moot keys create --name NAME LIMITS...`."""
    out, _ = await _keys(database_url, "create", "--name", name, *limits)
    listed, _ = await _keys(database_url, "list")
    key_id = next(line.split()[0] for line in listed.splitlines() if f" {name} " in line)
    return key_id, out.strip()


def _run(model: str = "m1", **more: Any) -> dict[str, Any]:
    return {"prompt": "Limits?", "members": [{"model": model}], "arbiter": model, "max_iterations": 1, **more}


async def _owned_runs(stack: Stack, key: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, headers={"Authorization": f"Bearer {key}"}
    ) as http:
        response = await http.get("/v1/runs", params={"limit": 100})
    assert response.status_code == 200, response.text
    runs: list[dict[str, Any]] = response.json()["data"]
    return runs


async def _wait_ended(http: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    for _ in range(300):
        view: dict[str, Any] = (await http.get(f"/v1/runs/{run_id}")).json()
        if view["status"] != "running":
            return view
        await asyncio.sleep(0.1)
    raise AssertionError(f"run {run_id} did not end")


async def test_the_sixth_run_in_a_minute_on_a_key_with_rpm_5_is_refused(
    stack: Stack, database_url: str
) -> None:
    key_id, key = await _new_key(database_url, "rpm-five", "--rpm", "5")
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, headers={"Authorization": f"Bearer {key}"}
    ) as http:
        answers = [await http.post("/v1/runs", json=_run()) for _ in range(6)]
        assert [a.status_code for a in answers] == [202] * 5 + [429], answers[-1].text
        refused = answers[-1]
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == ("rate_limit_exceeded", "rpm")
        assert "5 runs per minute" in error["message"]
        # A bucket of 5 refilled at 5 a minute: the next run fits 12 s after the first.
        assert 1 <= int(refused.headers["Retry-After"]) <= 12
        # Reading is not limited; the refused run does not exist.
        assert (await http.get(f"/v1/runs/{answers[0].json()['id']}")).status_code == 200
    # The refusal made nothing: five admissions counted for the key, five runs recorded.
    assert len(await rows(database_url, "SELECT 1 FROM key_runs WHERE key_id = $1", key_id)) == 5
    recorded = await wait_for_rows(
        database_url,
        "SELECT r.id FROM runs r JOIN key_runs k ON k.run_id = r.id WHERE k.key_id = $1",
        key_id,
        5,
    )
    assert len(recorded) == 5 and len(await _owned_runs(stack, key)) == 5

    # Changed later, applied within the gateway's auth cache time; `0` lifts the limit.
    out, _ = await _keys(database_url, "limits", key_id, "--rpm", "0")
    assert "rpm unlimited" in out


async def test_a_key_at_its_concurrent_runs_waits_for_one_to_end(stack: Stack, database_url: str) -> None:
    _, key = await _new_key(database_url, "one-at-a-time", "--max-concurrent-runs", "1")
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, headers={"Authorization": f"Bearer {key}"}
    ) as http:
        first = await http.post("/v1/runs", json=_run("slowpoke"))
        assert first.status_code == 202, first.text
        second = await http.post("/v1/runs", json=_run())
        assert second.status_code == 429, second.text
        assert second.json()["error"]["code"] == "max_concurrent_runs"
        assert int(second.headers["Retry-After"]) >= 1
        cancelled = await http.post(f"/v1/runs/{first.json()['id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        # Its run has ended: the next one is admitted (the gateway asks the run store).
        third = await http.post("/v1/runs", json=_run())
        assert third.status_code == 202, third.text
        await _wait_ended(http, third.json()["id"])
        fourth = await http.post("/v1/runs", json=_run())
        assert fourth.status_code == 202, fourth.text


async def test_a_key_over_its_daily_spend_is_refused_until_the_day_is_over(
    stack: Stack, database_url: str
) -> None:
    _, key = await _new_key(database_url, "thrifty", "--usd-per-day", "0.001")
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, headers={"Authorization": f"Bearer {key}"}
    ) as http:
        first = await http.post("/v1/runs", json=_run("priced"))
        assert first.status_code == 202, first.text
        run_id = first.json()["id"]
        view = await _wait_ended(http, run_id)
        assert view["status"] == "completed" and view["usage"]["cost_usd"] > 0.001, view
        # Spend is counted from the recorded calls.
        await wait_for_rows(database_url, "SELECT 1 FROM calls WHERE run_id = $1", run_id, 2)
        refused = await http.post("/v1/runs", json=_run())
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert (error["type"], error["code"]) == ("insufficient_quota", "usd_per_day")
        assert "daily spend limit" in error["message"] and "00:00 UTC" in error["message"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 86_400


async def test_a_model_outside_the_model_list_is_refused_naming_it(stack: Stack, api_key: str) -> None:
    body = {
        "prompt": "Spend someone else's key?",
        "members": [{"model": "m1"}, {"model": "openai/gpt-4o"}],
        "arbiter": "ollama/llama3",
    }
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, headers={"Authorization": f"Bearer {api_key}"}
    ) as http:
        before = len(await _owned_runs(stack, api_key))
        response = await http.post("/v1/runs", json=body)
        assert response.status_code == 422, response.text
        found = {e["param"]: e["message"] for e in response.json()["error"]["errors"]}
        assert set(found) == {"members.1.model", "arbiter"}
        assert "'openai/gpt-4o' is not offered here" in found["members.1.model"]
        assert "'ollama/llama3'" in found["arbiter"] and "m1" in found["arbiter"]
        debate = {
            "mode": "debate",
            "prompt": "?",
            "members": [{"model": "m1", "count": 2}],
            "judge_mode": "external_judge",
            "judge": "anthropic/claude-3",
        }
        response = await http.post("/v1/runs", json=debate)
        assert response.status_code == 422
        assert [e["param"] for e in response.json()["error"]["errors"]] == ["judge"]
        # Nor can a saved configuration name one, to be run later.
        saved = {"members": [{"model": "m1"}], "arbiter": "gemini/gemini-pro"}
        response = await http.put("/v1/consortiums/sneaky", json=saved)
        assert response.status_code == 422 and response.json()["error"]["param"] == "arbiter", response.text
        assert (await http.get("/v1/consortiums/sneaky")).status_code == 404
        # A text Postgres could not store is refused up front, not lost in the recorder.
        response = await http.post(
            "/v1/runs", json={**body, "members": [{"model": "m1"}], "arbiter": "m1", "prompt": "a\u0000b"}
        )
        assert response.status_code == 422 and response.json()["error"]["param"] == "prompt", response.text
    assert len(await _owned_runs(stack, api_key)) == before


async def _raw_post(
    stack: Stack, path: str, headers: dict[str, str], announced: int, sent: int, method: str = "POST"
) -> tuple[str, int]:
    """A request announcing `announced` bytes but sending only `sent`, then read the answer: the gateway
    must answer without waiting for the rest. (status line, bytes sent)."""
    url = urlsplit(stack.gateway_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        head = [f"{method} {path} HTTP/1.1", f"Host: {url.netloc}", "Content-Type: application/json"]
        head += [f"{k}: {v}" for k, v in headers.items()] + [f"Content-Length: {announced}", "", ""]
        writer.write("\r\n".join(head).encode() + b"{" + b" " * (sent - 1))
        await writer.drain()
        status = await asyncio.wait_for(reader.readline(), 30)
        return status.decode().strip(), sent
    finally:
        writer.close()


async def test_a_50_mb_body_is_refused_before_it_is_read(stack: Stack, api_key: str) -> None:
    fifty_mb = 50 * 1024 * 1024
    started = time.perf_counter()
    # Without a key: 401 at once, having read nothing of the body (only 64 KiB of it was ever sent).
    status, _ = await _raw_post(stack, "/v1/runs", {}, fifty_mb, 64 * 1024)
    assert status.startswith("HTTP/1.1 401"), status
    # With a valid key: 413, announced too large, also unread.
    status, _ = await _raw_post(
        stack, "/v1/runs", {"Authorization": f"Bearer {api_key}"}, fifty_mb, 64 * 1024
    )
    assert status.startswith("HTTP/1.1 413"), status
    # With a random key in the right shape: 401 (looked up, not found), still before the body.
    status, _ = await _raw_post(
        stack, "/v1/runs", {"Authorization": "Bearer moot_" + "x" * 43}, fifty_mb, 64 * 1024
    )
    assert status.startswith("HTTP/1.1 401"), status
    print(f"three 50 MB requests refused in {time.perf_counter() - started:.3f} s")

    # A whole 50 MB body sent by a client that does not stop: refused the same way.
    async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as http:
        try:
            response = await http.post(
                "/v1/runs", content=b" " * fifty_mb, headers={"Authorization": f"Bearer {api_key}"}
            )
            assert response.status_code == 413
        except (httpx.WriteError, httpx.ReadError, httpx.RemoteProtocolError):
            pass  # the server answered and closed while the client was still sending: refused too


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/runs"), ("POST", "/v1/chat/completions"), ("PUT", "/v1/consortiums/some-name")],
)
async def test_no_key_no_body_read_on_every_route_with_a_body(stack: Stack, method: str, path: str) -> None:
    status, _ = await _raw_post(stack, path, {}, 10 * 1024 * 1024, 1024, method)
    assert status.startswith("HTTP/1.1 401"), (path, status)
