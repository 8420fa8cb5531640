"""A run as the API shows it, per protocol: `GET /v1/runs/{id}`, the run's end events, its Postgres row.

`view(state)` of each protocol module builds one; readers (gateway, recorder, CLI) validate the
JSON back into one with `run_view_adapter`. Views written by older versions still load: every
field added since the first version has a default. The JSON is the one the API has always
served: times as `datetime.isoformat()`, and a debate call's `label` (and a conviction call's
verdict) only where the call has one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal, TypedDict

from pydantic import BaseModel, Discriminator, Field, PlainSerializer, TypeAdapter

from moot.requests import (
    ConsortiumRequest,
    CouncilRequest,
    DebateRequest,
    MoaRequest,
    Mode,
    RunMeta,
    VoteRequest,
)
from moot.texts import Text, TextRef

RunStatus = Literal["running", "completed", "failed", "cancelled"]
CallStatus = Literal["pending", "completed", "failed"]
# Why a run was stopped short of its protocol's own end (None: it ended on its own terms):
# `deadline` when its time ran out, `budget` when its next calls could exceed its token or USD limit.
StopReason = Literal["deadline", "budget"]

# ---------------------------------------------------------------------------------------------
# Parts a view shares with the run's events


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


class ArbiterVerdict(BaseModel):
    """The arbiter's answer, parsed. `malformed` and `problems` say what could not be read.

    When the arbiter's synthesis cannot be read (empty, or its own instructions repeated), the
    synthesis is the answer most members agree on instead (`synthesis_from: members`, how many
    agree in `problems`); the arbiter's own text stays in its call.
    """

    synthesis: Text = ""
    synthesis_from: Literal["arbiter", "members"] = Field(
        "arbiter",
        description="Who wrote the synthesis: the arbiter, or the members (the answer most of them agree on,"
        " used when the arbiter's synthesis could not be read).",
    )
    confidence: float | None = None
    analysis: Text = ""
    dissent: Text = ""
    needs_iteration: bool | None = None
    refinement_areas: list[Text] = Field(default_factory=list)
    malformed: bool = False
    problems: list[str] = Field(default_factory=list)

    # How the problem that tells of the members' answer standing in begins.
    UNREADABLE: ClassVar[str] = "the arbiter's synthesis was unreadable"

    @property
    def fallback(self) -> str | None:
        """Why the synthesis is the members' and how many of them agree on it; None when it is the arbiter's."""
        if self.synthesis_from != "members":
            return None
        return next((p for p in reversed(self.problems) if p.startswith(self.UNREADABLE)), self.UNREADABLE)


class DebaterRef(BaseModel):
    """One debater: `number` is its place in the request's order (1-based), `label` its name in prompts."""

    number: int
    model: str
    instance: int
    label: str


# `isoformat()` (`+00:00`), not pydantic's `Z`: clients and stored views have always had it.
Timestamp = Annotated[datetime, PlainSerializer(datetime.isoformat, return_type=str, when_used="json")]


class ConfigRef(BaseModel):
    """The saved configuration a run was started from."""

    name: str
    version: int | None = None


class _RunView(BaseModel):
    """What every protocol's view starts with (the subclasses keep this order of keys)."""

    id: str
    mode: Mode
    status: RunStatus
    created_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    reason: str | None = None
    owner: str = ""
    config: ConfigRef | None = None
    continued_from: str | None = Field(None, description="The run whose conversation this one continues.")
    deadline: Timestamp | None = Field(None, description="When the run is ended if still running (`budget`).")
    stop_reason: StopReason | None = Field(
        None,
        description="Why the run was stopped short: `deadline` when its time ran out, `budget` when"
        " its next calls could have exceeded its token or USD limit.",
    )


class Origin(TypedDict):
    owner: str
    config: ConfigRef | None
    continued_from: str | None


def origin(meta: RunMeta) -> Origin:
    """A view's `owner`, `config` and `continued_from`, from the run's meta."""
    config = ConfigRef(name=meta.config_name, version=meta.config_version) if meta.config_name else None
    return {"owner": meta.owner, "config": config, "continued_from": meta.continued_from}


# ---------------------------------------------------------------------------------------------
# Consortium


class CallView(BaseModel):
    """One model call of a consortium: a member's answer or the arbiter's."""

    call_id: str
    model: str
    instance: int
    status: CallStatus = "pending"
    text: Text | None = None
    confidence: float | None = Field(None, description="The confidence a member stated in its answer.")
    error: str | None = None
    usage: Usage = Field(default_factory=Usage)
    latency_ms: int = 0
    attempts: int = 0
    worker: str = ""


