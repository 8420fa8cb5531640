"""The moot gateway over HTTP: runs, their events, saved configurations.

A thin synchronous client (`llm` calls models and commands synchronously) of the gateway's
public API, with no dependency on moot's own packages: the plugin installs alone.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from httpx_sse import connect_sse

# `moot up` serves the gateway here unless told another port.
DEFAULT_URL = "http://127.0.0.1:8000"
# The events after which the gateway closes a run's stream.
TERMINAL_EVENTS = frozenset({"run.completed", "run.failed", "run.cancelled"})
# A run's stream that breaks (a gateway restarted, a proxy's idle timeout) is resumed from the
# last event seen (`Last-Event-ID`) this many times in a row before giving up.
RECONNECTS = 5
RECONNECT_PAUSE_SECONDS = 1.0
# The gateway sends a keep-alive comment after 15 s without events: a stream silent for
# longer than this is broken, and is resumed.
STREAM_READ_TIMEOUT_SECONDS = 60.0


def gateway_url() -> str:
    """Where the gateway is: `MOOT_URL`, else a local stack's default address."""
    return os.environ.get("MOOT_URL") or DEFAULT_URL


class GatewayError(Exception):
    """The gateway refused a request (`status`), or could not be reached (`status` None).

    `fields` holds (field, message) for each validation error of a 422.
    """

    def __init__(self, message: str, status: int | None = None, fields: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.fields = fields or []

    def __str__(self) -> str:
        if self.fields:
            return "; ".join(f"{field}: {message}" for field, message in self.fields)
        return self.message


class RunFailed(Exception):
    """A run that ended without an answer: failed, cancelled, or a debate nobody judged."""


@dataclass(frozen=True)
class RunEvent:
    type: str
    data: dict[str, Any]


def answer_of(view: dict[str, Any]) -> str:
    """The answer of an ended run's view (a consortium's synthesis, any other mode's result text)."""
    result = view.get("result") or {}
    answer = result.get("synthesis", result.get("text"))
    if view.get("status") != "completed" or not isinstance(answer, str) or not answer:
        reason = view.get("reason") or "no final answer"
        raise RunFailed(f"run {view.get('id')} {view.get('status')}: {reason}")
    return answer


def _error_of(response: httpx.Response) -> GatewayError:
    """The gateway's one error shape, `{"error": {"message", "errors"?: [{"param", "message"}]}}`, read."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    if not isinstance(error, dict):
        return GatewayError(f"HTTP {response.status_code}: {response.text[:300]}", response.status_code)
    fields = [
        (str(e.get("param") or "request"), str(e.get("message", "")))
        for e in error.get("errors") or []
        if isinstance(e, dict)
    ]
    message = str(error.get("message") or f"HTTP {response.status_code}")
    if response.status_code == 401:
        message += " (set the key with `llm keys set moot` or MOOT_API_KEY)"
    return GatewayError(message, response.status_code, fields)


class Gateway:
    """One gateway, one key. Use as a context manager (it holds a connection pool)."""

    def __init__(
        self,
        key: str | None,
        url: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = (url or gateway_url()).rstrip("/")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            transport=transport,
        )

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def _unreachable(self, exc: httpx.TransportError) -> GatewayError:
        return GatewayError(f"cannot reach the moot gateway at {self.url} (MOOT_URL): {type(exc).__name__}")

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code >= 400:
            raise _error_of(response)
        return response

    # runs

    def submit(self, body: dict[str, Any]) -> str:
        """Start a run (a request of any mode, or `{"config": name, "prompt": ...}`); its id."""
        run_id: str = self._request("POST", "/v1/runs", json=body).json()["id"]
        return run_id

    def run(self, run_id: str) -> dict[str, Any]:
        """The run's record: status, result, every step with every answer, usage."""
        view: dict[str, Any] = self._request("GET", f"/v1/runs/{run_id}").json()
        return view

    def cancel(self, run_id: str) -> None:
        """Ask the gateway to stop the run; a run already ended, or a gateway gone, is left as it is."""
        try:
            self._request("POST", f"/v1/runs/{run_id}/cancel")
        except GatewayError:
            pass

    def events(self, run_id: str) -> Iterator[RunEvent]:
        """The run's events from its first to its last (`run.completed`, `run.failed`, `run.cancelled`).

        A stream that breaks before the last one is resumed after the last event received.
        """
        last_id: str | None = None
        failures = 0
        while True:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                with connect_sse(
                    self._http,
                    "GET",
                    f"/v1/runs/{run_id}/events",
                    headers=headers,
                    timeout=httpx.Timeout(STREAM_READ_TIMEOUT_SECONDS, connect=5.0),
                ) as source:
                    if source.response.status_code >= 400:
                        source.response.read()
                        raise _error_of(source.response)
                    for sse in source.iter_sse():
                        if not sse.data:  # a keep-alive comment
                            continue
                        failures = 0
                        last_id = sse.id or last_id
                        yield RunEvent(sse.event, json.loads(sse.data))
                        if sse.event in TERMINAL_EVENTS:
                            return
                broken: Exception = GatewayError(f"the event stream of run {run_id} ended before the run")
            except httpx.TransportError as exc:
                broken = self._unreachable(exc)
            failures += 1
            if failures > RECONNECTS:
                raise broken
            time.sleep(RECONNECT_PAUSE_SECONDS)

    # saved configurations

    def configs(self) -> list[dict[str, Any]]:
        """The latest version of each saved configuration of the key's owner."""
        configs: list[dict[str, Any]] = self._request("GET", "/v1/consortiums").json()["data"]
        return configs

    def save(self, name: str, config: dict[str, Any]) -> dict[str, Any]:
        """Save a run request without its prompt under `name` (a new version if it exists)."""
        saved: dict[str, Any] = self._request("PUT", f"/v1/consortiums/{name}", json=config).json()
        return saved

    def remove(self, name: str) -> None:
        self._request("DELETE", f"/v1/consortiums/{name}")
