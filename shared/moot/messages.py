"""Every message that crosses a process boundary: run requests, call jobs and run events.

One pydantic model per message type; the event's `type` is also the last part of its subject
(`<ns>.runs.<run_id>.<type>`), see `moot.runtime.subjects`.
"""

from __future__ import annotations

import re
import string
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)

MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/@+:-]{0,199}$")


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------------------------
# Requests


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    # Plain text, or OpenAI content parts: [{"type": "text", "text": ...}, {"type": "image_url", ...}]
    content: str | list[dict[str, Any]]


class RunMeta(BaseModel):
    """Who and what a run belongs to, outside its protocol: set by the gateway, shown in the view."""

    owner: str = ""
    config_name: str | None = None  # the saved configuration it was started from
    config_version: int | None = None
    continued_from: str | None = None  # the run whose conversation it continues


def _history_field() -> Any:
    return Field(
        default_factory=list,
        max_length=200,
        description="The conversation so far (earlier prompts and answers), seen by every model before the prompt.",
    )


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
    history: list[ChatMessage] = _history_field()

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


# Debates (`moot.protocols.debate`): debaters argue over rounds; a judge, the debaters' own
# convictions, or nobody decides when it is over.

DebateFormat = Literal["free_discussion", "structured_opposition", "iterative_improvement", "custom"]
JudgeMode = Literal["external_judge", "self_convergence", "display_only"]

# What a custom debate template may name; anything else in braces is refused at submission.
# Literal braces are written doubled: `{{` and `}}`.
DEBATE_PLACEHOLDERS = frozenset(
    {"question", "history", "own_position", "current_round", "round", "model_name", "debater_number"}
)


