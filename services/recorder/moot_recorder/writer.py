"""Run events to rows: one transaction per batch, idempotent, order-independent.

How a batch is written (`Writer.write`), in one transaction:

1. the events go into `events` with ON CONFLICT DO NOTHING ... RETURNING: what comes back is
   the events never recorded before. A redelivered or republished event is dropped here.
2. only those new events become rows of `runs`, `iterations`, `debate_rounds`, `steps` and `calls`, one
   executemany per table, as upserts whose merge rules give the same result in any order: a
   column written once keeps its first value, a terminal run status never goes back, and a
   call's outcome is the one earliest in the stream. So even an event applied twice (or
   run.completed before run.created / debate_start, on another replica) leaves the same rows.

Which events make which rows: a run's start (`run.created`, `debate.started`) and end
(`run.completed`, `run.failed`) make `runs`; `iteration.*` make `iterations`; `round.started`,
`round.completed`, `judge.decided` and `convergence.checked` make `debate_rounds`; `step.*` make
`steps` (every other protocol: a council, a vote, a Mixture-of-Agents); call outcomes make
`calls`, for every protocol and role. Nothing here depends on a run's mode: a new protocol that
speaks in steps is recorded without a change to this service. Every other event (a debate's `turn.completed`,
`debater.eliminated`, `final_*`, `debate.completed`, `error`) is only in `events`: what it says is
also in a row above or in the run's view. The streamed `final.chunk`s are the bulk of a debate's
events; they cost one row of `events` each and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeAlias

import asyncpg

from moot.messages import (
    START_EVENTS,
    AnyRunEvent,
    CallCompleted,
    CallFailed,
    ConvergenceStatus,
    IterationCompleted,
    IterationStarted,
    JudgeDecision,
    RoundComplete,
    RoundStart,
    RunCancelled,
    RunCompleted,
    RunFailed,
    StepCompleted,
    StepStarted,
    run_event_adapter,
)
from moot.observability import telemetry
from moot.records.queries import (
    CALLS_TABLE,
    DEBATE_ROUNDS_TABLE,
    EVENTS_TABLE,
    ITERATIONS_TABLE,
    RUNS_TABLE,
    STEPS_TABLE,
    TABLES,
)
from moot.requests import AnyRunRequest
from moot.texts import TextRef
from moot.views import AnyRunView

log = logging.getLogger(__name__)

Event: TypeAlias = AnyRunEvent
TERMINAL_STATUSES = ("completed", "failed", "cancelled")

# Errors a row causes by its content: retrying the same batch fails the same way.
ROW_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.IntegrityConstraintViolationError,
)


# ---------------------------------------------------------------------------------------------
# Messages to events


@dataclass(frozen=True, slots=True)
class Envelope:
    """A run event as it came off the stream."""

    event: Event
    payload: str  # the event's JSON as published (cleaned for Postgres), for the events table
    stream_seq: int
    trace_id: str | None = None
    traceparent: str | None = None  # the message's W3C context: the recorder writes the event under it


def envelope_from(data: bytes, stream_seq: int, headers: Mapping[str, str] | None = None) -> Envelope:
    """Parse one message that holds no text references; ValueError (incl. pydantic's
    ValidationError) when it is no run event."""
    return envelope_of(json.loads(data), stream_seq, headers)


# What in a message's bytes sends it down the slow path (`envelope_of`): a text by reference to put
# back, or an escape `_clean` must undo (NUL, a lone surrogate).
_NOT_PLAIN = (b'"$text"', b"\\u0000", b"\\ud", b"\\uD")


def plain_envelope(data: bytes, stream_seq: int, headers: Mapping[str, str] | None = None) -> Envelope | None:
    """The envelope of a message that needs nothing done to it (most: no reference, nothing to
    clean), parsed straight from its bytes and stored as it came; None for any other message.
    ValueError (incl. pydantic's ValidationError) when it is no run event.

    The recorder's profile had a third of its time in walking every event for references,
    cleaning it and encoding it again (docs/benchmarks.md, "Recorder throughput").
    """
    if any(mark in data for mark in _NOT_PLAIN):
        return None
    try:
        payload = data.decode()
    except UnicodeDecodeError:
        return None
    event: Event = run_event_adapter.validate_json(data)
    headers = headers or {}
    trace_id = telemetry.trace_id_of(headers.get("traceparent"))
    return Envelope(event, payload, stream_seq, trace_id, headers.get("traceparent") if trace_id else None)


def envelope_of(data: Any, stream_seq: int, headers: Mapping[str, str] | None = None) -> Envelope:
    """One message's JSON, hydrated (`moot.runtime.textstore.hydrated`: its texts inline, so the
    events table and the rows get full texts), as an envelope; ValueError when it is no run event."""
    raw = _clean(data)
    event: Event = run_event_adapter.validate_python(raw)
    payload = json.dumps(raw, ensure_ascii=False, separators=(",", ":"))
    headers = headers or {}
    trace_id = telemetry.trace_id_of(headers.get("traceparent"))
    return Envelope(event, payload, stream_seq, trace_id, headers.get("traceparent") if trace_id else None)


def _clean(value: Any) -> Any:
    """Make model output storable: Postgres text and jsonb reject NUL, UTF-8 rejects lone surrogates.

    Without this one odd character in an answer would fail its batch on every redelivery.
    """
    if isinstance(value, str):
        if "\x00" in value:
            value = value.replace("\x00", "")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "replace").decode("utf-8")
        return value
    if isinstance(value, dict):
        return {_clean(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Events to rows (pure)

Row = tuple[Any, ...]


@dataclass
class Rows:
    """Parameter tuples for each table's statement, in the column order of the SQL below."""

    runs: list[Row] = field(default_factory=list)
    iterations: list[Row] = field(default_factory=list)
    debate_rounds: list[Row] = field(default_factory=list)
    steps: list[Row] = field(default_factory=list)
    calls: list[Row] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            RUNS_TABLE: len(self.runs),
            ITERATIONS_TABLE: len(self.iterations),
            DEBATE_ROUNDS_TABLE: len(self.debate_rounds),
            STEPS_TABLE: len(self.steps),
            CALLS_TABLE: len(self.calls),
        }


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def inline(request: AnyRunRequest | TextRef) -> AnyRunRequest:
    """A run request as the recorder reads it: events are hydrated, so never a reference."""
    if isinstance(request, TextRef):
        raise ValueError("a run request by reference: the event was not hydrated")
    return request


