"""What the HTTP API says besides the shared contract, and how the clients write and read it.

A run's request, view and events are the shared contract (`moot.requests`, `moot.views`,
`moot.messages`); what only the HTTP API has is here: a run accepted, a saved configuration, the
one error shape (`{"error": {"message", "type", "param", "code", "errors"?}}`). The sync and the
async client both go through these functions, so they build every body and read every answer
the same way; only their I/O differs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args
from urllib.parse import quote

import httpx
from httpx_sse import ServerSentEvent
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from moot.eval.models import EvalRequest
from moot.messages import (
    SEED_NAMES,
    TERMINAL_EVENT_TYPES,
    AnyRunEvent,
    RunCancelled,
    RunCompleted,
    RunFailed,
    run_event_adapter,
)
from moot.requests import AnyRunRequest, Mode, run_request_adapter
from moot.texts import TextRef
from moot.views import AnyRunView, RunSummary, run_view_adapter

DEFAULT_URL = "http://127.0.0.1:8000"


class RunAccepted(BaseModel):
    """`POST /v1/runs` accepted a run: follow it with `events(id)`, or `wait(id)` for its end."""

    id: str
    mode: Mode
    status: Literal["running"] = "running"
    trace_id: str | None = Field(None, description="The run's trace, when the gateway traces.")


_MODE: TypeAdapter[Mode] = TypeAdapter(Mode)


class SavedConfig(BaseModel):
    """A saved configuration: a run request without its prompt, under a name, versioned."""

    name: str
    version: int
    config: dict[str, Any] = Field(description="The request without its prompt, as the gateway stored it.")
    created_at: datetime
    versions: list[int] | None = Field(None, description="Every version kept, oldest first (`get_config`).")

    @property
    def mode(self) -> Mode:
        return _MODE.validate_python(self.config.get("mode", "consortium"))

    def request(self, prompt: str) -> AnyRunRequest:
        """The run request this configuration makes with `prompt`, validated as the gateway would."""
        return run_request_adapter.validate_python({**self.config, "prompt": prompt})


class FieldError(BaseModel):
    """One field that did not validate: where (`members.0.model`) and why."""

    param: str
    message: str


class ErrorDetail(BaseModel):
    """The body of every refusal: `{"error": <this>}`."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None
    errors: list[FieldError] | None = Field(
        None, description="A 422's every field error (the first is `param`)."
    )


class MootError(Exception):
    """What the clients raise besides httpx's transport errors (`httpx.HTTPError`)."""


class ApiError(MootError):
    """The gateway refused a request: its status and its error body.

    `error` is None when the body is not the API's error shape (a proxy's page, say); `text` is
    the body as it came. `retry_after` is the `Retry-After` header in seconds (429, 503), if any.
    """

    def __init__(
        self, status: int, error: ErrorDetail | None, text: str = "", retry_after: float | None = None
    ) -> None:
        super().__init__(f"HTTP {status}: {error.message if error else text[:200]}")
        self.status = status
        self.error = error
        self.text = text
        self.retry_after = retry_after

    @property
    def message(self) -> str:
        """One line: the error's message (the body's text when it has no error shape)."""
        return self.error.message if self.error else self.text


class StreamEnded(MootError):
    """A run's event stream kept ending before the run's last event."""


def error_of(response: httpx.Response) -> ApiError:
    """The refusal a response with an error status carries (its body read)."""
    error: ErrorDetail | None = None
    try:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            error = ErrorDetail.model_validate(body["error"])
    except (ValueError, ValidationError):  # not JSON, or not the error shape: `text` tells
        pass
    return ApiError(response.status_code, error, response.text, _seconds(response.headers.get("Retry-After")))


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: no gateway of ours sends one
        return None


def json_of(response: httpx.Response) -> Any:
    """The body of a successful response (None for a 204); ApiError for any error status."""
    if response.is_error:
        raise error_of(response)
    return None if response.status_code == 204 else response.json()


# ---------------------------------------------------------------------------------------------
# Paths and bodies


def run_path(run_id: str, tail: str = "") -> str:
    return f"/v1/runs/{quote(run_id, safe='')}{tail}"


def eval_path(eval_id: str, tail: str = "") -> str:
    return f"/v1/evals/{quote(eval_id, safe='')}{tail}"


def eval_body(request: EvalRequest | Mapping[str, Any]) -> dict[str, Any]:
    return request.model_dump(mode="json") if isinstance(request, EvalRequest) else dict(request)


def config_path(name: str) -> str:
    return f"/v1/consortiums/{quote(name, safe='')}"


