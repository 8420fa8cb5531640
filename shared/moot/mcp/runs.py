"""What the MCP tools do with a run: follow it with progress notifications and tell how it ended.

A tool that starts a run waits for its answer: it follows the run's events (resuming the stream
with Last-Event-ID when it drops, as the CLI does) and turns each into one progress message,
the line the CLI would print for it (`moot.cli.render.Progress`). When the MCP client cancels
the call, the run it started is cancelled on the gateway too; a client that only watches a run
(`get_run` with `wait`) leaves it running.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
import httpx
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent
from pydantic import BaseModel, Field

from moot.cli.client import GatewayError, MootClient
from moot.cli.render import Progress, answer_note, answer_title, outcome_line
from moot.cli.runs import RECONNECTS, view_of
from moot.mcp.transcript import transcript
from moot.messages import TERMINAL_EVENT_TYPES
from moot.requests import Mode
from moot.views import ConfigRef, RunStatus, StopReason, Usage

if TYPE_CHECKING:
    from moot.views import RunView

# One progress message to the MCP client.
Report = Callable[[str], Awaitable[None]]
# How long cancelling a run may take once the client gave up on the call.
CANCEL_SECONDS = 10.0


def transcript_uri(run_id: str) -> str:
    """The MCP resource holding the run's transcript."""
    return f"moot://runs/{run_id}"


class RunOutcome(BaseModel):
    """A run as a tool reports it: where it stands, its answer, and where its transcript is."""

    run_id: str
    mode: Mode
    status: RunStatus
    reason: str | None = Field(description="Why the run ended as it did (or what it was doing).")
    stop_reason: StopReason | None = Field(
        description="`deadline` or `budget` when the run was stopped short of its own end."
    )
    answer: str | None = Field(
        description="The run's answer (a synthesis, a verdict, a chairman's, a vote's or an aggregator's);"
        " none while it runs, when it failed, or for a display-only debate."
    )
    answer_by: str | None = Field(description="What the answer is and who wrote it.")
    steps: int = Field(description="Iterations, rounds, stages or layers begun.")
    usage: Usage
    config: ConfigRef | None = Field(description="The saved configuration the run was started from.")
    continued_from: str | None = Field(description="The run whose conversation this one continues.")
    transcript: str = Field(description="The URI of the run's transcript resource (Markdown).")


def outcome(run: RunView) -> RunOutcome:
    return RunOutcome(
        run_id=run.id,
        mode=run.mode,
        status=run.status,
        reason=run.reason,
        stop_reason=run.stop_reason,
        answer=run.answer,
        answer_by=answer_title(run) if run.answer is not None else None,
        steps=run.steps,
        usage=run.usage,
        config=run.config,
        continued_from=run.continued_from,
        transcript=transcript_uri(run.id),
    )


def _told(run: RunView, full_transcript: bool) -> str:
    """The run for the model reading the tool's result: its answer first, then the facts."""
    uri = transcript_uri(run.id)
    facts = f"run {run.id} ({run.mode}) {outcome_line(run)}\ntranscript: {uri}"
    if full_transcript:
        return transcript(run, uri)
    if run.status == "running":
        return f"{facts}\nThe run is still going: get_run with wait=true follows it to its answer."
    if run.answer is not None:
        title = answer_title(run)
        caption = title[0].upper() + title[1:] + (f". {note}" if (note := answer_note(run)) else "")
        return f"{run.answer.strip()}\n\n---\n{caption}\n{facts}"
    if run.status == "completed":  # a display-only debate: the debate itself is the result
        return f"{transcript(run, uri)}\n---\n{facts}"
    return facts


def tool_result(run: RunView, full_transcript: bool = False) -> CallToolResult:
    """A run tool's result: readable text and the `RunOutcome`; an error unless the run completed
    or is still running."""
    return CallToolResult(
        content=[TextContent(text=_told(run, full_transcript))],
        structured_content=outcome(run).model_dump(mode="json"),
        is_error=run.status in ("failed", "cancelled"),
    )


async def follow(client: MootClient, run_id: str, report: Report) -> None:
    """Report the run's events until its final one, resuming the stream when it drops."""
    said: list[str] = []
    progress = Progress(said.append, lambda _chunk: None)  # the verdict's text comes with the result
    last_id: str | None = None
    for attempt in range(RECONNECTS + 1):
        try:
            async for event in client.events(run_id, last_id):
                last_id = event.id
                progress.show(event)
                for line in said:
                    await report("\n".join(part.strip() for part in line.strip().splitlines()))
                said.clear()
                if event.type in TERMINAL_EVENT_TYPES:
                    return
        except (httpx.RemoteProtocolError, httpx.ReadError):
            if attempt == RECONNECTS:
                raise
        await anyio.sleep(0.5)
    raise ToolError(
        f"the event stream of run {run_id} kept ending before the run did: get_run follows it again"
    )


async def wait_for(client: MootClient, run_id: str, report: Report, *, cancel_if_abandoned: bool) -> RunView:
    """The run once it has ended, its progress reported on the way.

    With `cancel_if_abandoned`, a call the client cancels cancels the run (it was started for it).
    """
    try:
        await follow(client, run_id, report)
    except anyio.get_cancelled_exc_class():
        if cancel_if_abandoned:
            with (
                anyio.move_on_after(CANCEL_SECONDS, shield=True),
                contextlib.suppress(GatewayError, httpx.HTTPError),
            ):
                await client.cancel_run(run_id)  # 409 when it ended meanwhile
        raise
    return view_of(await client.get_run(run_id))
