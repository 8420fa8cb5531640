"""Errors in the shape OpenAI clients expect: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import nats.errors
from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

log = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """Every refusal but FastAPI's own 422 (a body or parameter that does not validate)."""

    error: ErrorDetail


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a router: these statuses answer an `ErrorBody`."""
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