class IterationView(BaseModel):
    number: int
    members: list[CallView] = Field(default_factory=list)
    arbiter: CallView | None = None
    verdict: ArbiterVerdict | None = None
    decision: Literal["stop", "iterate"] | None = None
    reason: str | None = None


class ConsortiumView(_RunView):
    mode: Literal["consortium"] = "consortium"
    request: ConsortiumRequest | TextRef
    result: ArbiterVerdict | None = Field(None, description="The verdict the run stopped on.")
    # Finished iterations are stored documents until hydrated (`moot.texts.hydrate`).
    iterations: list[IterationView | TextRef] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)

    @property
    def iteration_views(self) -> list[IterationView]:
        """The iterations of a hydrated view (ValueError while some are stored documents)."""
        if any(isinstance(it, TextRef) for it in self.iterations):
            raise ValueError("the view holds text references: hydrate it first (moot.texts.hydrate)")
        return [it for it in self.iterations if isinstance(it, IterationView)]

    @property
    def answer(self) -> str | None:
        """The run's answer: the synthesis it stopped on; None before (or without) one."""
        return _plain(self.result.synthesis) if self.result else None

    @property
    def steps(self) -> int:
        """How far it went: iterations begun."""
        return len(self.iterations)


# ---------------------------------------------------------------------------------------------
# Debate


class DebaterView(DebaterRef):
    active: bool = True
    eliminated_in: int | None = None
    convinced_by: str | None = Field(None, description="The label of the debater it conceded to.")


class DebateCallView(BaseModel):
    """One model call of a debate: a turn, the judge's decision or the final answer."""

    call_id: str
    model: str
    instance: int
    debater_number: int | None = Field(None, description="None for the judge.")
    status: CallStatus = "pending"
    text: Text | None = None
    error: str | None = None
    usage: Usage = Field(default_factory=Usage)
    latency_ms: int = 0
    attempts: int = 0
    worker: str = ""
    label: str | None = Field(None, exclude_if=lambda v: v is None, description="The debater's label.")


class ConvictionCallView(DebateCallView):
    """A debater asked whether another one convinced it."""

    convinced: bool | None = None
    convinced_by: str | None = Field(None, description="The label of the debater that convinced it.")


class RoundView(BaseModel):
    number: int
    speakers: list[str] = Field(default_factory=list, description="Labels, in speaking order.")
    turns: list[DebateCallView] = Field(default_factory=list)
    judge: DebateCallView | None = None
    decision: Literal["continue", "stop"] | None = None
    decision_reason: Text | None = None
    decision_readable: bool | None = None
    convictions: list[ConvictionCallView] = Field(default_factory=list)
    eliminated: list[str] = Field(default_factory=list)
    kept: str | None = Field(None, description="Convinced, but kept in because everyone was.")


class DebateResult(BaseModel):
    """The debate's final answer: the judge's verdict or the last debater's summary."""

    text: Text
    model: str
    by: Literal["judge", "debater"]


class DebateView(_RunView):
    mode: Literal["debate"] = "debate"
    request: DebateRequest | TextRef
    debaters: list[DebaterView] = Field(default_factory=list)
    rounds: list[RoundView] = Field(default_factory=list)
    final: DebateCallView | None = None
    result: DebateResult | None = None
    usage: Usage = Field(default_factory=Usage)

    @property
    def answer(self) -> str | None:
        """The debate's answer: the verdict or summary; None for display-only debates."""
        return _plain(self.result.text) if self.result else None

    @property
    def steps(self) -> int:
        """How far it went: rounds begun."""
        return len(self.rounds)


def _plain(text: Text) -> str:
    if isinstance(text, TextRef):
        raise ValueError("the view holds text references: hydrate it first (moot.texts.hydrate)")
    return text


# ---------------------------------------------------------------------------------------------
# Council


class RunResult(BaseModel):
    """A run's final answer and the model that wrote it."""

    text: Text
    model: str


class ReviewView(CallView):
    """A reviewer's call: the answers it saw under letters, and its ranking read back to members.

    `letters` maps each letter the reviewer saw to the label (`model#instance`) of the member
    whose answer it was: shuffled afresh for every reviewer (deterministically per run and
    reviewer), never holding the reviewer's own answer. `ranking` is the labels, best first, as
    read from its `FINAL RANKING:`; None when the review could not be read (`problem` says why),
    and then it counts for nothing in the aggregate.
    """

    label: str
    letters: dict[str, str] = Field(default_factory=dict)
    ranking: list[str] | None = None
    problem: str | None = None


