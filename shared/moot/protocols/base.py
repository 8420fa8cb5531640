"""What every protocol module provides, and what a transition returns."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from pydantic import BaseModel, Field

from moot.messages import (
    AnyRunEvent,
    CallCompleted,
    CallFailed,
    CallJob,
    CancelRequested,
    DeadLettered,
    DeadlinePassed,
    JobMessage,
    RunCancelled,
    RunCompleted,
    RunFailed,
)
from moot.requests import Budget, ChatMessage, RunMeta
from moot.texts import ImagePart, Parts, Text, TextRef, TextSink, compose, join
from moot.views import AnyRunView, StopReason, Usage

S = TypeVar("S", bound=BaseModel)


def is_none(value: object) -> bool:
    """For `Field(exclude_if=is_none)`: a state leaves out what it has not got (states are rewritten
    on every outcome, so every byte counts)."""
    return value is None


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

    def view(self, state: Any) -> AnyRunView: ...


def cancel(state: Any, event: CancelRequested, view: Callable[[Any], AnyRunView]) -> Transition[Any]:
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


def end_early(
    state: Any,
    at: datetime,
    stop_reason: StopReason,
    cause: str,
    view: Callable[[Any], AnyRunView],
    sink: TextSink,
    best: tuple[Any, str] | None = None,
    announce: Callable[[Any, str], list[Command]] | None = None,
) -> list[Command]:
    """Any protocol's run, ended short of its own end where it stands: its deadline passed, or its
    next calls could exceed its budget (`stop_reason`). Changes `state` (a copy the caller made) in
    place and returns the commands that end it; no job is among them.

    `cause` says why ("deadline of 60 s passed during iteration 2"). With `best` (a result, and
    what it is) the run is `completed` with that result; otherwise it is `failed`. `announce`
    gives the protocol's own events before the end event (a debate's `error`).
    """
    state.stop_reason, state.finished_at = stop_reason, at
    if best is not None:
        result, what = best
        state.status, state.result = "completed", result
        state.reason = f"{cause}; the run ends with {what}"
    else:
        state.status = "failed"
        state.reason = f"{cause}, before any result"
    commands = announce(state, state.reason) if announce else []
    end = RunCompleted if state.status == "completed" else RunFailed
    commands.append(end(run_id=state.run_id, reason=state.reason, run=sink.document(view(state)), at=at))
    return commands


def end_at_deadline(
    state: Any,
    event: DeadlinePassed,
    view: Callable[[Any], AnyRunView],
    where: str,
    best: tuple[Any, str] | None = None,
    announce: Callable[[Any, str], list[Command]] | None = None,
) -> Transition[Any]:
    """Any protocol's run, ended at its deadline where it stands (`end_early`, `stop_reason: deadline`).

    `where` says how far it got ("during iteration 2"). Nothing changes before the deadline, nor
    for a run that has ended: two sweepers deciding the same run end it once (the CAS write).
    """
    if state.status != "running" or state.deadline is None or event.at < state.deadline:
        return Transition(state, [])
    state = state.model_copy(deep=True)
    seconds = round((state.deadline - state.created_at).total_seconds())
    sink = TextSink()
    cause = f"deadline of {seconds} s passed {where}"
    commands = end_early(state, event.at, "deadline", cause, view, sink, best, announce)
    return Transition(state, commands, sink.texts)


# ---------------------------------------------------------------------------------------------
# Run budgets: tokens and US dollars


class Limits(BaseModel):
    """A run's limits on tokens and US dollars (`moot.requests.Budget`), kept in its state, and the
    costliest call the run has made so far: what `over_budget` reserves per call in dollars.

    A state holds one only when the request set a limit (`of`), so a run without one is as before.
    """

    tokens: int | None = Field(None, exclude_if=is_none)
    usd: float | None = Field(None, exclude_if=is_none)
    costliest_usd: float = 0.0

    @classmethod
    def of(cls, budget: Budget) -> Limits | None:
        if budget.tokens is None and budget.usd is None:
            return None
        return cls(tokens=budget.tokens, usd=budget.usd)

    def after(self, usage: Usage) -> Limits:
        """These limits once a call that spent `usage` is in: a new object when it cost the most
        so far (the caller's state may share this one with the state `decide()` was given)."""
        if usage.cost_usd is None or usage.cost_usd <= self.costliest_usd:
            return self
        return self.model_copy(update={"costliest_usd": usage.cost_usd})


def prompt_tokens(job: CallJob) -> int:
    """What a call's prompt is estimated to cost: ceil(characters / 4) over its messages' texts.

    An inline string counts its length, a reference its `chars`. A stored document in the
    messages (the conversation a run continues, a member's earlier turns, a closed round of a
    debate's transcript quoted as one part) counts the characters of its JSON, where the long texts
    it quotes are references of their own: the estimate stays low for such prompts, and what the
    calls then report (their usage) is what counts as spent. Tool definitions count like a text;
    images count nothing (a data URL's length says nothing about its tokens).
    """
    chars = job.tools.chars if job.tools is not None else 0
    for message in job.messages:
        if isinstance(message, TextRef):
            chars += message.chars
            continue
        for part in message.content:
            if isinstance(part, str):
                chars += len(part)
            elif isinstance(part, TextRef):
                chars += part.chars
    return math.ceil(chars / 4)


def over_budget(limits: Limits | None, spent: Usage, jobs: Sequence[CallJob]) -> str | None:
    """Why the run must not issue `jobs`, or None when it may: asked by a protocol before every
    call it issues, with what the run has spent (`usage`, every call's reported usage summed).

    Tokens: what is spent (input + output tokens) plus what the jobs may take must not exceed
    `limits.tokens`. A job may take its prompt's estimated tokens (`prompt_tokens`) plus its
    `max_tokens`; a job without `max_tokens` reserves its prompt only, so the answers of the calls
    issued may take the run past its limit (then no further call is issued).

    US dollars: the protocol knows no prices, so every job is reserved at the highest cost of one
    call of the run so far (`Limits.costliest_usd`; 0 before any cost is known, so the first
    calls always go ahead) and what is spent (`cost_usd`) plus that must not exceed `limits.usd`.
    A call whose cost is not known (litellm has no price for its model) counts as free.
    """
    if limits is None or not jobs:
        return None
    calls = "the next call" if len(jobs) == 1 else f"the next {len(jobs)} calls"
    if limits.tokens is not None:
        tokens = spent.input_tokens + spent.output_tokens
        reserved = sum(prompt_tokens(job) + (job.max_tokens or 0) for job in jobs)
        if tokens + reserved > limits.tokens:
            return (
                f"token budget of {limits.tokens} would be exceeded: "
                f"{tokens} spent, {calls} may take up to {reserved}"
            )
    if limits.usd is not None:
        usd = spent.cost_usd or 0.0
        reserved_usd = len(jobs) * limits.costliest_usd
        total = usd + reserved_usd
        # Sums of float prices: a total equal to the limit but for rounding does not exceed it.
        if total > limits.usd and not math.isclose(total, limits.usd, rel_tol=1e-9):
            return (
                f"USD budget of {_usd(limits.usd)} would be exceeded: "
                f"{_usd(usd)} spent, {calls} may cost up to {_usd(reserved_usd)}"
            )
    return None


def _usd(amount: float) -> str:
    """$0.0125: enough digits for the cost of a few calls, no trailing zeros."""
    return "$" + (f"{amount:.6f}".rstrip("0").rstrip(".") or "0")


def dead_lettered(
    state: Any,
    event: DeadLettered,
    view: Callable[[Any], AnyRunView],
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


# ---------------------------------------------------------------------------------------------
# Calls: what every protocol asks a model and reads back


def answer_of(event: CallCompleted) -> str:
    """A completed call's answer: `decide()` reads it, so it is plain text here (`RunStore.apply`
    fetches a long answer sent by reference before deciding); TypeError otherwise."""
    if not isinstance(event.text, str):
        raise TypeError(f"call {event.call_id}: decide() needs the answer's text, not its reference")
    return event.text


def outcome_of(
    event: CallCompleted | CallFailed, usage: Usage, limits: Limits | None, sink: TextSink
) -> tuple[dict[str, Any], Usage, Limits | None]:
    """What a call's outcome sets on the call (attempts, latency, worker, then its status with the
    answer by reference and its usage, or its error), and the run's spend and limits after it."""
    outcome: dict[str, Any] = {
        "attempts": event.attempts,
        "latency_ms": event.latency_ms,
        "worker": event.worker,
    }
    if isinstance(event, CallFailed):
        outcome.update(status="failed", error=event.error)
        return outcome, usage, limits
    outcome.update(status="completed", text=sink.text(answer_of(event)), usage=event.usage)
    return outcome, usage.plus(event.usage), limits.after(event.usage) if limits is not None else None


def job_messages(system: Text | None, history: TextRef | None, prompt: Parts) -> list[JobMessage | TextRef]:
    """A call's messages: the run's system prompt, the conversation it continues (one stored
    document, `stored_history`), then what this call asks."""
    messages: list[JobMessage | TextRef] = []
    if system:
        messages.append(JobMessage(role="system", content=[system]))
    if history is not None:
        messages.append(history)
    messages.append(JobMessage(role="user", content=prompt))
    return messages
