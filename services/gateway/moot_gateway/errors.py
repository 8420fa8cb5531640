"""Errors in the shape OpenAI clients expect: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import logging
import time
from typing import Any

import asyncpg
import nats.errors
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from moot.requests import MODES

log = logging.getLogger(__name__)


class FieldError(BaseModel):
    """One field that did not validate: where (`members.0.model`) and why."""

    param: str
    message: str


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None
    # A 422's every field error (the first is `param`); absent on other errors.
    errors: list[FieldError] | None = None


class ErrorBody(BaseModel):
    """Every refusal, validation errors included: `{"error": {"message", "type", "param", "code"}}`.

    Nothing the client sent is echoed back beyond a short prefix of a field's message.
    """

    error: ErrorDetail


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a router: these statuses answer an `ErrorBody` (422 included, which
    replaces FastAPI's own validation error schema in the document)."""
    return {status: {"model": ErrorBody} for status in statuses}


def stream_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a streaming route, whose refusals are JSON all the same (with `model`
    alone FastAPI would give them the stream's media type)."""
    schema = {"$ref": "#/components/schemas/ErrorBody"}
    return {status: {"content": {"application/json": {"schema": schema}}} for status in statuses}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# A field's message is cut here, and a 422's whole message here: an error names what is wrong,
# it does not send a 5 MB prompt back.
FIELD_MESSAGE_MAX = 300
MESSAGE_MAX = 2000
# Where a validation error was found, left out of `param`; and the union member pydantic tried
# for a run body (its `mode`), which the client did not write either.
_LOCATIONS = frozenset({"body", "query", "path", "header", "cookie"})
_UNION_TAGS = frozenset(MODES)


def _param(loc: Any) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in _LOCATIONS:
        parts = parts[1:]
    if parts and parts[0] in _UNION_TAGS:
        parts = parts[1:]
    return ".".join(parts) or "body"


def _cut(text: str, most: int) -> str:
    return text if len(text) <= most else text[: most - 1] + "…"


def field_errors(exc: RequestValidationError) -> list[FieldError]:
    return [
        FieldError(
            param=_param(e.get("loc", ())),
            message=_cut(str(e.get("msg", "invalid")).removeprefix("Value error, "), FIELD_MESSAGE_MAX),
        )
        for e in exc.errors()
    ]


async def validation_error_handler(_: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422 in the one error shape: the fields named, the input never sent back."""
    assert isinstance(exc, RequestValidationError)
    fields = field_errors(exc) or [FieldError(param="body", message="invalid request")]
    message = _cut("; ".join(f"{f.param}: {f.message}" for f in fields), MESSAGE_MAX)
    detail = ErrorDetail(
        message=message,
        type="invalid_request_error",
        param=fields[0].param,
        code="invalid_value",
        errors=fields,
    )
    return JSONResponse(ErrorBody(error=detail).model_dump(), status_code=422)


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own refusals (an unreadable body, an unknown path, a method not allowed) in
    the one error shape. A 405 lists every method the path has (`Allow`), not one route's."""
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = ", ".join(sorted(_methods_of(request)))
    message = exc.detail if isinstance(exc.detail, str) else "request refused"
    return JSONResponse(
        ApiError(exc.status_code, message, code=_CODES.get(exc.status_code)).body(),
        status_code=exc.status_code,
        headers=headers,
    )


_CODES = {400: "invalid_body", 404: "not_found", 405: "method_not_allowed"}


def _methods_of(request: Request) -> set[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match != Match.NONE and isinstance(route, BaseRoute):
            methods |= set(getattr(route, "methods", None) or ())
    return methods


async def api_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def unauthorized(message: str) -> ApiError:
    return ApiError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": 'Bearer realm="moot"'})


# How long a client should wait before retrying when a dependency is down: NATS reconnects every
# 2 s and a Postgres restart takes seconds, so a few seconds is enough to find it back.
RETRY_AFTER_SECONDS = 5

# Postgres errors that say the server (or the database) cannot be reached or used right now, as
# opposed to a query that is wrong: connection failures, shutdowns and cancellations (57), too many
# connections (53), a database that does not accept connections (55000).
_POSTGRES_DOWN = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.ObjectNotInPrerequisiteStateError,
    asyncpg.InterfaceError,  # the connection was closed under the query
    # A pooled connection whose server process was killed while idle can fail this way on its
    # next query (seen in tests/integration/test_gateway_outages.py), before asyncpg notices.
    asyncpg.InternalClientError,
)
# What a route may raise when a server is not there; each is answered 503, never 500.
DEPENDENCY_ERRORS: tuple[type[Exception], ...] = (nats.errors.Error, *_POSTGRES_DOWN, OSError)


def dependency_of(exc: BaseException) -> str | None:
    """The dependency `exc` says is unavailable ("nats", "postgres"), or None for any other error."""
    if isinstance(exc, nats.errors.Error):  # nats.js.errors too; before OSError (its TimeoutError is one)
        return "nats"
    if isinstance(exc, _POSTGRES_DOWN):
        return "postgres"
    if isinstance(exc, OSError):
        # A refused connection or a timed-out acquire: asyncpg's (nats-py raises nats.errors).
        return "postgres"
    return None


def unavailable(dependency: str) -> ApiError:
    """503 with Retry-After: the request did nothing and may be sent again as it is."""
    return ApiError(
        503,
        f"{dependency} is unavailable; nothing was done, retry in a few seconds",
        type="service_unavailable",
        code="dependency_unavailable",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


async def dependency_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """A dependency that failed under a request: 503 naming it (Retry-After), never a 500."""
    dependency = dependency_of(exc)
    if dependency is None:  # registered for these classes only, so this is a bug: let it be a 500
        raise exc
    log.warning("%s %s: %s unavailable: %r", request.method, request.url.path, dependency, exc)
    return await api_error_handler(request, unavailable(dependency))


class EveryMinute:
    """A warning said once a minute at most, not once a request, while its cause lasts."""

    def __init__(self, logger: logging.Logger, seconds: float = 60.0) -> None:
        self.logger, self.seconds = logger, seconds
        self._said_at = float("-inf")

    def warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._said_at >= self.seconds:
            self._said_at = now
            self.logger.warning(message, *args)