class RankedAnswer(BaseModel):
    """A member's answer in the aggregate ranking: its Borda score (the sum over readable reviews
    of the number of answers it was ranked above) and how many reviews ranked it."""

    rank: int
    label: str
    model: str
    instance: int
    score: float
    reviews: int
    average_position: float | None = Field(
        None, description="Its mean place (1 = best) in the reviews that ranked it."
    )


class CouncilView(_RunView):
    mode: Literal["council"] = "council"
    request: CouncilRequest | TextRef
    answers: list[CallView] = Field(default_factory=list, description="Stage 1: every member's answer.")
    reviews: list[ReviewView] = Field(default_factory=list, description="Stage 2: every reviewer's ranking.")
    ranking: list[RankedAnswer] = Field(default_factory=list, description="The aggregate (Borda) ranking.")
    chairman: CallView | None = Field(None, description="Stage 3: the chairman's call.")
    result: RunResult | None = None
    usage: Usage = Field(default_factory=Usage)

    @property
    def answer(self) -> str | None:
        """The chairman's answer; None before it."""
        return _plain(self.result.text) if self.result else None

    @property
    def steps(self) -> int:
        """Stages begun (answers, reviews, chairman). The chairman's is the third even without
        reviews: step 2 has no calls when no reviewer has two answers to compare."""
        if self.chairman is not None:
            return 3
        return (1 if self.answers else 0) + (1 if self.reviews else 0)


# ---------------------------------------------------------------------------------------------
# Vote


class VoteCallView(CallView):
    """A vote: the member's answer and what it counts as (`normalized`; None: it could not be read)."""

    label: str
    normalized: Text | None = None


class TallyEntry(BaseModel):
    """One distinct answer (normalised), how many votes it got and whose; most votes first."""

    answer: Text
    count: int
    voters: list[str]


class VoteResult(BaseModel):
    """The vote's answer: the majority's (`by: vote`), or the escalation's."""

    text: Text
    by: Literal["vote", "consortium", "debate"]
    agreement: float | None = None


class VoteView(_RunView):
    mode: Literal["vote"] = "vote"
    request: VoteRequest | TextRef
    votes: list[VoteCallView] = Field(default_factory=list)
    tally: list[TallyEntry] = Field(default_factory=list)
    agreement: float | None = Field(None, description="The majority's share of the votes counted (0..1).")
    majority: Text | None = Field(None, description="The most common answer, normalised.")
    escalated: bool = False
    escalation: ConsortiumView | DebateView | None = Field(
        None,
        description="The consortium or debate the vote went on as, its first iteration or round the votes.",
    )
    result: VoteResult | None = None
    usage: Usage = Field(default_factory=Usage)

    @property
    def answer(self) -> str | None:
        return _plain(self.result.text) if self.result else None

    @property
    def steps(self) -> int:
        """The vote, then the escalation's iterations or rounds after its first."""
        if self.escalation is None:
            return 1 if self.votes else 0
        return max(1, self.escalation.steps)


# ---------------------------------------------------------------------------------------------
# Mixture-of-Agents


class LayerView(BaseModel):
    number: int
    calls: list[CallView] = Field(default_factory=list)


class MoaView(_RunView):
    mode: Literal["moa"] = "moa"
    request: MoaRequest | TextRef
    layers: list[LayerView] = Field(default_factory=list)
    aggregator: CallView | None = None
    result: RunResult | None = None
    usage: Usage = Field(default_factory=Usage)

    @property
    def answer(self) -> str | None:
        return _plain(self.result.text) if self.result else None

    @property
    def steps(self) -> int:
        """Layers begun, and the aggregator."""
        return len(self.layers) + (1 if self.aggregator else 0)


AnyRunView = ConsortiumView | DebateView | CouncilView | VoteView | MoaView

# The view of any run, chosen by `mode`. Built by the protocols with long texts by reference
# (`moot.texts`); what the API answers and the recorder stores is hydrated.
RunView = Annotated[AnyRunView, Discriminator("mode")]
run_view_adapter: TypeAdapter[AnyRunView] = TypeAdapter(RunView)


class RunSummary(BaseModel):
    """A run in a list (`GET /v1/runs`), as recorded in Postgres."""

    id: str
    mode: Mode | None = None
    status: RunStatus
    prompt: str | None = None
    members: list[str] = Field(
        default_factory=list, description='Who takes part: each model once, "model xN" for N instances.'
    )
    reason: str | None = None
    created_at: Timestamp | None = None
    finished_at: Timestamp | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
