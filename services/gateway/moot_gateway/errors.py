"""Errors in the shape OpenAI clients expect: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel


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
