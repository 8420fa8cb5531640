"""The two clients of a moot gateway, `Client` (blocking) and `AsyncClient`, side by side.

They have the same methods with the same meaning; only their I/O differs (httpx's `Client` and
`AsyncClient`). What they send and how they read it is `moot.client.api`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncGenerator, Iterator, Mapping
from contextlib import aclosing
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, aconnect_sse, connect_sse

from moot import __version__
from moot.client import api
from moot.client.api import RawEvent, RunAccepted, SavedConfig, StreamedEvent, StreamEnded
from moot.eval.models import EvalRequest
from moot.requests import AnyRunRequest
from moot.views import AnyRunView, RunSummary


def _headers(api_key: str | None) -> dict[str, str]:
    key = api_key if api_key is not None else os.environ.get("MOOT_API_KEY", "").strip()
    return {"User-Agent": f"moot-client/{__version__}", **({"Authorization": f"Bearer {key}"} if key else {})}


def _base_url(base_url: str | None) -> str:
    return (base_url or os.environ.get("MOOT_URL", "").strip() or api.DEFAULT_URL).rstrip("/")


class Client:
    """A blocking client of a moot gateway.

    `base_url` defaults to `MOOT_URL` (else http://127.0.0.1:8000) and `api_key` to
    `MOOT_API_KEY`. A refusal raises `ApiError` (its status and the API's error body), a gateway
    that cannot be reached httpx's `httpx.HTTPError`. Use it as a context manager, or `close()` it.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = _base_url(base_url)
        self._http = httpx.Client(
            base_url=self.base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(
        self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None
    ) -> Any:
        """Any route of the API (`/v1/...`): its JSON body, None for a 204; ApiError for a refusal."""
        return api.json_of(self._http.request(method, path, json=json, params=params))

    # runs

    def create_run(
        self, request: AnyRunRequest | Mapping[str, Any], *, continue_from: str | None = None
    ) -> RunAccepted:
        """Start a run of any mode (`moot.requests`: ConsortiumRequest, DebateRequest, ...).

        `continue_from`, a finished run's id, makes it continue that run's conversation.
        """
        body = self.request("POST", "/v1/runs", json=api.run_body(request, continue_from))
        return RunAccepted.model_validate(body)

    def create_run_from_config(
        self,
        name: str,
        prompt: str,
        *,
        version: int | None = None,
        continue_from: str | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> RunAccepted:
        """Start a run of a saved configuration (its latest version, or `version`), any of its
        request's fields overridden (`{"max_iterations": 2}`)."""
        body = api.config_run_body(name, prompt, version, continue_from, overrides)
        return RunAccepted.model_validate(self.request("POST", "/v1/runs", json=body))

    def get_run(self, run_id: str) -> AnyRunView:
        """The run as it stands: status, every step and call, its answer once it has one."""
        return api.run_view(self.request("GET", api.run_path(run_id)))

    def list_runs(self, limit: int = 20) -> list[RunSummary]:
        """Your recent runs, newest first."""
        return api.run_summaries(self.request("GET", "/v1/runs", params={"limit": limit}))

    def cancel_run(self, run_id: str) -> AnyRunView:
        """Stop a running run (409 once it has ended); its view afterwards."""
        return api.run_view(self.request("POST", api.run_path(run_id, "/cancel")))

    def wait(self, run_id: str, *, after: str | int | None = None) -> AnyRunView:
        """Follow the run to its end: its final view (`.status`, `.answer`)."""
        for item in self.events(run_id, after=after):
            if item.is_last:
                return item.final_view or self.get_run(run_id)
        raise StreamEnded(f"the event stream of run {run_id} ended before the run did")

    def events(self, run_id: str, *, after: str | int | None = None) -> Iterator[StreamedEvent]:
        """The run's events (`moot.messages` models), from its first or after event `after`,
        until its last one (`is_last`, carrying the final view).

        A stream that drops once it has begun is resumed where it stopped (`Last-Event-ID`), up
        to `api.RESUMES` times in a row without an event; then StreamEnded, or the transport error.
        """
        last = str(after) if after is not None else None
        begun, failures = False, 0
        while True:
            try:
                for sse in self._sse(run_id, last):
                    begun, failures, last = True, 0, sse.id or last
                    item = api.typed_event(sse)
                    if item is None:
                        continue
                    yield item
                    if item.is_last:
                        return
                error: Exception = StreamEnded(f"the event stream of run {run_id} ended before the run did")
            except api.DROPPED as exc:
                error = exc
            failures += 1
            if not begun or failures > api.RESUMES:
                raise error
            time.sleep(api.RESUME_PAUSE_SECONDS)

    def raw_events(self, run_id: str, *, after: str | None = None) -> Iterator[RawEvent]:
        """The run's events as sent (JSON data), once through: no resume, nothing skipped."""
        for sse in self._sse(run_id, after):
            yield api.raw_event(sse)

    def _sse(self, run_id: str, after: str | None) -> Iterator[ServerSentEvent]:
        return self._sse_of(api.run_path(run_id, "/events"), after)

    def _sse_of(self, path: str, after: str | None) -> Iterator[ServerSentEvent]:
        headers = api.stream_headers(after)
        with connect_sse(self._http, "GET", path, headers=headers, timeout=api.STREAM_TIMEOUT) as source:
            if source.response.is_error:
                source.response.read()
                raise api.error_of(source.response)
            yield from filter(api.is_event, source.iter_sse())

    # evaluations (docs/eval.md)

    def create_eval(self, request: EvalRequest | Mapping[str, Any]) -> dict[str, Any]:
        """Start an evaluation, or go on with the identical one sent before: `{"id", "created", "links"}`."""
        accepted: dict[str, Any] = self.request("POST", "/v1/evals", json=api.eval_body(request))
        return accepted

    def get_eval(self, eval_id: str) -> dict[str, Any]:
        """Its status, progress and report (`report` validates as `moot.eval.models.Report`)."""
        found: dict[str, Any] = self.request("GET", api.eval_path(eval_id))
        return found

    def cancel_eval(self, eval_id: str) -> dict[str, Any]:
        cancelled: dict[str, Any] = self.request("POST", api.eval_path(eval_id, "/cancel"))
        return cancelled

    def eval_events(self, eval_id: str, *, after: str | None = None) -> Iterator[RawEvent]:
        """`eval.item` per scored item (resume with `after`: the last event's id), then its end
        (`eval.completed`, `eval.failed`, `eval.cancelled`)."""
        for sse in self._sse_of(api.eval_path(eval_id, "/events"), after):
            yield api.raw_event(sse)

    # saved configurations

    def save_config(self, name: str, config: AnyRunRequest | Mapping[str, Any]) -> SavedConfig:
        """Save a run setup under `name` (a request, whose prompt is not saved, or its JSON
        without one); saving again adds a version."""
        body = self.request("PUT", api.config_path(name), json=api.config_body(config))
        return SavedConfig.model_validate(body)

    def get_config(self, name: str, version: int | None = None) -> SavedConfig:
        """The latest version, or `version`; `versions` lists every version kept."""
        params = {"version": version} if version is not None else None
        return SavedConfig.model_validate(self.request("GET", api.config_path(name), params=params))

    def list_configs(self) -> list[SavedConfig]:
        """The latest version of every saved configuration of yours."""
        return api.saved_configs(self.request("GET", "/v1/consortiums"))

    def delete_config(self, name: str) -> None:
        self.request("DELETE", api.config_path(name))


class AsyncClient:
    """The asyncio client of a moot gateway: `Client`'s methods, awaited (`events` and
    `raw_events` are async iterators). Use it as an async context manager, or `aclose()` it."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = _base_url(base_url)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=_headers(api_key), timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(
        self, method: str, path: str, *, json: Any = None, params: Mapping[str, Any] | None = None
    ) -> Any:
        """Any route of the API (`/v1/...`): its JSON body, None for a 204; ApiError for a refusal."""
        return api.json_of(await self._http.request(method, path, json=json, params=params))

    # runs

    async def create_run(
        self, request: AnyRunRequest | Mapping[str, Any], *, continue_from: str | None = None
    ) -> RunAccepted:
        """As `Client.create_run`."""
        body = await self.request("POST", "/v1/runs", json=api.run_body(request, continue_from))
        return RunAccepted.model_validate(body)

    async def create_run_from_config(
        self,
        name: str,
        prompt: str,
        *,
        version: int | None = None,
        continue_from: str | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> RunAccepted:
        """As `Client.create_run_from_config`."""
        body = api.config_run_body(name, prompt, version, continue_from, overrides)
        return RunAccepted.model_validate(await self.request("POST", "/v1/runs", json=body))

    async def get_run(self, run_id: str) -> AnyRunView:
        return api.run_view(await self.request("GET", api.run_path(run_id)))

    async def list_runs(self, limit: int = 20) -> list[RunSummary]:
        return api.run_summaries(await self.request("GET", "/v1/runs", params={"limit": limit}))

    async def cancel_run(self, run_id: str) -> AnyRunView:
        return api.run_view(await self.request("POST", api.run_path(run_id, "/cancel")))

    async def wait(self, run_id: str, *, after: str | int | None = None) -> AnyRunView:
        """As `Client.wait`."""
        async with aclosing(self.events(run_id, after=after)) as events:
            async for item in events:
                if item.is_last:
                    return item.final_view or await self.get_run(run_id)
        raise StreamEnded(f"the event stream of run {run_id} ended before the run did")

    async def events(
        self, run_id: str, *, after: str | int | None = None
    ) -> AsyncGenerator[StreamedEvent, None]:
        """As `Client.events`."""
        last = str(after) if after is not None else None
        begun, failures = False, 0
        while True:
            try:
                async with aclosing(self._sse(run_id, last)) as stream:
                    async for sse in stream:
                        begun, failures, last = True, 0, sse.id or last
                        item = api.typed_event(sse)
                        if item is None:
                            continue
                        yield item
                        if item.is_last:
                            return
                error: Exception = StreamEnded(f"the event stream of run {run_id} ended before the run did")
            except api.DROPPED as exc:
                error = exc
            failures += 1
            if not begun or failures > api.RESUMES:
                raise error
            await asyncio.sleep(api.RESUME_PAUSE_SECONDS)

    async def raw_events(self, run_id: str, *, after: str | None = None) -> AsyncGenerator[RawEvent, None]:
        """As `Client.raw_events`."""
        async with aclosing(self._sse(run_id, after)) as stream:
            async for sse in stream:
                yield api.raw_event(sse)

    async def _sse(self, run_id: str, after: str | None) -> AsyncGenerator[ServerSentEvent, None]:
        async with aclosing(self._sse_of(api.run_path(run_id, "/events"), after)) as stream:
            async for sse in stream:
                yield sse

    async def _sse_of(self, path: str, after: str | None) -> AsyncGenerator[ServerSentEvent, None]:
        headers = api.stream_headers(after)
        async with aconnect_sse(
            self._http, "GET", path, headers=headers, timeout=api.STREAM_TIMEOUT
        ) as source:
            if source.response.is_error:
                await source.response.aread()
                raise api.error_of(source.response)
            async for sse in source.aiter_sse():
                if api.is_event(sse):
                    yield sse

    # evaluations (docs/eval.md)

    async def create_eval(self, request: EvalRequest | Mapping[str, Any]) -> dict[str, Any]:
        """Start an evaluation, or go on with the identical one sent before: `{"id", "created", "links"}`."""
        accepted: dict[str, Any] = await self.request("POST", "/v1/evals", json=api.eval_body(request))
        return accepted

    async def get_eval(self, eval_id: str) -> dict[str, Any]:
        """Its status, progress and report (`report` validates as `moot.eval.models.Report`)."""
        found: dict[str, Any] = await self.request("GET", api.eval_path(eval_id))
        return found

    async def cancel_eval(self, eval_id: str) -> dict[str, Any]:
        cancelled: dict[str, Any] = await self.request("POST", api.eval_path(eval_id, "/cancel"))
        return cancelled

    async def eval_events(self, eval_id: str, *, after: str | None = None) -> AsyncGenerator[RawEvent, None]:
        """`eval.item` per scored item (resume with `after`: the last event's id), then its end
        (`eval.completed`, `eval.failed`, `eval.cancelled`)."""
        async with aclosing(self._sse_of(api.eval_path(eval_id, "/events"), after)) as stream:
            async for sse in stream:
                yield api.raw_event(sse)

    # saved configurations

    async def save_config(self, name: str, config: AnyRunRequest | Mapping[str, Any]) -> SavedConfig:
        """As `Client.save_config`."""
        body = await self.request("PUT", api.config_path(name), json=api.config_body(config))
        return SavedConfig.model_validate(body)

    async def get_config(self, name: str, version: int | None = None) -> SavedConfig:
        params = {"version": version} if version is not None else None
        return SavedConfig.model_validate(await self.request("GET", api.config_path(name), params=params))

    async def list_configs(self) -> list[SavedConfig]:
        return api.saved_configs(await self.request("GET", "/v1/consortiums"))

    async def delete_config(self, name: str) -> None:
        await self.request("DELETE", api.config_path(name))
