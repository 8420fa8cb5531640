"""Every message that crosses a process boundary: call jobs and run events.

One pydantic model per message type; the event's `type` is also the last part of its subject
(`<ns>.runs.<run_id>.<type>`), see `moot.runtime.subjects`. What a client asks for is in
`moot.requests`, what a run looks like in `moot.views`; the events carry both.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter

from moot.requests import AnyRunRequest, DebateFormat, DebateRequest, JudgeMode, RunMeta
from moot.texts import Parts, Text, TextRef
from moot.views import ArbiterVerdict, DebaterRef, RunView, Usage


def utcnow() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------------------------------
# Call jobs (gateway/arbiter -> member workers)


# consortium: member, arbiter; debate: debater (a turn), judge (continue or stop), conviction
# (is a debater convinced by another), final (the judge's verdict or the last debater's summary);
# council: member, reviewer, chairman; vote: member (or debater, when it may go on as a debate);
# moa: proposer, aggregator
Role = Literal[
    "member",
    "arbiter",
    "debater",
    "judge",
    "conviction",
    "final",
    "reviewer",
    "chairman",
    "proposer",
    "aggregator",
]


class JobMessage(BaseModel):
    """One message of a call's conversation; its long texts by reference (`moot.texts`)."""

    role: Literal["system", "user", "assistant"]
    content: Parts


_MESSAGES: TypeAdapter[list[JobMessage | TextRef]] = TypeAdapter(list[JobMessage | TextRef])


def _expanded(messages: list[JobMessage | TextRef], texts: Mapping[str, str]) -> list[JobMessage]:
    out: list[JobMessage] = []
    for m in messages:
        out.extend(_expanded(_MESSAGES.validate_json(texts[m.sha]), texts) if isinstance(m, TextRef) else [m])
    return out


class CallJob(BaseModel):
    """One model call to execute. `call_id` is deterministic: `run:iteration:role:model:instance`.

    Its texts travel by reference: the worker resolves them (`moot.texts.render`) before the call,
    so a job stays small whatever the transcript it quotes.
    """

    call_id: str
    run_id: str
    iteration: int
    role: Role
    model: str
    instance: int
    # A reference here is a stored list of messages (the conversation a run continues, stored once).
    messages: list[JobMessage | TextRef]
    temperature: float | None = None
    max_tokens: int | None = None
    tools: TextRef | None = None  # OpenAI tool definitions (a JSON document), passed to the model as is
    stream: bool = False  # stream the answer, publishing `final.chunk` events while it comes in

    def conversation(self, texts: Mapping[str, str]) -> list[JobMessage]:
        """The messages, stored lists of messages (which may refer to earlier ones) put in place."""
        return _expanded(self.messages, texts)

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

    def completed(self, text: Text, **more: Any) -> CallCompleted:
        """This call's success, the event a worker publishes."""
        return CallCompleted(**self._outcome(), text=text, **more)

    def failed(self, error: str, **more: Any) -> CallFailed:
        """This call's failure, the event a worker publishes."""
        return CallFailed(**self._outcome(), error=error, **more)


# ---------------------------------------------------------------------------------------------
# Run events (all on <ns>.runs.<run_id>.<type>)


class _Event(BaseModel):
    run_id: str
    at: datetime = Field(default_factory=utcnow)

    def event_id(self) -> str:
        """Deterministic id, used as Nats-Msg-Id and as the events table's key."""
        raise NotImplementedError


class RunCreated(_Event):
    """A run was accepted: the first event of every protocol's run but the debate's (`debate.started`)."""

    type: Literal["run.created"] = "run.created"
    # On the wire a reference to the request (a JSON document); `hydrate` puts the request back.
    request: Annotated[AnyRunRequest, Field(discriminator="mode")] | TextRef
    meta: RunMeta = Field(default_factory=RunMeta)

    def event_id(self) -> str:
        return f"{self.run_id}:run.created"


class IterationStarted(_Event):
    type: Literal["iteration.started"] = "iteration.started"
    iteration: int
    call_ids: list[str]

    def event_id(self) -> str:
        return f"{self.run_id}:{self.iteration}:iteration.started"


class StepStarted(_Event):
    """A step of a protocol began: its calls were issued (a council's answers, reviews or chairman; a
    vote's votes; a Mixture-of-Agents layer or its aggregator). `name` says which step it is, as
    the protocol's documentation lists them (docs/protocols.md)."""

    type: Literal["step.started"] = "step.started"
    step: int
    name: str
    call_ids: list[str]

    def event_id(self) -> str:
        return f"{self.run_id}:{self.step}:step.started"


