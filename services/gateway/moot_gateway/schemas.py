"""The gateway's bodies: what each route takes and answers, as /openapi.json shows them.

Three request bodies are validated by the routes themselves rather than by FastAPI, and are
declared here as `Documented(...)`: their schema is the typed one, their value the JSON object
as sent. A run submission can only be validated once a saved configuration and an earlier
conversation are merged into it (`runs_service.resolve`), a saved configuration is a run request
whose missing prompt is an error of its own, and a bad chat completion body must get OpenAI's
400 with `param` instead of FastAPI's 422.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Discriminator, Field, PlainValidator, create_model
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from moot.messages import RunEvent
from moot.requests import AnyRunRequest, ChatMessage
from moot.views import AnyRunView, Mode, RunSummary
from moot_gateway.configs import MAX_VERSION


def _json_object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PydanticCustomError("dict_type", "Input should be a valid dictionary")
    return value


def Documented(schema: Any) -> PlainValidator:
    """A JSON object body, validated by the route, documented as `schema`."""
    return PlainValidator(_json_object, json_schema_input_type=schema)


# ---------------------------------------------------------------------------------------------
# Runs and saved configurations, one schema per mode
#
# Built from the request and view unions of `moot.requests` / `moot.views` (what the protocol
# registry runs), so the gateway names no mode: a protocol added there is served here as it is.
# Each class is named after its request or view (`CouncilRequest` -> `CouncilSubmission`,
# `CouncilConfig`; `CouncilView` -> `CouncilRun`, `CancelledCouncil`).

_CONTINUE_FROM = Field(
    None, description="A finished run of yours whose conversation (prompt and answer) this run continues."
)
_REQUESTS: tuple[type[BaseModel], ...] = get_args(AnyRunRequest)
_VIEWS: tuple[type[BaseModel], ...] = get_args(AnyRunView)


def _stem(cls: type[BaseModel], suffix: str) -> str:
    return cls.__name__.removesuffix(suffix)


def _per_mode(classes: list[type[BaseModel]]) -> Any:
    """The union of `classes`, told apart by `mode`."""
    return Annotated[Union[tuple(classes)], Discriminator("mode")]  # noqa: UP007 (a runtime tuple)


class SavedRunSubmission(BaseModel):
    """A run of a saved configuration; any other field of its request overrides the saved one."""

    model_config = ConfigDict(extra="allow")

    config: str = Field(description="The name of a saved configuration (`PUT /v1/consortiums/{name}`).")
    config_version: int | None = Field(
        None, ge=1, le=MAX_VERSION, description="A version of it; the latest by default."
    )
    prompt: str = Field(min_length=1, max_length=200_000)
    continue_from: str | None = _CONTINUE_FROM


_SUBMISSIONS = [
    create_model(
        _stem(r, "Request") + "Submission",
        __base__=r,
        __module__=__name__,
        continue_from=(str | None, _CONTINUE_FROM),
    )
    for r in _REQUESTS
]

# A body with `config` runs a saved configuration; otherwise `mode` (default: the first mode,
# "consortium") says which request it is.
RunSubmission = Annotated[dict[str, Any], Documented(SavedRunSubmission | _per_mode(_SUBMISSIONS))]


class RunLinks(BaseModel):
    model_config = ConfigDict(serialize_by_alias=True, validate_by_name=True, validate_by_alias=True)

    self_: str = Field(alias="self")
    events: str = Field(description="The run's events as server-sent events.")


def links(run_id: str) -> RunLinks:
    return RunLinks(self_=f"/v1/runs/{run_id}", events=f"/v1/runs/{run_id}/events")


class RunAccepted(BaseModel):
    id: str
    mode: Mode
    status: Literal["running"] = "running"
    trace_id: str | None = Field(None, description="The run's trace, when tracing is on.")
    links: RunLinks


_RUNS = {
    v: create_model(
        _stem(v, "View") + "Run",
        __base__=v,
        __module__=__name__,
        trace_id=(str | None, None),
        links=(RunLinks, ...),
    )
    for v in _VIEWS
}
_CANCELLED = {
    v: create_model("Cancelled" + _stem(v, "View"), __base__=v, __module__=__name__, links=(RunLinks, ...))
    for v in _VIEWS
}
RunResponse = _per_mode(list(_RUNS.values()))
CancelResponse = _per_mode(list(_CANCELLED.values()))


def run_response(view: AnyRunView, trace_id: str | None) -> BaseModel:
    """The run as `GET /v1/runs/{id}` answers it: its view, its trace and its links."""
    return _RUNS[type(view)](**dict(view), trace_id=trace_id, links=links(view.id))


def cancel_response(view: AnyRunView) -> BaseModel:
    return _CANCELLED[type(view)](**dict(view), links=links(view.id))


class RunList(BaseModel):
    object: Literal["list"] = "list"
    data: list[RunSummary]


# Each event's `data`: one run event, plus `seq`, its stream sequence (also the event's `id`).
RunEventData = RunEvent


# ---------------------------------------------------------------------------------------------
# Saved configurations


_CONFIGS = [
    create_model(
        _stem(r, "Request") + "Config",
        __base__=r,
        __module__=__name__,
        __doc__=f"A {_stem(r, 'Request').lower()} run saved under a name: its request without the prompt.",
        prompt=(SkipJsonSchema[str], Field("", exclude=True)),
    )
    for r in _REQUESTS
]
if TYPE_CHECKING:  # a union built at run time: to mypy, one of the request models
    SavedConfigBody = BaseModel
else:
    SavedConfigBody = _per_mode(_CONFIGS)
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
    mode: Mode | None
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
