"""The activity: one model call through litellm, its outcome classified for the retry decision.

litellm is called with `num_retries=0`: retries belong to JetStream redelivery, one layer only.
A job's long texts come by reference: they are read from the text store and put back into the
messages (`moot.texts.render`) just before the call. What an outcome says of a failure is redacted
(`moot_member_worker.redaction`): provider errors can quote the request or carry a key.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import os
import random
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any
from urllib.parse import urlsplit

import litellm
import openai.resources  # noqa: F401  # imported lazily by the first call otherwise: seconds of delay on it
from opentelemetry.trace import Span, SpanKind, StatusCode

from moot.messages import CallCompleted, CallFailed, CallJob
from moot.observability import metrics, telemetry
from moot.runtime.models import ModelList
from moot.runtime.textstore import MissingText, TextStore, fetch_all
from moot.texts import refs_in, render
from moot.views import Usage
from moot_member_worker.redaction import describe_error, status_of

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
        return job.failed(
            f"gave up after {attempts} attempts: {self.error}",
            **_outcome_fields(attempts),
            error_type=self.error_type,
        )


WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"


def _outcome_fields(attempts: int) -> dict[str, Any]:
    """What the worker adds to a call's outcome: who made the call, in how many attempts."""
    return {"worker": WORKER_ID, "attempts": attempts}


def _retry_after(exc: BaseException, now: float | None = None) -> float | None:
    """Seconds the provider asked us to wait, if it said: `retry-after-ms` (OpenAI's, precise), else
    `Retry-After` in seconds or as an HTTP-date (RFC 9110)."""
    headers: Any = getattr(exc, "litellm_response_headers", None)
    response = getattr(exc, "response", None)
    if headers is None and response is not None:
        headers = getattr(response, "headers", None)
    if not headers:
        return None
    millis = headers.get("retry-after-ms")
    if millis is not None:
        with contextlib.suppress(TypeError, ValueError):
            return max(0.0, float(millis) / 1000)
    value = headers.get("retry-after") or headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        pass
    try:
        when = email.utils.parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is GMT; a date without a zone is read as such
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# Parameters of a model whose values are credentials: masked wherever an error repeats them.
_SECRET_PARAM = re.compile(r"key|token|secret|password|credential", re.IGNORECASE)


def _error_text(
    exc: BaseException, params: dict[str, Any], messages: list[dict[str, Any]] | None = None
) -> str:
    """What an outcome says of a failure: type, HTTP status and the message, redacted
    (`moot_member_worker.redaction`): no credential of the call, no passage of its messages."""
    secrets = [str(v) for k, v in params.items() if _SECRET_PARAM.search(k) and isinstance(v, str)]
    return describe_error(exc, secrets=secrets, request=_texts_of(messages or []))