class StepCompleted(_Event):
    """A step of a protocol ended; `data` is what came of it, in the protocol's own terms (a
    council's aggregate ranking, a vote's tally): small facts. The models' texts are in the calls'
    events; a vote's tally quotes their normalised answers (long ones by reference, put back by
    readers like any text)."""

    type: Literal["step.completed"] = "step.completed"
    step: int
    name: str
    data: dict[str, Any] = Field(default_factory=dict)

    def event_id(self) -> str:
        return f"{self.run_id}:{self.step}:step.completed"


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
    text: Text
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
    # The run's full view, as GET /v1/runs/{id} shows it. On the wire a reference to it (a JSON
    # document: a large run's view is hundreds of kilobytes); `hydrate` puts the view back.
    run: RunView | TextRef

    def event_id(self) -> str:
        return f"{self.run_id}:run.end"


class RunFailed(_Event):
    type: Literal["run.failed"] = "run.failed"
    reason: str
    run: RunView | TextRef  # as in `RunCompleted`

    def event_id(self) -> str:
        # Shares the id with run.completed: a run ends once, whichever end is published first.
        return f"{self.run_id}:run.end"


class RunCancelled(_Event):
    """The run was cancelled: no new jobs; results still in flight are recorded but change nothing."""

    type: Literal["run.cancelled"] = "run.cancelled"
    reason: str
    run: RunView | TextRef  # as in `RunCompleted`

    def event_id(self) -> str:
        return f"{self.run_id}:run.end"


class CancelRequested(BaseModel):
    """Input to `decide()` from the gateway (not published): stop the run where it stands."""

    run_id: str
    reason: str = "cancelled by the client"
    at: datetime = Field(default_factory=utcnow)


class DeadlinePassed(BaseModel):
    """Input to `decide()` from the sweeper (not published): the run's time is up, end it."""

    run_id: str
    at: datetime = Field(default_factory=utcnow)


class DeadLettered(BaseModel):
    """Input to `decide()` from the arbiter (not published): a message of the run went to the
    dead-letter stream (`moot.runtime.deadletters`); the run fails with the reason."""

    run_id: str
    reason: str
    at: datetime = Field(default_factory=utcnow)


# Debate events. Their types are named like every other event (`thing.happened`); the reference
# debate program's names for them are `SEED_NAMES`. They share the `<ns>.runs.<run_id>.<type>`
# subjects. A debate still ends with `run.completed` / `run.failed` (after `debate.completed` /
# `debate.failed`), so the end of a run is recognised the same way for every protocol; see
# `TERMINAL_EVENT_TYPES`.

# Each debate event's name in the reference debate program (and in moot before the names were
# made consistent): what its clients listen for. Events stored under these names still parse.
SEED_NAMES = {
    "debate.started": "debate_start",
    "round.started": "round_start",
    "turn.completed": "round_model_complete",
    "round.completed": "round_complete",
    "judge.decided": "judge_decision",
    "debater.eliminated": "model_eliminated",
    "convergence.checked": "convergence_status",
    "final.started": "final_start",
    "final.chunk": "final_chunk",
    "final.completed": "final_complete",
    "debate.completed": "debate_complete",
    "debate.failed": "error",
}
_FROM_SEED = {seed: name for name, seed in SEED_NAMES.items()}


class DebateTurn(BaseModel):
    """What one debater said in one round (or that its call failed)."""

    call_id: str
    model: str
    instance: int
    debater_number: int
    label: str
    failed: bool = False
    text: Text | None = None
    error: str | None = None


class DebateStart(_Event):
    type: Literal["debate.started"] = "debate.started"
    request: DebateRequest | TextRef
    max_rounds: int
    format: DebateFormat
    judge_mode: JudgeMode
    judge: str | None = None
    debaters: list[DebaterRef]
    meta: RunMeta = Field(default_factory=RunMeta)

    def event_id(self) -> str:
        return f"{self.run_id}:debate_start"


class RoundStart(_Event):
    type: Literal["round.started"] = "round.started"
    round: int
    debaters: list[DebaterRef]  # the debaters still in, in speaking order

    def event_id(self) -> str:
        return f"{self.run_id}:{self.round}:round_start"


