"""A small HTTP client for the gateway, used by the CLI (and handy in scripts and tests)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import aconnect_sse


@dataclass
class RunEventMessage:
    id: str
    type: str
    data: dict[str, Any]


class GatewayError(RuntimeError):
    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class MootClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    async def __aenter__(self) -> MootClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise GatewayError(response.status_code, detail)
        return response.json()

    async def create_run(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._json(await self._http.post("/v1/runs", json=body))
        return result

    async def get_run(self, run_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._json(await self._http.get(f"/v1/runs/{run_id}"))
        return result

    async def events(self, run_id: str, last_event_id: str | None = None) -> AsyncIterator[RunEventMessage]:
        """The run's events until its last one."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        timeout = httpx.Timeout(30.0, read=None)
        async with aconnect_sse(
            self._http, "GET", f"/v1/runs/{run_id}/events", headers=headers, timeout=timeout
        ) as source:
            if source.response.status_code >= 400:
                await source.response.aread()
                await self._json(source.response)
            async for sse in source.aiter_sse():
                yield RunEventMessage(id=sse.id, type=sse.event, data=json.loads(sse.data))