def _texts_of(messages: list[dict[str, Any]]) -> list[str]:
    """The texts of resolved messages (a string content, or the text parts of a list of parts)."""
    texts: list[str] = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts += [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return texts


# What no later attempt can change: a key that is missing or wrong, a model the provider does not
# have, a request it refuses. Some of these come as a 500 (the OpenAI client refuses to start
# without a key, and litellm reports that as an internal error), so the message is read too.
_PERMANENT_ERRORS = (
    litellm.AuthenticationError,
    litellm.PermissionDeniedError,
    litellm.NotFoundError,
    litellm.BadRequestError,
)
_PERMANENT_MESSAGE = re.compile(
    r"missing credentials|api_key client option must be set|no api key|api key (?:is )?(?:missing|not set|not found)"
    r"|must provide an api key|invalid api key|incorrect api key",
    re.IGNORECASE,
)


def _permanent(exc: BaseException) -> bool:
    """Whether the call can never succeed as it is, whatever its status code says: fail it at once."""
    return isinstance(exc, _PERMANENT_ERRORS) or bool(_PERMANENT_MESSAGE.search(str(exc)[:2000]))


class ModelCaller:
    def __init__(
        self,
        models: ModelList,
        timeout: float,
        backoff_base: float,
        backoff_max: float,
        allow_unlisted: bool = False,
    ) -> None:
        self.models = models
        self.allow_unlisted = allow_unlisted  # MOOT_ALLOW_UNLISTED_MODELS
        self.timeout = timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.texts: TextStore | None = None  # set once connected, before the first job

    async def resolve(self, job: CallJob) -> tuple[list[dict[str, Any]], list[Any] | None]:
        """The job's messages as the model gets them, and its tool definitions: references resolved.

        A message's content is a string, or OpenAI content parts when it holds images.
        MissingText when a referenced text is not stored.
        """
        texts: dict[str, str] = {}
        if refs_in(job):
            if self.texts is None:
                raise RuntimeError("the text store is not open yet")
            texts = await fetch_all(self.texts, job)
        messages = [{"role": m.role, "content": render(m.content, texts)} for m in job.conversation(texts)]
        tools = json.loads(texts[job.tools.sha]) if job.tools else None
        return messages, tools

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_max)
        delay = self.backoff_base * (2 ** max(0, attempt - 1))
        return min(self.backoff_max, delay) * random.uniform(0.8, 1.2)

    async def call(
        self, job: CallJob, attempt: int, on_chunk: ChunkSink | None = None
    ) -> CallCompleted | CallFailed | Retry:
        """Make the call; a streamed job (`job.stream`) hands each piece of text to `on_chunk`.

        The call is a span (OpenTelemetry GenAI conventions, no prompt or answer text unless
        content capture is on) and feeds the model-call metrics.
        """
        started = time.perf_counter()
        with telemetry.tracer.start_as_current_span(
            f"chat {job.model}", kind=SpanKind.CLIENT, attributes=_request_attributes(job, attempt)
        ) as span:
            metrics.calls_active.add(1)
            provider = "unknown"
            try:
                outcome, provider = await self._call(job, attempt, on_chunk, span)
            finally:
                metrics.calls_active.add(-1)
                span.set_attribute("gen_ai.provider.name", provider)
            _observe(span, job, provider, outcome, time.perf_counter() - started)
            return outcome

    async def _call(
        self, job: CallJob, attempt: int, on_chunk: ChunkSink | None, span: Span
    ) -> tuple[CallCompleted | CallFailed | Retry, str]:
        started = time.perf_counter()
        common = _outcome_fields(attempt)
        if not self.models.is_callable(job.model, self.allow_unlisted):
            # The gateway refuses such runs; a job naming one anyway (an older gateway, a job
            # written by hand) must not reach a provider with the workers' keys.
            offered = ", ".join(self.models.callable_names())
            error = (
                f"model {job.model!r} is not in the model list ({offered}); MOOT_ALLOW_UNLISTED_MODELS is off"
            )
            return job.failed(error, **common, error_type="configuration"), "unknown"
        try:
            params = self.models.resolve(job.model)
        except KeyError as exc:
            return job.failed(str(exc), **common, error_type="configuration"), "unknown"
        provider = _provider_of(params)
        span.set_attributes(_server_attributes(params))
        try:
            messages, tools = await self.resolve(job)
        except MissingText as exc:
            # Expired or never stored: no later attempt would find it.
            error = f"a text of the job is not in the text store: {exc.args[0]}"
            return job.failed(error, **common, error_type="missing_text"), provider
        except Exception as exc:  # the text store not reachable right now
            error = _error_text(exc, params)
            return Retry(error, type(exc).__name__, self.backoff(attempt, None)), provider
        span.set_attributes(_content_attributes(messages, tools))
        kwargs: dict[str, Any] = {
            "messages": messages,
            "num_retries": 0,
            "timeout": self.timeout,
            **{
                k: v
                for k, v in (("temperature", job.temperature), ("max_tokens", job.max_tokens))
                if v is not None
            },
            **({"tools": tools} if tools else {}),
            **params,
        }
        streamed = _Streamed()
        try:
            if job.stream and on_chunk is not None:
                await self._stream(kwargs, on_chunk, streamed)
                text, finish_reason, usage = "".join(streamed.parts), streamed.finish_reason, streamed.usage
                cost = _token_cost(params["model"], usage)
                _response_attributes(span, streamed.response)
            else:
                response = await litellm.acompletion(**kwargs)
                choice = response.choices[0]
                text = choice.message.content or _tool_calls_text(choice.message)
                finish_reason, usage, cost = choice.finish_reason, _usage(response), _cost(response)
                _response_attributes(span, response)
        except (AttributeError, IndexError, TypeError) as exc:
            latency = int((time.perf_counter() - started) * 1000)
            failed = job.failed(
                f"malformed response: {_error_text(exc, params, messages)}",
                **common,
                error_type="malformed",
                latency_ms=latency,
            )
            return failed, provider
        except Exception as exc:
            latency = int((time.perf_counter() - started) * 1000)
            retryable = not _permanent(exc) and (
                status_of(exc) in RETRYABLE_STATUS
                or isinstance(exc, litellm.Timeout | litellm.APIConnectionError | litellm.RateLimitError)
            )
            # Chunks already published cannot be taken back: a stream broken midway is not retried.
            if retryable and not streamed.parts:
                delay = self.backoff(attempt, _retry_after(exc))
                return Retry(_error_text(exc, params, messages), type(exc).__name__, delay), provider
            error = _error_text(exc, params, messages)
            if streamed.parts:
                error = f"stream broke after {len(streamed.parts)} chunks: {error}"
            return job.failed(error, **common, error_type=type(exc).__name__, latency_ms=latency), provider
        latency = int((time.perf_counter() - started) * 1000)
        completed = job.completed(
            **common,
            text=text,
            finish_reason=finish_reason,
            latency_ms=latency,
            usage=usage.model_copy(update={"cost_usd": cost}),
        )
        return completed, provider

    async def _stream(self, kwargs: dict[str, Any], on_chunk: ChunkSink, out: _Streamed) -> None:
        response = await litellm.acompletion(**kwargs, stream=True, stream_options={"include_usage": True})
        async for chunk in response:
            if out.response is None:
                out.response = chunk  # id and model, for the span
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
    response: Any = None  # the first chunk


