"""Saved configurations as models, through the official `openai` client against the running gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import openai
import pytest

from moot.devstack.model_server import ModelServer
from moot.devstack.stack import Stack


@pytest.fixture(scope="module")
async def saved(stack: Stack, api_key: str) -> None:
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, headers={"Authorization": f"Bearer {api_key}"}
    ) as http:
        consortium = {"members": [{"model": "m1"}, {"model": "m2"}], "arbiter": "arb", "max_iterations": 1}
        debate = {
            "mode": "debate",
            "members": [{"model": "d1"}, {"model": "d2"}],
            "judge_mode": "external_judge",
            "judge": "judge_stop",
            "max_rounds": 2,
        }
        for name, body in (("council", consortium), ("court", debate)):
            assert (await http.put(f"/v1/consortiums/{name}", json=body)).status_code == 200


@pytest.fixture
async def oai(stack: Stack, api_key: str, saved: None) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{stack.gateway_url}/v1", api_key=api_key, max_retries=0) as c:
        yield c


async def test_models_lists_saved_configurations(oai: openai.AsyncOpenAI) -> None:
    models = {m.id: m for m in (await oai.models.list()).data}
    assert {"council", "court"} <= set(models)
    assert models["court"].owned_by == "alice"
    assert "api_key" not in str(models["council"].model_dump())


async def test_chat_completion_runs_a_consortium(oai: openai.AsyncOpenAI, model_server: ModelServer) -> None:
    model_server.reset()
    completion = await oai.chat.completions.create(
        model="council",
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4."},
            {"role": "user", "content": "And 3+3?"},
        ],
    )
    content = completion.choices[0].message.content
    assert content and content.startswith("Synthesis by arb")
    assert completion.object == "chat.completion" and completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    extra = completion.model_extra or {}
    run_id = extra["moot"]["run_id"]
    assert completion.id == f"chatcmpl-{run_id}"

    # The conversation reached the members: system prompt, earlier turns, then the prompt.
    [first, *_] = [r for r in model_server.requests("m1") if not r["arbiter"]]
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant", "user"]
    assert first["messages"][0]["content"] == "Answer briefly."
    assert first["messages"][-1]["content"].startswith("And 3+3?")


async def test_streaming_a_debate_verdict(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="court",
        messages=[{"role": "user", "content": "Is a hot dog a sandwich?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces: list[str] = []
    finish = None
    usage = None
    async for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage:
            usage = chunk.usage
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces) == "STOP - the positions are clear and the stronger one has emerged."
    assert len([p for p in pieces if p]) > 1, "the verdict should stream in pieces"
    assert finish == "stop" and usage is not None and usage.total_tokens > 0


async def test_streaming_a_consortium(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="council", messages=[{"role": "user", "content": "Hi"}], stream=True
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text.startswith("Synthesis by arb")


async def test_errors_an_openai_client_expects(oai: openai.AsyncOpenAI, stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        await oai.chat.completions.create(model="no-such", messages=[{"role": "user", "content": "x"}])
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        await oai.chat.completions.create(model="council", messages=[])
    assert bad.value.param and "messages" in bad.value.param
    with pytest.raises(openai.BadRequestError):
        await oai.chat.completions.create(
            model="council", messages=[{"role": "assistant", "content": "only me"}]
        )
    async with openai.AsyncOpenAI(
        base_url=f"{stack.gateway_url}/v1", api_key="moot_wrong", max_retries=0
    ) as wrong:
        with pytest.raises(openai.AuthenticationError):
            await wrong.models.list()


async def test_another_owner_cannot_call_my_configuration(
    stack: Stack, other_api_key: str, saved: None
) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{stack.gateway_url}/v1", api_key=other_api_key, max_retries=0
    ) as bob:
        assert "council" not in [m.id for m in (await bob.models.list()).data]
        with pytest.raises(openai.NotFoundError):
            await bob.chat.completions.create(model="council", messages=[{"role": "user", "content": "x"}])
