"""The embedded local model end to end: a consortium and a debate on SmolLM2-135M, all recorded.

Slow (a minute or two on two cores) and needs the local model installed
(`python -m moot.devstack.localmodel install`, which scripts/test runs): `pytest -m slow`.

The model is real and small, so what it writes varies: the test checks that both runs reach
their end, that whatever the parsers could not read is recorded as such (malformed verdicts,
unreadable judge answers), and that the recorder has every call and event in Postgres. Of what
the model said, what it reliably gets right (docs/benchmarks.md, "Local model"): the members
answer the demo's question (`moot demo`'s, at its temperature) with "Tokyo"; the run's answer is
never the arbiter repeating its instructions, and when the members' answer stands in for an
unreadable synthesis, the verdict says so. Whether the arbiter's own synthesis names Tokyo is
not asserted: about one in three of its answers is about something else.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml

from moot.cli.client import MootClient, RunEventMessage
from moot.devstack import localmodel
from moot.devstack.demo import DEMO_PROMPT, LOCAL_TEMPERATURE
from moot.devstack.localmodel import LocalModelConfig
from moot.devstack.stack import LOCAL_MODEL_PROCESS, Stack
from moot.records.accounts import local_key

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

RUN_TIMEOUT = 600  # seconds; a run that takes longer is a hang


@pytest.fixture(scope="module")
async def local_stack(
    nats_url: str, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    if not localmodel.is_installed():
        pytest.fail(
            "the local model is not installed: run `.venv/bin/python -m moot.devstack.localmodel install`"
        )
    data_dir = tmp_path_factory.mktemp("local-stack")
    async with Stack(
        data_dir,
        port=0,
        namespace=f"slow_{secrets.token_hex(4)}",
        nats_url=nats_url,
        database_url=database_url,
        local_model=True,
        local_model_config=LocalModelConfig(install=False),
        progress=None,
    ) as running:
        yield running


async def _follow(client: MootClient, run_id: str) -> list[RunEventMessage]:
    async def collect() -> list[RunEventMessage]:
        return [e async for e in client.events(run_id)]

    return await asyncio.wait_for(collect(), timeout=RUN_TIMEOUT)


async def _run(
    client: MootClient, body: dict[str, Any]
) -> tuple[dict[str, Any], list[RunEventMessage], float]:
    started = time.monotonic()
    created = await client.create_run(body)
    events = await _follow(client, created["id"])
    return await client.get_run(created["id"]), events, time.monotonic() - started


async def _rows(database_url: str, query: str, run_id: str, expected: int) -> list[asyncpg.Record]:
    """The query's rows once there are at least `expected` (the recorder writes in batches)."""
    conn = await asyncpg.connect(database_url)
    try:
        found: list[asyncpg.Record] = []
        for _ in range(150):
            found = await conn.fetch(query, run_id)
            if len(found) >= expected:
                break
            await asyncio.sleep(0.2)
        return found
    finally:
        await conn.close()


async def test_the_stack_runs_the_local_model_server(local_stack: Stack) -> None:
    assert local_stack.local_model_url is not None
    child = next(c for c in local_stack.extras if c.name == LOCAL_MODEL_PROCESS)
    assert child.running() and child.ready
    models = yaml.safe_load(_read(local_stack.models_file))["model_list"]
    assert [m["model_name"] for m in models] == ["local"]
    async with httpx.AsyncClient(base_url=local_stack.local_model_url, trust_env=False, timeout=60) as http:
        assert (await http.get("/healthz")).json()["model"] == "local"
        listed = (await http.get("/v1/models")).json()
        assert [m["id"] for m in listed["data"]] == ["local"]


