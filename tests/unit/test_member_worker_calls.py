"""The member worker's retry classification and its job handling, against the real test model server
through litellm: 429 with Retry-After (seconds and HTTP-date) and 5xx retried, 4xx not, timeouts
retried, the last attempt reported failed, a stream broken after its first chunk reported failed
(not retried); a job of a run that is not running never reaches the model, and a streamed call
is cut once its run is cancelled. No NATS: the message, the broker and the run states are fakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import httpx
import litellm
import pytest

from moot.devstack.model_server import ModelBehaviour, ModelServer
from moot.messages import CallCompleted, CallFailed, CallJob, JobMessage
from moot.runtime.models import ModelList
from moot.runtime.settings import MootSettings
from moot.runtime.subjects import Names
from moot_member_worker.calls import ModelCaller, Retry, _retry_after
from moot_member_worker.handlers import CallJobs

SLOW_REPLY = " ".join(f"word{i}" for i in range(60))
MODELS: dict[str, ModelBehaviour] = {
    "ok": ModelBehaviour(reply="fine"),
    "limited": ModelBehaviour(error_rate=1.0, error_status=429, retry_after=7),
    "limited-date": ModelBehaviour(
        error_rate=1.0, error_status=429, retry_after=30, retry_after_http_date=True
    ),
    "overloaded": ModelBehaviour(error_rate=1.0, error_status=503),
    "bad-gateway": ModelBehaviour(error_rate=1.0, error_status=502),
    "bad-request": ModelBehaviour(error_rate=1.0, error_status=400),
    "unauthorized": ModelBehaviour(error_rate=1.0, error_status=401),
    "slow": ModelBehaviour(latency_ms=3000),
    "breaks": ModelBehaviour(reply="one two three four five six", stream_break_after=1),
    "streams-slowly": ModelBehaviour(reply=SLOW_REPLY, chunk_delay_ms=100),
}


@pytest.fixture(scope="module")
def server() -> Iterator[ModelServer]:
    with ModelServer({"models": MODELS}) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh(server: ModelServer) -> None:
    server.reset(config=True)


def _caller(server: ModelServer, timeout: float = 10.0) -> ModelCaller:
    models = ModelList.model_validate(
        {
            "model_list": [
                {
                    "model_name": name,
                    "litellm_params": {"model": f"openai/{name}", "api_base": server.url, "api_key": "sk-t"},
                }
                for name in MODELS
            ]
        }
    )
    # Backoff far from any Retry-After below, so a delay tells which one was used.
    return ModelCaller(models, timeout=timeout, backoff_base=0.5, backoff_max=60.0)


def _job(model: str, *, stream: bool = False, run_id: str = "r1") -> CallJob:
    return CallJob(
        call_id=f"{run_id}:1:member:{model}:1", run_id=run_id, iteration=1, role="member", model=model,
        instance=1, messages=[JobMessage(role="user", content=["Say something."])], stream=stream,
    )  # fmt: skip


# --------------------------------------------------------------------------- classification


async def test_completed(server: ModelServer) -> None:
    outcome = await _caller(server).call(_job("ok"), 1)
    assert isinstance(outcome, CallCompleted) and outcome.text == "fine" and outcome.attempts == 1


async def test_429_is_retried_after_the_retry_after_seconds(server: ModelServer) -> None:
    outcome = await _caller(server).call(_job("limited"), 1)
    assert isinstance(outcome, Retry), outcome
    assert outcome.delay == pytest.approx(7.0)
    assert outcome.error_type == "RateLimitError"


async def test_429_is_retried_after_the_retry_after_http_date(server: ModelServer) -> None:
    outcome = await _caller(server).call(_job("limited-date"), 1)
    assert isinstance(outcome, Retry), outcome
    # The date has whole seconds: 30 s from the server's clock, give or take the second and the call.
    assert 27.0 <= outcome.delay <= 31.0


@pytest.mark.parametrize("model", ["overloaded", "bad-gateway"])
async def test_5xx_is_retried_with_backoff(server: ModelServer, model: str) -> None:
    caller = _caller(server)
    first, third = await caller.call(_job(model), 1), await caller.call(_job(model), 3)
    assert isinstance(first, Retry) and isinstance(third, Retry)
    # No Retry-After: exponential backoff (0.5 s, then 2 s at the third attempt, +-20 %).
    assert 0.4 <= first.delay <= 0.6 and 1.6 <= third.delay <= 2.4


@pytest.mark.parametrize("model", ["bad-request", "unauthorized"])
async def test_4xx_is_failed_not_retried(server: ModelServer, model: str) -> None:
    outcome = await _caller(server).call(_job(model), 1)
    assert isinstance(outcome, CallFailed), outcome
    assert len(server.requests(model)) == 1


async def test_timeout_is_retried(server: ModelServer) -> None:
    outcome = await _caller(server, timeout=0.5).call(_job("slow"), 1)
    assert isinstance(outcome, Retry), outcome
    assert "Timeout" in outcome.error_type


async def test_stream_broken_after_its_first_chunk_is_failed_not_retried(server: ModelServer) -> None:
    chunks: list[str] = []

    async def on_chunk(index: int, delta: str) -> None:
        chunks.append(delta)

    outcome = await _caller(server).call(_job("breaks", stream=True), 1, on_chunk=on_chunk)
    assert chunks == ["one "]
    assert isinstance(outcome, CallFailed), outcome
    assert outcome.error and "stream broke after 1 chunks" in outcome.error


def _error_with(headers: dict[str, str]) -> Exception:
    response = httpx.Response(429, headers=headers, request=httpx.Request("POST", "http://x"))
    return litellm.RateLimitError("limited", llm_provider="openai", model="m", response=response)


def test_retry_after_forms() -> None:
    now = time.time()
    assert _retry_after(_error_with({"retry-after": "12"})) == 12.0
    assert _retry_after(_error_with({"retry-after": "1.5", "retry-after-ms": "1500"})) == 1.5
    date = email.utils.formatdate(now + 20, usegmt=True)
    assert _retry_after(_error_with({"Retry-After": date}), now=now) == pytest.approx(20, abs=1)
    past = email.utils.formatdate(now - 60, usegmt=True)
    assert _retry_after(_error_with({"retry-after": past}), now=now) == 0.0
    assert _retry_after(_error_with({"retry-after": "soon"})) is None
    assert _retry_after(_error_with({})) is None


# --------------------------------------------------------------------------- the job handler


@dataclass
class FakeMsg:
    """What the handler uses of a JetStream message."""

    job: CallJob
    delivered: int = 1
    acks: list[str] = field(default_factory=list)
    nak_delays: list[float | None] = field(default_factory=list)

    @property
    def data(self) -> bytes:
        return self.job.model_dump_json().encode()

    @property
    def subject(self) -> str:
        return "t.jobs.calls"

    headers: dict[str, str] | None = None

    @property
    def metadata(self) -> Any:
        return SimpleNamespace(num_delivered=self.delivered, timestamp=None)

    async def ack(self) -> None:
        self.acks.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.acks.append("nak")
        self.nak_delays.append(delay)

    async def term(self) -> None:
        self.acks.append("term")

    async def in_progress(self) -> None:
        pass


class FakeBroker:
    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Any]]] = []

    async def publish(self, payload: bytes, subject: str, **_: Any) -> None:
        self.published.append((subject, json.loads(payload)))

    def types(self) -> list[str]:
        return [event["type"] for _, event in self.published]


class Runs:
    def __init__(self) -> None:
        self.ended: set[str] = set()

    async def is_running(self, run_id: str) -> bool:
        return run_id not in self.ended


def _jobs(server: ModelServer, broker: FakeBroker, runs: Runs, max_attempts: int = 3) -> CallJobs:
    settings = MootSettings(namespace="t", call_max_attempts=max_attempts, call_ack_wait_seconds=3.0)
    return CallJobs(
        broker,  # type: ignore[arg-type]
        Names("t"),
        settings,
        _caller(server),
        concurrency=2,
        runs=runs,
        run_check_seconds=0.1,
    )


async def test_retryable_failure_is_nakked_with_its_delay_then_failed_on_the_last_attempt(
    server: ModelServer,
) -> None:
    broker, runs = FakeBroker(), Runs()
    jobs = _jobs(server, broker, runs, max_attempts=3)
    early = FakeMsg(_job("limited"), delivered=2)
    await jobs.handle(early)  # type: ignore[arg-type]
    assert early.acks == ["nak"] and early.nak_delays == [pytest.approx(7.0)] and broker.published == []

    last = FakeMsg(_job("limited"), delivered=3)
    await jobs.handle(last)  # type: ignore[arg-type]
    assert last.acks == ["ack"]
    assert broker.types() == ["call.failed"]
    failed = broker.published[0][1]
    assert failed["error"].startswith("gave up after 3 attempts") and failed["attempts"] == 3


async def test_job_of_a_run_that_is_not_running_is_acked_without_a_call(server: ModelServer) -> None:
    broker, runs = FakeBroker(), Runs()
    runs.ended.add("cancelled-run")
    msg = FakeMsg(_job("ok", run_id="cancelled-run"))
    await _jobs(server, broker, runs).handle(msg)  # type: ignore[arg-type]
    assert msg.acks == ["ack"]
    assert server.requests("ok") == [] and broker.published == []


async def test_streamed_call_is_cut_when_its_run_is_cancelled(server: ModelServer) -> None:
    broker, runs = FakeBroker(), Runs()
    msg = FakeMsg(_job("streams-slowly", stream=True, run_id="run-to-cancel"))
    handling = asyncio.create_task(_jobs(server, broker, runs).handle(msg))  # type: ignore[arg-type]
    # Cancel once the verdict has started to come in.
    deadline = time.monotonic() + 10
    while "final.chunk" not in broker.types():
        assert time.monotonic() < deadline, "no chunk streamed"
        await asyncio.sleep(0.02)
    runs.ended.add("run-to-cancel")
    cancelled_at = time.monotonic()
    await asyncio.wait_for(handling, timeout=5)
    assert time.monotonic() - cancelled_at < 1.0  # within a check interval or so, not the whole answer
    assert msg.acks == ["ack"]
    chunks = broker.types().count("final.chunk")
    assert 0 < chunks < len(SLOW_REPLY.split()) - 5
    assert "call.completed" not in broker.types() and "call.failed" not in broker.types()
    # Nothing more comes after the cut.
    await asyncio.sleep(0.3)
    assert broker.types().count("final.chunk") == chunks


async def test_stopping_worker_hands_the_job_back(server: ModelServer) -> None:
    broker, runs = FakeBroker(), Runs()
    msg = FakeMsg(_job("slow"))
    handling = asyncio.create_task(_jobs(server, broker, runs).handle(msg))  # type: ignore[arg-type]
    await asyncio.sleep(0.3)
    handling.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await handling
    assert msg.acks == ["nak"] and msg.nak_delays == [None]


# --------------------------------------------------------------------------- redacted errors

SECRET_PROMPT = "Summarise the confidential memo on Project Falcon's acquisition price for the board."
CALL_KEY = "team-7f3c9a21e4b8d6"  # no known key shape: only the call's own key can find it


def _echoing_error(kind: str, kwargs: dict[str, Any]) -> Exception:
    """A provider error the way a careless provider words it: the request's body and key echoed."""
    body = json.dumps({"model": kwargs["model"], "messages": kwargs["messages"]})
    message = f"OpenAIException - rejected request {body} (api key {kwargs['api_key']})"
    if kind == "bad-request":
        return litellm.BadRequestError(message, model="m", llm_provider="openai")
    response = httpx.Response(429, request=httpx.Request("POST", "http://x"))
    return litellm.RateLimitError(message, llm_provider="openai", model="m", response=response)


