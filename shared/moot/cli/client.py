"""The CLI's client of the gateway: `moot.client.AsyncClient`, answering in the JSON the commands read.

The commands print runs and configurations field by field from the gateway's JSON (a run's
`trace_id` and `links` included) and follow a run's events without validating each, so this
client hands them the JSON as it came; its refusals are `GatewayError`s, which read the API's
error body for people.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from moot.client import ApiError, AsyncClient, ErrorDetail, RawEvent

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping

    import httpx

    from moot.views import AnyRunView

# One event as sent: `id`, `type`, `data` (JSON).
RunEventMessage = RawEvent


class GatewayError(ApiError):
    """A response with an error status.

    `detail` is the body's `error` object (`{"message", "type", "param", "code", "errors"?}`, the
    gateway's one error shape) or the raw text; `message` and `field_errors` read it for people.
    """

    def __init__(self, status: int, detail: Any, retry_after: float | None = None) -> None:
        text = detail if isinstance(detail, str) else json.dumps(detail)
        try:
            error = ErrorDetail.model_validate(detail) if isinstance(detail, dict) else None
        except ValidationError:
            error = None
        super().__init__(status, error, text, retry_after)
        self.detail = detail

    @classmethod
    def of(cls, refused: ApiError) -> GatewayError:
        detail = refused.error.model_dump(exclude_none=True) if refused.error else refused.text
        return cls(refused.status, detail, refused.retry_after)

    @property
    def field_errors(self) -> list[tuple[str, str]]:
        """(field, message) for each validation error (a 422's `error.errors`), the field a dotted
        path (`members.0.count`)."""
        return [(e.param, e.message) for e in (self.error.errors or [])] if self.error else []


class MootClient:
    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        # "" rather than None: no key means none, not `MOOT_API_KEY` (the CLI has read it already).
        self.api = AsyncClient(base_url, api_key or "", timeout=timeout, transport=transport)
        self.base_url = self.api.base_url

    async def __aenter__(self) -> MootClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.api.aclose()

    async def _json(
        self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None
    ) -> Any:
        try:
            return await self.api.request(method, path, json=json, params=params)
        except ApiError as exc:
            raise GatewayError.of(exc) from None

    # runs

    async def create_run(self, body: dict[str, Any]) -> dict[str, Any]:
        """Submit a run request (or `{"config": name, "prompt": ..., overrides}`); `{"id", "mode", ...}`."""
        result: dict[str, Any] = await self._json("POST", "/v1/runs", json=body)
        return result

    async def get_run(self, run_id: str) -> dict[str, Any]:
        """The run's JSON as the gateway serves it (its view, `trace_id` and `links`)."""
        result: dict[str, Any] = await self._json("GET", f"/v1/runs/{run_id}")
        return result

    async def list_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The owner's recent runs, newest first."""
        body = await self._json("GET", "/v1/runs", params={"limit": limit})
        runs: list[dict[str, Any]] = body["data"]
        return runs

    async def cancel_run(self, run_id: str) -> AnyRunView:
        """Cancel a running run; its view afterwards."""
        try:
            return await self.api.cancel_run(run_id)
        except ApiError as exc:
            raise GatewayError.of(exc) from None

    async def events(self, run_id: str, last_event_id: str | None = None) -> AsyncIterator[RunEventMessage]:
        """The run's events until its last one, once through (the caller resumes a dropped stream)."""
        try:
            async for event in self.api.raw_events(run_id, after=last_event_id):
                yield event
        except ApiError as exc:
            raise GatewayError.of(exc) from None

    # saved configurations

    async def save_config(self, name: str, config: dict[str, Any]) -> dict[str, Any]:
        """Save a run request without its prompt under `name`; each save adds a version."""
        result: dict[str, Any] = await self._json("PUT", f"/v1/consortiums/{name}", json=config)
        return result

    async def get_config(self, name: str, version: int | None = None) -> dict[str, Any]:
        params = {"version": version} if version is not None else None
        result: dict[str, Any] = await self._json("GET", f"/v1/consortiums/{name}", params=params)
        return result

    async def list_configs(self) -> list[dict[str, Any]]:
        """The latest version of every saved configuration."""
        body = await self._json("GET", "/v1/consortiums")
        configs: list[dict[str, Any]] = body["data"]
        return configs

    async def delete_config(self, name: str) -> None:
        await self._json("DELETE", f"/v1/consortiums/{name}")