def inline_view(view: AnyRunView | TextRef) -> AnyRunView:
    """An end event's view as the recorder reads it: hydrated, so never a reference (the view
    travels as one stored document, `moot.texts.hydrate` puts it back)."""
    if isinstance(view, TextRef):
        raise ValueError("a run's view by reference: the event was not hydrated")
    return view


def run_row(env: Envelope) -> Row | None:
    """The `runs` row an event contributes to, or None (only a run's start and end do)."""
    e = env.event
    if isinstance(e, START_EVENTS):
        req = inline(e.request)
        request = req.model_dump(mode="json")
        return (e.run_id, req.mode, "running", req.prompt, _json(request),
                None, None, None, None, None, None, None, _aware(e.at), None, env.trace_id,
                e.meta.owner or None)  # fmt: skip
    if isinstance(e, RunCompleted | RunFailed | RunCancelled):
        view = inline_view(e.run)
        status: str = view.status
        if status not in TERMINAL_STATUSES:
            # The end event is the authority that the run is over, whatever the view says.
            status = {RunCompleted: "completed", RunFailed: "failed"}.get(type(e), "cancelled")
        data = view.model_dump(mode="json")
        steps = view.steps  # what the run went through: a consortium's iterations, a debate's rounds...
        return (
            e.run_id,
            view.mode,
            status,
            inline(view.request).prompt,
            _json(data["request"]),
            e.reason,
            _json(data["result"]),
            view.usage.input_tokens,
            view.usage.output_tokens,
            view.usage.cost_usd,
            steps,
            _json(data),
            _aware(view.created_at) if view.created_at else None,
            _aware(view.finished_at) if view.finished_at else _aware(e.at),
            env.trace_id,
            view.owner or None,
        )
    return None


def iteration_row(env: Envelope) -> Row | None:
    e = env.event
    if isinstance(e, IterationStarted):
        return (e.run_id, e.iteration, _aware(e.at), list(e.call_ids),
                None, None, None, None, None, None, None, None, None, None, None)  # fmt: skip
    if isinstance(e, IterationCompleted):
        v = e.verdict
        return (
            e.run_id,
            e.iteration,
            None,
            None,
            v.synthesis,
            v.confidence,
            v.analysis,
            v.dissent,
            v.needs_iteration,
            _json(v.refinement_areas),
            v.malformed,
            _json(v.problems),
            e.decision,
            e.reason,
            _aware(e.at),
        )
    return None


DEBATE_ROUND_COLUMNS = (
    "run_id", "round", "started_at", "speakers", "turns", "failed_turns", "completed_at", "judge_model",
    "judge_continue", "judge_readable", "judge_reason", "eliminated", "kept", "remaining", "unanswered",
)  # fmt: skip
_DEBATE_ROUND_JSONB = frozenset({"speakers", "eliminated", "remaining", "unanswered"})


