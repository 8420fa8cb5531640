"""Evaluations: start one, follow its progress, read its report (moot_gateway.evals, docs/eval.md)."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, Field

from moot.eval.models import EvalRequest, EvalStatus, ItemResult, Report, Scoring, Strategy
from moot_gateway import evals, runs_service
from moot_gateway.admission import StreamSlotDep
from moot_gateway.auth import PrincipalDep
from moot_gateway.deps import ClientsDep
from moot_gateway.errors import ApiError, errors, stream_errors
from moot_gateway.routes.runs import _start_after

router = APIRouter(prefix="/v1/evals", tags=["evals"], responses=errors(400, 401, 404, 422, 503))

# How often a progress stream looks for newly scored items (any gateway may be driving it).
POLL_SECONDS = 0.5


class EvalLinks(BaseModel):
    self: str
    events: str
    items: str
    plot: str


def _links(eval_id: str) -> EvalLinks:
    base = f"/v1/evals/{eval_id}"
    return EvalLinks(self=base, events=f"{base}/events", items=f"{base}/items", plot=f"{base}/plot.svg")


class EvalAccepted(BaseModel):
    id: str
    created: bool = Field(description="False: the same request was sent before; it goes on from where it is.")
    was: EvalStatus | None = Field(
        None,
        description="Its status before this request (null when created): resumed when cancelled or failed.",
    )
    links: EvalLinks


class Progress(BaseModel):
    done: int = Field(description="(strategy, question) pairs scored.")
    total: int


class EvalResponse(BaseModel):
    id: str
    status: EvalStatus
    reason: str | None = None
    created_at: datetime
    finished_at: datetime | None = None
    dataset: str
    scoring: Scoring
    questions: int
    strategies: list[Strategy]
    progress: Progress
    report: Report = Field(description="Final once `completed`; while running, over what is scored so far.")
    links: EvalLinks


class EvalSummary(BaseModel):
    id: str
    status: EvalStatus
    created_at: datetime
    finished_at: datetime | None = None
    dataset: str
    questions: int
    strategies: list[str]


class EvalList(BaseModel):
    object: str = "list"
    data: list[EvalSummary]


class ItemList(BaseModel):
    object: str = "list"
    data: list[ItemResult]
    next_after: int | None = Field(None, description="`after` for the next page; null: this is the last.")


def _driver(request: Request) -> evals.EvalDriver:
    driver: evals.EvalDriver = request.app.state.evals
    return driver


DriverDep = Annotated[evals.EvalDriver, Depends(_driver)]


@router.post("", status_code=status.HTTP_202_ACCEPTED, responses=errors(413, 429))
async def create_eval(
    body: EvalRequest, clients: ClientsDep, principal: PrincipalDep, driver: DriverDep, response: Response
) -> EvalAccepted:
    """Run every question under every strategy and score the answers. The same request sent
    again (same owner) is the same evaluation: answered 200, it resumes where it stopped."""
    evals.require_readable_answers(body)
    await evals.resolve_strategies(clients, principal, body)  # a 422 now rather than a failure later
    eval_id, was = await evals.create(clients.pool, principal, body, driver.instance, driver.lease_seconds)
    created = was is None
    if created or await driver.claim(eval_id):
        driver.drive(eval_id)
    if not created:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"/v1/evals/{eval_id}"
    return EvalAccepted(id=eval_id, created=created, was=was, links=_links(eval_id))


_SUMMARY_COLUMNS = (
    "id, status, created_at, finished_at, request->>'dataset' AS dataset,"
    " jsonb_array_length(request->'questions') AS questions,"
    " ARRAY(SELECT s->>'name' FROM jsonb_array_elements(request->'strategies') s) AS strategies"
)


@router.get("")
async def list_evals(clients: ClientsDep, principal: PrincipalDep) -> EvalList:
    """The caller's evaluations, newest first."""
    rows = await clients.pool.fetch(
        f"SELECT {_SUMMARY_COLUMNS} FROM evals WHERE owner = $1 ORDER BY created_at DESC LIMIT 100",
        principal.owner,
    )
    return EvalList(data=[EvalSummary.model_validate(dict(r)) for r in rows])


async def _existing(eval_id: str, clients: ClientsDep, principal: PrincipalDep) -> Any:
    row = await evals.fetch(clients.pool, eval_id, principal.owner)
    if row is None:
        raise runs_service.not_found(f"evaluation {eval_id!r}")
    return row


ExistingDep = Annotated[Any, Depends(_existing)]


@router.get("/{eval_id}")
async def get_eval(row: ExistingDep, clients: ClientsDep) -> EvalResponse:
    """The evaluation: status, progress, and its report (final once completed)."""
    request = EvalRequest.model_validate_json(row["request"])
    if row["report"] is not None:
        report = Report.model_validate_json(row["report"])
        done = len(request.questions) * len(request.strategies)
    else:
        scored = await evals.results(clients.pool, row["id"])
        report, done = await _report_so_far(row["id"], request, scored), len(scored)
    return EvalResponse(
        id=row["id"],
        status=row["status"],
        reason=row["reason"],
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        dataset=request.dataset,
        scoring=evals.scoring_of(request),
        questions=len(request.questions),
        strategies=request.strategies,
        progress=Progress(done=done, total=len(request.questions) * len(request.strategies)),
        report=report,
        links=_links(row["id"]),
    )


