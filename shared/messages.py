"""Every message that crosses a process boundary: run requests, call jobs and run events.

One pydantic model per message type; the event's `type` is also the last part of its subject
(`<ns>.runs.<run_id>.<type>`), see `moot.subjects`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/@+:-]{0,199}$")


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------------------------
# Requests


class MemberSpec(_Strict):
    """A model taking part, as `count` independent instances."""

    model: str = Field(
        min_length=1, max_length=200, description="Model name from the model list, or a litellm model id."
    )
    count: int = Field(1, ge=1, le=16, description="Number of independent instances of this model.")

    @field_validator("model")
    @classmethod
    def _model_name(cls, v: str) -> str:
        if not MODEL_NAME_RE.match(v):
            raise ValueError("model name may contain letters, digits and . _ / @ + : - only")
        return v


class ConsortiumRequest(_Strict):
    """A consortium: members answer in parallel, an arbiter synthesizes, repeat until confident."""

    mode: Literal["consortium"] = "consortium"
    prompt: str = Field(min_length=1, max_length=200_000)
    members: list[MemberSpec] = Field(min_length=1, max_length=16)
    arbiter: str = Field(min_length=1, max_length=200)
    confidence_threshold: float = Field(0.8, ge=0.0, le=1.0)
    min_iterations: int = Field(1, ge=1, le=20)
    max_iterations: int = Field(3, ge=1, le=20)
    system: str | None = Field(None, max_length=50_000)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1, le=200_000)

    @field_validator("arbiter")
    @classmethod
    def _arbiter_name(cls, v: str) -> str:
        return MemberSpec._model_name(v)

    @field_validator("members")
    @classmethod
    def _distinct_members(cls, v: list[MemberSpec]) -> list[MemberSpec]:
        seen: set[str] = set()
        for m in v:
            if m.model in seen:
                raise ValueError(f"model {m.model!r} is listed twice; use count for more instances")
            seen.add(m.model)
        if sum(m.count for m in v) > 32:
            raise ValueError("at most 32 member instances in total")
        return v

    @model_validator(mode="after")
    def _iteration_bounds(self) -> ConsortiumRequest:
        if self.min_iterations > self.max_iterations:
            raise ValueError("min_iterations must not exceed max_iterations")
        return self


# The body of POST /v1/runs; becomes a union discriminated by `mode` as protocols are added.
RunRequest = ConsortiumRequest


# ---------------------------------------------------------------------------------------------
# Call jobs (gateway/arbiter -> member workers)


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


Role = Literal["member", "arbiter"]


class CallJob(BaseModel):
    """One model call to execute. `call_id` is deterministic: `run:iteration:role:model:instance`."""

    call_id: str
    run_id: str
    iteration: int
    role: Role
    model: str
    instance: int
    messages: list[ChatMessage]
    temperature: float | None = None
    max_tokens: int | None = None

    @staticmethod
    def make_id(run_id: str, iteration: int, role: str, model: str, instance: int) -> str:
        return f"{run_id}:{iteration}:{role}:{model}:{instance}"


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None

    def plus(self, other: Usage) -> Usage:
        cost = None
        if self.cost_usd is not None or other.cost_usd is not None:
            cost = (self.cost_usd or 0.0) + (other.cost_usd or 0.0)
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cost_usd=cost,
        )


# ---------------------------------------------------------------------------------------------
# Run events (all on <ns>.runs.<run_id>.<type>)


class _Event(BaseModel):
    run_id: str
    at: datetime = Field(default_factory=utcnow)

    def event_id(self) -> str:
        """Deterministic id, used as Nats-Msg-Id and as the events table's key."""
        raise NotImplementedError


class RunCreated(_Event):
    type: Literal["run.created"] = "run.created"
    request: ConsortiumRequest

    def event_id(self) -> str:
        return f"{self.run_id}:run.created"


class IterationStarted(_Event):
    type: Literal["iteration.started"] = "iteration.started"
    iteration: int
    call_ids: list[str]

    def event_id(self) -> str:
        return f"{self.run_id}:{self.iteration}:iteration.started"


class _CallOutcome(_Event):
    call_id: str
    iteration: int
    role: Role
    model: str
    instance: int
    attempts: int = 1
    latency_ms: int = 0
    worker: str = ""  # which worker process made the call (host:pid), for operators


class CallCompleted(_CallOutcome):
    type: Literal["call.completed"] = "call.completed"
    text: str
    usage: Usage = Field(default_factory=Usage)
    finish_reason: str | None = None

    def event_id(self) -> str:
        return f"{self.call_id}:call.completed"


class CallFailed(_CallOutcome):
    type: Literal["call.failed"] = "call.failed"
    error: str
    error_type: str = "error"

    def event_id(self) -> str:
        return f"{self.call_id}:call.failed"


class ArbiterVerdict(BaseModel):
    """The arbiter's answer, parsed. `malformed` and `problems` say what could not be read."""

    synthesis: str = ""
    confidence: float | None = None
    analysis: str = ""
    dissent: str = ""
    needs_iteration: bool | None = None
    refinement_areas: list[str] = Field(default_factory=list)
    malformed: bool = False
    problems: list[str] = Field(default_factory=list)


class IterationCompleted(_Event):
    type: Literal["iteration.completed"] = "iteration.completed"
    iteration: int
    verdict: ArbiterVerdict
    decision: Literal["stop", "iterate"]
    reason: str

    def event_id(self) -> str:
        return f"{self.run_id}:{self.iteration}:iteration.completed"


class RunCompleted(_Event):
    type: Literal["run.completed"] = "run.completed"
    reason: str
    run: dict[str, Any]  # the run's full view, as GET /v1/runs/{id} shows it

    def event_id(self) -> str:
        return f"{self.run_id}:run.end"


class RunFailed(_Event):
    type: Literal["run.failed"] = "run.failed"
    reason: str
    run: dict[str, Any]

    def event_id(self) -> str:
        # Shares the id with run.completed: a run ends once, whichever end is published first.
        return f"{self.run_id}:run.end"


AnyRunEvent = (
    RunCreated | IterationStarted | CallCompleted | CallFailed | IterationCompleted | RunCompleted | RunFailed
)
RunEvent = Annotated[AnyRunEvent, Field(discriminator="type")]
run_event_adapter: TypeAdapter[AnyRunEvent] = TypeAdapter(RunEvent)

CallOutcome = CallCompleted | CallFailed
TERMINAL_EVENT_TYPES = frozenset({"run.completed", "run.failed"})


def parse_event(data: bytes | str) -> AnyRunEvent:
    return run_event_adapter.validate_json(data)