def _debate_round(run_id: str, number: int, **columns: Any) -> Row:
    """A `debate_rounds` row with the given columns set, all others None (not known from this event)."""
    values: dict[str, Any] = {"run_id": run_id, "round": number, **columns}
    return tuple(values.get(c) for c in DEBATE_ROUND_COLUMNS)


def debate_round_row(env: Envelope) -> Row | None:
    e = env.event
    if isinstance(e, RoundStart):
        return _debate_round(
            e.run_id, e.round, started_at=_aware(e.at), speakers=_json([d.label for d in e.debaters])
        )
    if isinstance(e, RoundComplete):
        return _debate_round(
            e.run_id,
            e.round,
            turns=len(e.responses),
            failed_turns=sum(1 for t in e.responses if t.failed),
            completed_at=_aware(e.at),
        )
    if isinstance(e, JudgeDecision):
        return _debate_round(
            e.run_id,
            e.round,
            judge_model=e.model,
            judge_continue=e.continue_,
            judge_readable=e.readable,
            judge_reason=e.reason,
        )
    if isinstance(e, ConvergenceStatus):
        return _debate_round(
            e.run_id,
            e.round,
            eliminated=_json(e.eliminated),
            kept=e.kept,
            remaining=_json(e.remaining),
            unanswered=_json(e.unanswered),
        )
    return None


def step_row(env: Envelope) -> Row | None:
    """The `steps` row a step event contributes to (run_id, step, name, started_at, call_ids,
    completed_at, data), or None."""
    e = env.event
    if isinstance(e, StepStarted):
        return (e.run_id, e.step, e.name, _aware(e.at), _json(e.call_ids), None, None)
    if isinstance(e, StepCompleted):
        return (e.run_id, e.step, e.name, None, None, _aware(e.at), _json(e.data))
    return None


def call_row(env: Envelope) -> Row | None:
    e = env.event
    if isinstance(e, CallCompleted):
        u = e.usage
        return (e.call_id, e.run_id, e.iteration, e.role, e.model, e.instance, "completed", e.text, None, None,
                u.input_tokens, u.output_tokens, u.cost_usd, e.latency_ms, e.attempts, e.finish_reason,
                _aware(e.at), env.stream_seq)  # fmt: skip
    if isinstance(e, CallFailed):
        return (e.call_id, e.run_id, e.iteration, e.role, e.model, e.instance, "failed", None, e.error,
                e.error_type, None, None, None, e.latency_ms, e.attempts, None, _aware(e.at), env.stream_seq)  # fmt: skip
    return None


def to_rows(envelopes: Iterable[Envelope]) -> Rows:
    """Rows for the state tables. Sorted by key: concurrent replicas then lock rows in the same
    order and cannot deadlock each other."""
    rows = Rows()
    for env in envelopes:
        if (r := run_row(env)) is not None:
            rows.runs.append(r)
        if (r := iteration_row(env)) is not None:
            rows.iterations.append(r)
        if (r := debate_round_row(env)) is not None:
            rows.debate_rounds.append(r)
        if (r := step_row(env)) is not None:
            rows.steps.append(r)
        if (r := call_row(env)) is not None:
            rows.calls.append(r)
    # Stable sorts: two rows for one key (run.created and run.completed) keep their stream order.
    rows.runs.sort(key=lambda r: r[0])
    rows.iterations.sort(key=lambda r: (r[0], r[1]))
    rows.debate_rounds.sort(key=lambda r: (r[0], r[1]))
    rows.steps.sort(key=lambda r: (r[0], r[1]))
    rows.calls.sort(key=lambda r: r[0])
    return rows


def unique_events(envelopes: Iterable[Envelope]) -> list[Envelope]:
    """One envelope per event id (the earliest in the stream), sorted by event id."""
    first: dict[str, Envelope] = {}
    for env in envelopes:
        eid = env.event.event_id()
        if eid not in first or env.stream_seq < first[eid].stream_seq:
            first[eid] = env
    return [first[k] for k in sorted(first)]


# ---------------------------------------------------------------------------------------------
# SQL

