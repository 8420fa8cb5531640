"""What every protocol module provides, and what a transition returns."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

from pydantic import BaseModel

from moot.messages import AnyRunEvent, CallJob

S = TypeVar("S", bound=BaseModel)

# A command is a message to publish: a call job for the workers, or a run event.
Command = CallJob | AnyRunEvent


class Transition(NamedTuple, Generic[S]):
    state: S
    commands: list[Command]


class RunProtocol(Protocol):
    """A protocol module (`moot.protocols.consortium`, ...) seen from the services."""

    State: type[BaseModel]

    def start(self, run_id: str, request: Any, at: datetime) -> Transition[Any]: ...

    def decide(self, state: Any, event: Any) -> Transition[Any]: ...

    def view(self, state: Any) -> dict[str, Any]: ...
