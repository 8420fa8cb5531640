"""Runs: submit one, read it, follow its events live."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Query, Response, status
from fastapi.sse import EventSourceResponse, ServerSentEvent
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import ConsumerConfig, DeliverPolicy

from moot.messages import TERMINAL_EVENT_TYPES, RunCancelled, RunCompleted, RunFailed, utcnow
from moot.observability import telemetry
from moot.protocols import protocol_for
from moot.records.queries import fetch_run_view, recent_runs
from moot.runtime.textstore import hydrated
from moot.views import AnyRunView
from moot_gateway import runs_service
from moot_gateway.admission import StreamSlotDep
from moot_gateway.auth import PrincipalDep
from moot_gateway.deps import Clients, ClientsDep
from moot_gateway.errors import DEPENDENCY_ERRORS, ApiError, errors, stream_errors
from moot_gateway.schemas import (
    CancelResponse,
    RunAccepted,
    RunEventData,
    RunList,
    RunResponse,
    RunSubmission,
    cancel_response,
    links,
    run_response,
)
from moot_gateway.seed_stream import StreamFormat, require_debate, seed_events

log = logging.getLogger(__name__)

# How a text by reference is written in a stored event (`moot.texts.TextRef`): `{"$text": sha, ...}`.
TEXT_REF_KEY = b'"$text"'

router = APIRouter(prefix="/v1/runs", tags=["runs"], responses=errors(400, 401, 404, 409, 422, 503))

# On the models of a local stack: `local` (the embedded model of `moot up`); with
# `moot up --test-models`, `fast`, `slow` and `arbiter`.
EXAMPLES = {
    "consortium": {
        "summary": "A consortium of the local model",
        "value": {
            "mode": "consortium",
            "prompt": "What is the capital of France?",
            "members": [{"model": "local", "count": 3}],
            "arbiter": "local",
            "max_tokens": 300,
        },
    },
    "debate": {
        "summary": "A judged debate",
        "value": {
            "mode": "debate",
            "prompt": "Is a hot dog a sandwich?",
            "members": [{"model": "local", "count": 2}],
            "judge": "local",
        },
    },
    "council": {
        "summary": "A council: answers, anonymized peer rankings, a chairman",
        "value": {
            "mode": "council",
            "prompt": "What is the capital of Australia?",
            "members": [{"model": "local", "count": 3}],
            "chairman": "local",
        },
    },
    "vote": {
        "summary": "A vote that escalates to a consortium on disagreement",
        "value": {
            "mode": "vote",
            "prompt": "What is 17 * 23?",
            "members": [{"model": "local", "count": 5}],
            "answer_format": "number",
            "agreement_threshold": 0.6,
            "escalate": {"mode": "consortium", "arbiter": "local"},
        },
    },
    "moa": {
        "summary": "Mixture-of-Agents: two layers and an aggregator",
        "value": {
            "mode": "moa",
            "prompt": "Explain why the sky is blue in two sentences.",
            "layers": [[{"model": "local", "count": 3}], [{"model": "local", "count": 3}]],
            "aggregator": "local",
        },
    },
    "saved": {
        "summary": "A saved configuration, with an override",
        "value": {"config": "panel", "prompt": "Is P = NP?", "max_iterations": 2},
    },
}


@router.post("", status_code=status.HTTP_202_ACCEPTED, responses=errors(413, 429))
async def create_run(
    body: Annotated[RunSubmission, Body(openapi_examples=EXAMPLES)],
    clients: ClientsDep,
    principal: PrincipalDep,
    response: Response,
) -> RunAccepted:
    """Accept a run: a request of any mode (consortium, debate, council, vote, moa), or `config` (a
    saved name) plus overrides.

    `continue_from` (a finished run's id) makes the run continue that run's conversation.
    """
    request, meta = await runs_service.resolve(clients, principal, body)
    run_id = await runs_service.submit(clients, principal, request, meta)
    response.headers["Location"] = f"/v1/runs/{run_id}"
    trace_id = telemetry.current_trace_id()  # this request's trace is the run's trace
    return RunAccepted(id=run_id, mode=request.mode, trace_id=trace_id, links=links(run_id))


@router.get("")
async def list_runs(
    clients: ClientsDep, principal: PrincipalDep, limit: Annotated[int, Query(ge=1, le=500)] = 20
) -> RunList:
    """The caller's recent runs, newest first."""
    return RunList(data=await recent_runs(clients.pool, principal.owner, limit))


@router.get("/{run_id}", response_model=RunResponse)
async def get_run(run_id: str, clients: ClientsDep, principal: PrincipalDep) -> Any:
    """The run: status, result, every step (iteration, round, stage, layer) with every answer, token usage."""
    view = await runs_service.view_of(clients, run_id, principal)
    if view is None:
        raise runs_service.not_found(f"run {run_id!r}")
    trace_id = await telemetry.run_trace_id(clients.store, clients.pool, run_id)
    return run_response(view, trace_id)


@router.post("/{run_id}/cancel", response_model=CancelResponse)
async def cancel_run(run_id: str, clients: ClientsDep, principal: PrincipalDep) -> Any:
    """Stop a running run: no new jobs; results in flight are recorded but do not advance it."""
    return cancel_response(await runs_service.cancel(clients, run_id, principal))


async def _existing_run(run_id: str, clients: ClientsDep, principal: PrincipalDep) -> AnyRunView:
    # A dependency, not the body: an SSE endpoint's body runs after the 200 has been sent.
    runs_service.require_nats(clients)
    view = await runs_service.view_of(clients, run_id, principal)
    if view is None:
        raise runs_service.not_found(f"run {run_id!r}")
    return view


async def _stream_format(
    run: Annotated[AnyRunView, Depends(_existing_run)],
    stream_format: Annotated[
        StreamFormat,
        Query(
            alias="format",
            description="`moot`: every run event; `seed`: a debate's events in the reference debate "
            "program's wire format (docs/protocols.md).",
        ),
    ] = "moot",
) -> StreamFormat:
    if stream_format == "seed":
        require_debate(run)
    return stream_format


async def _start_after(last_event_id: Annotated[str | None, Header()] = None) -> int:
    if not last_event_id:
        return 0
    try:
        return int(last_event_id)
    except ValueError as exc:
        raise ApiError(
            status.HTTP_400_BAD_REQUEST, "Last-Event-ID must be an event id", param="Last-Event-ID"
        ) from exc


@router.get(
    "/{run_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "model": RunEventData,
            "description": "Server-sent events; each `data` is one run event plus `seq`, its stream sequence.",
        },
        # Every status of the router too: refusals of a stream are JSON, not events.
        **stream_errors(400, 401, 404, 409, 422, 429, 503),
    },
)
async def run_events(
    run: Annotated[AnyRunView, Depends(_existing_run)],
    stream_format: Annotated[StreamFormat, Depends(_stream_format)],
    start_after: Annotated[int, Depends(_start_after)],
    clients: ClientsDep,
    _slot: StreamSlotDep,
) -> AsyncIterator[ServerSentEvent]:
    """The run's events as SSE, replayed from JetStream; `id` (and `seq` in the data) is the stream sequence.

    A client that reconnects with `Last-Event-ID` gets everything after that event; the stream
    ends after the run's final event (`run.completed`, `run.failed` or `run.cancelled`), also for
    a run whose events have left JetStream (that event is then built from the run's record).

    `format=seed`: a debate's events as the reference debate program sent them (`data:` lines
    only, its names and fields), from the debate's start, closing after `debate_complete` or
    `error`; 409 for a run that is not a debate.
    """
    if stream_format == "seed":
        async for said in seed_events(replay(clients, run.id, 0, hydrate=False), clients.store.texts):
            yield said
        return
    async for event in replay(clients, run.id, start_after):
        yield event