class RoundModelComplete(_Event, DebateTurn):
    type: Literal["turn.completed"] = "turn.completed"
    round: int

    def event_id(self) -> str:
        return f"{self.call_id}:round_model_complete"


class RoundComplete(_Event):
    type: Literal["round.completed"] = "round.completed"
    round: int
    responses: list[DebateTurn]

    def event_id(self) -> str:
        return f"{self.run_id}:{self.round}:round_complete"


class JudgeDecision(_Event):
    """The judge's call after a round. `readable` is false when its answer named neither word."""

    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True, validate_by_alias=True)

    type: Literal["judge.decided"] = "judge.decided"
    round: int
    model: str
    continue_: bool = Field(alias="continue")
    readable: bool = True
    reason: Text
    raw: Text

    def event_id(self) -> str:
        return f"{self.run_id}:{self.round}:judge_decision"


class ModelEliminated(_Event):
    type: Literal["debater.eliminated"] = "debater.eliminated"
    round: int
    model: str
    instance: int
    debater_number: int
    label: str
    convinced_by: str | None = None  # the label of the debater it conceded to, when it named one
    reasoning: Text

    def event_id(self) -> str:
        return f"{self.run_id}:{self.round}:{self.debater_number}:model_eliminated"


class ConvergenceStatus(_Event):
    type: Literal["convergence.checked"] = "convergence.checked"
    round: int
    eliminated: list[str]  # labels
    remaining: list[str]
    kept: str | None = None  # every debater was convinced: this one stays in (see the protocol)
    unanswered: list[str] = Field(default_factory=list)  # conviction calls that failed: not convinced

    def event_id(self) -> str:
        return f"{self.run_id}:{self.round}:convergence_status"


class FinalStart(_Event):
    type: Literal["final.started"] = "final.started"
    call_id: str
    model: str
    by: Literal["judge", "debater"]
    debater_number: int | None = None
    label: str | None = None

    def event_id(self) -> str:
        return f"{self.call_id}:final_start"


class FinalChunk(_Event):
    """Published by the worker while a streamed call runs; `index` counts chunks from 0."""

    type: Literal["final.chunk"] = "final.chunk"
    call_id: str
    index: int
    delta: str

    def event_id(self) -> str:
        return f"{self.call_id}:{self.index}:final_chunk"


class FinalComplete(_Event):
    type: Literal["final.completed"] = "final.completed"
    call_id: str
    model: str
    by: Literal["judge", "debater"]
    debater_number: int | None = None
    label: str | None = None
    text: Text

    def event_id(self) -> str:
        return f"{self.call_id}:final_complete"


class DebateComplete(_Event):
    type: Literal["debate.completed"] = "debate.completed"
    rounds: int  # rounds played
    reason: str

    def event_id(self) -> str:
        return f"{self.run_id}:debate_complete"


class DebateError(_Event):
    """A debate that cannot go on; `run.failed` follows with the same reason."""

    type: Literal["debate.failed"] = "debate.failed"
    message: str
    round: int | None = None

    def event_id(self) -> str:
        return f"{self.run_id}:error"


AnyRunEvent = (
    RunCreated
    | StepStarted
    | StepCompleted
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


def _current_name(value: Any) -> Any:
    """An event stored under its former (seed) name reads as the event it is now."""
    if isinstance(value, dict) and value.get("type") in _FROM_SEED:
        return {**value, "type": _FROM_SEED[value["type"]]}
    return value


RunEvent = Annotated[AnyRunEvent, Field(discriminator="type"), BeforeValidator(_current_name)]
run_event_adapter: TypeAdapter[AnyRunEvent] = TypeAdapter(RunEvent)

CallOutcome = CallCompleted | CallFailed
# The first event of every run, whatever its protocol: it carries the request and the meta. Every
# protocol starts with `run.created` but the debate, whose `debate.started` (the reference
# program's first event) also names its debaters.
START_EVENTS: tuple[type[RunCreated], type[DebateStart]] = (RunCreated, DebateStart)
# The last event of every run, whatever its protocol: SSE streams end after it. A debate's
# `debate.completed` / `error` are not in here: `run.completed` / `run.failed` follow them.
TERMINAL_EVENT_TYPES = frozenset({"run.completed", "run.failed", "run.cancelled"})


def parse_event(data: bytes | str) -> AnyRunEvent:
    return run_event_adapter.validate_json(data)
