"""OpenAI-compatible test model server.

Tests and benchmarks point litellm (or the ``openai`` client) at this server instead of a real
provider. Every model name gets a configurable :class:`ModelBehaviour`: latency, random or
deterministic failures, canned or templated replies, arbiter answers in well-formed or broken
tag layouts, and a solver that answers generated evaluation questions right with a set
probability. Behaviours can be changed at runtime through the ``/_control`` endpoints, and the
server records what it received so tests can assert on what was actually sent.

Standalone (port 0 picks a free port and prints ``listening on http://HOST:PORT``)::

    moot-test-model-server --port 0 --config models.yaml

In-process::

    with ModelServer(ServerConfig(models={"a": ModelBehaviour(reply="hi")})) as server:
        await litellm.acompletion(model="openai/a", api_base=server.url, api_key="test", ...)

Only the standard library, FastAPI/Starlette, uvicorn, pydantic, PyYAML and the pure-Python
``moot.eval.datasets`` (the solver) are used, so the server can run without the rest of the
``moot`` package.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import email.utils
import fnmatch
import hashlib
import json
import os
import random
import re
import socket
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import uvicorn
import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from moot.eval.datasets import solve

__all__ = [
    "ARBITER_MARKER",
    "CONFIG_ENV",
    "ArbiterMode",
    "ModelBehaviour",
    "ModelServer",
    "ServerConfig",
    "config_from_env",
    "count_tokens",
    "create_app",
    "is_arbiter_request",
    "load_config",
    "main",
]

CONFIG_ENV = "MOOT_TEST_MODELS_CONFIG"
# The arbiter prompt always asks for these tags, so their presence identifies an arbiter call.
ARBITER_MARKER = "<synthesis>"
DEFAULT_CONFIDENCE_LINE = "Confidence: 0.8"

ArbiterMode = Literal[
    "well_formed", "partial", "reordered", "garbage", "unclosed", "no_confidence", "percent_confidence"
]

_TEMPLATE_PROBE = {"model": "m", "n": 1, "last_user": "q", "call": 1}
_PATTERN_CHARS = frozenset("*?[")


class ModelBehaviour(BaseModel):
    """How the server answers one model; every field has a harmless default.

    Arbiter requests (see :func:`is_arbiter_request`) are answered per ``arbiter*`` fields; the
    others with ``reply``, else ``reply_template``, else a default ending in ``Confidence: 0.8``.
    ``empty`` and ``malformed_json`` apply to both kinds.

    With ``solver_accuracy`` set, a non-arbiter request whose last user message holds a question
    of ``moot.eval.datasets``'s generators is answered before any of those: a line of working,
    then ``Answer: <value>``, right with probability ``solver_accuracy``. Each such call draws
    on its own, from an RNG seeded by ``seed``, the model, the question and how many times this
    model was asked it before: the same question asked five times gets the same five outcomes in
    every server with the same seed, whatever else it is asked in between.
    """

    model_config = ConfigDict(extra="forbid")

    latency_ms: float = Field(default=0.0, ge=0, description="Mean delay before answering.")
    latency_jitter_ms: float = Field(default=0.0, ge=0, description="Uniform jitter around latency_ms.")
    chunk_delay_ms: float = Field(default=0.0, ge=0, description="Delay between streamed chunks.")
    error_rate: float = Field(default=0.0, ge=0, le=1, description="Probability of a random error.")
    error_status: int = Field(default=500, ge=400, le=599)
    seed: int | None = Field(
        default=0, description="Seed of the per-model RNGs; None for non-reproducible runs."
    )
    fail_first: int = Field(
        default=0, ge=0, description="Fail the first N requests with the same model+messages."
    )
    retry_after: float | None = Field(
        default=None, ge=0, description="Seconds sent as Retry-After on errors."
    )
    retry_after_http_date: bool = Field(
        default=False, description="Send Retry-After as an HTTP-date (and no retry-after-ms)."
    )
    stream_break_after: int | None = Field(
        default=None, ge=0, description="Drop a streamed answer's connection after this many text chunks."
    )
    reply: str | None = None
    reply_template: str | None = Field(
        default=None, description="str.format with {model}, {n} (per-model request number), {last_user}."
    )
    arbiter: ArbiterMode = "well_formed"
    # A list gives the value per arbiter call of the model (1st, 2nd, ...; the last one repeats).
    arbiter_confidence: float | list[float] = 0.9
    arbiter_needs_iteration: bool | list[bool] = False
    arbiter_synthesis: str | None = Field(
        default=None, description="Synthesis text template: {model}, {n}, {last_user}, {call}."
    )
    malformed_json: bool = False
    empty: bool = False
    solver_accuracy: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Answer generated evaluation questions, right with this probability (None: off).",
    )
    solver_errors: Literal["consistent", "scattered"] = Field(
        default="consistent",
        description="A wrong answer is the question's one plausible mistake every time (consistent),"
        " or drawn at random: the number off by 1 to 20, another letter (scattered).",
    )

    @field_validator("reply_template", "arbiter_synthesis")
    @classmethod
    def _check_template(cls, value: str | None) -> str | None:
        # A broken template should fail when configured, not as a 500 in the middle of a test run.
        if value is not None:
            try:
                value.format(**_TEMPLATE_PROBE)
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"invalid template {value!r}: {exc!r}") from exc
        return value

    @field_validator("arbiter_confidence", "arbiter_needs_iteration")
    @classmethod
    def _non_empty(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("must not be an empty list")
        return value


class ServerConfig(BaseModel):
    """Behaviours per model name plus a default for names not listed.

    Keys of ``models`` are matched against the model name that arrives: exactly, then with an
    ``openai/`` prefix added (litellm strips it before sending), then as fnmatch patterns
    (``slow-*``) in insertion order.
    """

    model_config = ConfigDict(extra="forbid")

    models: dict[str, ModelBehaviour] = Field(default_factory=dict)
    # A lambda, not the class itself, keeps mypy's reading of Field's overloads happy.
    default: ModelBehaviour = Field(default_factory=lambda: ModelBehaviour())
    max_recorded_requests: int = Field(default=10_000, ge=0, description="Size of the received-requests log.")


def load_config(path: str | os.PathLike[str]) -> ServerConfig:
    """Read a ServerConfig from a YAML or JSON file (JSON is valid YAML)."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    return ServerConfig.model_validate(data)