def debate_template_fields(template: str) -> list[str]:
    """The placeholders a custom debate template uses, in order; ValueError if one is not allowed.

    Only bare names from `DEBATE_PLACEHOLDERS` are accepted: no positional `{}`, no attribute
    or index access, no conversion (`!r`) and no format spec (`:>10`).
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:  # a lone `{` or `}`
        raise ValueError(f"not a valid template ({exc}); write literal braces as {{{{ and }}}}") from exc
    allowed = ", ".join("{" + name + "}" for name in sorted(DEBATE_PLACEHOLDERS))
    fields: list[str] = []
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in DEBATE_PLACEHOLDERS:
            raise ValueError(f"unknown placeholder {{{name}}}; allowed: {allowed}")
        if spec or conversion:
            raise ValueError(f"placeholder {{{name}}} takes no conversion or format spec")
        fields.append(name)
    return fields


class Attachment(_Strict):
    """A text document given to one debater, appended to its prompt as a labelled block."""

    name: str = Field(min_length=1, max_length=200)
    content: str = Field(max_length=200_000)


class DebaterSpec(MemberSpec):
    """A model taking part in a debate, as `count` debaters, each with its own voice."""

    system: str | None = Field(None, max_length=50_000, description="System prompt for these debaters.")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1, le=200_000)
    tools: list[dict[str, Any]] | None = Field(
        None, max_length=64, description="OpenAI tool definitions offered on every debate turn."
    )
    attachments: list[Attachment] = Field(default_factory=list, max_length=32)
    images: list[str] = Field(
        default_factory=list, max_length=16, description="Image URLs or data URLs, shown in round 1 only."
    )

    @field_validator("tools")
    @classmethod
    def _tool_definitions(cls, v: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        for tool in v or []:
            if not isinstance(tool.get("type"), str):
                raise ValueError('every tool definition needs a "type", e.g. {"type": "function", ...}')
        return v

    @field_validator("images")
    @classmethod
    def _image_urls(cls, v: list[str]) -> list[str]:
        for url in v:
            if not url.startswith(("http://", "https://", "data:image/")):
                raise ValueError("an image is an http(s) URL or a data:image/... URL")
        return v


class DebateRequest(_Strict):
    """A debate: debaters answer, then argue turn by turn; a judge mode decides how it ends.

    `judge_mode` defaults to `display_only` (every round is played, nobody judges, no final
    answer): it needs no other field and makes no calls beyond the debaters' own.
    """

    mode: Literal["debate"] = "debate"
    prompt: str = Field(min_length=1, max_length=200_000)
    members: list[DebaterSpec] = Field(min_length=1, max_length=16)
    format: DebateFormat = "free_discussion"
    custom_prompt: str | None = Field(None, max_length=50_000, validate_default=True)
    judge_mode: JudgeMode = "display_only"
    judge: str | None = Field(None, max_length=200, validate_default=True)
    max_rounds: int = Field(3, ge=1, le=20)
    history: list[ChatMessage] = _history_field()

    @field_validator("members")
    @classmethod
    def _enough_debaters(cls, v: list[DebaterSpec]) -> list[DebaterSpec]:
        total = sum(m.count for m in v)
        if total < 2:
            raise ValueError(
                "a debate needs at least two debaters (use count: 2 to pit a model against itself)"
            )
        if total > 16:
            raise ValueError("at most 16 debaters in total")
        return v

    @field_validator("custom_prompt")
    @classmethod
    def _custom_template(cls, v: str | None, info: ValidationInfo) -> str | None:
        fmt = info.data.get("format")
        if fmt is None:  # the format itself was invalid; that error is enough
            return v
        if fmt != "custom":
            if v is not None:
                raise ValueError('custom_prompt is only allowed with format "custom"')
            return v
        if v is None:
            raise ValueError('format "custom" needs a custom_prompt')
        if not v.strip():
            raise ValueError("custom_prompt is blank")
        debate_template_fields(v)
        return v

    @field_validator("judge")
    @classmethod
    def _judge_for_mode(cls, v: str | None, info: ValidationInfo) -> str | None:
        judge_mode = info.data.get("judge_mode")
        if judge_mode is None:
            return v
        if judge_mode != "external_judge":
            if v is not None:
                raise ValueError(
                    f'judge is only allowed with judge_mode "external_judge", not {judge_mode!r}'
                )
            return v
        if v is None:
            raise ValueError('judge_mode "external_judge" needs a judge')
        return MemberSpec._model_name(v)


class _RunMode(BaseModel):
    mode: Literal["consortium", "debate"]


def _default_mode(value: Any) -> Any:
    """A body without `mode` is a consortium (clients did not send one before debates existed).

    An unknown mode is refused here, so its error names `mode` itself rather than the union.
    """
    if isinstance(value, dict):
        if "mode" not in value:
            return {**value, "mode": "consortium"}
        _RunMode.model_validate({"mode": value["mode"]})
    return value


# The body of POST /v1/runs, one member per protocol, chosen by `mode` (default "consortium").
RunRequest = Annotated[
    ConsortiumRequest | DebateRequest, Discriminator("mode"), BeforeValidator(_default_mode)
]
run_request_adapter: TypeAdapter[ConsortiumRequest | DebateRequest] = TypeAdapter(RunRequest)


# ---------------------------------------------------------------------------------------------
# Call jobs (gateway/arbiter -> member workers)


# consortium: member, arbiter; debate: debater (a turn), judge (continue or stop), conviction
# (is a debater convinced by another), final (the judge's verdict or the last debater's summary)
Role = Literal["member", "arbiter", "debater", "judge", "conviction", "final"]


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
    tools: list[dict[str, Any]] | None = None  # OpenAI tool definitions, passed to the model as is
    stream: bool = False  # stream the answer, publishing `final_chunk` events while it comes in

    @staticmethod
    def make_id(run_id: str, iteration: int, role: str, model: str, instance: int) -> str:
        return f"{run_id}:{iteration}:{role}:{model}:{instance}"

    def _outcome(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "call_id": self.call_id,
            "iteration": self.iteration,
            "role": self.role,
            "model": self.model,
            "instance": self.instance,
        }

    def completed(self, text: str, **more: Any) -> CallCompleted:
        """This call's success, the event a worker publishes."""
        return CallCompleted(**self._outcome(), text=text, **more)

    def failed(self, error: str, **more: Any) -> CallFailed:
        """This call's failure, the event a worker publishes."""
        return CallFailed(**self._outcome(), error=error, **more)


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
    meta: RunMeta = Field(default_factory=RunMeta)

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
    run: views.RunView  # the run's full view, as GET /v1/runs/{id} shows it

    def event_id(self) -> str:
        return f"{self.run_id}:run.end"


class RunFailed(_Event):
    type: Literal["run.failed"] = "run.failed"
    reason: str
    run: views.RunView

    def event_id(self) -> str:
        # Shares the id with run.completed: a run ends once, whichever end is published first.
        return f"{self.run_id}:run.end"


class RunCancelled(_Event):
    """The run was cancelled: no new jobs; results still in flight are recorded but change nothing."""

    type: Literal["run.cancelled"] = "run.cancelled"
    reason: str
    run: views.RunView

    def event_id(self) -> str:
        return f"{self.run_id}:run.end"


class CancelRequested(BaseModel):
    """Input to `decide()` from the gateway (not published): stop the run where it stands."""

    run_id: str
    reason: str = "cancelled by the client"
    at: datetime = Field(default_factory=utcnow)


# Debate events. Their types are the names the reference debate program streamed (clients know
# them); they share the `<ns>.runs.<run_id>.<type>` subjects. A debate still ends with
# `run.completed` / `run.failed` (after `debate_complete` / `error`), so the end of a run is
# recognised the same way for every protocol; see `TERMINAL_EVENT_TYPES`.


class DebaterRef(BaseModel):
    """One debater: `number` is its place in the request's order (1-based), `label` its name in prompts."""

    number: int
    model: str
    instance: int
    label: str


class DebateTurn(BaseModel):
    """What one debater said in one round (or that its call failed)."""

    call_id: str
    model: str
    instance: int
    debater_number: int
    label: str
    failed: bool = False
    text: str | None = None
    error: str | None = None


