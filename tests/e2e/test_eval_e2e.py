"""Evaluations end to end (issue 18): `moot eval` and `/v1/evals` against the stack, the test model
server playing a solver of known per-call accuracy.

The figure the issue names: on 50 generated arithmetic questions, a solver right on 60 % of its
calls (errors independent per call, the same plausible mistake when wrong) scores about 0.6 alone
and about 0.68 as a vote of five (P(at least 3 of 5 right) = 0.6826); each must fall inside the
95 % interval the report gives. The evaluation is interrupted and resumed, and the model server
counts the calls: every question is paid for once.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from test_cli import moot

from moot.devstack.model_server import ModelServer
from moot.devstack.stack import Stack
from moot.eval import datasets
from moot.records.accounts import NO_LIMITS, Limits, create_key, revoke_key

SINGLE, VOTE5 = 0.6, 0.6826  # a call's accuracy; P(at least 3 of 5 right calls)


@pytest.fixture
def env(stack: Stack, api_key: str) -> dict[str, str]:
    return {**os.environ, "MOOT_URL": stack.gateway_url, "MOOT_API_KEY": api_key}


def keyed(stack: Stack, key: str) -> httpx.AsyncClient:
    """A client of the stack's gateway sending `key`."""
    return httpx.AsyncClient(
        base_url=stack.gateway_url, headers={"Authorization": f"Bearer {key}"}, timeout=30.0, trust_env=False
    )


async def new_key(database_url: str, name: str, limits: Limits, owner: str | None = None) -> tuple[str, str]:
    """(key id, key) of a new key with `limits`."""
    conn = await asyncpg.connect(database_url)
    try:
        return await create_key(conn, name, owner, limits=limits)
    finally:
        await conn.close()


@pytest.fixture
async def http(stack: Stack, api_key: str) -> Any:
    async with keyed(stack, api_key) as client:
        yield client


def solver_calls(model_server: ModelServer, model: str = "solver") -> int:
    return int(model_server.stats(requests=False)["models"].get(model, {}).get("requests", 0))


async def wait_for(http: httpx.AsyncClient, eval_id: str, done: int, within: float = 120.0) -> dict[str, Any]:
    async with asyncio.timeout(within):
        while True:
            body: dict[str, Any] = (await http.get(f"/v1/evals/{eval_id}")).json()
            if body["progress"]["done"] >= done or body["status"] != "running":
                return body
            await asyncio.sleep(0.2)


async def ended(http: httpx.AsyncClient, eval_id: str, within: float = 120.0) -> dict[str, Any]:
    """The evaluation once it is no longer running."""
    return await wait_for(http, eval_id, done=sys.maxsize, within=within)