def config_from_env(environ: Mapping[str, str] | None = None) -> ServerConfig:
    """ServerConfig from ``MOOT_TEST_MODELS_CONFIG``: a file path, or inline YAML/JSON starting with '{'."""
    value = (os.environ if environ is None else environ).get(CONFIG_ENV, "").strip()
    if not value:
        return ServerConfig()
    if value.startswith("{"):
        return ServerConfig.model_validate(yaml.safe_load(value) or {})
    return load_config(value)


# --------------------------------------------------------------------------- request helpers


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # Multi-part content: only text parts matter for replies and token counts.
        texts = [part.get("text") or "" for part in content if isinstance(part, dict)]
        return "\n".join(t for t in texts if t)
    return str(content)


def count_tokens(text: str) -> int:
    """Deterministic token count: whitespace-separated words."""
    return len(text.split())


def _last_user_text(messages: Sequence[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def is_arbiter_request(messages: Sequence[Any]) -> bool:
    """True when the last user message contains ``<synthesis>``."""
    return ARBITER_MARKER in _last_user_text(messages)


def _pick(value: Any, index: int) -> Any:
    if isinstance(value, list):
        return value[min(index, len(value) - 1)]
    return value


def _default_reply(model: str, last_user: str) -> str:
    question = " ".join(last_user.split())[:80]
    return (
        f"This is {model}'s answer. Having considered the question ({question}), "
        f"the short answer is yes, for the usual reasons.\n{DEFAULT_CONFIDENCE_LINE}"
    )


def arbiter_reply(behaviour: ModelBehaviour, *, model: str, n: int, call: int, last_user: str) -> str:
    """The arbiter answer for the ``call``-th (1-based) arbiter request of a model."""
    confidence = float(_pick(behaviour.arbiter_confidence, call - 1))
    needs_iteration = bool(_pick(behaviour.arbiter_needs_iteration, call - 1))
    fields = {"model": model, "n": n, "last_user": last_user[:200], "call": call}
    synthesis = (
        behaviour.arbiter_synthesis.format(**fields)
        if behaviour.arbiter_synthesis is not None
        else f"Synthesis by {model} (arbiter call {call}): the members agree on the main point."
    )
    mode = behaviour.arbiter
    if mode == "garbage":
        return (
            f"Speaking as {model}, I found the members' answers broadly sensible and I would "
            "summarise them as being in agreement, with some minor differences of emphasis."
        )
    tags = {
        "synthesis": f"<synthesis>\n{synthesis}\n</synthesis>",
        "confidence": f"<confidence>{confidence}</confidence>",
        "analysis": f"<analysis>\n{model} compared the members' answers; they are consistent.\n</analysis>",
        "dissent": "<dissent>\nNo substantial dissent.\n</dissent>",
        "needs_iteration": f"<needs_iteration>{str(needs_iteration).lower()}</needs_iteration>",
        "refinement_areas": (
            "<refinement_areas>\n<area>Resolve the remaining differences of emphasis.</area>\n"
            "</refinement_areas>"
        ),
    }
    order = list(tags)
    if mode == "partial":
        order = ["synthesis", "confidence", "needs_iteration"]
    elif mode == "reordered":
        order = ["confidence", "needs_iteration", "refinement_areas", "dissent", "analysis", "synthesis"]
    elif mode == "no_confidence":
        order.remove("confidence")
    elif mode == "percent_confidence":
        tags["confidence"] = f"<confidence>{round(confidence * 100)}%</confidence>"
    elif mode == "unclosed":
        tags["synthesis"] = f"<synthesis>\n{synthesis}\n"
    return "\n".join(tags[name] for name in order)


_ERROR_KINDS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "permission_denied"),
    404: ("not_found_error", "model_not_found"),
    408: ("timeout_error", "request_timeout"),
    409: ("conflict_error", "conflict"),
    422: ("invalid_request_error", "unprocessable_entity"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", "internal_error"),
    502: ("server_error", "bad_gateway"),
    503: ("service_unavailable_error", "service_unavailable"),
    504: ("timeout_error", "gateway_timeout"),
}


def _error_response(
    status: int,
    message: str,
    *,
    retry_after: float | None = None,
    param: str | None = None,
    http_date: bool = False,
) -> JSONResponse:
    kind, code = _ERROR_KINDS.get(
        status, ("invalid_request_error" if status < 500 else "server_error", str(status))
    )
    headers: dict[str, str] = {}
    if retry_after is not None and http_date:
        # RFC 9110 allows a date instead of seconds; the date has whole seconds only.
        headers["Retry-After"] = email.utils.formatdate(time.time() + retry_after, usegmt=True)
    elif retry_after is not None:
        headers["Retry-After"] = (
            str(int(retry_after)) if float(retry_after).is_integer() else str(retry_after)
        )
        # The openai client prefers the millisecond header when present, which keeps sub-second values.
        headers["retry-after-ms"] = str(int(retry_after * 1000))
    body = {"error": {"message": message, "type": kind, "code": code, "param": param}}
    return JSONResponse(body, status_code=status, headers=headers)


# --------------------------------------------------------------------------- state


class _ModelStats:
    __slots__ = ("arbiter_requests", "errors", "malformed", "requests", "streamed")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.arbiter_requests = 0
        self.streamed = 0
        self.malformed = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class _ModelRuntime:
    """Per-model state that follows the behaviour: RNGs, fail_first attempts, arbiter call number,
    solver draws per question."""

    __slots__ = ("arbiter_calls", "attempts", "error_rng", "latency_rng", "solver_draws")

    def __init__(self, model: str, behaviour: ModelBehaviour) -> None:
        # Separate RNGs so that jitter draws never shift the error sequence.
        if behaviour.seed is None:
            self.error_rng = random.Random()
            self.latency_rng = random.Random()
        else:
            self.error_rng = random.Random(f"errors/{behaviour.seed}/{model}")
            self.latency_rng = random.Random(f"latency/{behaviour.seed}/{model}")
        self.attempts: dict[str, int] = {}
        self.arbiter_calls = 0
        # The solver's draws so far per question (SHA-256 of its canonical text).
        self.solver_draws: dict[str, int] = {}


class _State:
    """Mutable server state. Only touched from the event loop, so plain counters need no lock."""

    def __init__(self, config: ServerConfig) -> None:
        self.initial = config.model_copy(deep=True)
        self.max_recorded = config.max_recorded_requests
        self.restore_config()
        self.reset()

    def restore_config(self) -> None:
        self.behaviours: dict[str, ModelBehaviour] = dict(self.initial.models)
        self.default = self.initial.default

    def reset(self) -> None:
        self.runtimes: dict[str, _ModelRuntime] = {}
        self.stats: dict[str, _ModelStats] = {}
        self.log: collections.deque[dict[str, Any]] = collections.deque(maxlen=self.max_recorded)
        self.total_requests = 0
        self.total_errors = 0
        self.in_flight = 0
        self.max_in_flight = 0

    def resolve(self, model: str) -> tuple[str | None, ModelBehaviour]:
        behaviour = self.behaviours.get(model)
        if behaviour is not None:
            return model, behaviour
        prefixed = f"openai/{model}"
        behaviour = self.behaviours.get(prefixed)
        if behaviour is not None:
            return prefixed, behaviour
        for key, candidate in self.behaviours.items():
            if not _PATTERN_CHARS.isdisjoint(key) and fnmatch.fnmatchcase(model, key):
                return key, candidate
        return None, self.default

    def forget_runtimes(self, key: str | None) -> None:
        """Restart RNGs and sequences of every model now governed by ``key`` (None: the default)."""
        for model in [m for m in self.runtimes if self.resolve(m)[0] == key]:
            del self.runtimes[model]

    def runtime(self, model: str, behaviour: ModelBehaviour) -> _ModelRuntime:
        runtime = self.runtimes.get(model)
        if runtime is None:
            runtime = self.runtimes[model] = _ModelRuntime(model, behaviour)
        return runtime

    def model_stats(self, model: str) -> _ModelStats:
        stats = self.stats.get(model)
        if stats is None:
            stats = self.stats[model] = _ModelStats()
        return stats

    def snapshot(self, include_requests: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "total_requests": self.total_requests,
            "total_errors": self.total_errors,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "models": {name: stats.as_dict() for name, stats in self.stats.items()},
        }
        if include_requests:
            data["requests"] = list(self.log)
        return data


# --------------------------------------------------------------------------- app


def _messages_digest(messages: Any) -> str:
    encoded = json.dumps(messages, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(encoded).hexdigest()


def solver_reply(behaviour: ModelBehaviour, runtime: _ModelRuntime, model: str, last_user: str) -> str | None:
    """The solver's answer to a generated question in ``last_user``; None when it holds none."""
    if behaviour.solver_accuracy is None or (solution := solve(last_user)) is None:
        return None
    question = hashlib.sha256(solution.question.encode()).hexdigest()
    draw = runtime.solver_draws.get(question, 0)
    runtime.solver_draws[question] = draw + 1
    # One RNG per draw: a question's k-th outcome does not depend on what else was asked.
    seed = behaviour.seed
    rng = random.Random() if seed is None else random.Random(f"solver/{seed}/{model}/{question}/{draw}")
    if rng.random() < behaviour.solver_accuracy:
        value = solution.answer
    elif behaviour.solver_errors == "consistent":
        value = solution.mistake
    else:
        value = solution.wrong_answer(rng)
    working = (
        f"Option {value} is the one that fits." if solution.letters else f"Working it through gives {value}."
    )
    return f"{working}\nAnswer: {value}"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _model_object(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "moot-test"}


_PIECES = re.compile(r"\S*\s*")


class _BrokenStream(Exception):
    """Raised inside a streamed answer: the server drops the connection midway (no final chunk)."""


_MALFORMED_BODY = (
    '{"id": "chatcmpl-malformed", "object": "chat.completion", "choices": [{"message": {"content'
)


def create_app(config: ServerConfig | None = None) -> FastAPI:
    """Build the server app; without a config, read it from ``MOOT_TEST_MODELS_CONFIG``."""
    state = _State(config if config is not None else config_from_env())
    app = FastAPI(title="moot test model server", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.model_server = state

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        names = [name for name in state.behaviours if _PATTERN_CHARS.isdisjoint(name)]
        return {"object": "list", "data": [_model_object(name) for name in names]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> dict[str, Any]:
        return _model_object(name)

    async def chat_completions(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            return _error_response(400, "request body is not valid JSON")
        if not isinstance(body, dict):
            return _error_response(400, "request body must be a JSON object")
        model = body.get("model")
        messages = body.get("messages")
        if not isinstance(model, str) or not model:
            return _error_response(400, "'model' is required", param="model")
        if not isinstance(messages, list) or not messages:
            return _error_response(400, "'messages' must be a non-empty list", param="messages")

        stream = bool(body.get("stream"))
        _, behaviour = state.resolve(model)
        runtime = state.runtime(model, behaviour)
        stats = state.model_stats(model)
        stats.requests += 1
        n = stats.requests
        state.total_requests += 1
        arbiter = is_arbiter_request(messages)
        if arbiter:
            stats.arbiter_requests += 1
        if stream:
            stats.streamed += 1
        record: dict[str, Any] = {
            "seq": state.total_requests,
            "n": n,
            "model": model,
            "messages": messages,
            "params": {k: v for k, v in body.items() if k not in ("model", "messages")},
            "stream": stream,
            "arbiter": arbiter,
            # Presence only: the value is a credential and must never be stored.
            "authorization": "authorization" in request.headers,
            "status": None,
            "reply": None,
            "time": time.time(),
        }
        state.log.append(record)

        # Decide the outcome on arrival so concurrent duplicates are counted in arrival order.
        failure: str | None = None
        if behaviour.fail_first:
            digest = _messages_digest(messages)
            attempt = runtime.attempts.get(digest, 0) + 1
            runtime.attempts[digest] = attempt
            if attempt <= behaviour.fail_first:
                failure = f"simulated failure {attempt}/{behaviour.fail_first} for this request content"
        if failure is None and behaviour.error_rate > 0 and runtime.error_rng.random() < behaviour.error_rate:
            failure = "simulated random failure"
        call = 0
        if arbiter and failure is None:
            runtime.arbiter_calls += 1
            call = runtime.arbiter_calls
        solved = None
        if not arbiter and failure is None:
            solved = solver_reply(behaviour, runtime, model, _last_user_text(messages))

        delay_ms = behaviour.latency_ms
        if behaviour.latency_jitter_ms:
            delay_ms += runtime.latency_rng.uniform(-behaviour.latency_jitter_ms, behaviour.latency_jitter_ms)

        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        handed_to_stream = False
        try:
            if delay_ms > 0:
                await asyncio.sleep(delay_ms / 1000)
            if failure is not None:
                stats.errors += 1
                state.total_errors += 1
                record["status"] = behaviour.error_status
                return _error_response(
                    behaviour.error_status,
                    f"{failure} (model {model})",
                    retry_after=behaviour.retry_after,
                    http_date=behaviour.retry_after_http_date,
                )
            record["status"] = 200
            if behaviour.malformed_json:
                stats.malformed += 1
                if stream:
                    handed_to_stream = True
                    return StreamingResponse(_malformed_stream(), media_type="text/event-stream")
                return Response(_MALFORMED_BODY, media_type="application/json")

            last_user = _last_user_text(messages)
            if behaviour.empty:
                content = ""
            elif arbiter:
                content = arbiter_reply(behaviour, model=model, n=n, call=call, last_user=last_user)
            elif solved is not None:
                content = solved
            elif behaviour.reply is not None:
                content = behaviour.reply
            elif behaviour.reply_template is not None:
                content = behaviour.reply_template.format(model=model, n=n, last_user=last_user[:200], call=0)
            else:
                content = _default_reply(model, last_user)

            finish_reason = "stop"
            limit = body.get("max_completion_tokens") or body.get("max_tokens")
            if isinstance(limit, int) and limit > 0 and count_tokens(content) > limit:
                content = " ".join(content.split()[:limit])
                finish_reason = "length"
            record["reply"] = content
            prompt_tokens = sum(
                count_tokens(_content_text(m.get("content"))) for m in messages if isinstance(m, dict)
            )
            usage = _usage(prompt_tokens, count_tokens(content))
            completion_id = f"chatcmpl-{uuid.uuid4().hex}"
            created = int(time.time())
            if stream:
                options = body.get("stream_options")
                include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
                handed_to_stream = True
                chunks = _stream_chunks(
                    completion_id,
                    created,
                    model,
                    content,
                    finish_reason,
                    usage if include_usage else None,
                    behaviour.chunk_delay_ms / 1000,
                    behaviour.stream_break_after,
                )
                return StreamingResponse(chunks, media_type="text/event-stream")
            return JSONResponse(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "system_fingerprint": "moot-test",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": finish_reason,
                            "logprobs": None,
                        }
                    ],
                    "usage": usage,
                }
            )
        finally:
            if not handed_to_stream:
                state.in_flight -= 1

    async def _malformed_stream() -> AsyncIterator[bytes]:
        try:
            yield b'data: {"id": "chatcmpl-malformed", "choices": [{"delta": {"content": "unterminated\n\n'
            yield b"data: [DONE]\n\n"
        finally:
            state.in_flight -= 1

    async def _stream_chunks(
        completion_id: str,
        created: int,
        model: str,
        content: str,
        finish_reason: str,
        usage: dict[str, int] | None,
        chunk_delay: float,
        break_after: int | None = None,
    ) -> AsyncIterator[bytes]:
        def event(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
            chunk: dict[str, Any] = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "moot-test",
                "choices": []
                if delta is None
                else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            }
            if usage is not None:
                # With include_usage OpenAI sends usage: null on every chunk but the last.
                chunk["usage"] = extra.get("usage")
            return f"data: {json.dumps(chunk)}\n\n".encode()

        try:
            events = [event({"role": "assistant", "content": ""})]
            events += [event({"content": piece}) for piece in _PIECES.findall(content) if piece]
            events.append(event({}, finish_reason))
            if usage is not None:
                events.append(event(None, usage=usage))
            for index, data in enumerate(events):
                if chunk_delay > 0 and index:
                    await asyncio.sleep(chunk_delay)
                # events[0] is the role chunk: text chunk n is events[n].
                if break_after is not None and index > break_after:
                    raise _BrokenStream(f"stream dropped after {break_after} chunks (model {model})")
                yield data
            yield b"data: [DONE]\n\n"
        finally:
            state.in_flight -= 1

    # litellm and the openai client append /chat/completions to whatever base they were given.
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.add_api_route("/chat/completions", chat_completions, methods=["POST"], include_in_schema=False)

    @app.get("/_control/models")
    async def get_behaviours() -> dict[str, Any]:
        return {
            "default": state.default.model_dump(),
            "models": {name: b.model_dump() for name, b in state.behaviours.items()},
        }

    @app.put("/_control/models/{name:path}")
    async def put_behaviour(name: str, behaviour: ModelBehaviour) -> dict[str, Any]:
        state.behaviours[name] = behaviour
        state.forget_runtimes(name)
        return {"name": name, "behaviour": behaviour.model_dump()}

    @app.delete("/_control/models/{name:path}")
    async def delete_behaviour(name: str) -> dict[str, Any]:
        removed = state.behaviours.pop(name, None) is not None
        if removed:
            state.forget_runtimes(None)
        return {"name": name, "removed": removed}

    @app.put("/_control/default")
    async def put_default(behaviour: ModelBehaviour) -> dict[str, Any]:
        state.default = behaviour
        state.forget_runtimes(None)
        return {"default": behaviour.model_dump()}

    @app.post("/_control/reset")
    async def reset(config: bool = False) -> dict[str, Any]:
        if config:
            state.restore_config()
        state.reset()
        return {"reset": True, "config_restored": config}

    @app.get("/_control/stats")
    async def get_stats(requests: bool = True) -> dict[str, Any]:
        return state.snapshot(include_requests=requests)

    return app


# --------------------------------------------------------------------------- running


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )[0]
    # proto must be IPPROTO_TCP (not 0): asyncio only sets TCP_NODELAY on accepted sockets whose
    # proto says TCP, and without it keep-alive requests stall ~40 ms on Nagle + delayed ACK.
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def _base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _uvicorn_server(app: FastAPI, log_level: str) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        backlog=2048,
        # Keep stop() quick even when a client holds a long stream open.
        timeout_graceful_shutdown=2,
    )
    return uvicorn.Server(config)


