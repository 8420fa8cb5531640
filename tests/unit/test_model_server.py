"""Tests of the OpenAI-compatible test model server, through the openai client and litellm."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"

import httpx
import litellm
import openai
import pytest
from openai import AsyncOpenAI

from moot.devstack.model_server import (
    CONFIG_ENV,
    ModelBehaviour,
    ModelServer,
    ServerConfig,
    config_from_env,
    is_arbiter_request,
    load_config,
)

SECRET = "sk-test-secret-value"
ARBITER_PROMPT = "Combine the answers. Reply with <synthesis>...</synthesis> and the other tags."

CONFIG = ServerConfig(
    models={
        "canned": ModelBehaviour(reply="canned answer"),
        "templated": ModelBehaviour(reply_template="{model} #{n}: {last_user}"),
        "openai/prefixed": ModelBehaviour(reply="matched through the openai/ prefix"),
        "vendor/model:v1": ModelBehaviour(reply="slash and colon"),
        "slow-*": ModelBehaviour(latency_ms=300),
    }
)


@pytest.fixture(scope="module")
def server() -> Iterator[ModelServer]:
    with ModelServer(CONFIG) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh(server: ModelServer) -> None:
    server.reset(config=True)


@pytest.fixture
def client(server: ModelServer) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=server.url, api_key=SECRET, max_retries=0)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def llm(server: ModelServer, model: str, text: str = "hello", **kwargs: object) -> str:
    response = await litellm.acompletion(
        model=f"openai/{model}",
        api_base=server.url,
        api_key="test",
        num_retries=0,
        messages=user(text),
        **kwargs,
    )
    return response.choices[0].message.content or ""


# --------------------------------------------------------------------------- basic protocol


async def test_health_and_model_list(server: ModelServer, client: AsyncOpenAI) -> None:
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{server.base_url}/healthz")).json() == {"status": "ok"}
    models = [m.id async for m in client.models.list()]
    # Patterns are not model names, so they are not listed.
    assert models == ["canned", "templated", "openai/prefixed", "vendor/model:v1"]


async def test_completion_default_reply_usage_and_recording(server: ModelServer, client: AsyncOpenAI) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what is two plus two"},
    ]
    response = await client.chat.completions.create(model="member-a", messages=messages)  # type: ignore[arg-type]
    assert response.object == "chat.completion"
    content = response.choices[0].message.content or ""
    assert "member-a" in content
    assert content.splitlines()[-1] == "Confidence: 0.8"
    assert response.choices[0].finish_reason == "stop"
    assert response.usage is not None
    assert response.usage.prompt_tokens == 7
    assert response.usage.completion_tokens == len(content.split())
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens

    stats = server.stats()
    assert stats["models"]["member-a"]["requests"] == 1
    assert stats["total_errors"] == 0
    (record,) = stats["requests"]
    assert record["model"] == "member-a"
    assert record["messages"] == messages
    assert record["authorization"] is True
    assert record["status"] == 200
    assert record["reply"] == content
    assert SECRET not in json.dumps(stats)


async def test_deterministic_reply(client: AsyncOpenAI) -> None:
    first = await client.chat.completions.create(model="m", messages=user("same question"))  # type: ignore[arg-type]
    second = await client.chat.completions.create(model="m", messages=user("same question"))  # type: ignore[arg-type]
    assert first.choices[0].message.content == second.choices[0].message.content


async def test_streaming_with_usage(client: AsyncOpenAI) -> None:
    plain = await client.chat.completions.create(model="streamer", messages=user("tell me"))  # type: ignore[arg-type]
    stream = await client.chat.completions.create(
        model="streamer",
        messages=user("tell me"),  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert len(chunks) > 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == plain.usage.total_tokens  # type: ignore[union-attr]
    assert all(c.usage is None for c in chunks[:-1])


async def test_streaming_raw_sse_ends_with_done(server: ModelServer) -> None:
    body = {"model": "raw", "messages": user("hi"), "stream": True}
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{server.url}/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line for line in response.text.splitlines() if line]
    assert events[-1] == "data: [DONE]"
    # Without include_usage no chunk carries usage.
    assert all("usage" not in json.loads(e.removeprefix("data: ")) for e in events[:-1])


async def test_bad_request_body(server: ModelServer) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{server.url}/chat/completions", json={"messages": user("x")})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


async def test_max_tokens_truncates(client: AsyncOpenAI) -> None:
    response = await client.chat.completions.create(model="m", messages=user("q"), max_tokens=3)  # type: ignore[arg-type]
    assert response.choices[0].finish_reason == "length"
    assert len((response.choices[0].message.content or "").split()) == 3


# --------------------------------------------------------------------------- model names through litellm


async def test_litellm_strips_openai_prefix(server: ModelServer) -> None:
    assert "member-x" in await llm(server, "member-x")
    assert await llm(server, "vendor/model:v1") == "slash and colon"
    # Configured as "openai/prefixed", arrives as "prefixed".
    assert await llm(server, "prefixed") == "matched through the openai/ prefix"
    assert [r["model"] for r in server.requests()] == ["member-x", "vendor/model:v1", "prefixed"]


async def test_litellm_streaming(server: ModelServer) -> None:
    response = await litellm.acompletion(
        model="openai/canned",
        api_base=server.url,
        api_key="test",
        num_retries=0,
        messages=user("hi"),
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces = [chunk.choices[0].delta.content or "" async for chunk in response if chunk.choices]
    assert "".join(pieces) == "canned answer"
    assert server.stats()["models"]["canned"]["streamed"] == 1


async def test_reply_and_template(server: ModelServer) -> None:
    assert await llm(server, "canned") == "canned answer"
    assert await llm(server, "templated", "first") == "templated #1: first"
    assert await llm(server, "templated", "x" * 300) == "templated #2: " + "x" * 200


async def test_empty_reply(server: ModelServer, client: AsyncOpenAI) -> None:
    server.set_model("silent", {"empty": True})
    response = await client.chat.completions.create(model="silent", messages=user("q"))  # type: ignore[arg-type]
    assert response.choices[0].message.content == ""
    assert response.usage is not None and response.usage.completion_tokens == 0


# --------------------------------------------------------------------------- failures


async def test_fail_first_then_succeed_with_retry_after(server: ModelServer, client: AsyncOpenAI) -> None:
    server.set_model("flaky", ModelBehaviour(fail_first=2, error_status=503, retry_after=1.5))
    for attempt in (1, 2):
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model="flaky", messages=user("q1"))  # type: ignore[arg-type]
        assert caught.value.status_code == 503
        assert caught.value.response.headers["retry-after"] == "1.5"
        error = caught.value.response.json()["error"]
        assert set(error) >= {"message", "type", "code"}
        assert f"{attempt}/2" in error["message"]
    # Other content has its own count.
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="flaky", messages=user("q2"))  # type: ignore[arg-type]
    ok = await client.chat.completions.create(model="flaky", messages=user("q1"))  # type: ignore[arg-type]
    assert ok.choices[0].message.content
    stats = server.stats()
    assert (stats["models"]["flaky"]["requests"], stats["models"]["flaky"]["errors"]) == (4, 3)
    assert [r["status"] for r in stats["requests"]] == [503, 503, 503, 200]


@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (429, litellm.RateLimitError),
        (401, litellm.AuthenticationError),
        (400, litellm.BadRequestError),
        (503, litellm.ServiceUnavailableError),
    ],
)
async def test_error_status_maps_to_litellm_exceptions(
    server: ModelServer, status: int, exception: type[Exception]
) -> None:
    server.set_model("broken", {"error_rate": 1.0, "error_status": status})
    with pytest.raises(exception):
        await llm(server, "broken")


async def test_error_rate_is_reproducible(server: ModelServer) -> None:
    async def outcomes() -> list[int]:
        statuses = []
        async with httpx.AsyncClient() as http:
            for i in range(30):
                body = {"model": "random", "messages": user(f"q{i}")}
                statuses.append((await http.post(f"{server.url}/chat/completions", json=body)).status_code)
        return statuses

    server.set_model("random", {"error_rate": 0.5, "seed": 7})
    first = await outcomes()
    server.set_model("random", {"error_rate": 0.5, "seed": 7})
    second = await outcomes()
    assert first == second
    assert 200 in first and 500 in first
    assert server.stats()["models"]["random"]["errors"] == 2 * first.count(500)


async def test_malformed_json(server: ModelServer, client: AsyncOpenAI) -> None:
    server.set_model("garbled", {"malformed_json": True})
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{server.url}/chat/completions", json={"model": "garbled", "messages": user("q")}
        )
    assert response.status_code == 200
    with pytest.raises(ValueError):
        json.loads(response.text)
    with pytest.raises(Exception):  # noqa: B017 - only "the client fails" matters here
        await client.chat.completions.create(model="garbled", messages=user("q"))  # type: ignore[arg-type]
    with pytest.raises(Exception):  # noqa: B017
        await llm(server, "garbled")


# --------------------------------------------------------------------------- arbiter


def test_arbiter_detection() -> None:
    assert is_arbiter_request([{"role": "user", "content": ARBITER_PROMPT}])
    assert is_arbiter_request([{"role": "user", "content": [{"type": "text", "text": ARBITER_PROMPT}]}])
    assert not is_arbiter_request(
        [{"role": "system", "content": ARBITER_PROMPT}, {"role": "user", "content": "x"}]
    )


ALL_TAGS = ["synthesis", "confidence", "analysis", "dissent", "needs_iteration", "refinement_areas"]


@pytest.mark.parametrize(
    ("mode", "present", "absent"),
    [
        ("well_formed", ALL_TAGS, []),
        (
            "partial",
            ["synthesis", "confidence", "needs_iteration"],
            ["analysis", "dissent", "refinement_areas"],
        ),
        ("reordered", ALL_TAGS, []),
        ("no_confidence", ["synthesis", "analysis"], ["confidence"]),
        ("percent_confidence", ALL_TAGS, []),
    ],
)
async def test_arbiter_modes(server: ModelServer, mode: str, present: list[str], absent: list[str]) -> None:
    server.set_model("arb", {"arbiter": mode, "arbiter_confidence": 0.85})
    text = await llm(server, "arb", ARBITER_PROMPT)
    for tag in present:
        assert f"<{tag}>" in text and f"</{tag}>" in text, tag
    for tag in absent:
        assert f"<{tag}>" not in text, tag
    if mode == "reordered":
        assert text.index("<confidence>") < text.index("<synthesis>")
    if mode == "percent_confidence":
        assert "<confidence>85%</confidence>" in text
    if mode == "well_formed":
        assert "<confidence>0.85</confidence>" in text
        assert "<needs_iteration>false</needs_iteration>" in text
        assert "<area>" in text
        assert text.index("<synthesis>") < text.index("<confidence>")
    assert server.stats()["models"]["arb"]["arbiter_requests"] == 1


async def test_arbiter_garbage_and_unclosed(server: ModelServer) -> None:
    server.set_model("arb", {"arbiter": "garbage"})
    assert "<" not in await llm(server, "arb", ARBITER_PROMPT)
    server.set_model("arb", {"arbiter": "unclosed"})
    text = await llm(server, "arb", ARBITER_PROMPT)
    assert "<synthesis>" in text and "</synthesis>" not in text


async def test_arbiter_sequence_forces_two_iterations(server: ModelServer) -> None:
    server.set_model(
        "judge",
        {"arbiter_confidence": [0.5, 0.9], "arbiter_needs_iteration": [True, False], "fail_first": 1},
    )
    # A failed call does not consume a value of the sequence.
    with pytest.raises(litellm.InternalServerError):
        await llm(server, "judge", ARBITER_PROMPT)
    replies = [await llm(server, "judge", ARBITER_PROMPT) for _ in range(3)]
    assert "<confidence>0.5</confidence>" in replies[0]
    assert "<needs_iteration>true</needs_iteration>" in replies[0]
    for text in replies[1:]:
        assert "<confidence>0.9</confidence>" in text
        assert "<needs_iteration>false</needs_iteration>" in text
    # Member requests to the same model get the member reply (after their own first failure).
    with pytest.raises(litellm.InternalServerError):
        await llm(server, "judge", "plain question")
    assert (await llm(server, "judge", "plain question")).endswith("Confidence: 0.8")


# --------------------------------------------------------------------------- latency and concurrency


async def test_latency_and_concurrency(server: ModelServer, client: AsyncOpenAI) -> None:
    started = time.perf_counter()
    results = await asyncio.gather(
        *(client.chat.completions.create(model="slow-1", messages=user(f"q{i}")) for i in range(40))  # type: ignore[arg-type]
    )
    elapsed = time.perf_counter() - started
    assert len(results) == 40
    assert 0.3 <= elapsed < 2.0
    stats = server.stats(requests=False)
    assert "requests" not in stats
    assert stats["max_in_flight"] >= 20
    assert stats["in_flight"] == 0


async def test_chunk_delay(server: ModelServer, client: AsyncOpenAI) -> None:
    server.set_model("drip", {"reply": "one two three four five", "chunk_delay_ms": 40})
    started = time.perf_counter()
    stream = await client.chat.completions.create(model="drip", messages=user("q"), stream=True)  # type: ignore[arg-type]
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    assert "".join(pieces) == "one two three four five"
    # role chunk + 5 words + finish chunk: 6 gaps.
    assert time.perf_counter() - started >= 0.2


# --------------------------------------------------------------------------- control API and config


async def test_control_endpoints(server: ModelServer) -> None:
    async with httpx.AsyncClient(base_url=server.base_url) as http:
        response = await http.put("/_control/models/team/judge:latest", json={"reply": "set at runtime"})
        assert response.status_code == 200
        assert (await http.put("/_control/models/x", json={"no_such_field": 1})).status_code == 422
        assert (await http.put("/_control/models/x", json={"error_rate": 2})).status_code == 422
        behaviours = (await http.get("/_control/models")).json()
        assert behaviours["models"]["team/judge:latest"]["reply"] == "set at runtime"
        assert await llm(server, "team/judge:latest") == "set at runtime"

        await http.put("/_control/default", json={"reply": "new default"})
        assert await llm(server, "anything") == "new default"
        assert (await http.delete("/_control/models/canned")).json()["removed"] is True
        assert await llm(server, "canned") == "new default"

        assert server.stats()["total_requests"] == 3
        await http.post("/_control/reset")
        stats = server.stats()
        assert stats["total_requests"] == 0 and stats["requests"] == [] and stats["models"] == {}
        # A plain reset keeps runtime behaviours; reset?config=true restores the startup ones.
        assert await llm(server, "anything") == "new default"
        await http.post("/_control/reset", params={"config": "true"})
        assert await llm(server, "canned") == "canned answer"


def test_config_loading(tmp_path: Path) -> None:
    path = tmp_path / "models.yaml"
    path.write_text(
        "default:\n  latency_ms: 5\n"
        "models:\n  a/b:c:\n    arbiter: partial\n    arbiter_confidence: [0.4, 0.8]\n"
    )
    config = load_config(path)
    assert config.default.latency_ms == 5
    assert config.models["a/b:c"].arbiter_confidence == [0.4, 0.8]
    assert config_from_env({CONFIG_ENV: str(path)}) == config
    assert config_from_env({CONFIG_ENV: '{"models": {"x": {"reply": "r"}}}'}).models["x"].reply == "r"
    assert config_from_env({}) == ServerConfig()
    with pytest.raises(ValueError):
        ModelBehaviour(reply_template="{unknown}")
    with pytest.raises(ValueError):
        ModelBehaviour(arbiter="sloppy")  # type: ignore[arg-type]


def test_cli_prints_url(tmp_path: Path) -> None:
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"models": {"cli-model": {"reply": "from the cli"}}}))
    process = subprocess.Popen(
        [sys.executable, "-m", "moot.devstack.model_server", "--port", "0", "--config", str(path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("listening on http://127.0.0.1:")
        base = line.removeprefix("listening on ")
        body = {"model": "cli-model", "messages": user("q")}
        response = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=5)
        assert response.json()["choices"][0]["message"]["content"] == "from the cli"
    finally:
        process.terminate()
        process.wait(timeout=10)