_INSERT_EVENTS = f"""
INSERT INTO {EVENTS_TABLE} (event_id, run_id, type, stream_seq, payload, at)
SELECT e, r, t, s, p::jsonb, a
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::timestamptz[]) AS u(e, r, t, s, p, a)
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""


def _first_wins(table_alias: str, *columns: str) -> str:
    return ",\n    ".join(f"{c} = COALESCE({table_alias}.{c}, EXCLUDED.{c})" for c in columns)


def _frozen_when_final(*columns: str) -> str:
    terminal = ", ".join(f"'{s}'" for s in TERMINAL_STATUSES)
    return ",\n    ".join(
        f"{c} = CASE WHEN r.status IN ({terminal}) THEN r.{c} ELSE COALESCE(EXCLUDED.{c}, r.{c}) END"
        for c in columns
    )


_UPSERT_RUN = f"""
INSERT INTO {RUNS_TABLE} AS r (id, mode, status, prompt, request, reason, result, input_tokens, output_tokens,
    cost_usd, iterations, view, created_at, finished_at, trace_id, owner)
VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7::jsonb, $8, $9, $10, $11, $12::jsonb, $13, $14, $15, $16)
ON CONFLICT (id) DO UPDATE SET
    {_first_wins("r", "mode", "prompt", "request", "created_at", "trace_id", "owner")},
    {
    _frozen_when_final(
        "status",
        "reason",
        "result",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "iterations",
        "view",
        "finished_at",
    )
},
    updated_at = now()
"""

_UPSERT_ITERATION = f"""
INSERT INTO {
    ITERATIONS_TABLE
} AS i (run_id, number, started_at, member_call_ids, synthesis, confidence, analysis,
    dissent, needs_iteration, refinement_areas, malformed, problems, decision, reason, completed_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11, $12::jsonb, $13, $14, $15)
ON CONFLICT (run_id, number) DO UPDATE SET
    {
    _first_wins(
        "i",
        "started_at",
        "member_call_ids",
        "synthesis",
        "confidence",
        "analysis",
        "dissent",
        "needs_iteration",
        "refinement_areas",
        "malformed",
        "problems",
        "decision",
        "reason",
        "completed_at",
    )
}
"""

_UPSERT_DEBATE_ROUND = f"""
INSERT INTO {DEBATE_ROUNDS_TABLE} AS d ({", ".join(DEBATE_ROUND_COLUMNS)})
VALUES ({
    ", ".join(
        f"${n}::jsonb" if c in _DEBATE_ROUND_JSONB else f"${n}"
        for n, c in enumerate(DEBATE_ROUND_COLUMNS, start=1)
    )
})
ON CONFLICT (run_id, round) DO UPDATE SET
    {_first_wins("d", *DEBATE_ROUND_COLUMNS[2:])}
"""

_UPSERT_STEP = f"""
INSERT INTO {STEPS_TABLE} AS s (run_id, step, name, started_at, call_ids, completed_at, data)
VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7::jsonb)
ON CONFLICT (run_id, step) DO UPDATE SET
    {_first_wins("s", "started_at", "call_ids", "completed_at", "data")}
"""

_CALL_COLUMNS = (
    "call_id", "run_id", "iteration", "role", "model", "instance", "status", "text", "error", "error_type",
    "input_tokens", "output_tokens", "cost_usd", "latency_ms", "attempts", "finish_reason", "at", "stream_seq",
)  # fmt: skip
_UPSERT_CALL = f"""
INSERT INTO {CALLS_TABLE} AS c ({", ".join(_CALL_COLUMNS)})
VALUES ({", ".join(f"${n}" for n in range(1, len(_CALL_COLUMNS) + 1))})
ON CONFLICT (call_id) DO UPDATE SET
    ({", ".join(_CALL_COLUMNS[1:])}) = ROW({", ".join("EXCLUDED." + c for c in _CALL_COLUMNS[1:])})