# Reports of running evaluations, by id: (the last item's seq, the report). The statistics take a
# while at thousands of questions (seconds of bootstrap), so a report is computed once per new
# item, off the event loop, however often it is read.
_so_far: dict[str, tuple[int, Report]] = {}
_SO_FAR_MAX = 64


async def _report_so_far(eval_id: str, request: EvalRequest, scored: list[tuple[int, ItemResult]]) -> Report:
    last = scored[-1][0] if scored else 0
    cached = _so_far.get(eval_id)
    if cached is not None and cached[0] == last:
        return cached[1]
    report = await asyncio.to_thread(evals.report_of, request, [r for _, r in scored])
    if len(_so_far) >= _SO_FAR_MAX:
        _so_far.pop(next(iter(_so_far)))
    _so_far[eval_id] = (last, report)
    return report


@router.get("/{eval_id}/items")
async def eval_items(
    row: ExistingDep,
    clients: ClientsDep,
    after: Annotated[int, Query(ge=0, description="Items scored after this one (its `seq`).")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1_000,
) -> ItemList:
    """Scored (strategy, question)s in the order they were scored: the run, its answer as read,
    right or wrong, what it cost. `next_after` pages on (null: no more)."""
    page = await evals.results(clients.pool, row["id"], after, limit + 1)
    more = len(page) > limit
    page = page[:limit]
    return ItemList(data=[r for _, r in page], next_after=page[-1][0] if more else None)


@router.post("/{eval_id}/cancel", status_code=status.HTTP_200_OK, responses=errors(409))
async def cancel_eval(row: ExistingDep, clients: ClientsDep, principal: PrincipalDep) -> EvalSummary:
    """Stop it: no new runs; the runs in flight are cancelled. Sent again, the request resumes it."""
    updated = await clients.pool.fetchrow(
        "UPDATE evals SET status = 'cancelled', reason = 'cancelled by request', finished_at = now(),"
        " lease_until = NULL WHERE id = $1 AND status = 'running' RETURNING " + _SUMMARY_COLUMNS,
        row["id"],
    )
    if updated is None:
        raise ApiError(
            status.HTTP_409_CONFLICT,
            f"evaluation {row['id']!r} is already {row['status']}",
            code="eval_finished",
        )
    in_flight = await clients.pool.fetch(
        "SELECT run_id, judge_run_id FROM eval_items WHERE eval_id = $1 AND result IS NULL", row["id"]
    )
    for run_id in (r for item in in_flight for r in (item["run_id"], item["judge_run_id"]) if r):
        try:
            await runs_service.cancel(clients, run_id, principal)
        except ApiError:
            pass  # ended meanwhile, or never stored
    return EvalSummary.model_validate(dict(updated))


@router.get(
    "/{eval_id}/events",
    response_class=EventSourceResponse,
    responses={
        200: {"description": "Server-sent events: `eval.item` per scored item, then the end."},
        **stream_errors(400, 401, 404, 422, 429, 503),
    },
)
async def eval_events(
    row: ExistingDep,
    start_after: Annotated[int, Depends(_start_after)],
    clients: ClientsDep,
    _slot: StreamSlotDep,
) -> AsyncIterator[ServerSentEvent]:
    """`eval.item` for every item scored (`id`: its sequence, for `Last-Event-ID`), with the
    progress; then `eval.completed` (the report), `eval.failed` or `eval.cancelled`, and the
    stream ends."""
    eval_id = row["id"]
    request = EvalRequest.model_validate_json(row["request"])
    total = len(request.questions) * len(request.strategies)
    done = await clients.pool.fetchval(
        "SELECT count(*) FROM eval_items WHERE eval_id = $1 AND seq <= $2", eval_id, start_after
    )
    last = start_after
    while True:
        fresh = await evals.results(clients.pool, eval_id, last)
        for seq, result in fresh:
            done += 1
            last = seq
            data = {"done": done, "total": total, "item": result.model_dump(mode="json")}
            yield ServerSentEvent(data=data, event="eval.item", id=str(seq))
        if fresh:
            continue
        now = await clients.pool.fetchrow("SELECT status, reason FROM evals WHERE id = $1", eval_id)
        if now is None or now["status"] == "running":
            await asyncio.sleep(POLL_SECONDS)
            continue
        if await evals.results(clients.pool, eval_id, last, 1):
            continue  # scored before it ended, committed after this stream last looked
        end: dict[str, Any] = {"id": eval_id, "status": now["status"], "reason": now["reason"]}
        report = await clients.pool.fetchval("SELECT report FROM evals WHERE id = $1", eval_id)
        if report is not None:
            end["report"] = Report.model_validate_json(report).model_dump(mode="json")
        yield ServerSentEvent(data=end, event=f"eval.{now['status']}")
        return


@router.get(
    "/{eval_id}/plot.svg",
    response_class=Response,
    responses={
        200: {
            "content": {"image/svg+xml": {"schema": {"type": "string"}}},
            "description": "Accuracy against cost per question.",
        },
        **stream_errors(400, 401, 404, 422, 503),  # refusals are JSON, not SVG
    },
)
async def eval_plot(row: ExistingDep, clients: ClientsDep) -> Response:
    """The report's plot: each strategy's accuracy (95 % interval) against its cost per question."""
    report = (await get_eval(row, clients)).report
    svg = await asyncio.to_thread(_svg, report)
    return Response(svg, media_type="image/svg+xml")


def _svg(report: Report) -> bytes:
    from moot.eval.report import plot

    with tempfile.TemporaryDirectory() as tmp:
        return plot(report, Path(tmp) / "plot.svg").read_bytes()