# ------------------------------------------------------------------------------- telemetry


def _provider_of(params: dict[str, Any]) -> str:
    """litellm's provider name (`openai`, `anthropic`, ...) for the resolved parameters."""
    explicit = params.get("custom_llm_provider")
    if isinstance(explicit, str) and explicit:
        return explicit
    model = str(params.get("model", ""))
    if "/" in model:
        return model.split("/", 1)[0]
    try:
        return str(litellm.get_llm_provider(model)[1])
    except Exception:
        return "unknown"


def _request_attributes(job: CallJob, attempt: int) -> dict[str, Any]:
    """The span's attributes known before the call. No message content unless capture is on."""
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": job.model,
        "gen_ai.conversation.id": job.run_id,
        "gen_ai.request.stream": job.stream,
        "moot.run_id": job.run_id,
        "moot.call_id": job.call_id,
        "moot.round": job.iteration,
        "moot.role": job.role,
        "moot.instance": job.instance,
        "moot.attempt": attempt,
    }
    if job.temperature is not None:
        attributes["gen_ai.request.temperature"] = job.temperature
    if job.max_tokens is not None:
        attributes["gen_ai.request.max_tokens"] = job.max_tokens
    return attributes


def _content_attributes(messages: list[dict[str, Any]], tools: list[Any] | None) -> dict[str, Any]:
    """The span's attributes known once the job's texts are resolved. Content only if capture is on."""
    # Counted once resolved: a stored conversation is one reference in the job, many messages here.
    attributes: dict[str, Any] = {"moot.messages": len(messages)}
    if tools:
        attributes["moot.tools"] = len(tools)
    if telemetry.capture_content():
        attributes["gen_ai.input.messages"] = json.dumps(messages, ensure_ascii=False)
    return attributes


def _server_attributes(params: dict[str, Any]) -> dict[str, Any]:
    """Where the call goes: host and port of `api_base` (never its user info, never the key)."""
    api_base = params.get("api_base")
    if not isinstance(api_base, str) or not api_base:
        return {}
    try:
        url = urlsplit(api_base)
        port = url.port
    except ValueError:
        return {}
    attributes: dict[str, Any] = {}
    if url.hostname:
        attributes["server.address"] = url.hostname
    if port:
        attributes["server.port"] = port
    return attributes


def _response_attributes(span: Span, response: Any) -> None:
    for attribute, name in (("gen_ai.response.id", "id"), ("gen_ai.response.model", "model")):
        value = getattr(response, name, None)
        if isinstance(value, str) and value:
            span.set_attribute(attribute, value)


def _observe(
    span: Span, job: CallJob, provider: str, outcome: CallCompleted | CallFailed | Retry, seconds: float
) -> None:
    """Outcome attributes on the span, and the model-call metrics."""
    labels: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": job.model,
        "moot.role": job.role,
    }
    if isinstance(outcome, CallCompleted):
        labels["moot.outcome"] = "completed"
        usage = outcome.usage
        span.set_attributes(
            {
                "gen_ai.usage.input_tokens": usage.input_tokens,
                "gen_ai.usage.output_tokens": usage.output_tokens,
                "gen_ai.response.finish_reasons": [outcome.finish_reason or "unknown"],
                "moot.outcome": "completed",
            }
        )
        if usage.cost_usd is not None:
            span.set_attribute("moot.cost_usd", usage.cost_usd)
            metrics.model_cost.add(usage.cost_usd, {"gen_ai.request.model": job.model})
        for token_type, count in (("input", usage.input_tokens), ("output", usage.output_tokens)):
            metrics.model_tokens.record(count, {**labels, "gen_ai.token.type": token_type})
        if telemetry.capture_content():
            span.set_attribute(
                "gen_ai.output.messages",
                json.dumps(
                    [{"role": "assistant", "content": outcome.text, "finish_reason": outcome.finish_reason}],
                    ensure_ascii=False,
                ),
            )
    else:
        # The error type only: provider error texts can quote the request.
        retry = isinstance(outcome, Retry)
        labels["moot.outcome"] = "retry" if retry else "failed"
        labels["error.type"] = outcome.error_type or "error"
        span.set_attributes({"moot.outcome": labels["moot.outcome"], "error.type": labels["error.type"]})
        span.set_status(StatusCode.ERROR, labels["error.type"])
        if isinstance(outcome, Retry):
            span.set_attribute("moot.retry_in_seconds", round(outcome.delay, 3))
    metrics.model_call_duration.record(seconds, labels)


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
    """Cost in USD when litellm knows the model's price; None (not 0) when it does not.

    litellm has already computed it for its own logging; computing it again cost ~5 % of a
    worker's CPU (docs/benchmarks.md).
    """
    hidden = getattr(response, "_hidden_params", None) or {}
    if "response_cost" in hidden:
        # litellm has computed it, None included (a model without a price): not again.
        cost = hidden["response_cost"]
    else:
        try:
            cost = litellm.completion_cost(completion_response=response)
        except Exception:
            return None
    return float(cost) if cost else None
