"""`moot mcp` as MCP clients use it: the official SDK's own client over stdio (the server spawned as
a subprocess, as assistants and IDEs do) and over streamable HTTP, against the e2e stack.

Every scenario runs on both transports: the tools and their schemas, a consortium reporting its
progress and answering, a saved configuration run by name, a run started without waiting and
followed with get_run, a transcript resource, clear errors for bad input, and a cancelled call
cancelling its run.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, TextContent, TextResourceContents

from moot.cli.client import MootClient
from moot.devstack.model_server import ModelServer
from moot.devstack.stack import Stack, free_ports

# Seconds per test (a real client program per test): their own phase of scripts/test.
pytestmark = pytest.mark.clients

SYNTHESIS = "Synthesis by arb"  # what the test arbiter writes (tests/e2e/conftest.py)
VERDICT = "STOP - the positions are clear and the stronger one has emerged."
TRANSPORTS = ("stdio", "http")


@pytest.fixture(scope="module")
def env(stack: Stack, api_key: str) -> dict[str, str]:
    return {**os.environ, "MOOT_URL": stack.gateway_url, "MOOT_API_KEY": api_key}


@pytest.fixture(scope="module")
def http_url(env: dict[str, str]) -> Iterator[str]:
    """`moot mcp --transport http` running, for the module: its endpoint."""
    (port,) = free_ports(1)
    server = subprocess.Popen(
        [sys.executable, "-m", "moot.cli", "mcp", "--transport", "http", "--port", str(port)],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        for _ in range(200):
            assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
            try:
                httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.terminate()
        server.wait(10)


@asynccontextmanager
async def connected(transport: str, env: dict[str, str], http_url: str) -> AsyncIterator[ClientSession]:
    """An initialized session with `moot mcp` over `transport`."""
    if transport == "stdio":
        spawn = StdioServerParameters(command=sys.executable, args=["-m", "moot.cli", "mcp"], env=env)
        streams = stdio_client(spawn)
    else:
        streams = streamable_http_client(http_url)
    async with streams as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    param: str = request.param
    return param


@pytest.fixture
def session_of(transport: str, env: dict[str, str], request: pytest.FixtureRequest) -> Any:
    """`connected` for this test's transport (the HTTP server is started only when needed)."""
    url = request.getfixturevalue("http_url") if transport == "http" else ""
    return lambda: connected(transport, env, url)