def _request_fields(request: AnyRunRequest) -> dict[str, Any]:
    """What the caller set, `mode` always (a body without it is a consortium): the gateway fills
    in every default itself, so a client older than its gateway pins none of its own."""
    return {"mode": request.mode, **request.model_dump(mode="json", exclude_unset=True)}


def run_body(request: AnyRunRequest | Mapping[str, Any], continue_from: str | None) -> dict[str, Any]:
    body = _request_fields(request) if isinstance(request, BaseModel) else dict(request)
    return body if continue_from is None else {**body, "continue_from": continue_from}


def config_run_body(
    name: str,
    prompt: str,
    version: int | None,
    continue_from: str | None,
    overrides: Mapping[str, Any] | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {**(overrides or {}), "config": name, "prompt": prompt}
    if version is not None:
        body["config_version"] = version
    if continue_from is not None:
        body["continue_from"] = continue_from
    return body


def config_body(config: AnyRunRequest | Mapping[str, Any]) -> dict[str, Any]:
    """A configuration to save: a request's fields without its prompt, or a mapping as it is."""
    if isinstance(config, BaseModel):
        return {k: v for k, v in _request_fields(config).items() if k != "prompt"}
    return dict(config)


# ---------------------------------------------------------------------------------------------
# Answers


def run_view(body: Any) -> AnyRunView:
    """A run as `GET /v1/runs/{id}` and the cancel answer it: its view (`trace_id` and `links` left out)."""
    return run_view_adapter.validate_python(body)


_RUN_SUMMARIES: TypeAdapter[list[RunSummary]] = TypeAdapter(list[RunSummary])
_CONFIGS: TypeAdapter[list[SavedConfig]] = TypeAdapter(list[SavedConfig])


def run_summaries(body: Any) -> list[RunSummary]:
    return _RUN_SUMMARIES.validate_python(body["data"])


def saved_configs(body: Any) -> list[SavedConfig]:
    return _CONFIGS.validate_python(body["data"])


# ---------------------------------------------------------------------------------------------
# Events

# How long the stream of a run that has begun waits before it is resumed after a dropped
# connection, and how many times in a row it is resumed without getting an event.
RESUME_PAUSE_SECONDS = 0.5
RESUMES = 5
# What the stream's connection dropping looks like; a new connection with `Last-Event-ID` resumes.
DROPPED = (httpx.TransportError,)
# The gateway sends a keep-alive comment after 15 s without events: a stream silent for four
# times that is taken as dropped (httpx.ReadTimeout), and resumed.
STREAM_TIMEOUT = httpx.Timeout(30.0, read=60.0)

_END_EVENTS = (RunCompleted, RunFailed, RunCancelled)
# Every event type the contract knows, under its name and its former one (events stored under
# those still read); a stream may carry a type added after this client was built: it is skipped.
EVENT_TYPES = frozenset(
    {cls.model_fields["type"].default for cls in get_args(AnyRunEvent)} | set(SEED_NAMES.values())
)


@dataclass(frozen=True)
class RawEvent:
    """One event as sent: its SSE `id` and `event`, its data as JSON. For readers that look at a
    few fields of many events and need not validate each (the `moot` command)."""

    id: str
    type: str
    data: dict[str, Any]


@dataclass(frozen=True)
class StreamedEvent:
    """One event of a run's stream, typed.

    `id` is the event's stream sequence, to resume after (`events(run_id, after=id)`); an end
    event the gateway built from the run's record has none and repeats the previous event's.
    """

    id: str
    event: AnyRunEvent

    @property
    def is_last(self) -> bool:
        """Whether this is the run's last event (`run.completed`, `run.failed` or `run.cancelled`)."""
        return self.event.type in TERMINAL_EVENT_TYPES

    @property
    def final_view(self) -> AnyRunView | None:
        """The run's view that its last event carries; None for any other event."""
        if isinstance(self.event, _END_EVENTS) and not isinstance(self.event.run, TextRef):
            return self.event.run
        return None


def stream_headers(after: str | None) -> dict[str, str]:
    return {"Last-Event-ID": after} if after else {}


def is_event(sse: ServerSentEvent) -> bool:
    """False for what is not an event: a keep-alive comment (": ping"), which httpx-sse 0.4.3
    turns into an empty event once an id was seen."""
    return bool(sse.data)


def raw_event(sse: ServerSentEvent) -> RawEvent:
    return RawEvent(id=sse.id, type=sse.event, data=json.loads(sse.data))


def typed_event(sse: ServerSentEvent) -> StreamedEvent | None:
    """The event typed; None for a type this client does not know."""
    if sse.event not in EVENT_TYPES:
        return None
    return StreamedEvent(id=sse.id, event=run_event_adapter.validate_json(sse.data))
