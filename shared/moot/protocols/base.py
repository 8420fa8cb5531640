"""What every protocol module provides, and what a transition returns."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from types import MappingProxyType
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from pydantic import BaseModel

from moot.messages import (
    AnyRunEvent,
    CallJob,
    CancelRequested,
    DeadLettered,
    DeadlinePassed,
    JobMessage,
    RunCancelled,
    RunCompleted,
    RunFailed,
)
from moot.requests import ChatMessage, RunMeta
from moot.texts import ImagePart, Parts, TextSink, compose, join
from moot.views import ConsortiumView, DebateView

S = TypeVar("S", bound=BaseModel)

# A command is a message to publish: a call job for the workers, or a run event.
Command = CallJob | AnyRunEvent


class Transition(NamedTuple, Generic[S]):
    """The new state, the commands to publish, and the texts both refer to (by SHA-256), which the
    caller stores before it writes the state or publishes a command (`moot.texts`)."""

    state: S
    commands: list[Command]
    texts: Mapping[str, str] = MappingProxyType({})


class RunProtocol(Protocol):
    """A protocol module (`moot.protocols.consortium`, ...) seen from the services."""

    State: type[BaseModel]

    def start(
        self, run_id: str, request: Any, at: datetime, meta: RunMeta | None = None
    ) -> Transition[Any]: ...

    def decide(self, state: Any, event: Any) -> Transition[Any]: ...

    def view(self, state: Any) -> ConsortiumView | DebateView: ...


def cancel(
    state: Any, event: CancelRequested, view: Callable[[Any], ConsortiumView | DebateView]
) -> Transition[Any]:
    """Any protocol's run, cancelled where it stands: no new jobs, a final `run.cancelled`.

    Like every end event it carries the run's view as one stored document: a large run's view is
    hundreds of kilobytes; readers hydrate it back (`moot.runtime.textstore.hydrated`).
    """
    if state.status != "running":
        return Transition(state, [])
    state = state.model_copy(deep=True)
    state.status, state.reason, state.finished_at = "cancelled", event.reason, event.at
    sink = TextSink()
    cancelled = RunCancelled(
        run_id=state.run_id, reason=event.reason, run=sink.document(view(state)), at=event.at
    )
    return Transition(state, [cancelled], sink.texts)


def end_at_deadline(
    state: Any,
    event: DeadlinePassed,
    view: Callable[[Any], ConsortiumView | DebateView],
    where: str,
    best: tuple[Any, str] | None = None,
    announce: Callable[[Any, str], list[Command]] | None = None,
) -> Transition[Any]:
    """Any protocol's run, ended at its deadline where it stands: no new jobs, `stop_reason: deadline`.

    `where` says how far it got ("during iteration 2"). With `best` (a result, and what it is) the
    run is `completed` with that result; otherwise it is `failed`. `announce` gives the protocol's
    own events before the end event (a debate's `error`). Nothing changes before the deadline, nor
    for a run that has ended: two sweepers deciding the same run end it once (the CAS write).
    """
    if state.status != "running" or state.deadline is None or event.at < state.deadline:
        return Transition(state, [])
    state = state.model_copy(deep=True)
    seconds = round((state.deadline - state.created_at).total_seconds())
    state.stop_reason, state.finished_at = "deadline", event.at
    sink = TextSink()
    if best is not None:
        result, what = best
        state.status, state.result = "completed", result
        state.reason = f"deadline of {seconds} s passed {where}; the run ends with {what}"
    else:
        state.status = "failed"
        state.reason = f"deadline of {seconds} s passed {where}, before any result"
    commands = announce(state, state.reason) if announce else []
    end = RunCompleted if state.status == "completed" else RunFailed
    commands.append(
        end(run_id=state.run_id, reason=state.reason, run=sink.document(view(state)), at=event.at)
    )
    return Transition(state, commands, sink.texts)


def dead_lettered(
    state: Any,
    event: DeadLettered,
    view: Callable[[Any], ConsortiumView | DebateView],
    announce: Callable[[Any, str], list[Command]] | None = None,
) -> Transition[Any]:
    """Any protocol's run, failed where it stands because one of its messages went to the
    dead-letter stream: no new jobs, a final `run.failed` with the reason (after the protocol's
    own events, `announce`: a debate's `error`). A run that has ended stays as it is."""
    if state.status != "running":
        return Transition(state, [])
    state = state.model_copy(deep=True)
    state.status, state.reason, state.finished_at = "failed", f"dead letter: {event.reason}", event.at
    sink = TextSink()
    commands = announce(state, state.reason) if announce else []
    commands.append(
        RunFailed(run_id=state.run_id, reason=state.reason, run=sink.document(view(state)), at=event.at)
    )
    return Transition(state, commands, sink.texts)


def stored_history(history: list[ChatMessage], sink: TextSink) -> list[JobMessage]:
    """The conversation a run continues, its long texts (and data URLs) by reference.

    A run stores it once more, whole, as one document (`TextSink.document`) that each of its jobs
    quotes with a single reference in `CallJob.messages`: 200 messages cost a job ~100 bytes, not
    one reference per message.
    """
    stored: list[JobMessage] = []
    for m in history:
        if isinstance(m.content, str):
            content: Parts = [sink.text(m.content)] if m.content else []
        else:
            content = []
            for part in m.content:
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "image_url":
                    url = (part.get("image_url") or {}).get("url", "")
                    content.append(ImagePart(url=sink.text(str(url))))
                elif part.get("text"):
                    content.append(sink.text(str(part["text"])))
        stored.append(JobMessage(role=m.role, content=content))
    return stored


def conversation_parts(history: list[JobMessage]) -> Parts:
    """Earlier turns of the conversation as text (`ROLE: ...` lines), for prompts that quote it."""
    return join(
        (
            compose(
                "{role}: {content}",
                role=m.role.upper(),
                content=[p for p in m.content if not isinstance(p, ImagePart)],
            )
            for m in history
        ),
        "\n",
    )
