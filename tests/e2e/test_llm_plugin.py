"""The `llm` plugin (clients/llm-moot) as its users run it: the real `llm` CLI, as a process, against
the e2e stack's gateway.

Each test gets its own `llm` home (`LLM_USER_PATH`: keys, logs), so the user's logs are never
touched, and loads only this plugin (`LLM_LOAD_PLUGINS`: another installed plugin cannot change
what `llm` does here). The key belongs to an owner of its own, so `llm models` lists exactly
the configurations these tests save.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from moot.cli.client import MootClient
from moot.devstack.stack import Stack
from moot.records.accounts import NO_LIMITS, create_key
from support import follow

# Seconds per test (a real client program per test): their own phase of scripts/test.
pytestmark = pytest.mark.clients

SYNTHESIS = "Synthesis by arb"
# judge_stop's every answer, its streamed verdict included (tests/e2e/conftest.py).
VERDICT = "STOP - the positions are clear and the stronger one has emerged."


@dataclass
class Result:
    code: int
    out: str
    err: str

    def __str__(self) -> str:  # what an assertion shows
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


@pytest.fixture(scope="module")
async def plugin_key(stack: Stack, database_url: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        _, key = await create_key(conn, f"llm-{secrets.token_hex(4)}", limits=NO_LIMITS)
        return key
    finally:
        await conn.close()


@pytest.fixture
def env(stack: Stack, plugin_key: str, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "MOOT_URL": stack.gateway_url,
        "MOOT_API_KEY": plugin_key,
        "LLM_USER_PATH": str(tmp_path / "llm"),
        "LLM_LOAD_PLUGINS": "llm-moot",
    }


@pytest.fixture
async def client(stack: Stack, plugin_key: str) -> AsyncIterator[MootClient]:
    async with MootClient(stack.gateway_url, api_key=plugin_key) as c:
        yield c


async def run(env: dict[str, str], *argv: str, stdin: str | None = None) -> Result:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin is not None else None), 60)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def llm(env: dict[str, str], *args: str, stdin: str | None = None) -> Result:
    return await run(env, sys.executable, "-m", "llm", *args, stdin=stdin)


async def last_logged(env: dict[str, str]) -> dict[str, Any]:
    logs = await llm(env, "logs", "-n", "1", "--json")
    assert logs.code == 0, logs
    [entry] = json.loads(logs.out)
    assert isinstance(entry, dict)
    return entry


async def test_run_prints_the_synthesis(env: dict[str, str], tmp_path: Path) -> None:
    output = tmp_path / "run.json"
    result = await llm(
        env, "moot", "run", "Name a prime number.", "-m", "m1:2", "-m", "m2", "--arbiter", "arb",
        "--max-iterations", "1", "--output", str(output), stdin="Only odd ones, please.\n",
    )  # fmt: skip
    assert result.code == 0, result
    assert result.out.startswith(SYNTHESIS), result
    record = json.loads(output.read_text())
    assert result.err.splitlines()[0] == f"consortium {record['id']}", result
    assert "iteration 1: confidence " in result.err and "-> stop" in result.err, result
    # stdout is the answer alone; piped stdin went after the prompt, a blank line between.
    assert result.out == record["result"]["synthesis"] + "\n"
    assert record["request"]["prompt"] == "Name a prime number.\n\nOnly odd ones, please."
    assert record["request"]["members"] == [{"model": "m1", "count": 2}, {"model": "m2", "count": 1}]
    assert record["request"]["max_iterations"] == 1


async def test_run_is_the_default_command_and_raw_prints_the_record(env: dict[str, str]) -> None:
    result = await llm(env, "moot", "-m", "m3", "--arbiter", "arb", "--raw", stdin="What is 2 + 2?")
    assert result.code == 0, result
    answer, trace = result.out.split("\n\n--- Execution Trace ---\n")
    record = json.loads(trace)
    assert answer == record["result"]["synthesis"] and answer.startswith(SYNTHESIS)
    assert record["status"] == "completed" and record["request"]["prompt"] == "What is 2 + 2?"


async def test_a_saved_configuration_is_a_model_logged_and_continued(
    env: dict[str, str], client: MootClient
) -> None:
    saved = await llm(env, "moot", "save", "panel", "-m", "m1:2", "-m", "m2", "--arbiter", "arb", "--max-iterations", "1")  # fmt: skip
    assert saved.code == 0 and saved.out == "saved panel version 1 (consortium)\n", saved
    models = await llm(env, "models")
    assert models.code == 0 and "moot consortium: panel" in models.out, models

    first = await llm(env, "-m", "panel", "What is 2 + 2?")
    assert first.code == 0 and first.out.startswith(SYNTHESIS), first
    logged = await last_logged(env)
    assert logged["model"] == "panel" and logged["response"] == first.out.rstrip("\n")
    run_id = logged["response_json"]["run_id"]
    record = await client.get_run(run_id)
    assert (
        record["config"] == {"name": "panel", "version": 1}
        and record["request"]["prompt"] == "What is 2 + 2?"
    )
    assert logged["response_json"]["usage"] == record["usage"]
    assert record["result"]["synthesis"] == logged["response"]

    # `llm -c` continues the run's conversation on the gateway, with this turn's option.
    second = await llm(env, "-c", "-o", "max_iterations", "2", "And why?")
    assert second.code == 0 and second.out.startswith(SYNTHESIS), second
    logged_again = await last_logged(env)
    assert logged_again["model"] == "panel" and logged_again["conversation_id"] == logged["conversation_id"]
    continued = await client.get_run(logged_again["response_json"]["run_id"])
    assert continued["continued_from"] == run_id
    assert continued["request"]["prompt"] == "And why?" and continued["request"]["max_iterations"] == 2
    assert continued["request"]["history"] == [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": record["result"]["synthesis"]},
    ]


async def test_a_saved_debate_streams_its_verdict(env: dict[str, str], client: MootClient) -> None:
    saved = await llm(
        env, "moot", "save", "court", "--debate", "-m", "d1", "-m", "d2", "--judge", "judge_stop"
    )
    assert saved.code == 0 and saved.out == "saved court version 1 (debate)\n", saved

    answered = await llm(env, "-m", "court", "Is a hot dog a sandwich?")
    assert answered.code == 0 and answered.out == VERDICT + "\n", answered
    logged = await last_logged(env)
    assert logged["model"] == "court" and logged["response"] == VERDICT

    # Through llm's Python API: the verdict arrives chunk by chunk, one per final.chunk event.
    script = (
        "import json, llm; r = llm.get_model('court').prompt('Is water wet?'); chunks = list(r);"
        "print(json.dumps({'chunks': chunks, 'run_id': r.response_json['run_id']}))"
    )
    streamed = await run(env, sys.executable, "-c", script)
    assert streamed.code == 0, streamed
    shown = json.loads(streamed.out)
    deltas = [e.data["delta"] for e in await follow(client, shown["run_id"]) if e.type == "final.chunk"]
    assert len(deltas) > 1 and shown["chunks"] == deltas and "".join(deltas) == VERDICT


async def test_debate_streams_the_verdict_to_stdout(env: dict[str, str], tmp_path: Path) -> None:
    output = tmp_path / "debate.json"
    result = await llm(
        env, "moot", "debate", "Is a hot dog a sandwich?", "-m", "d1", "-m", "d2", "--judge", "judge_stop",
        "--max-rounds", "3", "--system", "Argue briefly.", "--output", str(output), "--no-stdin",
    )  # fmt: skip
    assert result.code == 0, result
    assert result.out == VERDICT + "\n", result
    for line in ["round 1 done", "round 2 done", "judge judge_stop: stop"]:
        assert line in result.err, result
    record = json.loads(output.read_text())
    assert record["result"]["text"] == VERDICT and record["result"]["by"] == "judge"
    assert [m["system"] for m in record["request"]["members"]] == ["Argue briefly.", "Argue briefly."]


async def test_list_and_remove(env: dict[str, str]) -> None:
    saved = await llm(env, "moot", "save", "short-lived", "-m", "m1", "--arbiter", "arb", "--confidence-threshold", "0.5")  # fmt: skip
    assert saved.code == 0, saved
    listed, as_json = await asyncio.gather(llm(env, "moot", "list"), llm(env, "moot", "list", "--json"))
    assert listed.code == 0, listed
    assert (
        "- short-lived (consortium, version 1): m1; arbiter arb; confidence 0.50; iterations 1-3\n"
        in listed.out
    ), listed
    assert "short-lived" in [c["name"] for c in json.loads(as_json.out)]

    removed = await llm(env, "moot", "remove", "short-lived")
    assert removed.code == 0 and removed.out == "removed short-lived\n", removed
    listed_after, models_after, again = await asyncio.gather(
        llm(env, "moot", "list"), llm(env, "models"), llm(env, "moot", "remove", "short-lived")
    )
    assert "short-lived" not in listed_after.out and "short-lived" not in models_after.out
    assert again.code == 1 and "not found" in again.err, again


async def test_refusals_and_failures_say_why(env: dict[str, str]) -> None:
    unknown, failed, misplaced = await asyncio.gather(
        llm(env, "moot", "run", "p", "-m", "m1", "--arbiter", "no-such-model"),
        llm(env, "moot", "run", "p", "-m", "broken:2", "--arbiter", "arb"),
        llm(env, "moot", "save", "x", "-m", "m1", "--arbiter", "arb", "--max-rounds", "2"),
    )
    assert unknown.code == 2 and "no-such-model" in unknown.err, unknown
    assert failed.code == 1 and "failed: every member call failed in iteration 1" in failed.err, failed
    assert misplaced.code == 2 and "--max-rounds: not an option of a consortium" in misplaced.err, misplaced


async def test_llm_keeps_working_when_the_gateway_is_down(env: dict[str, str]) -> None:
    down = {**env, "MOOT_URL": "http://127.0.0.1:9"}
    models = await llm(down, "models")
    assert models.code == 0, models
    assert "llm-moot: no moot models: cannot reach the moot gateway at http://127.0.0.1:9" in models.err
    assert "moot " not in models.out
    listed = await llm(down, "moot", "list")
    assert listed.code == 1 and "cannot reach the moot gateway" in listed.err, listed
