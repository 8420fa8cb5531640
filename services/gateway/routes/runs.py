"""Runs: submit one, read it, follow its events live."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Response, status
from fastapi.sse import EventSourceResponse, ServerSentEvent
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import ConsumerConfig, DeliverPolicy

from moot.messages import TERMINAL_EVENT_TYPES, RunRequest, utcnow
from moot.protocols import protocol_for
from moot.records import fetch_run_view
from moot_gateway.deps import Clients, ClientsDep

router = APIRouter(prefix="/v1/runs", tags=["runs"])


def _links(run_id: str) -> dict[str, str]:
    return {"self": f"/v1/runs/{run_id}", "events": f"/v1/runs/{run_id}/events"}


@router.post("", status_code=status.HTTP_202_ACCEPTED)
async def create_run(request: RunRequest, clients: ClientsDep, response: Response) -> dict[str, Any]:
    """Accept a run: store its initial state and publish its first call jobs."""
    run_id = uuid.uuid4().hex
    protocol = protocol_for(request.mode)
    transition = protocol.start(run_id, request, utcnow())
    await clients.store.create(run_id, request.mode, transition)
    response.headers["Location"] = f"/v1/runs/{run_id}"
    return {"id": run_id, "mode": request.mode, "status": "running", "links": _links(run_id)}


async def _run_view(clients: Clients, run_id: str) -> dict[str, Any] | None:
    loaded = await clients.store.load(run_id)
    if loaded is not None:
        mode, state = loaded
        return protocol_for(mode).view(state)
    if clients.pool is not None:
        return await fetch_run_view(clients.pool, run_id)
    return None


def _check_id(run_id: str) -> None:
    # Run ids are 32 hex characters; anything else cannot name a run (nor a NATS subject token).
    if len(run_id) != 32 or any(c not in "0123456789abcdef" for c in run_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"run {run_id!r} not found")


@router.get("/{run_id}")
async def get_run(run_id: str, clients: ClientsDep) -> dict[str, Any]:
    """The run: status, result, every iteration with member answers, token usage."""
    _check_id(run_id)
    view = await _run_view(clients, run_id)
    if view is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"run {run_id!r} not found")
    return {**view, "links": _links(run_id)}


async def _existing_run(run_id: str, clients: ClientsDep) -> str:
    # A dependency, not the body: an SSE endpoint's body runs after the 200 has been sent.
    _check_id(run_id)
    if await _run_view(clients, run_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"run {run_id!r} not found")
    return run_id


def _start_after(last_event_id: Annotated[str | None, Header()] = None) -> int:
    if not last_event_id:
        return 0
    try:
        return int(last_event_id)
    except ValueError as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="Last-Event-ID must be an event id") from exc


@router.get("/{run_id}/events", response_class=EventSourceResponse)
async def run_events(
    run_id: Annotated[str, Depends(_existing_run)],
    start_after: Annotated[int, Depends(_start_after)],
    clients: ClientsDep,
) -> AsyncIterator[ServerSentEvent]:
    """The run's events as SSE, replayed from JetStream; `id` is the stream sequence.

    A client that reconnects with `Last-Event-ID` gets everything after that event; the stream
    ends after the run's final event.
    """
    async for event in _replay(clients, run_id, start_after):
        yield event


async def _replay(clients: Clients, run_id: str, start_after: int) -> AsyncIterator[ServerSentEvent]:
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
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=30.0)
            except NatsTimeout:
                continue  # the response class sends keep-alive comments meanwhile
            event_type = names.event_type_of(msg.subject)
            seq = msg.metadata.sequence.stream
            # The sequence goes into the payload too, for clients that read data only.
            data = {**json.loads(msg.data), "seq": seq}
            yield ServerSentEvent(data=data, event=event_type, id=str(seq))
            if event_type in TERMINAL_EVENT_TYPES:
                return
    finally:
        await sub.unsubscribe()
