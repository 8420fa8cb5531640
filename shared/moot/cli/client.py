"""A small HTTP client for the gateway, used by the CLI (and handy in scripts and tests)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from httpx_sse import aconnect_sse

if TYPE_CHECKING:
    from moot.views import RunView


@dataclass
class RunEventMessage:
    id: str
    type: str
    data: dict[str, Any]


class GatewayError(RuntimeError):
    """A response with an error status.

    `detail` is the body's `error` object (`{"message", "type", "param", "code", "errors"?}`, the
    gateway's one error shape) or the raw text; `message` and `field_errors` read it for people.
    """

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail

    @property
    def message(self) -> str:
        """One line: the error's message."""
        if isinstance(self.detail, dict) and isinstance(self.detail.get("message"), str):
            return self.detail["message"]
        return str(self.detail)

    @property
    def field_errors(self) -> list[tuple[str, str]]:
        """(field, message) for each validation error (a 422's `error.errors`), the field a dotted
        path (`members.0.count`)."""
        if not isinstance(self.detail, dict) or not isinstance(self.detail.get("errors"), list):
            return []
        return [
            (str(e.get("param") or "request"), str(e.get("message", "")))
            for e in self.detail["errors"]
            if isinstance(e, dict)
        ]


def _detail_of(response: httpx.Response) -> Any:
    try:
        body = response.json()
    except ValueError:
        return response.text
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"]
    return body


class MootClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout)

    async def __aenter__(self) -> MootClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise GatewayError(response.status_code, _detail_of(response))
        return response.json()

    # runs

    async def create_run(self, body: dict[str, Any]) -> dict[str, Any]:
        """Submit a run request (or `{"config": name, "prompt": ..., overrides}`); `{"id", "mode", ...}`."""
        result: dict[str, Any] = await self._json(await self._http.post("/v1/runs", json=body))
        return result

    async def get_run(self, run_id: str) -> dict[str, Any]:
        """The run's JSON as the gateway serves it (its view, `trace_id` and `links`)."""
        result: dict[str, Any] = await self._json(await self._http.get(f"/v1/runs/{run_id}"))
        return result

    async def list_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The owner's recent runs, newest first."""
        body = await self._json(await self._http.get("/v1/runs", params={"limit": limit}))
        runs: list[dict[str, Any]] = body["data"]
        return runs

    async def cancel_run(self, run_id: str) -> RunView:
        """Cancel a running run; its view afterwards."""
        from moot.views import run_view_adapter  # late: its models take a while to build

        return run_view_adapter.validate_python(
            await self._json(await self._http.post(f"/v1/runs/{run_id}/cancel"))
        )

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
                if not sse.data:
                    # A keep-alive comment (": ping", after 15 s without events): httpx-sse 0.4.3
                    # turns it into an empty event once an id was seen.
                    continue
                yield RunEventMessage(id=sse.id, type=sse.event, data=json.loads(sse.data))

    # saved configurations

    async def save_config(self, name: str, config: dict[str, Any]) -> dict[str, Any]:
        """Save a run request without its prompt under `name`; each save adds a version."""
        result: dict[str, Any] = await self._json(
            await self._http.put(f"/v1/consortiums/{name}", json=config)
        )
        return result

    async def get_config(self, name: str, version: int | None = None) -> dict[str, Any]:
        params = {"version": version} if version is not None else {}
        result: dict[str, Any] = await self._json(
            await self._http.get(f"/v1/consortiums/{name}", params=params)
        )
        return result

    async def list_configs(self) -> list[dict[str, Any]]:
        """The latest version of every saved configuration."""
        body = await self._json(await self._http.get("/v1/consortiums"))
        configs: list[dict[str, Any]] = body["data"]
        return configs

    async def delete_config(self, name: str) -> None:
        response = await self._http.delete(f"/v1/consortiums/{name}")
        if response.status_code >= 400:
            raise GatewayError(response.status_code, _detail_of(response))