class ModelServer:
    """Runs the app with uvicorn in a background thread on a free port.

    Use ``with ModelServer(config) as server:`` or ``async with``; ``server.url`` is the
    OpenAI base URL (ending in ``/v1``). The control helpers talk HTTP to the server and are safe
    to call from async tests because the server has its own thread and event loop.
    """

    def __init__(
        self,
        config: ServerConfig | Mapping[str, Any] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
    ) -> None:
        if config is None:
            config = ServerConfig()
        elif not isinstance(config, ServerConfig):
            config = ServerConfig.model_validate(config)
        self.config = config
        self.host = host
        self.port = port
        self.log_level = log_level
        self.app = create_app(config)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def base_url(self) -> str:
        """``http://host:port`` without ``/v1``."""
        return _base_url(self.host, self.port)

    @property
    def url(self) -> str:
        """OpenAI-style base URL, ending in ``/v1``."""
        return f"{self.base_url}/v1"

    def start(self, timeout: float = 10.0) -> ModelServer:
        """Start serving and wait until the server accepts connections."""
        if self._thread is not None:
            raise RuntimeError("model server already started")
        self._socket = _bind(self.host, self.port)
        self.port = self._socket.getsockname()[1]
        self._server = server = _uvicorn_server(self.app, self.log_level)
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [self._socket]}, name="moot-model-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("moot test model server failed to start")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving; safe to call more than once."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> ModelServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self) -> ModelServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.stop)

    def _control(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")

    def set_model(self, name: str, behaviour: ModelBehaviour | Mapping[str, Any]) -> None:
        """Replace the behaviour of ``name`` (restarts its RNGs, fail_first and arbiter sequences)."""
        if isinstance(behaviour, ModelBehaviour):
            payload = behaviour.model_dump()
        else:
            payload = ModelBehaviour.model_validate(behaviour).model_dump()
        self._control("PUT", "/_control/models/" + urllib.parse.quote(name, safe="/:"), payload)

    def set_default(self, behaviour: ModelBehaviour | Mapping[str, Any]) -> None:
        """Replace the behaviour used for models not configured by name."""
        self._control("PUT", "/_control/default", ModelBehaviour.model_validate(behaviour).model_dump())

    def reset(self, *, config: bool = False) -> None:
        """Clear counters and the request log; ``config=True`` also restores the startup behaviours."""
        self._control("POST", f"/_control/reset?config={str(config).lower()}")

    def stats(self, *, requests: bool = True) -> dict[str, Any]:
        """The ``/_control/stats`` document."""
        return self._control("GET", f"/_control/stats?requests={str(requests).lower()}")

    def requests(self, model: str | None = None) -> list[dict[str, Any]]:
        """Recorded requests, optionally only those for ``model`` (as it arrived)."""
        recorded = self.stats()["requests"]
        return [r for r in recorded if model is None or r["model"] == model]


async def _serve_and_announce(server: uvicorn.Server, sock: socket.socket, host: str) -> None:
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            await task
            return
        await asyncio.sleep(0.01)
    # Parent processes read this line to learn the port when it was chosen by the OS.
    print(f"listening on {_base_url(host, sock.getsockname()[1])}", flush=True)
    await task


def main(argv: Sequence[str] | None = None) -> None:
    """CLI entry point: ``moot-test-model-server [--host H] [--port N|0] [--config PATH]``."""
    parser = argparse.ArgumentParser(description="OpenAI-compatible test model server for moot.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on stdout)")
    parser.add_argument("--config", help=f"YAML/JSON ServerConfig file (default: ${CONFIG_ENV})")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)

    config = load_config(args.config) if args.config else config_from_env()
    sock = _bind(args.host, args.port)
    server = _uvicorn_server(create_app(config), args.log_level)
    # uvicorn re-raises SIGINT after a graceful shutdown; exiting quietly is the expected outcome.
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_and_announce(server, sock, args.host))
    sock.close()


if __name__ == "__main__":
    main()
