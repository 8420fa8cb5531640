"""The gateway's bodies: what each route takes and answers, as /openapi.json shows them.

Three request bodies are validated by the routes themselves rather than by FastAPI, and are
declared here as `Documented(...)`: their schema is the typed one, their value the JSON object
as sent. A run submission can only be validated once a saved configuration and an earlier
conversation are merged into it (`runs_service.resolve`), a saved configuration is a run request
whose missing prompt is an error of its own, and a bad chat completion body must get OpenAI's
400 with `param` instead of FastAPI's 422.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, PlainValidator
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from moot.messages import RunEvent
from moot.requests import ChatMessage, ConsortiumRequest, DebateRequest
from moot.views import ConsortiumView, DebateView, RunSummary
from moot_gateway.configs import MAX_VERSION


def _json_object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PydanticCustomError("dict_type", "Input should be a valid dictionary")
    return value


def Documented(schema: Any) -> PlainValidator:
    """A JSON object body, validated by the route, documented as `schema`."""
    return PlainValidator(_json_object, json_schema_input_type=schema)


# ---------------------------------------------------------------------------------------------
# Runs

_CONTINUE_FROM = Field(
    None, description="A finished run of yours whose conversation (prompt and answer) this run continues."
)


class ConsortiumSubmission(ConsortiumRequest):
    continue_from: str | None = _CONTINUE_FROM


class DebateSubmission(DebateRequest):
    continue_from: str | None = _CONTINUE_FROM


class SavedRunSubmission(BaseModel):
    """A run of a saved configuration; any other field of its request overrides the saved one."""

    model_config = ConfigDict(extra="allow")

    config: str = Field(description="The name of a saved configuration (`PUT /v1/consortiums/{name}`).")
    config_version: int | None = Field(
        None, ge=1, le=MAX_VERSION, description="A version of it; the latest by default."
    )
    prompt: str = Field(min_length=1, max_length=200_000)
    continue_from: str | None = _CONTINUE_FROM


# A body with `config` runs a saved configuration; otherwise `mode` (default "consortium") says
# which request it is.
RunSubmission = Annotated[
    dict[str, Any],
    Documented(
        SavedRunSubmission | Annotated[ConsortiumSubmission | DebateSubmission, Discriminator("mode")]
    ),
]


class RunLinks(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True, validate_by_alias=True)

    self_: str = Field(alias="self")
    events: str = Field(description="The run's events as server-sent events.")


def links(run_id: str) -> RunLinks:
    return RunLinks(self_=f"/v1/runs/{run_id}", events=f"/v1/runs/{run_id}/events")


class RunAccepted(BaseModel):
    id: str
    mode: Literal["consortium", "debate"]
    status: Literal["running"] = "running"
    trace_id: str | None = Field(None, description="The run's trace, when tracing is on.")
    links: RunLinks


class ConsortiumRun(ConsortiumView):
    trace_id: str | None = None
    links: RunLinks


class DebateRun(DebateView):
    trace_id: str | None = None
    links: RunLinks


RunResponse = Annotated[ConsortiumRun | DebateRun, Discriminator("mode")]


def run_response(view: ConsortiumView | DebateView, trace_id: str | None) -> ConsortiumRun | DebateRun:
    """The run as `GET /v1/runs/{id}` answers it: its view, its trace and its links."""
    cls = DebateRun if isinstance(view, DebateView) else ConsortiumRun
    return cls(**dict(view), trace_id=trace_id, links=links(view.id))


class CancelledConsortium(ConsortiumView):
    links: RunLinks


class CancelledDebate(DebateView):
    links: RunLinks


CancelResponse = Annotated[CancelledConsortium | CancelledDebate, Discriminator("mode")]


def cancel_response(view: ConsortiumView | DebateView) -> CancelledConsortium | CancelledDebate:
    cls = CancelledDebate if isinstance(view, DebateView) else CancelledConsortium
    return cls(**dict(view), links=links(view.id))


class RunList(BaseModel):
    object: Literal["list"] = "list"
    data: list[RunSummary]


# Each event's `data`: one run event, plus `seq`, its stream sequence (also the event's `id`).
RunEventData = RunEvent


# ---------------------------------------------------------------------------------------------
# Saved configurations


class ConsortiumConfig(ConsortiumRequest):
    """A consortium saved under a name: its request without the prompt."""

    prompt: SkipJsonSchema[str] = Field("", exclude=True)


class DebateConfig(DebateRequest):
    """A debate saved under a name: its request without the prompt."""

    prompt: SkipJsonSchema[str] = Field("", exclude=True)


SavedConfigBody = Annotated[ConsortiumConfig | DebateConfig, Discriminator("mode")]
SavedConfigSubmission = Annotated[dict[str, Any], Documented(SavedConfigBody)]


class SavedConfig(BaseModel):
    name: str
    version: int
    config: SavedConfigBody
    created_at: str


class SavedConfigVersions(SavedConfig):
    versions: list[int] = Field(description="Every version kept, oldest first.")


class SavedConfigList(BaseModel):
    object: Literal["list"] = "list"
    data: list[SavedConfig] = Field(description="The latest version of each saved configuration.")


# ---------------------------------------------------------------------------------------------
# OpenAI-compatible


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    # Other OpenAI parameters (temperature, ...) are accepted and ignored: the saved
    # configuration decides how its models are called.
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, description="The name of a saved configuration.")
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None


ChatCompletionSubmission = Annotated[dict[str, Any], Documented(ChatCompletionRequest)]


class ModelInfo(BaseModel):
    mode: Literal["consortium", "debate"] | None
    version: int


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    moot: ModelInfo


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop"] = "stop"


class ChatUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class RunRef(BaseModel):
    run_id: str
    run: str = Field(description="Where the run's full record is.")
    status: str | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: ChatUsage
    moot: RunRef


# ---------------------------------------------------------------------------------------------
# Health


class Health(BaseModel):
    status: Literal["ok"]
    service: str


class Readiness(BaseModel):
    """`degraded`: Postgres is down, keys seen lately still work and runs go on (still 200)."""

    status: Literal["ready", "degraded", "not ready"]
    nats: Literal["ok", "down"]
    kv: Literal["ok", "down"] = Field(description="The run-state and text buckets (JetStream).")
    postgres: Literal["ok", "down"]
