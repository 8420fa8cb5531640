"""What a client asks for: a run request (one per mode), its members and conversation.

The body of `POST /v1/runs` (by `mode`), of a saved configuration and of a continued conversation;
validated here, so a bad request is refused with the field named before anything is accepted.
"""

from __future__ import annotations

import re
import string
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
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


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class Budget(_Strict):
    """What a run may spend before it is ended: wall-clock time, and optionally tokens and US dollars.

    `seconds` is a deadline the sweeper enforces (`stop_reason: deadline`). `tokens` and `usd` are
    checked by the protocol before it issues calls: a run that could exceed one with its next
    calls ends instead (`stop_reason: budget`; how a call's spend is reserved:
    `moot.protocols.base.over_budget`). They are left out of the stored request when not set, so a
    request without them reads as it always did.
    """

    seconds: int = Field(
        900,
        ge=1,
        le=86_400,
        description="Wall-clock seconds from acceptance; then the run ends (`stop_reason: deadline`).",
    )
    tokens: int | None = Field(
        None,
        ge=1,
        exclude_if=lambda v: v is None,
        description="Input plus output tokens of all the run's calls, at most (`stop_reason: budget`); none: no limit.",
    )
    usd: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        exclude_if=lambda v: v is None,
        description="Cost of all the run's calls in US dollars, at most (`stop_reason: budget`); none: no limit.",
    )


def _budget_field() -> Any:
    return Field(default_factory=Budget, description="What the run may spend before it is ended.")


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("the prompt is blank: ask something")
    return value


Prompt = Annotated[
    str,
    Field(min_length=1, max_length=200_000, description="The question."),
    AfterValidator(_not_blank),
]


