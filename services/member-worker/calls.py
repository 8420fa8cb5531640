"""The activity: one model call through litellm, its outcome classified for the retry decision.

litellm is called with `num_retries=0`: retries belong to JetStream redelivery, one layer only.
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import litellm
import openai.resources  # noqa: F401  # imported lazily by the first call otherwise: seconds of delay on it

from moot.messages import CallCompleted, CallFailed, CallJob, Usage
from moot.models import ModelList

litellm.suppress_debug_info = True
litellm.telemetry = False

# Provider answers worth trying again later: rate limits, overload, gateway trouble, timeouts.
RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})


@dataclass
class Retry:
    """A retryable failure: try again after `delay` seconds (unless attempts are exhausted)."""

    error: str
    error_type: str
    delay: float

    def give_up(self, job: CallJob, attempts: int) -> CallFailed:
        return CallFailed(
            **_outcome_fields(job, attempts),
            error=f"gave up after {attempts} attempts: {self.error}",
            error_type=self.error_type,
        )


WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


def _outcome_fields(job: CallJob, attempts: int) -> dict[str, Any]:
    return {
        "worker": WORKER_ID,
        "run_id": job.run_id,
        "call_id": job.call_id,
        "iteration": job.iteration,
        "role": job.role,
        "model": job.model,
        "instance": job.instance,
        "attempts": attempts,
    }


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    return status if isinstance(status, int) else None


def _retry_after(exc: BaseException) -> float | None:
    """Seconds from a Retry-After header, if the provider sent one."""
    headers: Any = getattr(exc, "litellm_response_headers", None)
    response = getattr(exc, "response", None)
    if headers is None and response is not None:
        headers = getattr(response, "headers", None)
    if not headers:
        return None
    value = headers.get("retry-after") or headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


def _error_text(exc: BaseException) -> str:
    # litellm messages can be long and repeat the provider body; keep the useful start.
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 500 else text[:497] + "..."


class ModelCaller:
    def __init__(self, models: ModelList, timeout: float, backoff_base: float, backoff_max: float) -> None:
        self.models = models
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_max)
        delay = self.backoff_base * (2 ** max(0, attempt - 1))
        return min(self.backoff_max, delay) * random.uniform(0.8, 1.2)

    async def call(
        self, job: CallJob, attempt: int, on_chunk: ChunkSink | None = None
    ) -> CallCompleted | CallFailed | Retry:
        """Make the call; a streamed job (`job.stream`) hands each piece of text to `on_chunk`."""
        started = time.perf_counter()
        common = _outcome_fields(job, attempt)
        try:
            params = self.models.resolve(job.model)
        except KeyError as exc:
            return CallFailed(**common, error=str(exc), error_type="configuration")
        kwargs: dict[str, Any] = {
            "messages": [m.model_dump() for m in job.messages],
            "num_retries": 0,
            "timeout": self.timeout,
            **{
                k: v
                for k, v in (("temperature", job.temperature), ("max_tokens", job.max_tokens))
                if v is not None
            },
            **({"tools": job.tools} if job.tools else {}),
            **params,
        }
        streamed = _Streamed()
        try:
            if job.stream and on_chunk is not None:
                await self._stream(kwargs, on_chunk, streamed)
                text, finish_reason, usage = "".join(streamed.parts), streamed.finish_reason, streamed.usage
                cost = _token_cost(params["model"], usage)
            else:
                response = await litellm.acompletion(**kwargs)
                choice = response.choices[0]
                text = choice.message.content or _tool_calls_text(choice.message)
                finish_reason, usage, cost = choice.finish_reason, _usage(response), _cost(response)
        except (AttributeError, IndexError, TypeError) as exc:
            latency = int((time.perf_counter() - started) * 1000)
            return CallFailed(
                **common, error=f"malformed response: {exc}", error_type="malformed", latency_ms=latency
            )
        except Exception as exc:
            latency = int((time.perf_counter() - started) * 1000)
            retryable = _status_of(exc) in RETRYABLE_STATUS or isinstance(
                exc, litellm.Timeout | litellm.APIConnectionError | litellm.RateLimitError
            )
            # Chunks already published cannot be taken back: a stream broken midway is not retried.
            if retryable and not streamed.parts:
                return Retry(_error_text(exc), type(exc).__name__, self.backoff(attempt, _retry_after(exc)))
            error = _error_text(exc)
            if streamed.parts:
                error = f"stream broke after {len(streamed.parts)} chunks: {error}"
            return CallFailed(**common, error=error, error_type=type(exc).__name__, latency_ms=latency)
        latency = int((time.perf_counter() - started) * 1000)
        return CallCompleted(
            **common,
            text=text,
            finish_reason=finish_reason,
            latency_ms=latency,
            usage=usage.model_copy(update={"cost_usd": cost}),
        )

    async def _stream(self, kwargs: dict[str, Any], on_chunk: ChunkSink, out: _Streamed) -> None:
        response = await litellm.acompletion(**kwargs, stream=True, stream_options={"include_usage": True})
        async for chunk in response:
            if getattr(chunk, "usage", None):
                out.usage = _usage(chunk)
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            out.finish_reason = choice.finish_reason or out.finish_reason
            delta = getattr(choice.delta, "content", None)
            if delta:
                await on_chunk(len(out.parts), delta)
                out.parts.append(delta)


ChunkSink = Callable[[int, str], Awaitable[None]]


@dataclass
class _Streamed:
    parts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)


def _usage(response: Any) -> Usage:
    usage = getattr(response, "usage", None)
    return Usage(
        input_tokens=getattr(usage, "prompt_tokens", 0) or 0,
        output_tokens=getattr(usage, "completion_tokens", 0) or 0,
    )


def _tool_calls_text(message: Any) -> str:
    """A model that answers only with tool calls still leaves a readable turn."""
    calls = getattr(message, "tool_calls", None) or []
    return "\n".join(f"[tool call] {c.function.name}({c.function.arguments})" for c in calls)


def _token_cost(model: str, usage: Usage) -> float | None:
    try:
        prompt_cost, completion_cost = litellm.cost_per_token(
            model=model, prompt_tokens=usage.input_tokens, completion_tokens=usage.output_tokens
        )
    except Exception:
        return None
    total = prompt_cost + completion_cost
    return float(total) if total else None


def _cost(response: Any) -> float | None:
    """Cost in USD when litellm knows the model's price; None (not 0) when it does not."""
    try:
        cost = litellm.completion_cost(completion_response=response)
    except Exception:
        return None
    return float(cost) if cost else None
