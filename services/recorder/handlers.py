"""The one subscriber: batches of run events from JetStream, written to Postgres, then acked."""

from __future__ import annotations

import functools
import logging
import time
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
from pydantic import ValidationError

from moot.subjects import Names
from moot_recorder.settings import RecorderSettings
from moot_recorder.writer import ROW_ERRORS, Envelope, RecorderStats, Writer, envelope_from

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

    def _parse(self, msgs: list[Msg]) -> list[Envelope]:
        """The run events of a batch; everything else is logged and left to be acked with it."""
        envelopes: list[Envelope] = []
        for msg in msgs:
            seq = msg.metadata.sequence.stream
            try:
                envelopes.append(envelope_from(msg.data, seq, msg.headers))
            except ValidationError as exc:
                self._skip(msg, seq, [(".".join(map(str, e["loc"])), e["type"]) for e in exc.errors()[:5]])
            except Exception as exc:  # not JSON, not UTF-8, nested too deep...
                self._skip(msg, seq, type(exc).__name__)
        return envelopes

    def _skip(self, msg: Msg, seq: int, why: Any) -> None:
        self.stats.events_skipped += 1
        if self.names.event_type_of(msg.subject).startswith("control."):
            return  # run control requests share the stream; they are not events to record
        # Error locations and types only: pydantic's error inputs could hold prompts or answers.
        log.warning("skipping a message that is no run event: %s (stream seq %d): %s", msg.subject, seq, why)

    async def handle(self, batch: NatsBatchMessage) -> None:
        msgs: list[Msg] = batch.raw_message
        started = time.perf_counter()
        self.stats.events_received += len(msgs)
        envelopes = self._parse(msgs)
        if self.writer is None:
            await self._retry_later(batch, msgs, "the database is not connected yet")
            return
        try:
            try:
                result = await self.writer.write(envelopes)
            except ROW_ERRORS as exc:
                # One bad row fails the whole batch, and would again on every redelivery: write the
                # events one by one, drop the ones the database refuses (logged), keep the rest.
                sqlstate = getattr(exc, "sqlstate", "")
                log.warning(
                    "batch of %d rejected (%s); writing its events one by one", len(envelopes), sqlstate
                )
                result, rejected = await self.writer.write_each(envelopes)
                self.stats.events_skipped += len(rejected)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            # Database down, deadlock, failover...: nothing was committed (or what was is
            # idempotent to write again); have JetStream redeliver the whole batch later.
            await self._retry_later(batch, msgs, f"{type(exc).__name__}: {exc}")
            return
        except Exception:
            log.exception("batch of %d not recorded: unexpected error", len(msgs))
            await self._retry_later(batch, msgs, "unexpected error")
            return
        await batch.ack()
        elapsed = time.perf_counter() - started
        self.stats.record(len(msgs), elapsed, result)
        log.debug(
            "batch of %d: %d new events, %d duplicates, in %.3fs",
            len(msgs), result.new_events, result.duplicates, elapsed,
        )  # fmt: skip

    async def _retry_later(self, batch: NatsBatchMessage, msgs: list[Msg], why: str) -> None:
        self.stats.batches_failed += 1
        deliveries = max((m.metadata.num_delivered or 1) for m in msgs)
        s = self.settings
        delay = min(s.retry_delay_base_seconds * 2 ** (deliveries - 1), s.retry_delay_max_seconds)
        level = logging.ERROR if deliveries >= s.max_deliver else logging.WARNING
        log.log(level, "batch of %d not recorded (delivery %d of %d), retry in %.0fs: %s",
                len(msgs), deliveries, s.max_deliver, delay, why)  # fmt: skip
        await batch.nack(delay=delay)


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
        config=consumer_config(names, settings),
        pull_sub=PullSub(batch_size=settings.batch_size, timeout=settings.batch_timeout_seconds, batch=True),
        ack_policy=AckPolicy.MANUAL,
        decoder=_keep_raw,
    )
    async def record_events(batch: Annotated[NatsBatchMessage, Context("message")]) -> None:
        await recorder.handle(batch)
