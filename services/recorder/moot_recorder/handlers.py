"""The one subscriber: batches of run events from JetStream, written to Postgres, then acked.

Events carry long texts by reference (`moot.texts`); a batch is hydrated (one read of the text
store for all its references) before it is parsed, so Postgres gets every text in full.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Annotated, Any

import asyncpg
from faststream import AckPolicy, Context
from faststream.message import StreamMessage
from faststream.nats import ConsumerConfig, DeliverPolicy, JStream, NatsBroker, PullSub
from faststream.nats.message import NatsBatchMessage
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy as JsAckPolicy
from opentelemetry import trace
from opentelemetry.trace import Link
from pydantic import ValidationError

from moot.messages import START_EVENTS, RunCancelled, RunCompleted, RunFailed
from moot.observability import metrics, telemetry
from moot.runtime import deadletters
from moot.runtime.subjects import Names
from moot.runtime.textstore import MissingText, TextStore, hydrated
from moot_recorder.settings import RecorderSettings
from moot_recorder.writer import (
    ROW_ERRORS,
    Envelope,
    RecorderStats,
    RunScope,
    Writer,
    WriteResult,
    envelope_of,
    inline,
    inline_view,
    plain_envelope,
)

log = logging.getLogger(__name__)


def consumer_config(names: Names, settings: RecorderSettings) -> ConsumerConfig:
    """The durable pull consumer all recorder replicas share (JetStream spreads batches over them)."""
    return ConsumerConfig(
        name=names.recorder_consumer,
        durable_name=names.recorder_consumer,
        filter_subject=names.runs_wildcard,
        # A new deployment records everything the stream still holds.
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=JsAckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait_seconds,
        max_deliver=settings.max_deliver,
        max_ack_pending=settings.max_ack_pending,
    )


class BatchRecorder:
    """Turns a fetched batch into envelopes, has the writer record them, and acks or nacks."""

    def __init__(self, names: Names, settings: RecorderSettings, stats: RecorderStats | None = None) -> None:
        self.names = names
        self.settings = settings
        self.stats = stats or RecorderStats()
        self.writer: Writer | None = None  # set once the database pool is up
        self.texts: TextStore | None = None  # set once connected
        self.js: JetStreamContext | None = None  # set once connected: where dead letters go

    async def _parse(self, msgs: list[Msg], isolate_missing: bool = False) -> list[Envelope]:
        """The run events of a batch, hydrated. What cannot be decoded becomes a dead letter (and is
        acked now, so that a retried batch does not write it again); run control requests are
        logged and left to be acked with the batch.

        MissingText (or a text store error) when a referenced text cannot be read: the caller
        retries the batch rather than record events without their texts. With `isolate_missing`
        each event is hydrated alone, and those whose texts are missing become dead letters.
        """
        decoded: list[tuple[Msg, Any]] = []
        undecodable: list[tuple[Msg, str]] = []
        envelopes: list[Envelope] = []
        for msg in msgs:
            try:
                plain = plain_envelope(msg.data, msg.metadata.sequence.stream, msg.headers)
            except ValueError:
                plain = None  # the slow path says what is wrong with it
            if plain is not None:
                envelopes.append(plain)
                continue
            try:
                decoded.append((msg, json.loads(msg.data)))
            except Exception as exc:  # not JSON, not UTF-8, nested too deep...
                undecodable.append((msg, type(exc).__name__))
        if self.texts is None:
            raise RuntimeError("the text store is not open yet")
        # One read for every reference of the batch (none for most batches); before anything is
        # counted, since an error here has the whole batch come again.
        if isolate_missing:
            payloads, kept = [], []
            for msg, data in decoded:
                try:
                    payloads += await hydrated(self.texts, [data])
                except MissingText as exc:
                    await self._dead(
                        msg, "missing_text", f"missing text: {exc.args[0]} is not in the text store"
                    )
                    continue
                kept.append((msg, data))
            decoded = kept
        else:
            payloads = await hydrated(self.texts, [data for _, data in decoded])
        for msg, why in undecodable:
            await self._skip(msg, msg.metadata.sequence.stream, why)
        for (msg, _), data in zip(decoded, payloads, strict=True):
            seq = msg.metadata.sequence.stream
            try:
                envelopes.append(envelope_of(data, seq, msg.headers))
            except ValidationError as exc:
                where = [(".".join(map(str, e["loc"])), e["type"]) for e in exc.errors()[:5]]
                await self._skip(msg, seq, where, "ValidationError")
            except Exception as exc:
                await self._skip(msg, seq, type(exc).__name__)
        return envelopes

    async def _skip(self, msg: Msg, seq: int, why: Any, error_type: str | None = None) -> None:
        self.stats.events_skipped += 1
        if self.names.event_type_of(msg.subject).startswith("control."):
            return  # run control requests share the stream; they are not events to record
        # Error locations and types only: pydantic's error inputs could hold prompts or answers.
        log.warning("a message that is no run event: %s (stream seq %d): %s", msg.subject, seq, why)
        await self._dead(msg, "undecodable", f"undecodable: {error_type or why}")

    async def _dead(self, msg: Msg, kind: deadletters.Kind, reason: str) -> None:
        """Copy one message of the batch to the dead-letter stream and ack it alone (the batch's
        ack and nack skip it); raises when the copy cannot be written, so the batch comes again."""
        if self.js is None:
            raise RuntimeError("not connected to JetStream yet")
        await deadletters.write_delivered(self.js, self.names, msg, kind, reason)
        await msg.ack()

    async def handle(self, batch: NatsBatchMessage) -> None:
        msgs: list[Msg] = batch.raw_message
        started = time.perf_counter()
        self.stats.events_received += len(msgs)
        metrics.recorder_batch_size.record(len(msgs))
        for msg in msgs:
            telemetry.observe_queue_wait(msg, "recorder")
        skipped_before = self.stats.events_skipped
        if self.writer is None:
            await self._retry_later(batch, msgs, "the database is not connected yet")
            return
        deliveries = max((m.metadata.num_delivered or 1) for m in msgs)
        try:
            envelopes = await self._parse(
                msgs, isolate_missing=deliveries >= self.settings.missing_text_deliveries
            )
        except MissingText as exc:
            # Not stored yet, or expired: like a database error, the batch waits and comes again
            # rather than being recorded without its texts; after `missing_text_deliveries` the
            # events whose texts are still missing are taken out as dead letters (`_parse`).
            await self._retry_later(batch, msgs, f"text {exc.args[0]} is not in the text store")
            return
        except Exception as exc:  # the text store not reachable right now
            await self._retry_later(batch, msgs, f"texts not readable: {type(exc).__name__}: {exc}")
            return
        run_scope = self._run_scope(len(msgs))
        try:
            try:
                result = await self.writer.write(envelopes, run_scope)
            except ROW_ERRORS as exc:
                # One bad row fails the whole batch, and would again on every redelivery: write the
                # events one by one; the ones the database refuses become dead letters.
                sqlstate = getattr(exc, "sqlstate", "")
                log.warning(
                    "batch of %d rejected (%s); writing its events one by one", len(envelopes), sqlstate
                )
                result, rejected = await self.writer.write_each(envelopes, run_scope)
                self.stats.events_skipped += len(rejected)
                await self._dead_rejected(msgs, rejected)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            # Database down, deadlock, failover...: nothing was committed (or what was is
            # idempotent to write again); have JetStream redeliver the whole batch later.
            metrics.recorder_insert_duration.record(time.perf_counter() - started, {"moot.outcome": "retry"})
            await self._retry_later(batch, msgs, f"{type(exc).__name__}: {exc}")
            return
        except Exception:
            log.exception("batch of %d not recorded: unexpected error", len(msgs))
            metrics.recorder_insert_duration.record(time.perf_counter() - started, {"moot.outcome": "retry"})
            await self._retry_later(batch, msgs, "unexpected error")
            return
        metrics.recorder_insert_duration.record(time.perf_counter() - started, {"moot.outcome": "ok"})
        await batch.ack()
        elapsed = time.perf_counter() - started
        self.stats.record(len(msgs), elapsed, result)
        _observe_recorded(result, self.stats.events_skipped - skipped_before)
        log.debug(
            "batch of %d: %d new events, %d duplicates, in %.3fs",
            len(msgs), result.new_events, result.duplicates, elapsed,
        )  # fmt: skip

    async def _dead_rejected(self, msgs: list[Msg], rejected: list[tuple[Envelope, Exception]]) -> None:
        by_seq = {m.metadata.sequence.stream: m for m in msgs}
        for env, exc in rejected:
            why = f"rejected by the database: {type(exc).__name__} {getattr(exc, 'sqlstate', '') or ''}".rstrip()
            await self._dead(by_seq[env.stream_seq], "rejected", why)

    def _run_scope(self, batch_size: int) -> RunScope | None:
        """With tracing on: each run's writes go in a span of that run's trace.

        A batch holds events of many runs, so it cannot be inside one run's trace; its consume
        span starts a trace of its own. Each run's part of the batch is written under a span
        whose parent is the context of that run's earliest message in the batch (so it
        descends, unbroken, from the request that created the run), linked to the batch's span;
        the insert statements (asyncpg instrumentation) are its children.
        """
        if not telemetry.tracing_enabled():
            return None
        batch_span = trace.get_current_span().get_span_context()
        links = [Link(batch_span, {"moot.link": "batch"})] if batch_span.is_valid else []

        def scope(part: Sequence[Envelope]) -> AbstractContextManager[Any]:
            first = min(part, key=lambda env: env.stream_seq)
            parent = telemetry.context_from({"traceparent": first.traceparent} if first.traceparent else None)
            has_parent = trace.get_current_span(parent).get_span_context().is_valid
            return telemetry.tracer.start_as_current_span(
                "record run events",
                context=parent if has_parent else None,
                links=links,
                attributes={
                    "moot.run_id": first.event.run_id,
                    "moot.recorder.events": len(part),
                    "moot.recorder.batch_size": batch_size,
                    "moot.event.types": sorted({env.event.type for env in part}),
                },
            )

        return scope

    async def _retry_later(self, batch: NatsBatchMessage, msgs: list[Msg], why: str) -> None:
        self.stats.batches_failed += 1
        deliveries = max((m.metadata.num_delivered or 1) for m in msgs)
        s = self.settings
        # Capped before the power: an outage may last thousands of deliveries.
        delay = min(s.retry_delay_base_seconds * 2 ** min(deliveries - 1, 30), s.retry_delay_max_seconds)
        last = 0 < s.max_deliver <= deliveries
        of = f" of {s.max_deliver}" if s.max_deliver > 0 else ""
        log.log(logging.ERROR if last else logging.WARNING, "batch of %d not recorded (delivery %d%s), retry in %.0fs: %s",
                len(msgs), deliveries, of, delay, why)  # fmt: skip
        await batch.nack(delay=delay)


def _observe_recorded(result: WriteResult, skipped: int) -> None:
    """Event counts, and the run metrics from the start and end events recorded for the first time.

    Counting here makes each run count once, whichever replica records it and however often its
    events are redelivered or republished: only the events table insert that wins says "new".
    """
    metrics.recorder_events.add(result.new_events, {"moot.outcome": "new"})
    metrics.recorder_events.add(result.duplicates, {"moot.outcome": "duplicate"})
    metrics.recorder_events.add(skipped, {"moot.outcome": "skipped"})
    for env in result.recorded:
        e = env.event
        if isinstance(e, START_EVENTS):
            metrics.runs_started.add(1, {"mode": inline(e.request).mode})
        elif isinstance(e, RunCompleted | RunFailed | RunCancelled):
            view = inline_view(e.run)
            status = {RunCompleted: "completed", RunFailed: "failed"}.get(type(e), "cancelled")
            labels = {"mode": view.mode, "status": status}
            # Why it stopped short, if it did: `deadline` or `budget` (a run's time or spend limit).
            metrics.runs_finished.add(1, {**labels, "stop_reason": view.stop_reason or "none"})
            if view.usage.cost_usd is not None:
                metrics.run_cost.record(view.usage.cost_usd, labels)
            if view.created_at is not None:
                finished = view.finished_at or e.at
                seconds = (_aware(finished) - _aware(view.created_at)).total_seconds()
                metrics.run_duration.record(max(0.0, seconds), labels)
            metrics.run_rounds.record(view.steps, labels)


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


async def _keep_raw(msg: StreamMessage[Any]) -> None:
    """Decoder that decodes nothing: the handler parses the raw messages itself, so a message
    that is not JSON cannot fail the whole batch inside faststream."""
    return None


def _patch_batch_fetch_timeouts() -> None:
    """Make a batch fetch time out with nats' TimeoutError, the one faststream's pull loop catches.

    nats-py 2.16 (`_fetch_n`, since nats.py PR #934) can raise the builtin TimeoutError when the
    deadline runs out between its two pull requests. faststream 0.7.8's batch loop catches only
    `nats.errors.TimeoutError`, so its consume task dies; the supervisor restarts it, but the
    messages it had already fetched for the batch stay unacked until ack_wait (a 30-60 s stall,
    seen under steady traffic). nats' TimeoutError subclasses the builtin one, so every other
    caller still catches it. Remove once faststream catches asyncio.TimeoutError.
    """
    cls = JetStreamContext.PullSubscription
    if getattr(cls.fetch, "_moot_patched", False):
        return
    original = cls.fetch

    @functools.wraps(original)
    async def fetch(self: Any, *args: Any, **kwargs: Any) -> list[Msg]:
        try:
            return await original(self, *args, **kwargs)
        except NatsTimeoutError:
            raise
        except TimeoutError as exc:
            raise NatsTimeoutError from exc

    fetch._moot_patched = True  # type: ignore[attr-defined]
    cls.fetch = fetch  # type: ignore[method-assign]


def register(broker: NatsBroker, names: Names, settings: RecorderSettings, recorder: BatchRecorder) -> None:
    """Subscribe `recorder` to every run event."""
    _patch_batch_fetch_timeouts()

    @broker.subscriber(
        names.runs_wildcard,
        stream=JStream(names.runs_stream, declare=False),  # ensure_topology creates the streams
        durable=names.recorder_consumer,
        title=names.recorder_consumer,  # its name in docs/asyncapi.json
        config=consumer_config(names, settings),
        pull_sub=PullSub(batch_size=settings.batch_size, timeout=settings.batch_timeout_seconds, batch=True),
        ack_policy=AckPolicy.MANUAL,
        decoder=_keep_raw,
    )
    async def record_events(batch: Annotated[NatsBatchMessage, Context("message")]) -> None:
        """recorder: write every run event to Postgres, a batch per transaction."""
        await recorder.handle(batch)
