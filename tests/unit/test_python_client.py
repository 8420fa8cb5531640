"""moot.client against a gateway played in process (httpx.MockTransport): the bodies it sends,
the typed answers, events and errors it reads, a dropped stream resumed; the CLI's client on it.

The same scenarios run against the real stack in tests/e2e/test_client.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from moot.cli.client import GatewayError, MootClient
from moot.client import ApiError, AsyncClient, Client, RunAccepted, SavedConfig, StreamEnded, api
from moot.messages import IterationStarted, RunCompleted
from moot.requests import ConsortiumRequest, DebateRequest, DebaterSpec, MemberSpec
from moot.views import ConsortiumView, DebateView, RunSummary

REQUEST = {"mode": "consortium", "prompt": "q", "members": [{"model": "m"}], "arbiter": "a"}
VIEW = {
    "id": "r1",
    "mode": "consortium",
    "status": "completed",
    "request": REQUEST,
    "trace_id": "t",
    "links": {},
}
STARTED = IterationStarted(run_id="r1", iteration=1, call_ids=["c1"]).model_dump(mode="json")
ENDED = RunCompleted(run_id="r1", reason="done", run=ConsortiumView.model_validate(VIEW)).model_dump(
    mode="json"
)


def sse(seq: int | None, data: dict[str, Any], event: str | None = None) -> bytes:
    head = f"id: {seq}\n" if seq is not None else ""
    body = json.dumps({**data, "seq": seq})
    return f"{head}event: {event or data['type']}\ndata: {body}\n\n".encode()


class Dropping(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A stream body that sends `chunks`, then loses its connection."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        raise httpx.ReadError("connection lost")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        raise httpx.ReadError("connection lost")


SSE_HEADERS = {"content-type": "text/event-stream"}


class Gateway:
    """Answers each request with the next of `answers` (a response, or a function of the request)."""

    def __init__(self, *answers: httpx.Response | Callable[[httpx.Request], httpx.Response]) -> None:
        self.answers = list(answers)
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        answer = self.answers.pop(0)
        return answer(request) if callable(answer) else answer

    def body(self, n: int = -1) -> Any:
        return json.loads(self.seen[n].content)


@pytest.fixture
def no_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "RESUME_PAUSE_SECONDS", 0.0)


def client(gateway: Gateway) -> Client:
    return Client("http://gw/", "key-1", transport=httpx.MockTransport(gateway))


def test_a_request_is_sent_as_set_with_its_mode_and_the_key() -> None:
    gateway = Gateway(httpx.Response(202, json={"id": "r1", "mode": "debate", "trace_id": None, "links": {}}))
    request = DebateRequest(prompt="q", members=[DebaterSpec(model="d1", count=2)], judge="j")
    with client(gateway) as moot:
        accepted = moot.create_run(request, continue_from="r0")
    assert accepted == RunAccepted(id="r1", mode="debate")
    assert gateway.body() == {
        "mode": "debate",
        "prompt": "q",
        "members": [{"model": "d1", "count": 2}],
        "judge": "j",
        "judge_mode": "external_judge",  # set by the request's validator, from `judge`
        "continue_from": "r0",
    }
    assert gateway.seen[0].headers["authorization"] == "Bearer key-1"
    assert str(gateway.seen[0].url) == "http://gw/v1/runs"


def test_a_saved_configuration_runs_with_its_overrides_and_is_saved_without_the_prompt() -> None:
    config = {k: v for k, v in REQUEST.items() if k != "prompt"}
    saved = {"name": "panel", "version": 3, "config": config, "created_at": "2026-01-01T00:00:00+00:00"}
    gateway = Gateway(
        httpx.Response(202, json={"id": "r2", "mode": "consortium", "links": {}}),
        httpx.Response(200, json=saved),
        httpx.Response(200, json=saved | {"versions": [1, 3]}),
    )
    with client(gateway) as moot:
        moot.create_run_from_config("panel", "why?", version=2, overrides={"max_iterations": 1})
        assert gateway.body() == {
            "max_iterations": 1,
            "config": "panel",
            "prompt": "why?",
            "config_version": 2,
        }
        stored = moot.save_config("panel", ConsortiumRequest.model_validate(REQUEST))
        assert gateway.body() == config
        assert gateway.seen[-1].method == "PUT" and gateway.seen[-1].url.path == "/v1/consortiums/panel"
        fetched = moot.get_config("panel", version=3)
    assert isinstance(stored, SavedConfig) and stored.mode == "consortium" and stored.versions is None
    assert fetched.versions == [1, 3] and gateway.seen[-1].url.params["version"] == "3"
    assert fetched.request("why?") == ConsortiumRequest(
        prompt="why?", members=[MemberSpec(model="m")], arbiter="a"
    )


def test_runs_come_back_as_views_and_summaries() -> None:
    debate = {
        "id": "r3",
        "mode": "debate",
        "status": "running",
        "request": {
            "mode": "debate",
            "prompt": "q",
            "members": [{"model": "d", "count": 2}],
            "judge_mode": "display_only",
        },
    }
    gateway = Gateway(
        httpx.Response(200, json=VIEW),
        httpx.Response(200, json=debate),
        httpx.Response(
            200, json={"object": "list", "data": [{"id": "r1", "status": "completed", "mode": "consortium"}]}
        ),
    )
    with client(gateway) as moot:
        assert isinstance(moot.get_run("r1"), ConsortiumView)
        assert isinstance(moot.cancel_run("r3"), DebateView)
        assert gateway.seen[-1].method == "POST" and gateway.seen[-1].url.path == "/v1/runs/r3/cancel"
        assert moot.list_runs(limit=5) == [RunSummary(id="r1", status="completed", mode="consortium")]
        assert gateway.seen[-1].url.params["limit"] == "5"


def test_a_refusal_is_an_api_error_carrying_the_error_body() -> None:
    body = {
        "error": {
            "message": "members.0.count: too many",
            "type": "invalid_request_error",
            "param": "members.0.count",
            "code": "invalid_value",
            "errors": [{"param": "members.0.count", "message": "too many"}],
        }
    }
    gateway = Gateway(
        httpx.Response(422, json=body),
        httpx.Response(
            429,
            json={"error": {"message": "slow down", "type": "rate_limit_error"}},
            headers={"Retry-After": "7"},
        ),
        httpx.Response(502, text="<html>bad gateway</html>"),
    )
    with client(gateway) as moot:
        with pytest.raises(ApiError) as invalid:
            moot.create_run(REQUEST)
        with pytest.raises(ApiError) as limited:
            moot.list_runs()
        with pytest.raises(ApiError) as proxied:
            moot.list_configs()
    assert invalid.value.status == 422 and invalid.value.error is not None
    assert invalid.value.error.code == "invalid_value"
    assert [(e.param, e.message) for e in invalid.value.error.errors or []] == [
        ("members.0.count", "too many")
    ]
    assert limited.value.retry_after == 7.0 and limited.value.message == "slow down"
    assert proxied.value.error is None and proxied.value.message == "<html>bad gateway</html>"


def test_events_are_typed_and_skip_keep_alives_and_unknown_types() -> None:
    stream = b": ping\n\n" + sse(1, STARTED) + sse(2, {"type": "later.added"}) + b": ping\n\n" + sse(3, ENDED)
    gateway = Gateway(httpx.Response(200, content=stream, headers=SSE_HEADERS))
    with client(gateway) as moot:
        items = list(moot.events("r1"))
    assert [(i.id, type(i.event).__name__, i.is_last) for i in items] == [
        ("1", "IterationStarted", False),
        ("3", "RunCompleted", True),
    ]
    assert isinstance(items[-1].final_view, ConsortiumView) and items[0].final_view is None
    assert "last-event-id" not in gateway.seen[0].headers


def test_a_dropped_stream_is_resumed_after_the_last_event_seen(no_pause: None) -> None:
    gateway = Gateway(
        httpx.Response(200, stream=Dropping(sse(4, STARTED)), headers=SSE_HEADERS),
        httpx.Response(200, content=sse(5, ENDED), headers=SSE_HEADERS),
    )
    with client(gateway) as moot:
        view = moot.wait("r1", after=3)
    assert isinstance(view, ConsortiumView) and view.status == "completed"
    assert [r.headers["last-event-id"] for r in gateway.seen] == ["3", "4"]


def test_a_stream_that_never_began_is_not_retried_and_one_that_keeps_ending_gives_up(no_pause: None) -> None:
    with client(Gateway(httpx.Response(200, stream=Dropping(), headers=SSE_HEADERS))) as moot:
        with pytest.raises(httpx.ReadError):
            list(moot.events("r1"))
    ending = [httpx.Response(200, content=sse(n, STARTED), headers=SSE_HEADERS) for n in (1, 1)]
    gateway = Gateway(*ending, *[httpx.Response(200, content=b"", headers=SSE_HEADERS)] * (api.RESUMES + 1))
    with client(gateway) as moot, pytest.raises(StreamEnded):
        list(moot.events("r1"))
    assert len(gateway.seen) == 2 + api.RESUMES  # resumed RESUMES times after the last event


async def test_the_async_client_reads_the_same_and_resumes_too(no_pause: None) -> None:
    gateway = Gateway(
        httpx.Response(202, json={"id": "r1", "mode": "consortium", "links": {}}),
        httpx.Response(200, stream=Dropping(sse(1, STARTED)), headers=SSE_HEADERS),
        httpx.Response(200, content=sse(2, ENDED), headers=SSE_HEADERS),
        httpx.Response(
            404,
            json={
                "error": {
                    "message": "run 'nope' not found",
                    "type": "invalid_request_error",
                    "code": "not_found",
                }
            },
        ),
    )
    async with AsyncClient("http://gw", "k", transport=httpx.MockTransport(gateway)) as moot:
        accepted = await moot.create_run(ConsortiumRequest.model_validate(REQUEST))
        items = [item async for item in moot.events(accepted.id)]
        with pytest.raises(ApiError) as missing:
            await moot.wait("nope")
    assert [type(i.event).__name__ for i in items] == ["IterationStarted", "RunCompleted"]
    assert gateway.seen[2].headers["last-event-id"] == "1"
    assert missing.value.status == 404 and missing.value.error and missing.value.error.code == "not_found"


def test_the_base_url_and_the_key_default_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOOT_URL", "http://elsewhere:9/")
    monkeypatch.setenv("MOOT_API_KEY", "key-env")
    gateway = Gateway(httpx.Response(200, json={"object": "list", "data": []}))
    with Client(transport=httpx.MockTransport(gateway)) as moot:
        assert moot.list_configs() == []
    assert str(gateway.seen[0].url) == "http://elsewhere:9/v1/consortiums"
    assert gateway.seen[0].headers["authorization"] == "Bearer key-env"


async def test_the_cli_client_answers_json_and_gateway_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOOT_API_KEY", "not-this-one")
    body = {
        "error": {
            "message": "bad",
            "type": "invalid_request_error",
            "param": "members.0",
            "errors": [{"param": "members.0", "message": "bad"}],
        }
    }
    gateway = Gateway(
        httpx.Response(200, json=VIEW),
        httpx.Response(422, json=body),
        httpx.Response(200, content=sse(1, STARTED) + sse(2, ENDED), headers=SSE_HEADERS),
    )
    async with MootClient("http://gw", api_key=None, transport=httpx.MockTransport(gateway)) as cli:
        assert await cli.get_run("r1") == VIEW
        with pytest.raises(GatewayError) as refused:
            await cli.create_run({"prompt": "q"})
        events = [e async for e in cli.events("r1")]
    assert "authorization" not in gateway.seen[0].headers  # no key given: none sent
    assert refused.value.field_errors == [("members.0", "bad")] and refused.value.message == "bad"
    assert refused.value.detail["param"] == "members.0"
    assert [(e.id, e.type, e.data["seq"]) for e in events] == [
        ("1", "iteration.started", 1),
        ("2", "run.completed", 2),
    ]
    assert GatewayError(502, "no stream").message == "no stream"


def test_the_client_reads_the_bodies_the_gateway_documents() -> None:
    """The client's own models have the fields of the gateway's (moot_gateway.schemas/errors)."""
    from moot_gateway import errors, schemas

    def fields(model: Any) -> set[str]:
        return set(model.model_fields)

    assert fields(RunAccepted) == fields(schemas.RunAccepted) - {"links"}
    assert fields(SavedConfig) == fields(schemas.SavedConfigVersions)
    assert fields(api.ErrorDetail) == fields(errors.ErrorDetail)
    assert fields(api.FieldError) == fields(errors.FieldError)
