"""What every protocol module provides, and what a transition returns."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from pydantic import BaseModel

from moot.messages import AnyRunEvent, CallJob, CancelRequested, RunCancelled
from moot.requests import ChatMessage, RunMeta
from moot.views import ConsortiumView, DebateView

S = TypeVar("S", bound=BaseModel)

# A command is a message to publish: a call job for the workers, or a run event.
Command = CallJob | AnyRunEvent


class Transition(NamedTuple, Generic[S]):
    state: S
    commands: list[Command]


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
    """Any protocol's run, cancelled where it stands: no new jobs, a final `run.cancelled`."""
    if state.status != "running":
        return Transition(state, [])
    state = state.model_copy(deep=True)
    state.status, state.reason, state.finished_at = "cancelled", event.reason, event.at
    return Transition(
        state, [RunCancelled(run_id=state.run_id, reason=event.reason, run=view(state), at=event.at)]
    )


def conversation_text(history: list[ChatMessage]) -> str:
    """Earlier turns of the conversation as plain text, for prompts that quote it."""
    lines = []
    for m in history:
        content = (
            m.content
            if isinstance(m.content, str)
            else " ".join(str(p.get("text", "")) for p in m.content if isinstance(p, dict))
        )
        lines.append(f"{m.role.upper()}: {content}")
    return "\n".join(lines)
