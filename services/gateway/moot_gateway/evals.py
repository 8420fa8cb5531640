"""Evaluations: every question of a dataset run under every strategy, scored, and reported.

An evaluation is a row in `evals` and one row per (strategy, question) in `eval_items`
(migration 0005). The gateway that accepts one drives it in the background: it submits each
question as an ordinary run (through the same workers as any run, admitted under the same key's
limits), waits for the run's end, scores its final answer (`moot.eval.scoring`), and writes the
item's result. Nothing is held only in memory:

- An item's row, with its run's id, is written before the run is submitted. A driver that finds
  a row without a result waits for that run, or submits it under that same id when it was never
  stored, so no question is paid for twice, whoever resumes.
- The driver holds a lease on the evaluation (`lease_until`), renewed while it works. Every
  gateway looks for evaluations whose lease has run out (their gateway died) and takes them over.
- An identical request of the same owner is the same evaluation (`digest`): sent again it
  resumes where the items say it was (`moot eval` run twice skips what is done).

Strategies run one after the other, each with `concurrency` runs in flight: a strategy's latency
is measured without another strategy competing for the same workers and models.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import asyncpg
from fastapi import status
from fastapi.exceptions import RequestValidationError

from moot.eval import scoring
from moot.eval.asking import ANSWER_CHARS, item_result, question_request
from moot.eval.models import EvalRequest, EvalStatus, ItemResult, Question, Report, Strategy
from moot.eval.report import summarise
from moot.records.accounts import Principal, principal_of_key
from moot.requests import RunMeta
from moot.runtime.runstore import RunExists
from moot.views import AnyRunView
from moot_gateway import runs_service
from moot_gateway.deps import Clients
from moot_gateway.errors import DEPENDENCY_ERRORS, ApiError
from moot_gateway.routes.runs import replay

log = logging.getLogger(__name__)

# A submission refused for a while (429 without Retry-After, 503) is tried again after this.
RETRY_SECONDS = 2.0
# A wait for a key's limit this long or longer is said in the evaluation's `reason`.
WAIT_WORTH_SAYING_SECONDS = 30.0


# What may change when an evaluation is sent again without making it another one.
NOT_IDENTITY = {"concurrency", "dataset"}


def digest_of(request: EvalRequest) -> str:
    """The request's identity: the same questions, strategies, scoring and label are the same
    evaluation (sent again with another concurrency or from a renamed file, it resumes)."""
    identity = request.model_dump(mode="json", exclude=NOT_IDENTITY)
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def new_id() -> str:
    return "eval_" + uuid.uuid4().hex[:24]


# ------------------------------------------------------------------------------ the questions asked


def scoring_of(request: EvalRequest) -> scoring.Scoring:
    return request.scoring or scoring.default_scoring(request.questions)


def require_readable_answers(request: EvalRequest) -> None:
    """422 naming `scoring` when the reference answers cannot be read in it (`numeric` with an
    answer that is no number, `choice` with one that is no option's letter): every answer would
    be scored wrong."""
    how = scoring_of(request)
    unreadable = [q.id for q in request.questions if not scoring.readable_reference(q, how)]
    if unreadable:
        shown = ", ".join(repr(i) for i in unreadable[:5]) + (" ..." if len(unreadable) > 5 else "")
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("body", "scoring"),
                    "msg": f"{len(unreadable)} of the answers cannot be read as {how} (questions {shown})",
                    "input": how,
                }
            ]
        )


PLACEHOLDER_PROMPT = "(each question of the evaluation)"


async def resolve_strategies(
    clients: Clients, principal: Principal, request: EvalRequest
) -> list[tuple[Any, RunMeta]]:
    """Every strategy as a run request (saved configurations read, models checked), or a 422
    naming `strategies.N.run.<field>`: an evaluation that cannot run is refused before it starts."""
    resolved = []
    for i, strategy in enumerate(request.strategies):
        try:
            resolved.append(
                await runs_service.resolve(clients, principal, {**strategy.run, "prompt": PLACEHOLDER_PROMPT})
            )
        except RequestValidationError as exc:
            raise RequestValidationError(
                [
                    {**e, "loc": ("body", "strategies", i, "run", *tuple(e.get("loc", ()))[1:])}
                    for e in exc.errors()
                ]
            ) from exc
    if request.judge is not None:
        judge = scoring.judge_request(request.judge, request.questions[0], PLACEHOLDER_PROMPT)
        try:
            await runs_service.resolve(clients, principal, judge)
        except RequestValidationError as exc:
            raise RequestValidationError([{**e, "loc": ("body", "judge")} for e in exc.errors()]) from exc
    return resolved


# ------------------------------------------------------------------------------ the tables


async def create(
    pool: asyncpg.Pool, principal: Principal, request: EvalRequest, lease_owner: str, lease_seconds: float
) -> tuple[str, EvalStatus | None]:
    """(id, None): a new evaluation leased to `lease_owner`; or (id, its status until now): the
    owner's identical one, which is then running again if it had been interrupted, under the
    key that sent it now (the earlier one may have been revoked) and its concurrency."""
    digest = digest_of(request)
    row = await pool.fetchrow(
        "INSERT INTO evals (id, owner, key_id, digest, request, status, lease_owner, lease_until)"
        " VALUES ($1, $2, $3, $4, $5::jsonb, 'running', $6, now() + make_interval(secs => $7))"
        " ON CONFLICT (owner, digest) DO NOTHING RETURNING id",
        new_id(),
        principal.owner,
        principal.key_id,
        digest,
        request.model_dump_json(),
        lease_owner,
        lease_seconds,
    )
    if row is not None:
        return row["id"], None
    existing = await pool.fetchrow(
        "SELECT id, status FROM evals WHERE owner = $1 AND digest = $2", principal.owner, digest
    )
    assert existing is not None
    # A failed or cancelled evaluation sent again goes on from where it stopped.
    await pool.execute(
        "UPDATE evals SET key_id = $2, request = $3::jsonb,"
        " status = CASE WHEN status = 'completed' THEN status ELSE 'running' END,"
        " reason = CASE WHEN status = 'completed' THEN reason END,"
        " finished_at = CASE WHEN status = 'completed' THEN finished_at END,"
        " lease_until = CASE WHEN status IN ('failed', 'cancelled') THEN NULL ELSE lease_until END"
        " WHERE id = $1",
        existing["id"],
        principal.key_id,
        request.model_dump_json(),
    )
    return existing["id"], existing["status"]


async def fetch(pool: asyncpg.Pool, eval_id: str, owner: str) -> asyncpg.Record | None:
    return await pool.fetchrow(
        "SELECT id, owner, key_id, request, status, reason, created_at, finished_at, report"
        " FROM evals WHERE id = $1 AND owner = $2",
        eval_id,
        owner,
    )


async def results(
    pool: asyncpg.Pool, eval_id: str, after_seq: int = 0, limit: int | None = None
) -> list[tuple[int, ItemResult]]:
    """(seq, result) of the items scored after `after_seq`, in the order they were scored."""
    rows = await pool.fetch(
        "SELECT seq, result FROM eval_items WHERE eval_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        eval_id,
        after_seq,
        limit,
    )
    return [(r["seq"], ItemResult.model_validate_json(r["result"])) for r in rows]


def report_of(request: EvalRequest, items: Iterable[ItemResult]) -> Report:
    items = list(items)
    judge_costs = [i.judge_cost_usd for i in items if i.judge_cost_usd is not None]
    return summarise(
        request.strategies,
        items,
        scoring=scoring_of(request),
        questions=len(request.questions),
        dataset=request.dataset,
        judge_cost_usd=sum(judge_costs) if judge_costs else None,
    )


# ------------------------------------------------------------------------------ the driver


class Refused(Exception):
    """A question's run could not be submitted (its request is invalid for this question)."""


class Stopped(Exception):
    """The evaluation is no longer running (cancelled): nothing more is submitted for it."""


class _Unfinished(Exception):
    """An item's judge run was cancelled: the item is not scored; the next pass asks again."""


_ITEM_RUN = "SELECT run_id FROM eval_items WHERE eval_id = $1 AND strategy = $2 AND question_id = $3"


class EvalDriver:
    """Drives the evaluations this gateway holds the lease of, and takes over orphaned ones."""

    def __init__(self, clients: Clients, lease_seconds: float, poll_seconds: float) -> None:
        self.clients = clients
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.instance = uuid.uuid4().hex
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._supervisor: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._supervisor = asyncio.create_task(self._supervise(), name="evals")

    async def stop(self) -> None:
        """Stop driving; the leases are given back so another gateway goes on at once."""
        tasks = [t for t in (self._supervisor, *self.tasks.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(*DEPENDENCY_ERRORS, asyncio.TimeoutError):
            async with asyncio.timeout(2.0):
                await self.clients.pool.execute(
                    "UPDATE evals SET lease_until = NULL WHERE lease_owner = $1 AND status = 'running'",
                    self.instance,
                )

    def drive(self, eval_id: str) -> None:
        """Drive `eval_id` here (its lease is this gateway's), unless it is already driven here."""
        if eval_id in self.tasks:
            # Sent again while its task here may be stopping (it was cancelled): once that task
            # has ended, drive it again; a task that finds it not running stops at once.
            self._again.add(eval_id)
            return
        task = asyncio.create_task(self._drive(eval_id), name=f"eval {eval_id}")
        self.tasks[eval_id] = task
        task.add_done_callback(lambda _: self._ended_here(eval_id))

    def _ended_here(self, eval_id: str) -> None:
        self.tasks.pop(eval_id, None)
        if eval_id in self._again:
            self._again.discard(eval_id)
            self.drive(eval_id)

    async def claim(self, eval_id: str) -> bool:
        """Take the lease of a running evaluation whose lease has run out (or was given back)."""
        row = await self.clients.pool.fetchrow(
            "UPDATE evals SET lease_owner = $2, lease_until = now() + make_interval(secs => $3)"
            " WHERE id = $1 AND status = 'running' AND (lease_until IS NULL OR lease_until < now()"
            " OR lease_owner = $2) RETURNING id",
            eval_id,
            self.instance,
            self.lease_seconds,
        )
        return row is not None

    async def _supervise(self) -> None:
        while True:
            try:
                rows = await self.clients.pool.fetch(
                    "UPDATE evals SET lease_owner = $1, lease_until = now() + make_interval(secs => $2)"
                    " WHERE id IN (SELECT id FROM evals WHERE status = 'running'"
                    " AND (lease_until IS NULL OR lease_until < now()) ORDER BY created_at LIMIT 8"
                    " FOR UPDATE SKIP LOCKED) RETURNING id",
                    self.instance,
                    self.lease_seconds,
                )
                for row in rows:
                    log.info("evaluation %s: taken over (its lease had run out)", row["id"])
                    self.drive(row["id"])
            except DEPENDENCY_ERRORS as exc:
                log.warning("evaluations: cannot look for orphaned ones (%r)", exc)
            await asyncio.sleep(self.poll_seconds)

    async def _renew(self, eval_id: str) -> None:
        """Keep the lease while driving; return when it is lost (cancelled, taken over, or not
        renewed for a whole lease: another gateway may have taken it meanwhile)."""
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            if time.monotonic() - renewed >= self.lease_seconds:
                log.warning(
                    "evaluation %s: lease not renewed for %.0f s; let go", eval_id, self.lease_seconds
                )
                return
            try:
                row = await self.clients.pool.fetchrow(
                    "UPDATE evals SET lease_until = now() + make_interval(secs => $3)"
                    " WHERE id = $1 AND lease_owner = $2 AND status = 'running' RETURNING id",
                    eval_id,
                    self.instance,
                    self.lease_seconds,
                )
            except DEPENDENCY_ERRORS as exc:
                log.warning("evaluation %s: lease not renewed (%r)", eval_id, exc)
                continue
            if row is None:
                return
            renewed = time.monotonic()

    async def _drive(self, eval_id: str) -> None:
        renew = asyncio.create_task(self._renew(eval_id))
        work = asyncio.create_task(self._work(eval_id))
        try:
            done, _ = await asyncio.wait({renew, work}, return_when=asyncio.FIRST_COMPLETED)
            if work in done:
                work.result()
            else:
                log.info("evaluation %s: no longer this gateway's (cancelled or taken over)", eval_id)
        except Exception as exc:
            if _all(exc, lambda e: isinstance(e, Stopped)):
                log.info("evaluation %s: stopped (cancelled)", eval_id)
                return
            if _all(exc, _unavailable):
                # NATS or Postgres away: not the evaluation's fault. Its lease lapses and a
                # gateway (this one, or another) takes it over once they answer again.
                log.warning("evaluation %s paused: a dependency is unavailable (%r)", eval_id, exc)
                return
            log.exception("evaluation %s failed", eval_id)
            leaf = _first_leaf(exc)
            with contextlib.suppress(*DEPENDENCY_ERRORS):
                await self._finish(eval_id, "failed", reason=f"{type(leaf).__name__}: {leaf}"[:500])
        finally:
            for task in (renew, work):
                task.cancel()
            await asyncio.gather(renew, work, return_exceptions=True)

    async def _finish(
        self, eval_id: str, end: str, *, reason: str | None = None, report: Report | None = None
    ) -> None:
        await self.clients.pool.execute(
            "UPDATE evals SET status = $2, reason = $3, report = $4::jsonb, finished_at = now(),"
            " lease_until = NULL WHERE id = $1 AND status = 'running'",
            eval_id,
            end,
            reason,
            report.model_dump_json() if report else None,
        )

    async def _work(self, eval_id: str) -> None:
        pool = self.clients.pool
        row = await pool.fetchrow("SELECT key_id, request FROM evals WHERE id = $1", eval_id)
        assert row is not None
        request = EvalRequest.model_validate_json(row["request"])
        principal = await principal_of_key(pool, row["key_id"])
        if principal is None:
            await self._finish(eval_id, "failed", reason="the key that started it was revoked")
            return
        how = scoring_of(request)
        try:
            resolved = await resolve_strategies(self.clients, principal, request)
        except RequestValidationError as exc:  # a saved configuration removed since, a model withdrawn
            await self._finish(
                eval_id, "failed", reason=f"a strategy no longer runs: {exc.errors()[0]['msg']}"
            )
            return
        slots = asyncio.Semaphore(request.concurrency)
        # Until every item has its result: an item whose result was not written (its evaluation
        # was cancelled, then resumed while this pass ran) is asked again by the next pass.
        while items := await self._pending(eval_id, request):
            for strategy, (run_request, meta) in zip(request.strategies, resolved, strict=True):
                pending = [q for q in request.questions if (strategy.name, q.id) in items]
                if not pending:
                    continue
                log.info("evaluation %s: %s, %d questions to go", eval_id, strategy.name, len(pending))
                async with asyncio.TaskGroup() as group:
                    for question in pending:
                        await slots.acquire()
                        task = group.create_task(
                            self._item(
                                eval_id, request, principal, strategy, run_request, meta, question, how,
                                items[(strategy.name, question.id)],
                            )
                        )  # fmt: skip
                        task.add_done_callback(lambda _: slots.release())
        scored = [r for _, r in await results(pool, eval_id)]
        report = await asyncio.to_thread(report_of, request, scored)
        await self._finish(eval_id, "completed", report=report)
        log.info("evaluation %s completed", eval_id)

    async def _pending(
        self, eval_id: str, request: EvalRequest
    ) -> dict[tuple[str, str], asyncpg.Record | None]:
        """(strategy, question id) -> its row (None: not asked yet), for every item without a result."""
        await self._require_running(eval_id)
        rows = {
            (r["strategy"], r["question_id"]): r
            for r in await self.clients.pool.fetch(
                "SELECT strategy, question_id, run_id, judge_run_id, result FROM eval_items WHERE eval_id = $1",
                eval_id,
            )
        }
        return {
            (s.name, q.id): rows.get((s.name, q.id))
            for s in request.strategies
            for q in request.questions
            if not _done(rows.get((s.name, q.id)))
        }

    async def _require_running(self, eval_id: str) -> None:
        """Stopped unless it is still running, under a key that has not been revoked since."""
        row = await self.clients.pool.fetchrow(
            "SELECT e.status, k.revoked_at FROM evals e LEFT JOIN api_keys k ON k.id = e.key_id WHERE e.id = $1",
            eval_id,
        )
        if row is not None and row["status"] == "running" and row["revoked_at"] is not None:
            await self._finish(eval_id, "failed", reason="its key was revoked (send it again with another)")
        if row is None or row["status"] != "running" or row["revoked_at"] is not None:
            raise Stopped(eval_id)

    async def _item(
        self,
        eval_id: str,
        request: EvalRequest,
        principal: Principal,
        strategy: Strategy,
        run_request: Any,
        meta: RunMeta,
        question: Question,
        how: scoring.Scoring,
        row: asyncpg.Record | None,
    ) -> None:
        """Ask one question of one strategy (or wait for the run that was asked) and write its result."""
        run_id = await self._run_id_of(eval_id, strategy, question, row, principal)
        try:
            view = await self._run(
                eval_id, principal, run_id, question_request(run_request, question, how), meta
            )
            if view.status == "cancelled":
                return  # with the evaluation, or by hand: not an answer; the next pass asks again
            result = item_result(strategy.name, question, view, how, request.tolerance)
            if how == "judge" and result.extracted:
                result = await self._judged(eval_id, request, principal, strategy, question, result, row)
        except Refused as exc:
            result = self._unanswered(strategy, question, run_id, "refused", str(exc))
        except _Unfinished:
            return
        except Exception as exc:
            if _all(exc, lambda e: isinstance(e, Stopped) or _unavailable(e)):
                raise
            # Anything else is this question's trouble, not the evaluation's: scored as failed.
            log.exception("evaluation %s: %s on %s", eval_id, strategy.name, question.id)
            result = self._unanswered(strategy, question, run_id, "error", f"{type(exc).__name__}: {exc}")
        async with self.clients.pool.acquire() as conn, conn.transaction():
            # One item of an evaluation commits at a time, so its `seq` order is commit order: a
            # progress stream that has read up to `seq` N can never later find an N-1 committed.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", eval_id)
            await conn.execute(
                # Only for the run the item names now (another driver may have moved it on), and
                # never for an evaluation cancelled meanwhile: the runs its cancel stopped are
                # asked again when it is resumed, not scored.
                "UPDATE eval_items SET result = $5::jsonb, seq = nextval('eval_items_seq')"
                " WHERE eval_id = $1 AND strategy = $2 AND question_id = $3 AND run_id = $4"
                " AND result IS NULL AND EXISTS (SELECT 1 FROM evals WHERE id = $1 AND status = 'running')",
                eval_id,
                strategy.name,
                question.id,
                run_id,
                result.model_dump_json(),
            )

    @staticmethod
    def _unanswered(strategy: Strategy, question: Question, run_id: str, status: str, why: str) -> ItemResult:
        return ItemResult(
            strategy=strategy.name,
            question_id=question.id,
            run_id=run_id,
            status=status,
            answer=why[:ANSWER_CHARS],
            correct=False,
        )

    async def _run_id_of(
        self,
        eval_id: str,
        strategy: Strategy,
        question: Question,
        row: asyncpg.Record | None,
        principal: Principal,
    ) -> str:
        """The run that answers this item: the one written down (by this gateway or another), or
        a new one written down before it is submitted; a new one in place of a cancelled one."""
        pool = self.clients.pool
        key = (eval_id, strategy.name, question.id)
        if row is None:
            stored = await pool.fetchval(
                "INSERT INTO eval_items (eval_id, strategy, question_id, run_id) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (eval_id, strategy, question_id) DO NOTHING RETURNING run_id",
                *key,
                uuid.uuid4().hex,
            )
            if stored is not None:
                return str(stored)
        run_id = str(await pool.fetchval(_ITEM_RUN, *key))
        earlier = await runs_service.view_of(self.clients, run_id, principal)
        if earlier is None or earlier.status != "cancelled":
            return run_id
        moved = await pool.fetchval(
            "UPDATE eval_items SET run_id = $5, judge_run_id = NULL WHERE eval_id = $1 AND strategy = $2"
            " AND question_id = $3 AND run_id = $4 AND result IS NULL RETURNING run_id",
            *key,
            run_id,
            uuid.uuid4().hex,
        )
        return str(moved if moved is not None else await pool.fetchval(_ITEM_RUN, *key))

    async def _judged(
        self,
        eval_id: str,
        request: EvalRequest,
        principal: Principal,
        strategy: Strategy,
        question: Question,
        result: ItemResult,
        row: asyncpg.Record | None,
    ) -> ItemResult:
        """The item judged: a vote of one by the judge model, asked yes or no."""
        assert request.judge is not None and result.extracted is not None
        pool, key = self.clients.pool, (eval_id, strategy.name, question.id, result.run_id)
        judge_id = row["judge_run_id"] if row is not None and row["run_id"] == result.run_id else None
        if judge_id is None:
            judge_id = await pool.fetchval(
                "UPDATE eval_items SET judge_run_id = coalesce(judge_run_id, $5) WHERE eval_id = $1"
                " AND strategy = $2 AND question_id = $3 AND run_id = $4 RETURNING judge_run_id",
                *key,
                uuid.uuid4().hex,
            )
            if judge_id is None:
                raise _Unfinished  # the item was moved on to another run meanwhile
        body = scoring.judge_request(request.judge, question, result.extracted)
        judge_request, meta = await runs_service.resolve(self.clients, principal, body)
        try:
            view = await self._run(eval_id, principal, judge_id, judge_request, meta)
        except Refused:
            return result.model_copy(update={"judge_run_id": judge_id})
        if view.status == "cancelled":
            # Asked again by the next pass, by a judge run of its own.
            await pool.execute(
                "UPDATE eval_items SET judge_run_id = NULL WHERE eval_id = $1 AND strategy = $2"
                " AND question_id = $3 AND run_id = $4 AND judge_run_id = $5",
                *key,
                judge_id,
            )
            raise _Unfinished
        correct = view.status == "completed" and scoring.judged_correct(view.answer)
        return result.model_copy(
            update={"judge_run_id": judge_id, "correct": correct, "judge_cost_usd": view.usage.cost_usd}
        )

    async def _run(
        self, eval_id: str, principal: Principal, run_id: str, request: Any, meta: RunMeta
    ) -> AnyRunView:
        """The ended run `run_id`: submitted under that id unless it already exists, then waited for."""
        view = await runs_service.view_of(self.clients, run_id, principal)
        waited = False
        while view is None:
            await self._require_running(eval_id)  # a cancel between two submissions stops the next
            try:
                await runs_service.submit(self.clients, principal, request, meta, run_id=run_id)
            except RunExists:
                pass  # submitted meanwhile (a takeover racing a slow gateway): wait for it
            except ApiError as exc:
                if exc.status not in (status.HTTP_429_TOO_MANY_REQUESTS, status.HTTP_503_SERVICE_UNAVAILABLE):
                    raise Refused(exc.message) from exc
                # A key's limit or a dependency: wait as the refusal says (said in the
                # evaluation's `reason` meanwhile: a day's spend can mean hours), then ask again.
                retry = float((exc.headers or {}).get("Retry-After", RETRY_SECONDS))
                if retry >= WAIT_WORTH_SAYING_SECONDS:
                    await self._say(eval_id, f"waiting {retry:.0f} s: {exc.message}")
                    waited = True
                await asyncio.sleep(max(retry, 0.1))
                continue
            break
        if waited:
            await self._say(eval_id, None)
        return await self._ended(principal, run_id)

    async def _say(self, eval_id: str, waiting: str | None) -> None:
        await self.clients.pool.execute(
            "UPDATE evals SET reason = $2 WHERE id = $1 AND status = 'running'", eval_id, waiting
        )

    async def _ended(self, principal: Principal, run_id: str) -> AnyRunView:
        """Wait for the run's end (its terminal event, or its record says so), then its view."""
        async for _ in replay(self.clients, run_id, 0, hydrate=False):
            pass
        for _ in range(60):  # ended, but gone from KV before its record is readable: briefly
            view = await runs_service.view_of(self.clients, run_id, principal)
            if view is not None and view.status != "running":
                return view
            await asyncio.sleep(0.5)
        raise RuntimeError(f"run {run_id} ended but cannot be read")


def _all(exc: BaseException, what: Callable[[BaseException], bool]) -> bool:
    """Whether `exc` is `what`, or a group (a TaskGroup's) of nothing else."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_all(e, what) for e in exc.exceptions)
    return what(exc)


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _unavailable(exc: BaseException) -> bool:
    return isinstance(exc, DEPENDENCY_ERRORS) or (isinstance(exc, ApiError) and exc.status == 503)


def _done(row: asyncpg.Record | None) -> bool:
    return row is not None and row["result"] is not None
