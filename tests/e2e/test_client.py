"""moot.client, blocking and asyncio, against the running stack (conftest.py).

Runs of every mode come back as `moot.views` models and their events as `moot.messages` models;
saved configurations are saved, run and removed; refusals are `ApiError`s carrying the API's
error body; a stream read again after an event's id (`Last-Event-ID`) gives exactly what followed.
The blocking client runs in a thread: the test's event loop stays free.
"""

from __future__ import annotations

import asyncio

import pytest

from moot.client import ApiError, AsyncClient, Client, StreamedEvent
from moot.devstack.stack import Stack
from moot.messages import (
    CallCompleted,
    DebateComplete,
    FinalChunk,
    FinalComplete,
    IterationCompleted,
    JudgeDecision,
    RunCompleted,
    RunCreated,
    StepCompleted,
)
from moot.requests import (
    AnyRunRequest,
    ConsortiumRequest,
    CouncilRequest,
    DebateRequest,
    DebaterSpec,
    MemberSpec,
    MoaRequest,
    VoteRequest,
)
from moot.views import AnyRunView, ConsortiumView, CouncilView, DebateView, MoaView, RunSummary, VoteView

# One request per mode, on the test model server's behaviours (conftest.BEHAVIOURS), and the view
# each comes back as.
RUNS: list[tuple[AnyRunRequest, type[AnyRunView]]] = [
    (
        ConsortiumRequest(
            prompt="What is 2 + 2?", members=[MemberSpec(model="m1"), MemberSpec(model="m2")], arbiter="arb"
        ),
        ConsortiumView,
    ),
    (
        DebateRequest(
            prompt="Is a hot dog a sandwich?",
            members=[DebaterSpec(model="d1"), DebaterSpec(model="d2")],
            judge_mode="external_judge",
            judge="judge_stop",
            max_rounds=4,
        ),
        DebateView,
    ),
    (
        CouncilRequest(
            prompt="What is the capital of Australia?",
            members=[MemberSpec(model="ranker", count=3)],
            chairman="chair",
        ),
        CouncilView,
    ),
    (
        VoteRequest(
            prompt="What is 2 * 4?", members=[MemberSpec(model="eight", count=3)], answer_format="number"
        ),
        VoteView,
    ),
    (
        MoaRequest(
            prompt="Why is the sky blue?",
            layers=[[MemberSpec(model="m1"), MemberSpec(model="m2")], [MemberSpec(model="m3")]],
            aggregator="chair",
        ),
        MoaView,
    ),
]


def _ids(events: list[StreamedEvent]) -> list[int]:
    return [int(e.id) for e in events]


def check_run(
    request: AnyRunRequest, view_class: type[AnyRunView], events: list[StreamedEvent], fetched: AnyRunView
) -> None:
    """The events of one finished run and its view, as the client typed them."""
    assert events[0].event.type in {"run.created", "debate.started"} and events[-1].is_last
    assert all(e.event.run_id == events[0].event.run_id for e in events)
    assert _ids(events) == sorted(set(_ids(events))), "events out of order or repeated"
    end = events[-1].event
    assert isinstance(end, RunCompleted)
    final = events[-1].final_view
    assert isinstance(final, view_class) and isinstance(fetched, view_class)
    assert fetched.status == final.status == "completed", fetched.reason
    assert fetched.answer and fetched.answer == final.answer
    assert fetched.request == request
    if isinstance(request, ConsortiumRequest):
        assert isinstance(events[0].event, RunCreated) and events[0].event.request == request
        iterations = [e.event for e in events if isinstance(e.event, IterationCompleted)]
        assert isinstance(fetched, ConsortiumView) and len(iterations) == len(fetched.iteration_views)
        assert iterations[-1].decision == "stop" and fetched.result == iterations[-1].verdict
    if isinstance(request, DebateRequest):
        [decision] = [e.event for e in events if isinstance(e.event, JudgeDecision)]
        assert decision.continue_ is False and decision.round == 2
        chunks = [e.event for e in events if isinstance(e.event, FinalChunk)]
        [verdict] = [e.event for e in events if isinstance(e.event, FinalComplete)]
        assert len(chunks) > 1 and "".join(c.delta for c in chunks) == verdict.text == fetched.answer
        assert any(isinstance(e.event, DebateComplete) for e in events)
    if isinstance(request, CouncilRequest | VoteRequest | MoaRequest):
        assert any(isinstance(e.event, StepCompleted) for e in events)
    assert sum(isinstance(e.event, CallCompleted) for e in events) >= 2


async def test_the_async_client_runs_every_mode_typed(stack: Stack, api_key: str) -> None:
    async with AsyncClient(stack.gateway_url, api_key) as moot:
        accepted = [await moot.create_run(request) for request, _ in RUNS]
        assert [a.mode for a in accepted] == [r.mode for r, _ in RUNS]
        for (request, view_class), run in zip(RUNS, accepted, strict=True):
            events = await asyncio.wait_for(_collect(moot, run.id), timeout=60)
            check_run(request, view_class, events, await moot.get_run(run.id))
        listed = await moot.list_runs(100)
    assert all(isinstance(r, RunSummary) for r in listed)
    assert {a.id for a in accepted} <= {r.id for r in listed}