# An SSE stream with nothing new for this long asks whether its run has ended without the stream
# saying so: its events aged out of JetStream (only Postgres remembers it), or its terminal event
# was never published. The first check comes soon (a stream holding nothing answers at once),
# then one every IDLE_CHECK_SECONDS while the run is quiet.
FIRST_CHECK_SECONDS = 1.0
IDLE_CHECK_SECONDS = 10.0
# Once the run is known to have ended, events still on their way get this long to arrive.
DRAIN_SECONDS = 0.5

_END_EVENTS: dict[str, type[RunCompleted | RunFailed | RunCancelled]] = {
    "completed": RunCompleted,
    "failed": RunFailed,
    "cancelled": RunCancelled,
}


async def replay(
    clients: Clients, run_id: str, start_after: int, *, hydrate: bool = True
) -> AsyncGenerator[ServerSentEvent, None]:
    """The run's events from JetStream, each hydrated (its texts inline, as before references).

    Ends with the run's terminal event. When the stream does not hold it but the run has ended
    (its state in KV, else its record in Postgres, says so), that event is built from the run's
    view and sent last, without an `id` (it has no stream sequence): every stream of an ended run
    ends. `hydrate=False` for callers that read no referenced text (a `final.chunk`'s delta is inline).
    """
    names = clients.names
    js = clients.broker.connection.jetstream()
    config = (
        ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start_after + 1)
        if start_after
        else ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    )
    sub = await js.subscribe(
        names.run_events(run_id), stream=names.runs_stream, ordered_consumer=True, config=config
    )
    wait = FIRST_CHECK_SECONDS
    ended: AnyRunView | None = None
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=DRAIN_SECONDS if ended else wait)
            except NatsTimeout:
                # The response class sends keep-alive comments meanwhile.
                if ended is not None:
                    end = await end_event(clients, ended)
                    yield ServerSentEvent(data=end, event=end["type"])
                    return
                ended = await _ended_view(clients, run_id)
                wait = IDLE_CHECK_SECONDS
                continue
            event_type = names.event_type_of(msg.subject)
            seq = msg.metadata.sequence.stream
            # The sequence goes into the payload too, for clients that read data only.
            if hydrate and TEXT_REF_KEY not in msg.data and msg.data.endswith(b"}"):
                # Nothing to put back (most events): the stored JSON as it is, `seq` spliced in,
                # rather than parsed and encoded again for every client.
                raw = msg.data[:-1].decode() + f',"seq":{seq}}}'
                yield ServerSentEvent(raw_data=raw, event=event_type, id=str(seq))
            else:
                data = {**json.loads(msg.data), "seq": seq}
                if hydrate:
                    data = await hydrated(clients.store.texts, data)
                yield ServerSentEvent(data=data, event=event_type, id=str(seq))
            if event_type in TERMINAL_EVENT_TYPES:
                return
    finally:
        await sub.unsubscribe()


async def _ended_view(clients: Clients, run_id: str) -> AnyRunView | None:
    """The run's view if it has ended: from its KV state, else from its record; None otherwise.

    None too when neither can be read now (NATS or Postgres down): the stream waits and asks again.
    """
    view: AnyRunView | None
    try:
        if await clients.store.is_running(run_id):  # the envelope only: cheap while the run is live
            return None
        loaded = await clients.store.load(run_id)
        if loaded is not None:
            mode, state = loaded
            view = protocol_for(mode).view(state)
        else:
            view = await fetch_run_view(clients.pool, run_id)
    except DEPENDENCY_ERRORS as exc:
        log.warning("run %s: cannot tell whether it has ended (%r); waiting for its events", run_id, exc)
        return None
    return view if view is not None and view.status != "running" else None


async def end_event(clients: Clients, view: AnyRunView) -> dict[str, Any]:
    """The terminal event of an ended run, built from its view (hydrated), as the stream would carry it."""
    event = _END_EVENTS[view.status](
        run_id=view.id,
        reason=view.reason or view.status,
        run=await runs_service.hydrated_view(clients.store.texts, view),
        at=view.finished_at or utcnow(),
    )
    return {**event.model_dump(mode="json"), "seq": None}
