"""What a new user trips over (issue 13), through the gateway: errors in one shape that never
send the input back, blank prompts refused, a debate judged when it names a judge."""

from __future__ import annotations

from typing import Any

import httpx

from moot.devstack.stack import Stack

RUN: dict[str, Any] = {"prompt": "Hi?", "members": [{"model": "m1"}], "arbiter": "m1", "max_iterations": 1}


async def _post(stack: Stack, api_key: str, body: Any) -> httpx.Response:
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60
    ) as http:
        return await http.post("/v1/runs", json=body)


async def test_a_huge_prompt_is_refused_without_being_sent_back(stack: Stack, api_key: str) -> None:
    prompt = "tell me everything " * 150_000  # 2.85 MB: under the body cap, over the prompt's limit
    response = await _post(stack, api_key, {**RUN, "prompt": prompt})
    assert response.status_code == 422
    assert len(response.content) < 2_000, len(response.content)
    error = response.json()["error"]
    assert (error["param"], error["type"], error["code"]) == (
        "prompt",
        "invalid_request_error",
        "invalid_value",
    )
    assert "200000 characters" in error["message"] and "tell me everything" not in error["message"]


async def test_a_body_that_is_not_json_gets_the_same_error_shape(stack: Stack, api_key: str) -> None:
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60
    ) as http:
        response = await http.post(
            "/v1/runs", content=b'{"prompt": "' + b"x" * 100_000, headers={"content-type": "application/json"}
        )
    assert response.status_code == 422 and len(response.content) < 2_000
    assert set(response.json()) == {"error"} and response.json()["error"]["message"]


async def test_a_blank_prompt_is_refused(stack: Stack, api_key: str) -> None:
    response = await _post(stack, api_key, {**RUN, "prompt": " \n\t "})
    assert response.status_code == 422
    assert response.json()["error"] == {
        "message": "prompt: the prompt is blank: ask something",
        "type": "invalid_request_error",
        "param": "prompt",
        "code": "invalid_value",
        "errors": [{"param": "prompt", "message": "the prompt is blank: ask something"}],
    }


async def test_a_debate_that_names_a_judge_is_judged(stack: Stack, api_key: str) -> None:
    body = {
        "mode": "debate",
        "prompt": "Tabs?",
        "members": [{"model": "d1", "count": 2}],
        "judge": "judge_stop",
    }
    response = await _post(stack, api_key, body)
    assert response.status_code == 202, response.text
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, headers={"Authorization": f"Bearer {api_key}"}
    ) as http:
        run = (await http.get(f"/v1/runs/{response.json()['id']}")).json()
    assert run["request"]["judge_mode"] == "external_judge"