async def test_a_consortium_and_a_debate_on_the_local_model(local_stack: Stack, database_url: str) -> None:
    key = await local_key(local_stack.infrastructure.database_url, str(local_stack.data_dir))  # type: ignore[union-attr]
    consortium_body = {
        "mode": "consortium",
        "prompt": DEMO_PROMPT,
        "members": [{"model": "local", "count": 3}],
        "arbiter": "local",
        "max_iterations": 2,
        "max_tokens": 200,
        "temperature": LOCAL_TEMPERATURE,
    }
    debate_body = {
        "mode": "debate",
        "prompt": "Is it better to work from home or from an office?",
        "members": [{"model": "local", "count": 2, "max_tokens": 120}],
        "judge_mode": "external_judge",
        "judge": "local",
        "max_rounds": 3,
    }
    async with MootClient(local_stack.gateway_url, api_key=key) as client:
        (consortium, c_events, c_secs), (debate, d_events, d_secs) = await asyncio.gather(
            _run(client, consortium_body), _run(client, debate_body)
        )
    print(f"\nconsortium: {consortium['status']} in {c_secs:.0f}s ({consortium['reason']})")
    print(f"debate: {debate['status']} in {d_secs:.0f}s ({debate['reason']})")

    # The consortium ends: confident enough, or at its iteration limit with the reasons.
    assert consortium["status"] == "completed", consortium["reason"]
    assert c_events[-1].type == "run.completed"
    iterations = consortium["iterations"]
    assert 1 <= len(iterations) <= 2
    for it in iterations:
        assert all(m["status"] == "completed" and m["text"] for m in it["members"])
        assert it["arbiter"]["status"] == "completed"
        verdict = it["verdict"]
        assert verdict["synthesis"].strip(), "the synthesis falls back to the whole answer"
        # Whatever the model broke is said, not hidden.
        if verdict["malformed"] or verdict["confidence"] is None:
            assert verdict["problems"]
    result = consortium["result"]
    print(f"consortium's answer ({result['synthesis_from']}'s): {result['synthesis']!r}")
    assert result["synthesis"].strip()
    # A question the model can answer: most members name the capital in their first answers.
    first = [m["text"] for m in iterations[0]["members"]]
    assert sum("tokyo" in text.lower() for text in first) >= 2, first
    # The answer is never the arbiter's instructions, repeated; when the members' answer stands
    # in, the verdict says so, and that answer is theirs.
    for echo in ("You are the arbiter of a panel", "Your task: combine these answers"):
        assert echo.lower() not in result["synthesis"].lower(), result
    if result["synthesis_from"] == "members":
        assert any(p.startswith("the arbiter's synthesis was unreadable") for p in result["problems"])
        assert "tokyo" in result["synthesis"].lower(), result

    # The debate ends with the judge's verdict, streamed.
    assert debate["status"] == "completed", debate["reason"]
    types = [e.type for e in d_events]
    assert types[-2:] == ["debate.completed", "run.completed"]
    assert "final.chunk" in types
    assert debate["result"]["text"].strip()
    streamed = "".join(e.data["delta"] for e in d_events if e.type == "final.chunk")
    assert streamed == debate["result"]["text"]
    for rnd in debate["rounds"]:
        if rnd["judge"] is not None:
            assert rnd["decision"] in ("continue", "stop")
            assert rnd["decision_readable"] is not None

    # Everything is in Postgres.
    for run, events in ((consortium, c_events), (debate, d_events)):
        calls = _calls_of(run)
        (row,) = await _rows(
            database_url, "SELECT status FROM runs WHERE id = $1 AND status <> 'running'", run["id"], 1
        )
        assert row["status"] == "completed"
        recorded_calls = await _rows(
            database_url, "SELECT call_id, status FROM calls WHERE run_id = $1", run["id"], len(calls)
        )
        assert {r["call_id"] for r in recorded_calls} == calls
        recorded_events = await _rows(
            database_url, "SELECT type FROM events WHERE run_id = $1", run["id"], len(events)
        )
        assert len(recorded_events) == len(events)


def _read(path: Path | None) -> str:
    assert path is not None
    return path.read_text()


def _calls_of(run: dict[str, Any]) -> set[str]:
    if run["mode"] == "consortium":
        return {
            c["call_id"] for it in run["iterations"] for c in [*it["members"], it["arbiter"]] if c is not None
        }
    calls = {t["call_id"] for r in run["rounds"] for t in r["turns"]}
    calls |= {r["judge"]["call_id"] for r in run["rounds"] if r["judge"]}
    calls |= {c["call_id"] for r in run["rounds"] for c in r["convictions"]}
    if run["final"]:
        calls.add(run["final"]["call_id"])
    return calls


async def test_moot_eval_on_the_local_model_finishes_a_handful_of_questions(
    local_stack: Stack, tmp_path: Path
) -> None:
    """Issue 18: `moot eval` on the embedded model, a few generated arithmetic questions, one call
    against a vote of three. SmolLM2-135M is mostly wrong at arithmetic; what is checked is that
    every question is run, read and scored under both strategies and the report is written (the
    figures it gave are in docs/eval.md)."""
    import json
    import os
    import sys

    key = await local_key(local_stack.infrastructure.database_url, str(local_stack.data_dir))  # type: ignore[union-attr]
    env = {**os.environ, "MOOT_URL": local_stack.gateway_url, "MOOT_API_KEY": key}

    async def moot(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "moot.cli", *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    dataset = tmp_path / "arith.jsonl"
    assert (await moot("dataset", "arithmetic", "-n", "4", "-o", str(dataset)))[0] == 0
    code, out, err = await moot(
        "eval", str(dataset),
        "--strategy", "single=single:local;max_tokens=200",
        "--strategy", "vote3=vote:local:3;max_tokens=200",
        "--out", str(tmp_path / "report"), "--plot", "svg",
    )  # fmt: skip
    assert code == 0, (out, err)
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["status"] == "completed" and report["progress"] == {"done": 8, "total": 8}
    single, vote3 = report["report"]["strategies"]
    assert (single["questions"], vote3["questions"]) == (4, 4)
    assert single["calls"] == 4 and vote3["calls"] == 12
    assert 0.0 <= single["ci_low"] <= single["accuracy"] <= single["ci_high"] <= 1.0
    assert "| single |" in out and (tmp_path / "report" / "plot.svg").read_text().lstrip().startswith("<?xml")
    print(out)