async def _collect(moot: AsyncClient, run_id: str, after: str | None = None) -> list[StreamedEvent]:
    return [e async for e in moot.events(run_id, after=after)]


async def test_the_blocking_client_runs_every_mode_typed(stack: Stack, api_key: str) -> None:
    def every_mode() -> None:
        with Client(stack.gateway_url, api_key) as moot:
            for request, view_class in RUNS:
                run = moot.create_run(request)
                events = list(moot.events(run.id))
                check_run(request, view_class, events, moot.get_run(run.id))

    await asyncio.wait_for(asyncio.to_thread(every_mode), timeout=120)


async def test_a_stream_read_after_an_event_id_gives_exactly_what_followed(
    stack: Stack, api_key: str
) -> None:
    request, _ = RUNS[1]  # the debate: the most events
    async with AsyncClient(stack.gateway_url, api_key) as moot:
        run = await moot.create_run(request)
        everything = await asyncio.wait_for(_collect(moot, run.id), timeout=60)
        middle = everything[len(everything) // 2]
        rest = await asyncio.wait_for(_collect(moot, run.id, after=middle.id), timeout=60)
        waited = await moot.wait(run.id, after=middle.id)
    assert [e.event for e in rest] == [e.event for e in everything if int(e.id) > int(middle.id)]
    assert isinstance(waited, DebateView) and waited.answer == everything[-1].final_view.answer  # type: ignore[union-attr]

    def read_after() -> list[StreamedEvent]:
        with Client(stack.gateway_url, api_key) as blocking:
            return list(blocking.events(run.id, after=int(middle.id)))

    assert [e.id for e in await asyncio.to_thread(read_after)] == [e.id for e in rest]


async def test_saved_configurations_are_saved_run_and_removed(stack: Stack, api_key: str) -> None:
    request, _ = RUNS[0]
    async with AsyncClient(stack.gateway_url, api_key) as moot:
        first = await moot.save_config("client-panel", request)
        second = await moot.save_config("client-panel", {**first.config, "max_iterations": 1})
        assert first.mode == second.mode == "consortium" and second.version == first.version + 1
        assert "prompt" not in first.config and first.request("What is 2 + 2?") == request
        latest = await moot.get_config("client-panel")
        assert latest.version == second.version and latest.versions == [first.version, second.version]
        assert (await moot.get_config("client-panel", version=first.version)).config == first.config
        assert "client-panel" in {c.name for c in await moot.list_configs()}

        run = await moot.create_run_from_config(
            "client-panel", "What is 3 + 3?", overrides={"max_iterations": 2}
        )
        view = await asyncio.wait_for(moot.wait(run.id), timeout=60)
        assert isinstance(view, ConsortiumView) and view.status == "completed"
        assert view.config is not None and (view.config.name, view.config.version) == (
            "client-panel",
            second.version,
        )
        assert isinstance(view.request, ConsortiumRequest) and view.request.max_iterations == 2
        assert 1 <= len(view.iteration_views) <= 2

        older = await moot.create_run_from_config("client-panel", "And 4 + 4?", version=first.version)
        continued = await moot.create_run_from_config("client-panel", "And then?", continue_from=run.id)
        assert (await moot.wait(older.id)).config.version == first.version  # type: ignore[union-attr]
        assert (await moot.wait(continued.id)).continued_from == run.id

        await moot.delete_config("client-panel")
        with pytest.raises(ApiError) as gone:
            await moot.get_config("client-panel")
    assert gone.value.status == 404 and gone.value.error is not None and gone.value.error.code == "not_found"


async def test_refusals_are_api_errors_with_the_error_body(stack: Stack, api_key: str) -> None:
    async with AsyncClient(stack.gateway_url, api_key) as moot:
        with pytest.raises(ApiError) as unknown_model:
            await moot.create_run({"prompt": "q", "members": [{"model": "no-such-model"}], "arbiter": "arb"})
        with pytest.raises(ApiError) as invalid:
            await moot.create_run(
                {"prompt": "q", "members": [{"model": "m1", "count": 99}], "arbiter": "arb"}
            )
        with pytest.raises(ApiError) as missing:
            await moot.get_run("no-such-run")
        with pytest.raises(ApiError) as no_stream:
            await _collect(moot, "no-such-run")
    async with AsyncClient(stack.gateway_url, "mk-not-a-key") as stranger:
        with pytest.raises(ApiError) as unauthorized:
            await stranger.list_runs()

    assert unknown_model.value.status == 422 and unknown_model.value.error is not None
    assert unknown_model.value.error.param == "members.0.model"
    assert invalid.value.status == 422 and invalid.value.error is not None and invalid.value.error.errors
    assert [e.param for e in invalid.value.error.errors] == ["members.0.count"]
    for info, status in [(missing, 404), (no_stream, 404), (unauthorized, 401)]:
        assert info.value.status == status and info.value.error is not None, info.value
    assert unauthorized.value.error is not None and unauthorized.value.error.code == "invalid_api_key"

    def blocking_refusal() -> ApiError:
        with Client(stack.gateway_url, api_key) as moot:
            try:
                moot.cancel_run("no-such-run")
            except ApiError as exc:
                return exc
        raise AssertionError("cancelling an unknown run was not refused")

    refused = await asyncio.to_thread(blocking_refusal)
    assert refused.status == 404 and refused.error is not None and "no-such-run" in refused.message
