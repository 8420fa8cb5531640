"""The gateway's cap on request bodies: 413 with the usual error body, before anything parses it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI, Request

from moot_gateway.limits import BodyLimit

CAP = 1_000


def _app() -> tuple[FastAPI, list[int]]:
    app = FastAPI()
    app.add_middleware(BodyLimit, max_bytes=CAP)
    parsed: list[int] = []

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, Any]:
        body = await request.body()
        parsed.append(len(body))
        return {"bytes": len(body)}

    @app.get("/ping")
    async def ping() -> dict[str, str]:
        return {"ok": "yes"}

    return app, parsed


async def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


async def test_a_body_within_the_cap_reaches_the_route_whole() -> None:
    app, parsed = _app()
    async with await _client(app) as http:
        response = await http.post("/echo", content=b"x" * CAP)
        assert (response.status_code, response.json()) == (200, {"bytes": CAP})
        assert (await http.get("/ping")).status_code == 200
    assert parsed == [CAP]


async def test_a_body_announced_larger_is_refused_unread() -> None:
    app, parsed = _app()
    async with await _client(app) as http:
        response = await http.post("/echo", content=b"x" * (CAP + 1))
    assert response.status_code == 413
    assert response.json() == {
        "error": {
            "message": f"request body larger than {CAP} bytes (MOOT_MAX_BODY_BYTES)",
            "type": "invalid_request_error",
            "param": None,
            "code": "request_too_large",
        }
    }
    assert parsed == []


async def test_a_streamed_body_is_refused_once_it_passes_the_cap() -> None:
    app, parsed = _app()

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"y" * 300  # no Content-Length: only counting finds out

    async with await _client(app) as http:
        response = await http.post("/echo", content=chunks())
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    assert parsed == []
