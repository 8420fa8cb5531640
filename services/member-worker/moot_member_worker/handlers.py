"""The worker's consumption: fetch only as many call jobs as there are free slots, call, publish, ack.

Why not a faststream subscriber: its concurrent pull subscriber (faststream 0.7.8,
`ConcurrentMixin`) releases its slot semaphore as soon as a fetched message is queued in memory,
so it fetches ahead of its free slots (faststream issue 2563). A job fetched ahead sits without
`in_progress()` heartbeats, so `ack_wait` had to stay above the slowest call (300 s), and a killed
worker's calls waited that long for another worker. Here `CallJobs.consume` fetches with nats-py
(durable pull consumer, explicit ack) at most the free slots, every job in hand is heartbeated
every `ack_wait / 3`, and `ack_wait` is short (`MOOT_CALL_ACK_WAIT_SECONDS`, 20 s): a job whose
worker died is redelivered to another within it (`tests/chaos/test_worker_crash.py`).

A job of a run that is no longer running (cancelled, failed, timed out) is acked without a call;
a streamed call checks its run every `MOOT_WORKER_RUN_CHECK_SECONDS` and is cut when it ended.
A long answer is stored in the text store before its outcome, which carries the reference, is
published; short answers and the streamed `final.chunk` deltas travel inline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Protocol

from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy as JsAckPolicy
from nats.js.api import ConsumerConfig
from pydantic import ValidationError

from moot.messages import CallCompleted, CallFailed, CallJob, FinalChunk
from moot.observability import metrics, telemetry
from moot.runtime import deadletters
from moot.runtime.nats import MSG_ID, publish
from moot.runtime.settings import MootSettings
from moot.runtime.subjects import Names
from moot.runtime.textstore import TextStore
from moot.texts import TextSink
from moot_member_worker.calls import ModelCaller, Retry

log = logging.getLogger(__name__)

# A fetch waits this long for a job when the queue looked empty (a long poll: it returns as soon as
# one arrives); after a fetch that found jobs, the next one only takes what is already there.
IDLE_FETCH_SECONDS = 5.0
BUSY_FETCH_SECONDS = 0.2


class RunStates(Protocol):
    """What the worker asks of the run-state bucket (`moot.runtime.runstore.RunStore`)."""

    async def is_running(self, run_id: str) -> bool: ...


def consumer_config(names: Names, settings: MootSettings, concurrency: int) -> ConsumerConfig:
    """The durable pull consumer every worker shares: JetStream hands each job to one of them."""
    return ConsumerConfig(
        durable_name=names.worker_consumer,
        filter_subject=names.call_jobs,
        ack_policy=JsAckPolicy.EXPLICIT,
        ack_wait=settings.call_ack_wait_seconds,
        # Backstop only: the handler itself stops retrying after call_max_attempts.
        max_deliver=settings.call_max_attempts + 2,
        max_ack_pending=max(1000, concurrency * 8),
    )


def register(broker: NatsBroker, names: Names, settings: MootSettings, concurrency: int) -> None:
    """The worker's subscription as the contract (docs/asyncapi.json) shows it; never started.

    Jobs are consumed by `CallJobs.consume`, on the consumer `consumer_config` describes: the same
    subject, stream and durable name as declared here.
    """
    config = consumer_config(names, settings, concurrency)

    @broker.subscriber(
        config.filter_subject or names.call_jobs,
        stream=JStream(names.jobs_stream, declare=False),
        durable=config.durable_name,
        title=config.durable_name,  # its name in docs/asyncapi.json
        pull_sub=PullSub(batch_size=1, timeout=IDLE_FETCH_SECONDS),
        ack_policy=AckPolicy.MANUAL,
        config=config,
    )
    async def execute_call(msg: NatsMessage) -> None:
        """member-worker: make each job's model call; publish its outcome (and a streamed call's chunks)."""
        raise RuntimeError("documentation only: jobs are consumed by moot_member_worker.handlers.CallJobs")


@dataclass
class CallJobs:
    """Takes call jobs from the work queue, at most `concurrency` at a time, and executes them."""

    broker: NatsBroker
    names: Names
    settings: MootSettings
    caller: ModelCaller
    concurrency: int
    runs: RunStates | None = None  # set once connected, before `consume`
    run_check_seconds: float = 1.0
    drain_seconds: float = 240.0
    _active: set[asyncio.Task[None]] = field(default_factory=set)
    _slot_freed: asyncio.Event = field(default_factory=asyncio.Event)
    _loop: asyncio.Task[None] | None = None
    _sub: JetStreamContext.PullSubscription | None = None

    @property
    def consuming(self) -> bool:
        return self._loop is not None and not self._loop.done()

    async def start(self, js: JetStreamContext) -> None:
        """Create (or update: a changed `ack_wait` reaches an existing consumer) the consumer; consume."""
        await js.add_consumer(
            self.names.jobs_stream, consumer_config(self.names, self.settings, self.concurrency)
        )
        sub = await js.pull_subscribe_bind(durable=self.names.worker_consumer, stream=self.names.jobs_stream)
        self._sub = sub
        self._loop = asyncio.create_task(self.consume(sub), name="call jobs")

    async def stop(self) -> None:
        """Stop fetching; let the calls in hand finish for up to `drain_seconds` (heartbeats go on),
        then hand what is left back to JetStream (nak) for another worker to take at once."""
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
        if self._sub is not None:
            # Now, not in the connection's drain: a pull subscription whose fetch was cancelled
            # never empties its pending queue, and draining it would wait nats-py's 30 s timeout.
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        if not self._active:
            return
        _, left = await asyncio.wait(set(self._active), timeout=self.drain_seconds)
        for task in left:
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)

    async def consume(self, sub: JetStreamContext.PullSubscription) -> None:
        """Fetch at most the free slots' worth of jobs, start each, repeat until cancelled."""
        queue_had_jobs = False
        while True:
            free = self.concurrency - len(self._active)
            if free <= 0:
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            # A long poll for one job when idle (a fetch for more would wait out its timeout to fill
            # the batch); when jobs are waiting, as many as there are free slots, without waiting.
            batch, timeout = (free, BUSY_FETCH_SECONDS) if queue_had_jobs else (1, IDLE_FETCH_SECONDS)
            try:
                fetched = await sub.fetch(batch=batch, timeout=timeout)
            except (TimeoutError, NatsTimeoutError):
                queue_had_jobs = False
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # disconnected: nats-py reconnects; try again shortly
                log.warning("fetching call jobs: %s: %s", type(exc).__name__, exc)
                queue_had_jobs = False
                await asyncio.sleep(1.0)
                continue
            queue_had_jobs = bool(fetched)
            # nats-py also returns what an earlier, expired pull left in the subscription's queue:
            # beyond the free slots, hand it straight back rather than hold it without heartbeats.
            for raw in fetched[free:]:
                with contextlib.suppress(Exception):
                    await raw.nak()
            for raw in fetched[:free]:
                task = asyncio.create_task(self.handle(raw))
                self._active.add(task)
                task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._active.discard(task)
        self._slot_freed.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("call job handler failed", exc_info=task.exception())

    async def handle(self, raw: Msg) -> None:
        """One job: the consume span, in_progress() while it is in hand, nak if the worker stops."""
        heartbeat = asyncio.create_task(_keep_alive(raw, self.settings.call_ack_wait_seconds / 3))
        try:
            with telemetry.consuming(raw):
                await self.execute(raw)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await raw.nak()  # the worker is stopping: another worker takes the job now
            raise
        finally:
            heartbeat.cancel()

    async def execute(self, raw: Msg) -> None:
        """Make the job's model call; publish its outcome (and a streamed call's chunks); ack or nak."""
        # How long the job sat in the work queue: a metric, and a span beside this consume span.
        telemetry.observe_queue_wait(raw, "member-worker", span_name="queue wait")
        try:
            job = CallJob.model_validate_json(raw.data)
        except ValidationError as exc:
            log.error("malformed call job %s: %s", (raw.headers or {}).get(MSG_ID), exc.errors()[:3])
            try:  # kept in the dead-letter stream, never dropped (issue 11)
                js = self.broker.connection.jetstream()
                await deadletters.write_delivered(
                    js, self.names, raw, "undecodable", deadletters.undecodable(exc)
                )
            except Exception:
                log.exception("malformed call job: no dead letter yet; redelivering")
                await raw.nak(delay=1.0)
                return
            await raw.ack()
            return
        attempt = raw.metadata.num_delivered or 1
        telemetry.annotate(
            run_id=job.run_id, call_id=job.call_id, round=job.iteration, role=job.role, attempt=attempt
        )
        if not await self._running(job.run_id):
            log.debug("call %s: run %s is not running; skipped", job.call_id, job.run_id)
            metrics.jobs_skipped.add(1, {"moot.reason": "run_ended"})
            telemetry.annotate(skipped="run_ended")
            await raw.ack()
            return

        async def publish_chunk(index: int, delta: str) -> None:
            chunk = FinalChunk(run_id=job.run_id, call_id=job.call_id, index=index, delta=delta)
            await _publish(self.broker, self.names, chunk)

        call = asyncio.create_task(self.caller.call(job, attempt, on_chunk=publish_chunk))
        cut = asyncio.Event()
        watch = asyncio.create_task(self._cut_when_ended(job.run_id, call, cut)) if job.stream else None
        try:
            outcome = await call
        except asyncio.CancelledError:
            if not cut.is_set():
                raise
            # The run ended while its answer streamed: nobody waits for the rest.
            log.info("call %s: run %s ended; stream cut", job.call_id, job.run_id)
            metrics.jobs_skipped.add(1, {"moot.reason": "cut"})
            telemetry.annotate(skipped="cut")
            await raw.ack()
            return
        finally:
            if watch is not None:
                watch.cancel()
        if isinstance(outcome, Retry):
            if attempt < self.settings.call_max_attempts:
                log.warning(
                    "call %s attempt %d: %s; retrying in %.1fs",
                    job.call_id,
                    attempt,
                    outcome.error_type,
                    outcome.delay,
                )
                await raw.nak(delay=outcome.delay)
                return
            outcome = outcome.give_up(job, attempt)
        try:
            await _publish(self.broker, self.names, await _by_reference(self.caller.texts, outcome))
        except Exception:
            # The call happened but its outcome could not be published: redeliver soon rather than
            # after ack_wait (the repeated call's outcome is deduplicated by its id).
            log.exception("call %s: outcome not published; redelivering", job.call_id)
            await raw.nak(delay=2.0)
            return
        await raw.ack()

    async def _running(self, run_id: str) -> bool:
        """Whether the run still wants its calls; True when the bucket cannot say (fail open).

        The check saves calls; it is not what keeps an ended run ended (`decide()` ignores late
        outcomes), so a bucket that does not answer must not hold work up.
        """
        if self.runs is None:
            return True
        try:
            return await self.runs.is_running(run_id)
        except Exception as exc:
            log.warning("run %s: state not readable (%s); calling anyway", run_id, type(exc).__name__)
            return True

    async def _cut_when_ended(self, run_id: str, call: asyncio.Task[object], cut: asyncio.Event) -> None:
        """Cancel a streamed call once its run is no longer running."""
        while not call.done():
            await asyncio.sleep(self.run_check_seconds)
            if self.runs is not None and not await self._running(run_id):
                cut.set()
                call.cancel()
                return


async def _publish(broker: NatsBroker, names: Names, event: CallCompleted | CallFailed | FinalChunk) -> None:
    await publish(
        broker,
        names,
        names.run_event(event.run_id, event.type),
        event.event_id(),
        event.model_dump_json().encode(),
    )


async def _by_reference(
    texts: TextStore | None, outcome: CallCompleted | CallFailed
) -> CallCompleted | CallFailed:
    """The outcome as published: a long answer stored first and carried by reference."""
    if not isinstance(outcome, CallCompleted) or not isinstance(outcome.text, str):
        return outcome
    sink = TextSink()
    text = sink.text(outcome.text)
    if not sink.texts:
        return outcome  # short: inline
    if texts is None:
        raise RuntimeError("the text store is not open yet")
    await texts.put_many(sink.texts)
    return outcome.model_copy(update={"text": text})


async def _keep_alive(msg: Msg, every: float) -> None:
    """Tell JetStream the job is still being worked on, so it is not handed to another worker."""
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            await asyncio.sleep(every)
            with contextlib.suppress(Exception):  # a missed beat is made up by the next one
                await msg.in_progress()
