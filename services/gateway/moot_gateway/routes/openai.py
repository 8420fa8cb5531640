"""OpenAI-compatible endpoint: every saved configuration is a model any OpenAI client can call.

`POST /v1/chat/completions` with `model` set to a saved name runs it: the last user message is
the prompt, the messages before it are the conversation so far, system messages become the
system prompt. The answer is the consortium's synthesis or the debate's verdict; `moot.run_id`
names the run, whose full record is at `/v1/runs/{id}`.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from moot.records.accounts import Principal
from moot.requests import MODES, ChatMessage, request_class
from moot.views import AnyRunView
from moot_gateway import configs, runs_service
from moot_gateway.auth import PrincipalDep
from moot_gateway.deps import Clients, ClientsDep
from moot_gateway.errors import ApiError, errors, field_errors, unavailable
from moot_gateway.routes.runs import replay
from moot_gateway.schemas import ChatCompletion, ChatCompletionRequest, ChatCompletionSubmission, ModelList

router = APIRouter(prefix="/v1", tags=["openai compatible"], responses=errors(400, 401, 404, 422, 424, 503))


@router.get("/models", response_model=ModelList)
async def list_models(clients: ClientsDep, principal: PrincipalDep) -> dict[str, Any]:
    """The caller's saved configurations, as models."""
    saved = await configs.latest_all(clients.pool, principal.owner)
    return {"object": "list", "data": [_model_object(s, principal) for s in saved]}


def _model_object(saved: dict[str, Any], principal: Principal) -> dict[str, Any]:
    created = int(time.mktime(time.strptime(saved["created_at"][:19], "%Y-%m-%dT%H:%M:%S")))
    return {
        "id": saved["name"],
        "object": "model",
        "created": created,
        "owned_by": principal.owner,
        "moot": {"mode": saved["config"].get("mode"), "version": saved["version"]},
    }


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={
        200: {
            "content": {
                "text/event-stream": {
                    "schema": {
                        "type": "string",
                        "description": "With `stream: true`: `data: <chat.completion.chunk>` events, then `data: [DONE]`.",
                    }
                }
            }
        },
        **errors(413, 429),
    },
)
async def chat_completions(
    body: Annotated[ChatCompletionSubmission, Body()], clients: ClientsDep, principal: PrincipalDep
) -> dict[str, Any] | StreamingResponse:
    try:
        chat = ChatCompletionRequest.model_validate(body, strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"])
        raise ApiError(status.HTTP_400_BAD_REQUEST, f"{param}: {first['msg']}", param=param) from exc
    saved = await configs.get(clients.pool, principal.owner, chat.model)
    if saved is None:
        raise ApiError(
            status.HTTP_404_NOT_FOUND,
            f"The model '{chat.model}' does not exist (save a configuration under that name first)",
            param="model",
            code="model_not_found",
        )
    system, history, prompt = runs_service.history_from_chat(chat.messages)
    submission: dict[str, Any] = {"config": chat.model, "prompt": prompt}
    if "system" not in request_class(saved["config"].get("mode", MODES[0])).model_fields:
        # A debate has per-debater system prompts only: the caller's goes first in the conversation.
        history = [*([ChatMessage(role="system", content=system)] if system else []), *history]
    elif system:
        submission["system"] = system
    submission["history"] = [m.model_dump() for m in history]
    try:
        request, meta = await runs_service.resolve(clients, principal, submission, saved)
    except RequestValidationError as exc:  # a saved configuration plus this conversation that is no valid run
        problems = "; ".join(f"{f.param}: {f.message}" for f in field_errors(exc))
        raise ApiError(
            status.HTTP_400_BAD_REQUEST, f"cannot run {chat.model!r} with these messages: {problems}"
        ) from exc
    run_id = await runs_service.submit(clients, principal, request, meta)
    created = int(time.time())
    if chat.stream:
        include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
        return StreamingResponse(
            _stream(clients, principal, run_id, chat.model, created, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    view = await _wait(clients, principal, run_id)
    answer = view.answer
    if view.status != "completed" or answer is None:
        raise ApiError(
            status.HTTP_424_FAILED_DEPENDENCY,
            f"run {run_id} {view.status}: {view.reason or 'no final answer'}",
            type="run_error",
            code="run_failed",
        )
    return {
        "id": f"chatcmpl-{run_id}",
        "object": "chat.completion",
        "created": created,
        "model": chat.model,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
        ],
        "usage": _usage(view),
        "moot": _extra(run_id, view),
    }


async def _wait(clients: Clients, principal: Principal, run_id: str) -> AnyRunView:
    async for _ in replay(clients, run_id, 0, hydrate=False):
        pass  # the replay ends with the run's final event (from its record if the stream lacks it)
    return await _final_view(clients, principal, run_id)


async def _final_view(clients: Clients, principal: Principal, run_id: str) -> AnyRunView:
    """The ended run's view, hydrated: from its state, else from its record in Postgres."""
    view = await runs_service.view_of(clients, run_id, principal)
    if view is None:  # gone from KV and not (yet) readable in Postgres
        raise unavailable("postgres")
    return view


def _usage(view: AnyRunView) -> dict[str, int]:
    prompt, completion = view.usage.input_tokens, view.usage.output_tokens
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _extra(run_id: str, view: AnyRunView | None = None) -> dict[str, Any]:
    extra: dict[str, Any] = {"run_id": run_id, "run": f"/v1/runs/{run_id}"}
    if view is not None:
        extra["status"] = view.status
    return extra


async def _stream(
    clients: Clients, principal: Principal, run_id: str, model: str, created: int, include_usage: bool
) -> AsyncIterator[str]:
    """chat.completion.chunk events as the answer is produced, then `[DONE]`.

    A debate's verdict streams as the model writes it (its final.chunk events); any other run's
    answer (a consortium's synthesis, a council's or a Mixture-of-Agents' final answer, a vote's
    majority) is known only when its last call has been read, so it comes whole.
    """

    def sse(data: str) -> str:
        return f"data: {data}\n\n"

    def chunk(delta: dict[str, Any], finish: Literal["stop"] | None = None, **more: Any) -> str:
        body = {
            "id": f"chatcmpl-{run_id}",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            "moot": _extra(run_id),
            **more,
        }
        return sse(json.dumps(body))

    yield chunk({"role": "assistant", "content": ""})
    streamed = False
    async for event in replay(clients, run_id, 0, hydrate=False):  # deltas are inline
        if event.event == "final.chunk" and isinstance(event.data, dict):
            streamed = True
            yield chunk({"content": event.data["delta"]})
    try:
        view = await _final_view(clients, principal, run_id)
    except ApiError as exc:  # the answer has begun: the error goes in the stream, as OpenAI's do
        yield sse(json.dumps({**exc.body(), "moot": _extra(run_id)}))
        return
    answer = view.answer
    if view.status != "completed" or answer is None:
        error = {
            "message": f"run {run_id} {view.status}: {view.reason}",
            "type": "run_error",
            "code": "run_failed",
        }
        yield sse(json.dumps({"error": error, "moot": _extra(run_id, view)}))
        return
    if not streamed:
        yield chunk({"content": answer})
    yield chunk({}, "stop", **({"usage": _usage(view)} if include_usage else {}))
    yield sse("[DONE]")