async def test_moot_eval_single_vs_vote_of_five_resumes_after_an_interruption(
    env: dict[str, str], model_server: ModelServer, tmp_path: Path, http: httpx.AsyncClient
) -> None:
    model_server.reset()
    before = solver_calls(model_server)
    made = await moot(
        env, "dataset", "arithmetic", "-n", "50", "--seed", "18", "-o", str(tmp_path / "arith.jsonl")
    )
    assert made.code == 0, made
    args = [
        "eval", str(tmp_path / "arith.jsonl"),
        "--strategy", "single=single:solver",
        "--strategy", "vote5=vote:solver:5",
        "--concurrency", "4",
        "--out", str(tmp_path / "report"),
    ]  # fmt: skip

    # Interrupted: Ctrl-C once it has scored a few; the evaluation goes on in the service.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "moot.cli", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    first = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
    assert "started" in first and "50 questions x 2 strategies = 100 runs" in first, first
    eval_id = first.split()[2]
    await wait_for(http, eval_id, done=5)
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 130, (out, err)
    assert f"moot eval --cancel {eval_id}" in err.decode()

    # The same command again: the same evaluation, followed to its end.
    again = await moot(env, *args)
    assert again.code == 0, again
    # It went on in the service meanwhile: the command follows it (or reports it, if it is over).
    assert any(f"evaluation {eval_id} {how}" in again.err for how in ("already running", "already completed"))
    assert "| single |" in again.out and "| vote5 |" in again.out, again

    # Every question paid for once: 50 single calls and 250 votes, whatever the interruption.
    assert solver_calls(model_server) - before == 50 + 5 * 50

    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["status"] == "completed" and report["progress"] == {"done": 100, "total": 100}
    single, vote5 = report["report"]["strategies"]
    assert (single["name"], vote5["name"]) == ("single", "vote5")
    assert single["questions"] == vote5["questions"] == 50
    assert single["ci_low"] <= SINGLE <= single["ci_high"], single
    assert vote5["ci_low"] <= VOTE5 <= vote5["ci_high"], vote5
    assert (single["calls"], vote5["calls"]) == (50, 250)
    assert single["cost_usd"] > 0 and vote5["cost_usd"] > 4 * single["cost_usd"]
    assert single["accuracy_per_dollar"] > 0 and single["latency_p50_s"] is not None
    assert single["versus_first"] is None
    comparison = vote5["versus_first"]
    assert comparison["baseline"] == "single" and 0.0 <= comparison["mcnemar_p"] <= 1.0
    assert comparison["difference"] == pytest.approx(vote5["accuracy"] - single["accuracy"])
    assert (tmp_path / "report" / "report.md").read_text().count("| vote5 |") == 1
    assert (tmp_path / "report" / "plot.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    # A third run of the same command, from a renamed copy of the file and with another
    # concurrency, is the same evaluation: it reports what is there and asks nothing again.
    (tmp_path / "renamed.jsonl").write_bytes((tmp_path / "arith.jsonl").read_bytes())
    args[1], args[args.index("--concurrency") + 1] = str(tmp_path / "renamed.jsonl"), "2"
    third = await moot(env, *args)
    assert third.code == 0 and f"evaluation {eval_id} already completed" in third.err, third
    assert solver_calls(model_server) - before == 300


async def test_the_api_refuses_what_cannot_run_and_answers_an_identical_request_with_the_same_evaluation(
    http: httpx.AsyncClient, other_api_key: str, stack: Stack
) -> None:
    questions = [q.model_dump(exclude_none=True) for q in datasets.multiple_choice(6, seed=4)]
    body = {
        "questions": questions,
        "strategies": [
            {"name": "one", "run": {"mode": "vote", "members": [{"model": "chooser"}]}},
            {"name": "council", "run": {"mode": "council", "members": [{"model": "chooser", "count": 3}], "chairman": "chooser"}},
        ],
        "dataset": "choice-6",
    }  # fmt: skip

    unknown = await http.post(
        "/v1/evals",
        json={**body, "strategies": [{"name": "x", "run": {"mode": "vote", "members": [{"model": "nope"}]}}]},
    )
    assert unknown.status_code == 422, unknown.text
    assert unknown.json()["error"]["param"] == "strategies.0.run.members.0.model"
    no_mode = await http.post("/v1/evals", json={**body, "strategies": [{"name": "x", "run": {}}]})
    assert no_mode.status_code == 422 and no_mode.json()["error"]["param"].startswith("strategies.0.run")
    twice = await http.post("/v1/evals", json={**body, "questions": questions + questions[:1]})
    assert twice.status_code == 422 and "used twice" in twice.json()["error"]["message"]
    as_numbers = await http.post("/v1/evals", json={**body, "scoring": "numeric"})  # answers are letters
    assert as_numbers.status_code == 422 and as_numbers.json()["error"]["param"] == "scoring"
    assert "6 of the answers cannot be read as numeric" in as_numbers.json()["error"]["message"]

    first = await http.post("/v1/evals", json=body)
    assert first.status_code == 202, first.text
    eval_id = first.json()["id"]
    assert first.headers["Location"] == f"/v1/evals/{eval_id}"
    same = await http.post("/v1/evals", json=body)
    assert same.status_code == 200 and same.json() == {**first.json(), "created": False, "was": "running"}

    # Progress on SSE, resumable after any event; it ends with the report.
    events: list[tuple[str, str, dict[str, Any]]] = []
    async with http.stream("GET", f"/v1/evals/{eval_id}/events") as stream:
        fields: dict[str, str] = {}
        async for line in stream.aiter_lines():
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
            elif "data" in fields:  # a blank line ends an event
                events.append((fields.get("event", ""), fields.get("id", ""), json.loads(fields["data"])))
                fields = {}
    items = [e for e in events if e[0] == "eval.item"]
    assert len(items) == 12 and [e[2]["done"] for e in items] == list(range(1, 13))
    assert events[-1][0] == "eval.completed" and events[-1][2]["report"]["questions"] == 6
    resumed = await http.get(f"/v1/evals/{eval_id}/events", headers={"Last-Event-ID": items[9][1]})
    assert resumed.text.count("event: eval.item") == 2 and "event: eval.completed" in resumed.text

    got = (await http.get(f"/v1/evals/{eval_id}")).json()
    assert got["status"] == "completed" and got["scoring"] == "choice"
    names = [s["name"] for s in got["report"]["strategies"]]
    assert names == ["one", "council"]
    council = got["report"]["strategies"][1]
    assert council["calls"] >= 6 * (3 + 1)  # answers and a chairman per question, reviews besides
    listed = (await http.get(f"/v1/evals/{eval_id}/items")).json()["data"]
    assert len(listed) == 12 and all(i["extracted"] in {"A", "B", "C", "D"} for i in listed)
    first_page = (await http.get(f"/v1/evals/{eval_id}/items", params={"limit": 5})).json()
    rest = (await http.get(f"/v1/evals/{eval_id}/items", params={"after": first_page["next_after"]})).json()
    assert first_page["data"] + rest["data"] == listed and rest["next_after"] is None
    plot = await http.get(f"/v1/evals/{eval_id}/plot.svg")
    assert plot.headers["content-type"].startswith("image/svg+xml") and b"council" in plot.content
    assert (await http.post(f"/v1/evals/{eval_id}/cancel")).status_code == 409

    # Another owner sees none of it.
    async with keyed(stack, other_api_key) as bob:
        assert (await bob.get(f"/v1/evals/{eval_id}")).status_code == 404
        assert eval_id not in {e["id"] for e in (await bob.get("/v1/evals")).json()["data"]}


async def test_free_text_answers_are_scored_by_a_judge_whose_cost_is_kept_apart(
    http: httpx.AsyncClient,
) -> None:
    questions = [
        {"id": "capital", "question": "What is the capital of Australia?", "answer": "Canberra"},
        {"id": "legs", "question": "How many legs has a spider?", "answer": "eight"},
    ]

    async def evaluate(judge: str) -> dict[str, Any]:
        body = {
            "questions": questions,
            "strategies": [{"name": "chair", "run": {"mode": "vote", "members": [{"model": "chair"}]}}],
            "scoring": "judge",
            "judge": judge,
        }
        accepted = await http.post("/v1/evals", json=body)
        assert accepted.status_code == 202, accepted.text
        return await ended(http, accepted.json()["id"])

    lenient, strict = await evaluate("lenient"), await evaluate("strict")
    assert lenient["status"] == strict["status"] == "completed"
    assert lenient["report"]["strategies"][0]["accuracy"] == 1.0
    assert strict["report"]["strategies"][0]["accuracy"] == 0.0
    assert lenient["report"]["judge_cost_usd"] > 0  # the lenient judge is priced, the strategy not
    assert lenient["report"]["strategies"][0]["cost_usd"] is None
    missing = await http.post("/v1/evals", json={"questions": questions, "strategies": [{"name": "a", "run": {"mode": "vote", "members": [{"model": "chair"}]}}], "scoring": "judge"})  # fmt: skip
    assert missing.status_code == 422 and "judge" in missing.json()["error"]["message"]


async def test_cancelling_an_evaluation_stops_its_runs_and_sending_it_again_resumes_it(
    http: httpx.AsyncClient,
) -> None:
    body = {
        "questions": [{"id": f"q{i}", "question": f"Slow question {i}?", "answer": "x"} for i in range(6)],
        "strategies": [{"name": "slow", "run": {"mode": "vote", "members": [{"model": "slowpoke"}]}}],
        "concurrency": 2,
    }
    eval_id = (await http.post("/v1/evals", json=body)).json()["id"]
    await asyncio.sleep(0.5)
    cancelled = await http.post(f"/v1/evals/{eval_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    after = await ended(http, eval_id, within=30)
    assert after["status"] == "cancelled" and after["progress"]["done"] < 6
    resumed = await http.post("/v1/evals", json=body)
    assert resumed.status_code == 200 and resumed.json()["id"] == eval_id
    done = await ended(http, eval_id, within=90)
    assert done["status"] == "completed", done
    items = (await http.get(f"/v1/evals/{eval_id}/items")).json()["data"]
    # The runs cancelled with it were asked again: every question has an answer.
    assert len({i["run_id"] for i in items}) == 6 and {i["status"] for i in items} == {"completed"}


async def test_an_evaluation_keeps_to_its_keys_limits_and_waits_as_a_refusal_says(
    stack: Stack, database_url: str
) -> None:
    """A key that may have one run under way, an evaluation asking for four at once: the three
    refused each wait their Retry-After and are submitted again; every question is answered."""
    _, key = await new_key(database_url, "eval-limited", Limits(max_concurrent_runs=1))
    body = {
        "questions": [{"id": f"q{i}", "question": f"Question {i}?", "answer": "x"} for i in range(4)],
        "strategies": [{"name": "m1", "run": {"mode": "vote", "members": [{"model": "m1"}]}}],
        "concurrency": 4,
    }
    async with keyed(stack, key) as limited:
        eval_id = (await limited.post("/v1/evals", json=body)).json()["id"]
        done = await ended(limited, eval_id, within=120)
        items = (await limited.get(f"/v1/evals/{eval_id}/items")).json()["data"]
        runs = [(await limited.get(f"/v1/runs/{i['run_id']}")).json() for i in items]
    assert done["status"] == "completed", done
    assert [i["status"] for i in items] == ["completed"] * 4
    # One at a time, as the key says: each run began after the one before had ended.
    spans = sorted((r["created_at"], r["finished_at"]) for r in runs)
    assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(spans))


async def test_a_revoked_key_stops_its_evaluation_and_another_key_of_the_owner_resumes_it(
    stack: Stack, database_url: str
) -> None:
    first_id, first = await new_key(database_url, "carol", NO_LIMITS)
    _, second = await new_key(database_url, "carol-2", NO_LIMITS, owner="carol")
    body = {
        "questions": [{"id": f"q{i}", "question": f"Steady question {i}?", "answer": "x"} for i in range(6)],
        "strategies": [{"name": "steady", "run": {"mode": "vote", "members": [{"model": "steady"}]}}],
        "concurrency": 1,
    }

    async with keyed(stack, first) as carol:
        eval_id = (await carol.post("/v1/evals", json=body)).json()["id"]
        await wait_for(carol, eval_id, done=1)
    conn = await asyncpg.connect(database_url)
    try:
        assert await revoke_key(conn, first_id)
    finally:
        await conn.close()
    async with keyed(stack, second) as carol:
        stopped = await ended(carol, eval_id, within=30)
        assert stopped["status"] == "failed" and "revoked" in stopped["reason"], stopped
        assert stopped["progress"]["done"] < 6
        resumed = await carol.post("/v1/evals", json=body)
        assert resumed.status_code == 200 and resumed.json()["id"] == eval_id
        done = await ended(carol, eval_id, within=60)
    assert done["status"] == "completed" and done["progress"]["done"] == 6, done


async def test_an_evaluation_waiting_hours_for_its_keys_daily_spend_says_so(
    stack: Stack, database_url: str
) -> None:
    _, key = await new_key(database_url, "eval-thrifty", Limits(usd_per_day=0.001))
    body = {
        "questions": [{"id": f"q{i}", "question": f"Priced question {i}?", "answer": "x"} for i in range(8)],
        "strategies": [{"name": "priced", "run": {"mode": "vote", "members": [{"model": "priced"}]}}],
        "concurrency": 1,
    }
    async with keyed(stack, key) as thrifty:
        eval_id = (await thrifty.post("/v1/evals", json=body)).json()["id"]
        async with asyncio.timeout(60):
            while True:
                state = (await thrifty.get(f"/v1/evals/{eval_id}")).json()
                if (state["reason"] or "").startswith("waiting"):
                    break
                await asyncio.sleep(0.3)
        assert state["status"] == "running" and "daily spend" in state["reason"], state
        assert (await thrifty.post(f"/v1/evals/{eval_id}/cancel")).status_code == 200