@pytest.mark.parametrize("kind", ["bad-request", "rate-limited", "stream-broken"])
async def test_provider_errors_leave_neither_the_prompt_nor_the_key(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def acompletion(**kwargs: Any) -> Any:
        error = _echoing_error("rate-limited" if kind == "stream-broken" else kind, kwargs)
        if not kwargs.get("stream"):
            raise error

        async def chunks() -> Any:
            yield SimpleNamespace(
                usage=None,
                choices=[SimpleNamespace(finish_reason=None, delta=SimpleNamespace(content="Le "))],
            )
            raise error

        return chunks()

    monkeypatch.setattr(litellm, "acompletion", acompletion)
    models = ModelList.model_validate(
        {"model_list": [{"model_name": "m", "litellm_params": {"model": "openai/m", "api_key": CALL_KEY}}]}
    )
    caller = ModelCaller(models, timeout=10.0, backoff_base=0.5, backoff_max=60.0)
    job = CallJob(
        call_id="r1:1:member:m:1", run_id="r1", iteration=1, role="member", model="m", instance=1,
        messages=[JobMessage(role="user", content=[SECRET_PROMPT])], stream=kind == "stream-broken",
    )  # fmt: skip

    async def on_chunk(index: int, delta: str) -> None:
        pass

    outcome = await caller.call(job, 3, on_chunk=on_chunk)
    if kind == "rate-limited":
        assert isinstance(outcome, Retry) and outcome.error_type == "RateLimitError"
        assert outcome.error.startswith("RateLimitError (HTTP 429): OpenAIException - rejected request")
        outcome = outcome.give_up(job, 3)
    assert isinstance(outcome, CallFailed), outcome
    error = outcome.error or ""
    assert CALL_KEY not in error
    assert not any(SECRET_PROMPT[i : i + 20] in error for i in range(len(SECRET_PROMPT) - 19))
    assert "[…quoted request…]" in error and "[redacted]" in error
    expected = {
        "bad-request": "BadRequestError (HTTP 400): OpenAIException - rejected request",
        "rate-limited": "gave up after 3 attempts: RateLimitError (HTTP 429): OpenAIException",
        "stream-broken": "stream broke after 1 chunks: RateLimitError (HTTP 429): OpenAIException",
    }[kind]
    assert error.startswith(expected), error


async def test_a_model_outside_the_list_fails_without_a_call(server: ModelServer) -> None:
    """The gateway refuses such runs; a worker given a job naming one anyway calls nobody."""
    before = len(server.requests())
    outcome = await _caller(server).call(_job("openai/gpt-4o"), attempt=1)
    assert isinstance(outcome, CallFailed) and outcome.error_type == "configuration"
    assert "'openai/gpt-4o' is not in the model list" in outcome.error
    assert len(server.requests()) == before


async def test_a_missing_provider_key_fails_at_once_not_after_retries(
    server: ModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The OpenAI client refuses to start without a key and litellm reports it as a 500: no later
    attempt can fix that, so the call fails on its first attempt (issue 13)."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    models = ModelList.model_validate(
        {
            "model_list": [
                {"model_name": "keyless", "litellm_params": {"model": "openai/ok", "api_base": server.url}}
            ]
        }
    )
    caller = ModelCaller(models, timeout=10.0, backoff_base=0.5, backoff_max=60.0)
    outcome = await caller.call(_job("keyless"), attempt=1)
    assert isinstance(outcome, CallFailed), outcome
    assert "api_key" in outcome.error or "credentials" in outcome.error.lower(), outcome.error