class DebateStart(_Event):
    type: Literal["debate_start"] = "debate_start"
    request: DebateRequest
    max_rounds: int
    format: DebateFormat
    judge_mode: JudgeMode
    judge: str | None = None
    debaters: list[DebaterRef]
    meta: RunMeta = Field(default_factory=RunMeta)

    def event_id(self) -> str:
        return f"{self.run_id}:debate_start"


class RoundStart(_Event):
    type: Literal["round_start"] = "round_start"
    round: int
    debaters: list[DebaterRef]  # the debaters still in, in speaking order

    def event_id(self) -> str:
        return f"{self.run_id}:{self.round}:round_start"


class RoundModelComplete(_Event, DebateTurn):
    type: Literal["round_model_complete"] = "round_model_complete"
    round: int

    def event_id(self) -> str:
        return f"{self.call_id}:round_model_complete"


class RoundComplete(_Event):
    type: Literal["round_complete"] = "round_complete"
    round: int
    responses: list[DebateTurn]

    def event_id(self) -> str:
        return f"{self.run_id}:{self.round}:round_complete"


class JudgeDecision(_Event):
    """The judge's call after a round. `readable` is false when its answer named neither word."""

    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True, validate_by_alias=True)

    type: Literal["judge_decision"] = "judge_decision"
    round: int
    model: str
    continue_: bool = Field(alias="continue")
    readable: bool = True
    reason: str
    raw: str

    def event_id(self) -> str:
        return f"{self.run_id}:{self.round}:judge_decision"


class ModelEliminated(_Event):
    type: Literal["model_eliminated"] = "model_eliminated"
    round: int
    model: str
    instance: int
    debater_number: int
    label: str
    convinced_by: str | None = None  # the label of the debater it conceded to, when it named one
    reasoning: str

    def event_id(self) -> str:
        return f"{self.run_id}:{self.round}:{self.debater_number}:model_eliminated"


class ConvergenceStatus(_Event):
    type: Literal["convergence_status"] = "convergence_status"
    round: int
    eliminated: list[str]  # labels
    remaining: list[str]
    kept: str | None = None  # every debater was convinced: this one stays in (see the protocol)
    unanswered: list[str] = Field(default_factory=list)  # conviction calls that failed: not convinced

    def event_id(self) -> str:
        return f"{self.run_id}:{self.round}:convergence_status"


class FinalStart(_Event):
    type: Literal["final_start"] = "final_start"
    call_id: str
    model: str
    by: Literal["judge", "debater"]
    debater_number: int | None = None
    label: str | None = None

    def event_id(self) -> str:
        return f"{self.call_id}:final_start"


class FinalChunk(_Event):
    """Published by the worker while a streamed call runs; `index` counts chunks from 0."""

    type: Literal["final_chunk"] = "final_chunk"
    call_id: str
    index: int
    delta: str

    def event_id(self) -> str:
        return f"{self.call_id}:{self.index}:final_chunk"


class FinalComplete(_Event):
    type: Literal["final_complete"] = "final_complete"
    call_id: str
    model: str
    by: Literal["judge", "debater"]
    debater_number: int | None = None
    label: str | None = None
    text: str

    def event_id(self) -> str:
        return f"{self.call_id}:final_complete"


class DebateComplete(_Event):
    type: Literal["debate_complete"] = "debate_complete"
    rounds: int  # rounds played
    reason: str

    def event_id(self) -> str:
        return f"{self.run_id}:debate_complete"


class DebateError(_Event):
    """A debate that cannot go on; `run.failed` follows with the same reason."""

    type: Literal["error"] = "error"
    message: str
    round: int | None = None

    def event_id(self) -> str:
        return f"{self.run_id}:error"


AnyRunEvent = (
    RunCreated
    | IterationStarted
    | CallCompleted
    | CallFailed
    | IterationCompleted
    | RunCompleted
    | RunFailed
    | RunCancelled
    | DebateStart
    | RoundStart
    | RoundModelComplete
    | RoundComplete
    | JudgeDecision
    | ModelEliminated
    | ConvergenceStatus
    | FinalStart
    | FinalChunk
    | FinalComplete
    | DebateComplete
    | DebateError
)
RunEvent = Annotated[AnyRunEvent, Field(discriminator="type")]
run_event_adapter: TypeAdapter[AnyRunEvent] = TypeAdapter(RunEvent)

CallOutcome = CallCompleted | CallFailed
# The last event of every run, whatever its protocol: SSE streams end after it. A debate's
# `debate_complete` / `error` are not in here: `run.completed` / `run.failed` follow them.
TERMINAL_EVENT_TYPES = frozenset({"run.completed", "run.failed", "run.cancelled"})


def parse_event(data: bytes | str) -> AnyRunEvent:
    return run_event_adapter.validate_json(data)


# The views are made of the requests above and travel in the run's end events: imported last,
# so that either module may be imported first (pydantic resolves `views.RunView` on first use).
from moot import views  # noqa: E402