class ConsortiumRequest(_Strict):
    """A consortium: members answer in parallel, an arbiter synthesizes, repeat until confident."""

    mode: Literal["consortium"] = "consortium"
    prompt: Prompt
    members: list[MemberSpec] = Field(min_length=1, max_length=16)
    arbiter: str = Field(min_length=1, max_length=200)
    confidence_threshold: float = Field(0.8, ge=0.0, le=1.0)
    min_iterations: int = Field(1, ge=1, le=20)
    max_iterations: int = Field(3, ge=1, le=20)
    system: str | None = Field(None, max_length=50_000)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1, le=200_000)
    history: list[ChatMessage] = _history_field()
    budget: Budget = _budget_field()

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

    `judge_mode` defaults to `external_judge` when a `judge` is named (as `moot debate --judge`
    does), else to `display_only` (every round is played, nobody judges, no final answer: it needs
    no other field and makes no calls beyond the debaters' own).
    """

    @model_validator(mode="before")
    @classmethod
    def _judge_means_external(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("judge") is not None and "judge_mode" not in data:
            return {**data, "judge_mode": "external_judge"}
        return data

    mode: Literal["debate"] = "debate"
    prompt: Prompt
    members: list[DebaterSpec] = Field(min_length=1, max_length=16)
    format: DebateFormat = "free_discussion"
    custom_prompt: str | None = Field(None, max_length=50_000, validate_default=True)
    judge_mode: JudgeMode = Field(
        "display_only", description="`external_judge` when `judge` is given, else `display_only`."
    )
    judge: str | None = Field(None, max_length=200, validate_default=True)
    max_rounds: int = Field(3, ge=1, le=20)
    history: list[ChatMessage] = _history_field()
    budget: Budget = _budget_field()

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


# Council (`moot.protocols.council`): members answer, reviewers rank the others' answers
# anonymized, a chairman writes the final answer knowing the answers and the aggregate ranking.


def _distinct(specs: list[MemberSpec], what: str, most: int) -> list[MemberSpec]:
    """`specs` with each model listed once and at most `most` instances in all; ValueError otherwise."""
    seen: set[str] = set()
    for m in specs:
        if m.model in seen:
            raise ValueError(f"model {m.model!r} is listed twice; use count for more {what}")
        seen.add(m.model)
    if sum(m.count for m in specs) > most:
        raise ValueError(f"at most {most} {what} in total")
    return specs


class _Calls(_Strict):
    """What every call of a run shares: the system prompt, temperature, max_tokens, history, budget."""

    system: str | None = Field(None, max_length=50_000)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1, le=200_000)
    history: list[ChatMessage] = _history_field()
    budget: Budget = _budget_field()


class CouncilRequest(_Calls):
    """A council: members answer, reviewers rank the others' answers anonymized, a chairman answers."""

    mode: Literal["council"] = "council"
    prompt: Prompt
    members: list[MemberSpec] = Field(min_length=1, max_length=16)
    chairman: str = Field(min_length=1, max_length=200, description="Writes the final answer.")
    reviewers: list[MemberSpec] | None = Field(
        None,
        max_length=16,
        description="Who ranks the answers; the members by default. A reviewer that is a member"
        " (same model and instance) ranks the others' answers, never its own.",
    )

    @field_validator("chairman")
    @classmethod
    def _chairman_name(cls, v: str) -> str:
        return MemberSpec._model_name(v)

    @field_validator("members")
    @classmethod
    def _council_members(cls, v: list[MemberSpec]) -> list[MemberSpec]:
        _distinct(v, "member instances", 16)
        if sum(m.count for m in v) < 2:
            raise ValueError("a council needs at least two answers to rank (use count: 2 for one model)")
        return v

    @field_validator("reviewers")
    @classmethod
    def _council_reviewers(cls, v: list[MemberSpec] | None) -> list[MemberSpec] | None:
        if v is not None:
            if not v:
                raise ValueError(
                    "name at least one reviewer, or leave reviewers out to have the members review"
                )
            _distinct(v, "reviewer instances", 16)
        return v


# Vote (`moot.protocols.vote`): members answer independently, the most common answer wins; below
# the agreement threshold the run can go on as a consortium or a debate seeded with the votes.

AnswerFormat = Literal["free", "number", "choice", "yes_no"]


class ConsortiumEscalation(_Strict):
    """Go on as a consortium whose first iteration is the votes: the arbiter synthesizes them."""

    mode: Literal["consortium"] = "consortium"
    arbiter: str = Field(min_length=1, max_length=200)
    confidence_threshold: float = Field(0.8, ge=0.0, le=1.0)
    min_iterations: int = Field(1, ge=1, le=20)
    max_iterations: int = Field(3, ge=1, le=20)

    @field_validator("arbiter")
    @classmethod
    def _arbiter_name(cls, v: str) -> str:
        return MemberSpec._model_name(v)

    @model_validator(mode="after")
    def _iteration_bounds(self) -> ConsortiumEscalation:
        if self.min_iterations > self.max_iterations:
            raise ValueError("min_iterations must not exceed max_iterations")
        return self


class DebateEscalation(_Strict):
    """Go on as a debate whose first round is the votes: each voter's answer is its position."""

    @model_validator(mode="before")
    @classmethod
    def _judge_means_external(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("judge") is not None and "judge_mode" not in data:
            return {**data, "judge_mode": "external_judge"}
        return data

    mode: Literal["debate"] = "debate"
    format: Literal["free_discussion", "structured_opposition", "iterative_improvement"] = "free_discussion"
    judge_mode: JudgeMode = Field(
        "display_only", description="`external_judge` when `judge` is given, else `display_only`."
    )
    judge: str | None = Field(None, max_length=200, validate_default=True)
    max_rounds: int = Field(3, ge=1, le=20)

    @field_validator("judge")
    @classmethod
    def _judge_for_mode(cls, v: str | None, info: ValidationInfo) -> str | None:
        return DebateRequest._judge_for_mode(v, info)


Escalation = Annotated[ConsortiumEscalation | DebateEscalation, Discriminator("mode")]


class VoteRequest(_Calls):
    """A vote: every member instance answers once; the answer most of them give wins.

    With `escalate`, a vote whose agreement is below `agreement_threshold` goes on as that
    consortium or debate, its first iteration or round being the votes already cast.
    """

    mode: Literal["vote"] = "vote"
    prompt: Prompt
    members: list[MemberSpec] = Field(min_length=1, max_length=16)
    answer_format: AnswerFormat = Field(
        "free",
        description="How answers are compared: `number` as numbers, `choice` by option letter, `yes_no` by"
        " polarity, `free` by a normalised form of the text.",
    )
    choices: list[Annotated[str, Field(min_length=1, max_length=2_000)]] | None = Field(
        None,
        min_length=2,
        max_length=26,
        description='The options of a `choice` vote, shown to the members as "A. ...", "B. ...".',
    )
    agreement_threshold: float = Field(
        0.6, ge=0.0, le=1.0, description="The share of counted votes the majority needs to be the answer."
    )
    escalate: Escalation | None = Field(
        None, description="What the run goes on as when agreement is below the threshold."
    )

    @field_validator("members")
    @classmethod
    def _vote_members(cls, v: list[MemberSpec]) -> list[MemberSpec]:
        return _distinct(v, "voters", 32)

    @model_validator(mode="after")
    def _consistent(self) -> VoteRequest:
        if self.choices is not None and self.answer_format != "choice":
            raise ValueError('choices are only allowed with answer_format "choice"')
        if isinstance(self.escalate, DebateEscalation) and sum(m.count for m in self.members) < 2:
            raise ValueError("a vote that escalates to a debate needs at least two voters")
        if isinstance(self.escalate, DebateEscalation) and sum(m.count for m in self.members) > 16:
            raise ValueError("a vote that escalates to a debate has at most 16 voters (debaters)")
        return self


# Mixture-of-Agents (`moot.protocols.moa`): layers of proposers, each seeing the previous layer's
# answers, then an aggregator.


def _layer_field() -> Any:
    return Field(min_length=1, max_length=16)


class MoaRequest(_Calls):
    """Mixture-of-Agents: each layer answers seeing the previous layer's answers; an aggregator answers."""

    mode: Literal["moa"] = "moa"
    prompt: Prompt
    layers: list[Annotated[list[MemberSpec], _layer_field()]] = Field(
        min_length=1, max_length=8, description="Proposers per layer, first layer first."
    )
    aggregator: str = Field(min_length=1, max_length=200, description="Writes the final answer.")

    @field_validator("aggregator")
    @classmethod
    def _aggregator_name(cls, v: str) -> str:
        return MemberSpec._model_name(v)

    @field_validator("layers")
    @classmethod
    def _layer_members(cls, v: list[list[MemberSpec]]) -> list[list[MemberSpec]]:
        for layer in v:
            _distinct(layer, "proposer instances per layer", 16)
        if sum(m.count for layer in v for m in layer) > 64:
            raise ValueError("at most 64 proposer instances over all layers")
        return v


AnyRunRequest = ConsortiumRequest | DebateRequest | CouncilRequest | VoteRequest | MoaRequest
# Every mode, in the order the API lists them; the first is what a body without `mode` is.
Mode = Literal["consortium", "debate", "council", "vote", "moa"]
MODES: tuple[str, ...] = get_args(Mode)


def request_class(mode: str) -> type[BaseModel]:
    """The request model of `mode`; KeyError for an unknown one."""
    return {cls.model_fields["mode"].default: cls for cls in get_args(AnyRunRequest)}[mode]


class _RunMode(BaseModel):
    mode: Mode


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
RunRequest = Annotated[AnyRunRequest, Discriminator("mode"), BeforeValidator(_default_mode)]
run_request_adapter: TypeAdapter[AnyRunRequest] = TypeAdapter(RunRequest)

# Fields of a request (at any depth) that name one model, besides the members' `model`.
MODEL_FIELDS = frozenset({"arbiter", "judge", "chairman", "aggregator"})


def models_named(request: BaseModel) -> list[tuple[tuple[str | int, ...], str]]:
    """Every model a run request names, with where it names it (`("members", 0, "model")`,
    `("escalate", "arbiter")`), whatever its mode: found by walking the request, so a new protocol
    is covered when its members are `MemberSpec`s and its single models are in `MODEL_FIELDS`."""
    found: list[tuple[tuple[str | int, ...], str]] = []

    def walk(value: Any, at: tuple[str | int, ...]) -> None:
        if isinstance(value, MemberSpec):
            found.append(((*at, "model"), value.model))
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                field = getattr(value, name)
                if name in MODEL_FIELDS and isinstance(field, str):
                    found.append(((*at, name), field))
                elif name != "history":
                    walk(field, (*at, name))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, (*at, i))

    walk(request, ())
    return found