class Progress:
    """The progress notifications of one call."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, float | None, str | None]] = []
        self.first = anyio.Event()

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        self.seen.append((progress, total, message))
        self.first.set()

    @property
    def messages(self) -> list[str]:
        return [m or "" for _, _, m in self.seen]


def text_of(result: CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, TextContent))


async def test_tools_and_the_transcript_template_are_listed(session_of: Any) -> None:
    async with session_of() as session:
        tools = {t.name: t for t in (await session.list_tools()).tools}
        templates = (await session.list_resource_templates()).resource_templates
    assert set(tools) == {
        "run_consortium", "run_debate", "run_council", "run_vote", "run_moa", "run_saved_configuration",
        "continue_run", "get_run", "list_runs", "list_configurations",
    }  # fmt: skip
    consortium = tools["run_consortium"]
    assert consortium.input_schema["required"] == ["prompt", "members", "arbiter"]
    assert "arbiter" in (consortium.description or "")
    assert consortium.output_schema is not None and "answer" in consortium.output_schema["properties"]
    assert tools["get_run"].annotations is not None and tools["get_run"].annotations.read_only_hint
    assert [(t.uri_template, t.mime_type) for t in templates] == [("moot://runs/{run_id}", "text/markdown")]


async def test_a_consortium_reports_progress_and_answers(
    session_of: Any, model_server: ModelServer, client: MootClient
) -> None:
    model_server.reset()  # arb: unsure in its first answer, sure in its second
    progress = Progress()
    async with session_of() as session:
        result = await session.call_tool(
            "run_consortium",
            {"prompt": "Name a prime number.", "members": [{"model": "m1", "count": 2}, {"model": "m2"}],
             "arbiter": "arb", "max_iterations": 3},
            progress_callback=progress,
        )  # fmt: skip
        assert not result.is_error, text_of(result)
        outcome = result.structured_content
        assert outcome is not None
        run_id = outcome["run_id"]
        shown = await session.call_tool("get_run", {"run_id": run_id})
        resource = await session.read_resource(f"moot://runs/{run_id}")
        listed = [str(r.uri) for r in (await session.list_resources()).resources]

    # One notification per step and per call, the progress growing with each.
    values = [p for p, _, _ in progress.seen]
    assert values == sorted(set(values)) and len(values) >= 12, progress.seen
    messages = progress.messages
    assert messages[0] == f"consortium {run_id} accepted"
    for line in [
        "consortium: m1 x2, m2; arbiter arb; up to 3 iterations, stopping at confidence 0.80",
        "iteration 1: asking 3 member instances",
        "iteration 2: asking 3 member instances",
    ]:
        assert line in messages, messages
    assert sum(m.startswith(("m1#1 answered", "m1#2 answered", "m2#1 answered")) for m in messages) == 6
    assert any(m.startswith("arbiter: confidence 0.50 -> iterate") for m in messages), messages

    assert outcome["status"] == "completed" and outcome["mode"] == "consortium" and outcome["steps"] == 2
    assert outcome["answer"].startswith(SYNTHESIS) and outcome["answer_by"] == "synthesis"
    assert outcome["transcript"] == f"moot://runs/{run_id}"
    assert text_of(result).startswith(SYNTHESIS)
    assert f"run {run_id} (consortium) completed: " in text_of(result)
    assert shown.structured_content == outcome

    (contents,) = resource.contents
    assert isinstance(contents, TextResourceContents) and contents.mime_type == "text/markdown"
    markdown = contents.text
    assert markdown.startswith(f"# Run {run_id}\n")
    for part in ["## Prompt\n\n> Name a prime number.", "## Iteration 1: confidence 0.50, iterate",
                 "## Iteration 2: confidence 0.90, stop", "### m1#2", "### m2#1", "### arbiter arb",
                 "## Answer: synthesis\n\n> " + SYNTHESIS]:  # fmt: skip
        assert part in markdown, markdown
    assert f"moot://runs/{run_id}" in listed  # recent runs are listed resources
    record = await client.get_run(run_id)
    assert record["result"]["synthesis"] == outcome["answer"]


async def test_a_saved_configuration_runs_by_name(
    session_of: Any, transport: str, client: MootClient
) -> None:
    name = f"mcp-court-{transport}"
    await client.save_config(
        name, {"mode": "debate", "members": [{"model": "d1"}, {"model": "d2"}], "judge": "judge_stop"}
    )
    progress = Progress()
    async with session_of() as session:
        configs = await session.call_tool("list_configurations", {})
        result = await session.call_tool(
            "run_saved_configuration",
            {"name": name, "prompt": "Is a hot dog a sandwich?", "overrides": {"max_rounds": 3}},
            progress_callback=progress,
        )
    listed = {c["name"]: c for c in (configs.structured_content or {})["configurations"]}
    assert listed[name]["mode"] == "debate" and listed[name]["version"] == 1
    assert name in text_of(configs) and "judge judge_stop" in text_of(configs)

    assert not result.is_error, text_of(result)
    outcome = result.structured_content or {}
    assert outcome["config"] == {"name": name, "version": 1} and outcome["mode"] == "debate"
    assert outcome["answer"].strip() == VERDICT and outcome["answer_by"] == "verdict by the judge judge_stop"
    assert "judge judge_stop: stop: " + VERDICT.removeprefix("STOP - ") in progress.messages
    assert "── verdict by the judge judge_stop ──" in progress.messages


async def test_a_run_started_without_waiting_is_followed_with_get_run(session_of: Any) -> None:
    progress = Progress()
    async with session_of() as session:
        started = await session.call_tool(
            "run_council",
            {"prompt": "What is the capital of Australia?", "members": [{"model": "slowpoke", "count": 3}],
             "chairman": "chair", "wait": False},
        )  # fmt: skip
        run_id = (started.structured_content or {})["run_id"]
        followed = await session.call_tool(
            "get_run", {"run_id": run_id, "wait": True}, progress_callback=progress
        )
        full = await session.call_tool("get_run", {"run_id": run_id, "transcript": True})
    assert not started.is_error and (started.structured_content or {})["status"] == "running"
    assert "get_run with wait=true" in text_of(started)
    outcome = followed.structured_content or {}
    assert outcome["status"] == "completed" and outcome["answer"] == "The capital of Australia is Canberra."
    assert outcome["answer_by"] == "answer by the chairman chair"
    assert (
        "answers: asking 3 members" in progress.messages
        and "chairman: chair writes the answer" in progress.messages
    )
    assert text_of(full).startswith(f"# Run {run_id}\n")
    assert "## Reviews" in text_of(full) and "## Chairman chair" in text_of(full)


async def test_bad_input_is_a_clear_tool_error(session_of: Any) -> None:
    async with session_of() as session:
        count = await session.call_tool(
            "run_consortium", {"prompt": "Q", "members": [{"model": "m1", "count": 0}], "arbiter": "arb"}
        )
        bounds = await session.call_tool(
            "run_consortium",
            {"prompt": "Q", "members": [{"model": "m1"}], "arbiter": "arb", "min_iterations": 3,
             "max_iterations": 2},
        )  # fmt: skip
        unknown = await session.call_tool(
            "run_debate",
            {"prompt": "Q", "debaters": [{"model": "d1"}, {"model": "nope"}], "judge": "judge_stop"},
        )
        missing = await session.call_tool("get_run", {"run_id": "0" * 32})
        no_config = await session.call_tool("run_saved_configuration", {"name": "mcp-none", "prompt": "Q"})
        with pytest.raises(MCPError, match="no run"):
            await session.read_resource(f"moot://runs/{'0' * 32}")
    assert count.is_error and "members.0.count" in text_of(count), text_of(count)
    assert bounds.is_error and "min_iterations must not exceed max_iterations" in text_of(bounds)
    assert unknown.is_error and "members.1.model: model 'nope' is not offered here" in text_of(unknown)
    assert missing.is_error and f"no run {'0' * 32}" in text_of(missing)
    assert no_config.is_error and "no saved configuration 'mcp-none'" in text_of(no_config)


async def test_a_cancelled_call_cancels_its_run(session_of: Any, client: MootClient) -> None:
    progress = Progress()
    async with session_of() as session:
        with anyio.move_on_after(30):
            async with anyio.create_task_group() as tg:

                async def call() -> None:
                    await session.call_tool(
                        "run_consortium",
                        {"prompt": "Q", "members": [{"model": "slowpoke"}], "arbiter": "arb"},
                        progress_callback=progress,
                    )

                tg.start_soon(call)
                await progress.first.wait()  # the run was accepted: its id is in the first message
                tg.cancel_scope.cancel()
        run_id = progress.messages[0].split()[1]
        for _ in range(100):
            record = await client.get_run(run_id)
            if record["status"] != "running":
                break
            await asyncio.sleep(0.1)
    assert record["status"] == "cancelled", record
