"""A debate's events as the reference debate program streamed them: `GET /v1/runs/{id}/events?format=seed`.

The reference's web clients read a stream of `data: <json>` lines, each followed by a blank line,
where the JSON is `{"type": <its name for the event>, "data": {...}}` in its own field names (its
`debate_complete` has no `data`), and nothing else: no `event:` or `id:` lines, no call or run
events; the stream closes after `debate_complete` or `error`. `SeedStream` turns moot's debate
events, in order, into exactly those; `seed_events` serves a run's replayed events so. The event
names are `moot.messages.SEED_NAMES`; docs/protocols.md lists every field and each difference
between the two programs.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any, Literal, get_args

from fastapi import status
from fastapi.sse import ServerSentEvent

from moot.messages import (
    SEED_NAMES,
    TERMINAL_EVENT_TYPES,
    AnyRunEvent,
    ConvergenceStatus,
    DebateComplete,
    DebateError,
    DebateStart,
    DebateTurn,
    FinalChunk,
    FinalComplete,
    FinalStart,
    JudgeDecision,
    ModelEliminated,
    RoundComplete,
    RoundModelComplete,
    RoundStart,
    RunCancelled,
    RunCompleted,
    RunFailed,
    run_event_adapter,
)
from moot.runtime.textstore import TextStore, hydrated
from moot.texts import Text, TextRef
from moot.views import AnyRunView
from moot_gateway.errors import ApiError

# `moot`: every run event, as moot publishes it; `seed`: a debate's, as the reference sent them.
StreamFormat = Literal["moot", "seed"]

# The events a seed stream reads: the debate's (also stored under the reference's names, as
# events of older runs are) and the run's end, for a debate that ended without its own last event.
_READ = frozenset({*SEED_NAMES, *SEED_NAMES.values(), *TERMINAL_EVENT_TYPES})

# The runs the reference's stream can show are those that begin with `debate.started` (its
# `debate_start`): told apart by their request, the kind that event carries, since a service
# names no mode (tests/unit/test_registry.py).
_DEBATE_REQUESTS = tuple(
    t for t in get_args(DebateStart.model_fields["request"].annotation) if t is not TextRef
)


def require_debate(run: AnyRunView) -> None:
    """409 naming `format` for a run that is not a debate (a vote gone on as a debate included:
    it never had a `debate_start`)."""
    if not isinstance(run.request, _DEBATE_REQUESTS):
        raise ApiError(
            status.HTTP_409_CONFLICT,
            f"run {run.id!r} is a {run.mode} run: format=seed streams a debate's events only",
            param="format",
            code="not_a_debate",
        )


def _quoted(text: Text) -> str | dict[str, Any]:
    """A text as the event holds it: a stored one as its reference, which `seed_events` puts back."""
    return text.model_dump(mode="json") if isinstance(text, TextRef) else text


class SeedStream:
    """One debate's events, in order, as the reference's: `said` for each, then `ended`.

    A debater is named by its model, as the reference named its debaters, unless the debate has
    several instances of that model: then by its label (`model#instance`), where the reference
    could not tell them apart. The judge is named by its model.
    """

    def __init__(self) -> None:
        self.ended = False
        self._names: dict[str, str] = {}  # label -> the debater's name in this stream
        self._spoken: dict[int, list[str]] = {}  # round -> call ids, in the order their turns came

    def said(self, event: AnyRunEvent) -> dict[str, Any] | None:
        """The reference's event for this one of moot's; None for what it did not send (a call,
        the run's start, what comes after the end)."""
        if self.ended:
            return None
        match event:
            case RunCompleted():  # without `debate.completed`: its events left the stream
                return self._end(SEED_NAMES["debate.completed"], None)
            case RunFailed() | RunCancelled():  # a cancelled debate, or one failed without `error`
                return self._end(SEED_NAMES["debate.failed"], {"message": event.reason})
            case DebateComplete():
                return self._end(SEED_NAMES[event.type], None)
            case DebateError():
                return self._end(SEED_NAMES[event.type], {"message": event.message})
        data = self._data(event)
        return None if data is None else {"type": SEED_NAMES[event.type], "data": data}

    def _data(self, event: AnyRunEvent) -> dict[str, Any] | None:
        match event:
            case DebateStart():
                counts = Counter(d.model for d in event.debaters)
                self._names = {d.label: d.model if counts[d.model] == 1 else d.label for d in event.debaters}
                return {
                    "max_rounds": event.max_rounds,
                    "format": event.format,
                    "judge_mode": event.judge_mode,
                    "models": [self._name(d.label) for d in event.debaters],
                }
            case RoundStart():
                return {"round": event.round, "active_models": [self._name(d.label) for d in event.debaters]}
            case RoundModelComplete():
                self._spoken.setdefault(event.round, []).append(event.call_id)
                return {"round": event.round, **self._response(event)}
            case RoundComplete():
                # In the order the turns came, as the reference collected them (round 1 at once).
                order = self._spoken.get(event.round, [])
                turns = sorted(
                    event.responses,
                    key=lambda t: order.index(t.call_id) if t.call_id in order else len(order),
                )
                return {"round": event.round, "responses": [self._response(t) for t in turns]}
            case JudgeDecision():
                return {"round": event.round, "continue": event.continue_, "reasoning": _quoted(event.raw)}
            case ModelEliminated():
                return {
                    "round": event.round,
                    "model": self._name(event.label),
                    "convinced_by": self._name(event.convinced_by) if event.convinced_by else None,
                    "reasoning": _quoted(event.reasoning),
                }
            case ConvergenceStatus():
                return {
                    "round": event.round,
                    "eliminated": [self._name(label) for label in event.eliminated],
                    "remaining": [self._name(label) for label in event.remaining],
                }
            case FinalStart():
                return {"model": self._name(event.label) if event.label else event.model}
            case FinalChunk():
                return {"chunk": event.delta}
            case FinalComplete():
                return {
                    "model": self._name(event.label) if event.label else event.model,
                    "response": _quoted(event.text),
                }
        return None

    def _end(self, seed_type: str, data: dict[str, Any] | None) -> dict[str, Any]:
        self.ended = True
        return {"type": seed_type} if data is None else {"type": seed_type, "data": data}

    def _name(self, label: str) -> str:
        return self._names.get(label, label)

    def _response(self, turn: DebateTurn) -> dict[str, Any]:
        # The reference put a failed call's error where its answer would be, in these words.
        response = f"[Error: {turn.error}]" if turn.failed else _quoted(turn.text or "")
        return {"model": self._name(turn.label), "response": response}


async def seed_events(
    events: AsyncGenerator[ServerSentEvent, None], texts: TextStore
) -> AsyncIterator[ServerSentEvent]:
    """The run's events (`replay(..., hydrate=False)`) as the reference's, until its end.

    Only the texts a seed event quotes are put back, after the mapping: not every call's answer
    nor the request, which the reference's events do not carry. Each is encoded as the reference
    encoded it (`json.dumps` with its defaults: ASCII only, `", "` and `": "` separators).
    """
    stream = SeedStream()
    async with aclosing(events):
        async for sse in events:
            if sse.event not in _READ:
                continue
            said = stream.said(run_event_adapter.validate_python(sse.data))
            if said is not None:
                yield ServerSentEvent(raw_data=json.dumps(await hydrated(texts, said)))
            if stream.ended:
                return