WHERE EXCLUDED.stream_seq < c.stream_seq
"""


# ---------------------------------------------------------------------------------------------
# Writing


@dataclass
class WriteResult:
    new_events: int = 0
    duplicates: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    recorded: list[Envelope] = field(default_factory=list)  # the events recorded for the first time


# Opens a scope (a span in the run's trace) around the statements that write one run's events.
RunScope: TypeAlias = Callable[[Sequence[Envelope]], AbstractContextManager[Any]]


def by_run(envelopes: Sequence[Envelope]) -> list[list[Envelope]]:
    """Envelopes sorted by event id (as `unique_events` returns them), cut into one list per run.

    Event ids start with the run id, so each run's events are contiguous and the runs come in
    run id order: writing run after run locks rows in the same order as writing them all at once.
    """
    parts: list[list[Envelope]] = []
    for env in envelopes:
        if parts and parts[-1][0].event.run_id == env.event.run_id:
            parts[-1].append(env)
        else:
            parts.append([env])
    return parts


@dataclass
class RecorderStats:
    """Counters for a metrics endpoint; plain numbers, updated by the one batch in flight."""

    batches_written: int = 0
    batches_failed: int = 0  # nacked for redelivery (database unavailable, deadlock, ...)
    events_received: int = 0
    events_written: int = 0  # new events recorded
    events_duplicate: int = 0  # already recorded: redeliveries and republished events
    events_skipped: int = (
        0  # not run events, or rows the database rejects: dead letters (not control requests)
    )
    rows_written: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    last_batch_size: int = 0
    last_batch_seconds: float = 0.0
    last_batch_at: float | None = None  # unix time of the last batch written

    def record(self, size: int, seconds: float, result: WriteResult) -> None:
        self.batches_written += 1
        self.events_written += result.new_events
        self.events_duplicate += result.duplicates
        for table, n in result.rows.items():
            self.rows_written[table] = self.rows_written.get(table, 0) + n
        self.last_batch_size, self.last_batch_seconds, self.last_batch_at = size, seconds, time.time()


class Writer:
    """Writes batches of envelopes through an asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def write(self, envelopes: Sequence[Envelope], run_scope: RunScope | None = None) -> WriteResult:
        """Record a batch in one transaction. Raises on database errors; then nothing is written.

        With `run_scope` (tracing on) the statements are issued run by run, each run's inside
        `run_scope(its envelopes)`, so a run's trace holds the writes of its own events; without,
        one statement per table for the whole batch.
        """
        unique = unique_events(envelopes)
        if not unique:
            return WriteResult(duplicates=len(envelopes))
        parts = [unique] if run_scope is None else by_run(unique)
        new_ids: set[str] = set()
        counts = dict.fromkeys(Rows().counts(), 0)
        async with self.pool.acquire() as conn, conn.transaction():
            for part in parts:
                with run_scope(part) if run_scope is not None else contextlib.nullcontext():
                    inserted, rows = await self._write(conn, part)
                new_ids |= inserted
                for table, n in rows.counts().items():
                    counts[table] += n
        return WriteResult(
            new_events=len(new_ids),
            duplicates=len(envelopes) - len(new_ids),
            rows={EVENTS_TABLE: len(new_ids), **counts},
            recorded=[env for env in unique if env.event.event_id() in new_ids],
        )

    @staticmethod
    async def _write(conn: asyncpg.Connection, unique: Sequence[Envelope]) -> tuple[set[str], Rows]:
        """Insert the events, then the rows of those new to the database; their ids and the rows."""
        inserted = await conn.fetch(
            _INSERT_EVENTS,
            [env.event.event_id() for env in unique],
            [env.event.run_id for env in unique],
            [env.event.type for env in unique],
            [env.stream_seq for env in unique],
            [env.payload for env in unique],
            [_aware(env.event.at) for env in unique],
        )
        new_ids = {r["event_id"] for r in inserted}
        rows = to_rows(env for env in unique if env.event.event_id() in new_ids)
        if rows.runs:
            await conn.executemany(_UPSERT_RUN, rows.runs)
        if rows.iterations:
            await conn.executemany(_UPSERT_ITERATION, rows.iterations)
        if rows.debate_rounds:
            await conn.executemany(_UPSERT_DEBATE_ROUND, rows.debate_rounds)
        if rows.steps:
            await conn.executemany(_UPSERT_STEP, rows.steps)
        if rows.calls:
            await conn.executemany(_UPSERT_CALL, rows.calls)
        return new_ids, rows

    async def write_each(
        self, envelopes: Sequence[Envelope], run_scope: RunScope | None = None
    ) -> tuple[WriteResult, list[tuple[Envelope, Exception]]]:
        """Record events one transaction each, to isolate the ones the database rejects.

        Used after a batch failed with a row error. Returns what was written and the rejected
        envelopes with their errors; errors other than row errors (connection lost, ...) propagate.
        """
        total = WriteResult(rows=dict.fromkeys(TABLES, 0))
        rejected: list[tuple[Envelope, Exception]] = []
        for env in envelopes:
            try:
                result = await self.write([env], run_scope)
            except ROW_ERRORS as exc:
                # The sqlstate and message say what is wrong; the row values (answers, prompts) stay out.
                log.error(
                    "run %s: the database rejects event %s (stream seq %d): %s %s",
                    env.event.run_id, env.event.event_id(), env.stream_seq, type(exc).__name__,
                    getattr(exc, "sqlstate", ""),
                )  # fmt: skip
                rejected.append((env, exc))
                continue
            total.new_events += result.new_events
            total.duplicates += result.duplicates
            total.recorded += result.recorded
            for table, n in result.rows.items():
                total.rows[table] += n
        return total, rejected
