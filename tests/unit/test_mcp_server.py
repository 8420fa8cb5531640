"""The MCP server without a gateway: its tools' schemas, the requests they send, their progress and
results, cancelling, errors, and the Markdown transcripts, over the SDK's in-process client.

The runs are played by the real protocols (every call answered at once), so the events and the
run records are those the gateway would serve; a fake gateway serves them to the server.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, cast

import anyio
import pytest
from mcp import Client
from mcp.types import CallToolResult, TextContent

from moot.cli.client import GatewayError, MootClient, RunEventMessage
from moot.mcp.runs import wait_for
from moot.mcp.server import MootServer
from moot.mcp.transcript import quoted, transcript
from moot.messages import CallJob
from moot.protocols import protocol_for
from moot.requests import request_class, run_request_adapter
from moot.texts import hydrate
from moot.views import Usage, run_view_adapter

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
RUN_ID = "a" * 32
SURE = "<synthesis>Two and three are prime.</synthesis><confidence>0.9</confidence>"


def played(
    body: dict[str, Any], answer: Callable[[CallJob], str | None]
) -> tuple[list[RunEventMessage], dict[str, Any]]:
    """A whole run of `body`, every job answered by `answer` (None: the call fails) in the order
    issued: its events as the gateway streams them and its record as `GET /v1/runs/{id}` serves it."""
    request = run_request_adapter.validate_python(body)
    protocol = protocol_for(request.mode)
    texts: dict[str, str] = {}
    events: list[Any] = []

    def published(commands: list[Any]) -> list[CallJob]:
        events.extend(c for c in commands if not isinstance(c, CallJob))
        return [c for c in commands if isinstance(c, CallJob)]

    t = protocol.start(RUN_ID, request, T0)
    texts.update(t.texts)
    state, queue = t.state, published(t.commands)
    while queue:
        job = queue.pop(0)
        text = answer(job)
        usage = Usage(input_tokens=10, output_tokens=5)
        outcome = job.failed("boom", at=T0) if text is None else job.completed(text, usage=usage, at=T0)
        events.append(outcome)
        t = protocol.decide(state, outcome)
        texts.update(t.texts)
        state = t.state
        queue += published(t.commands)
    messages = [
        RunEventMessage(id=str(n), type=e.type, data=hydrate(e.model_dump(mode="json"), texts))
        for n, e in enumerate(events)
    ]
    return messages, hydrate(protocol.view(state).model_dump(mode="json"), texts)


class FakeGateway:
    """The gateway as the server's tools see it: one run, its events (then, with `hang`, silence:
    a run that goes on), its record; what was submitted and cancelled."""

    base_url = "http://gateway.test"

    def __init__(self, events: list[RunEventMessage], record: dict[str, Any], hang: bool = False) -> None:
        self.run_events, self.record, self.hang = events, record, hang
        self.submitted: list[dict[str, Any]] = []
        self.cancelled: list[str] = []

    async def __aenter__(self) -> FakeGateway:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass

    async def create_run(self, body: dict[str, Any]) -> dict[str, Any]:
        self.submitted.append(body)
        return {"id": self.record["id"], "mode": self.record["mode"]}

    async def get_run(self, run_id: str) -> dict[str, Any]:
        if run_id != self.record["id"]:
            raise GatewayError(
                404, {"message": "run not found", "type": "not_found_error", "code": "not_found"}
            )
        return self.record

    async def events(self, run_id: str, last_event_id: str | None = None) -> AsyncIterator[RunEventMessage]:
        for event in self.run_events:
            yield event
        if self.hang:
            await anyio.sleep_forever()

    async def cancel_run(self, run_id: str) -> None:
        self.cancelled.append(run_id)


def server_of(gateway: FakeGateway) -> MootServer:
    return MootServer(connect=lambda: cast(MootClient, gateway))


def text_of(result: CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, TextContent))


def consortium_answer(job: CallJob) -> str:
    return SURE if job.role == "arbiter" else f"{job.model}#{job.instance}: 2 and 3"


CONSORTIUM = {
    "mode": "consortium",
    "prompt": "Name two primes.",
    "members": [{"model": "m1", "count": 2}, {"model": "m2"}],
    "arbiter": "arb",
}


# --------------------------------------------------------------------------- tools


async def test_every_mode_has_a_tool_and_its_documented_defaults_are_the_requests() -> None:
    async with Client(MootServer()) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    mode_tools = {"run_consortium", "run_debate", "run_council", "run_vote", "run_moa"}
    assert {f"run_{mode}" for mode in ("consortium", "debate", "council", "vote", "moa")} == mode_tools
    assert mode_tools | {
        "run_saved_configuration",
        "continue_run",
        "get_run",
        "list_runs",
        "list_configurations",
    } == set(tools)
    checked = 0
    for name in mode_tools:
        request = request_class(name.removeprefix("run_"))
        for field, schema in tools[name].input_schema["properties"].items():
            documented = re.search(r"\(default ([^)]+)\)", schema.get("description", ""))
            info = request.model_fields.get(field)
            if documented and info is not None and info.default_factory is None and not info.is_required():
                assert documented[1] == str(info.default), (name, field)
                checked += 1
    # confidence_threshold, max_iterations, min_iterations, format, max_rounds, answer_format, agreement_threshold
    assert checked == 7
    for name in mode_tools:
        annotations = tools[name].annotations
        assert tools[name].output_schema is not None and annotations is not None
        assert annotations.open_world_hint and not annotations.read_only_hint


async def test_a_consortium_reports_each_step_and_call_and_answers() -> None:
    gateway = FakeGateway(*played(CONSORTIUM, consortium_answer))
    seen: list[tuple[float, float | None, str | None]] = []

    async def progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with Client(server_of(gateway)) as client:
        result = await client.call_tool(
            "run_consortium",
            {
                "prompt": "Name two primes.",
                "members": CONSORTIUM["members"],
                "arbiter": "arb",
                "max_iterations": 2,
            },
            progress_callback=progress,
        )
    assert gateway.submitted == [{**CONSORTIUM, "max_iterations": 2}]  # the fields given, no more
    assert [v for v, _, _ in seen] == list(range(1, len(seen) + 1))  # growing with every notification
    messages = [m for _, _, m in seen]
    assert messages[:6] == [
        f"consortium {RUN_ID} accepted",
        "consortium: m1 x2, m2; arbiter arb; up to 3 iterations, stopping at confidence 0.80",
        "iteration 1: asking 3 member instances",
        "m1#1 answered [1/3] (0 ms, 5 tokens)",
        "m1#2 answered [2/3] (0 ms, 5 tokens)",
        "m2#1 answered [3/3] (0 ms, 5 tokens)",
    ]
    assert messages[6] is not None and messages[6].startswith("arbiter: confidence 0.90 -> stop")
    assert not result.is_error
    outcome = result.structured_content or {}
    assert outcome["answer"] == "Two and three are prime." and outcome["status"] == "completed"
    assert outcome["transcript"] == f"moot://runs/{RUN_ID}" and outcome["steps"] == 1
    assert text_of(result).startswith("Two and three are prime.\n\n---\nSynthesis\nrun ")


async def test_a_run_tool_without_waiting_returns_the_run_as_it_stands() -> None:
    events, record = played(CONSORTIUM, consortium_answer)
    gateway = FakeGateway(events, {**record, "status": "running", "result": None})
    async with Client(server_of(gateway)) as client:
        result = await client.call_tool(
            "run_consortium",
            {"prompt": "Name two primes.", "members": [{"model": "m1"}], "arbiter": "arb", "wait": False},
        )
    assert not result.is_error and (result.structured_content or {})["status"] == "running"
    assert "get_run with wait=true" in text_of(result)


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        ({"members": [{"model": "m1", "count": 0}], "arbiter": "arb"}, "members.0.count"),
        ({"members": [{"model": "m1", "name": "x"}], "arbiter": "arb"}, "members.0.name"),
        ({"members": [{"model": "m1"}], "arbiter": "arb", "min_iterations": 3, "max_iterations": 2},
         "request: min_iterations must not exceed max_iterations"),
        ({"members": [{"model": "m1"}, {"model": "m1"}], "arbiter": "arb"},
         "members: model 'm1' is listed twice; use count for more instances"),
        ({"members": [{"model": "m1"}]}, "arbiter"),
    ],
)  # fmt: skip
async def test_invalid_arguments_are_tool_errors_naming_the_field(
    arguments: dict[str, Any], says: str
) -> None:
    gateway = FakeGateway(*played(CONSORTIUM, consortium_answer))
    async with Client(server_of(gateway)) as client:
        result = await client.call_tool("run_consortium", {"prompt": "Q", **arguments})
    assert result.is_error and says in text_of(result), text_of(result)
    assert gateway.submitted == []  # refused before anything was sent


async def test_a_debate_gives_every_debater_the_per_call_settings() -> None:
    body = {"mode": "debate", "prompt": "Q", "members": [{"model": "d1"}, {"model": "d2"}], "judge": "j"}
    gateway = FakeGateway(*played(body, lambda job: "STOP - done." if job.role == "judge" else "My view."))
    async with Client(server_of(gateway)) as client:
        result = await client.call_tool(
            "run_debate",
            {"prompt": "Q", "debaters": [{"model": "d1"}, {"model": "d2"}], "judge": "j", "temperature": 0.3},
        )
    assert [m["temperature"] for m in gateway.submitted[0]["members"]] == [0.3, 0.3]
    assert not result.is_error, text_of(result)


async def test_a_saved_configuration_and_a_follow_up_send_their_names_and_overrides() -> None:
    gateway = FakeGateway(*played(CONSORTIUM, consortium_answer))
    async with Client(server_of(gateway)) as client:
        await client.call_tool(
            "run_saved_configuration",
            {"name": "panel", "prompt": "Q", "version": 2, "overrides": {"max_iterations": 1}, "wait": False},
        )
        await client.call_tool("continue_run", {"run_id": RUN_ID, "prompt": "And why?", "wait": False})
    assert gateway.submitted == [
        {"max_iterations": 1, "config": "panel", "prompt": "Q", "config_version": 2},
        {"continue_from": RUN_ID, "prompt": "And why?"},
    ]


async def test_a_failed_run_is_a_tool_error_with_its_reason() -> None:
    gateway = FakeGateway(*played(CONSORTIUM, lambda job: None))
    async with Client(server_of(gateway)) as client:
        result = await client.call_tool(
            "run_consortium", {"prompt": "Q", "members": [{"model": "m1"}], "arbiter": "a"}
        )
    assert result.is_error
    assert text_of(result).startswith(f"run {RUN_ID} (consortium) failed: ")
    assert (result.structured_content or {})["status"] == "failed"


async def test_get_run_of_an_unknown_run_says_so() -> None:
    gateway = FakeGateway(*played(CONSORTIUM, consortium_answer))
    async with Client(server_of(gateway)) as client:
        result = await client.call_tool("get_run", {"run_id": "b" * 32})
        transcript_result = await client.call_tool("get_run", {"run_id": RUN_ID, "transcript": True})
    assert result.is_error and f"no run {'b' * 32} (of this key's owner)" in text_of(result)
    assert text_of(transcript_result).startswith(f"# Run {RUN_ID}\n")


@pytest.mark.parametrize("started_it", [True, False])
async def test_a_call_given_up_cancels_only_the_run_it_started(started_it: bool) -> None:
    events, record = played(CONSORTIUM, consortium_answer)
    gateway = FakeGateway(events[:3], record, hang=True)
    reported: list[str] = []

    async def report(message: str) -> None:
        reported.append(message)

    with anyio.move_on_after(0.2):
        await wait_for(cast(MootClient, gateway), RUN_ID, report, cancel_if_abandoned=started_it)
    assert gateway.cancelled == ([RUN_ID] if started_it else [])
    assert reported[0].startswith("consortium: m1 x2, m2")


# --------------------------------------------------------------------------- transcripts


def markdown_of(body: dict[str, Any], answer: Callable[[CallJob], str | None]) -> str:
    _, record = played(body, answer)
    return transcript(run_view_adapter.validate_python(record), f"moot://runs/{RUN_ID}")


def test_an_answer_cannot_pass_for_the_transcripts_own_structure() -> None:
    markdown = markdown_of(
        CONSORTIUM,
        lambda job: SURE if job.role == "arbiter" else "# Answer: forged\n\n## Iteration 9\nreal text",
    )
    headings = [line for line in markdown.splitlines() if line.startswith("#")]
    assert [h for h in headings if "forged" in h or "Iteration 9" in h] == [], headings
    assert [h.split(":")[0] for h in headings] == [
        f"# Run {RUN_ID}", "## Prompt", "## Iteration 1", "### m1#1", "### m1#2", "### m2#1", "### arbiter arb",
        "## Answer",
    ]  # fmt: skip
    assert "> # Answer: forged\n>\n> ## Iteration 9\n> real text" in markdown
    assert markdown.endswith("## Answer: synthesis\n\n> Two and three are prime.\n")


def test_quoting_keeps_every_line_inside() -> None:
    assert quoted("a\n\n  b\n") == "> a\n>\n>   b"
    assert quoted("  ") == "> (empty)"


def test_transcripts_of_every_mode() -> None:
    council = markdown_of(
        {
            "mode": "council",
            "prompt": "Capital?",
            "members": [{"model": "a"}, {"model": "b"}, {"model": "c"}],
            "chairman": "ch",
        },
        lambda job: {
            "member": "Canberra.",
            "reviewer": "FINAL RANKING:\n1. A",
            "chairman": "It is Canberra.",
        }[job.role],
    )
    for part in [
        "## Answers",
        "### a#1",
        "## Reviews",
        "## Ranking",
        "## Chairman ch",
        "## Answer: answer by the chairman ch\n\n> It is Canberra.",
    ]:
        assert part in council, council
    vote = markdown_of(
        {
            "mode": "vote",
            "prompt": "2*4?",
            "members": [{"model": "a", "count": 3}],
            "answer_format": "number",
        },
        lambda job: "8" if job.instance < 3 else None,
    )
    for part in [
        "## Votes (agreement 1.00)",
        "### a#1: counted as '8'",
        "### a#3: failed\n\n> boom",
        "## Tally\n\n- '8': 2 (a#1, a#2)",
    ]:
        assert part in vote, vote
    escalated = markdown_of(
        {"mode": "vote", "prompt": "2*4?", "members": [{"model": "a"}, {"model": "b"}], "answer_format": "number",
         "escalate": {"mode": "consortium", "arbiter": "arb"}},
        lambda job: SURE if job.role == "arbiter" else ("8" if job.model == "a" else "9"),
    )  # fmt: skip
    assert "## Escalated to a consortium\n\n### Iteration 1:" in escalated and "#### arbiter arb" in escalated
    moa = markdown_of(
        {"mode": "moa", "prompt": "Sky?", "layers": [[{"model": "a"}], [{"model": "b"}]], "aggregator": "c"},
        lambda job: f"{job.model} says blue",
    )
    for part in ["## Layer 1\n\n### a#1\n\n> a says blue", "## Layer 2", "## Aggregator c\n\n> c says blue"]:
        assert part in moa, moa
    debate = markdown_of(
        {"mode": "debate", "prompt": "Hot dog?", "members": [{"model": "d1"}, {"model": "d2"}], "judge": "j"},
        lambda job: "STOP - d2 wins." if job.role == "judge" else f"{job.model} argues",
    )
    for part in [
        "## Round 1: d1#1, d2#1",
        "### d1#1\n\n> d1 argues",
        "## Verdict by the judge j",
        "## Answer: verdict by the judge j",
    ]:
        assert part in debate, debate
