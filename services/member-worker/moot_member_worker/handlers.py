"""The one subscriber: take a call job, call the model, publish the outcome, then ack.

A long answer is stored in the text store before its outcome, which carries the reference, is
published; short answers and the streamed `final_chunk` deltas travel inline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from faststream import AckPolicy
from faststream.nats import ConsumerConfig, JStream, NatsBroker, NatsMessage, PullSub
from nats.js.api import AckPolicy as JsAckPolicy
from pydantic import ValidationError

from moot.messages import CallCompleted, CallFailed, CallJob, FinalChunk
from moot.observability import telemetry
from moot.runtime.nats import MSG_ID, publish
from moot.runtime.settings import MootSettings
from moot.runtime.subjects import Names
from moot.runtime.textstore import TextStore
from moot.texts import TextSink
from moot_member_worker.calls import ModelCaller, Retry

log = logging.getLogger(__name__)


def register(
    broker: NatsBroker, names: Names, settings: MootSettings, caller: ModelCaller, concurrency: int
) -> None:
    @broker.subscriber(
        names.call_jobs,
        stream=JStream(names.jobs_stream, declare=False),
        durable=names.worker_consumer,
        title=names.worker_consumer,  # its name in docs/asyncapi.json
        pull_sub=PullSub(batch_size=1, timeout=5.0),
        # faststream issue 2563: concurrent pull subscribers fetch ahead; with ack_wait far above the
        # slowest call and in_progress() during calls, what is fetched ahead is not redelivered.
        max_workers=concurrency,
        ack_policy=AckPolicy.MANUAL,
        config=ConsumerConfig(
            ack_policy=JsAckPolicy.EXPLICIT,
            ack_wait=settings.call_ack_wait_seconds,
            # Backstop only: the handler itself stops retrying after call_max_attempts.
            max_deliver=settings.call_max_attempts + 2,
            max_ack_pending=max(1000, concurrency * 8),
        ),
    )
    async def execute_call(msg: NatsMessage) -> None:
        """member-worker: make each job's model call; publish its outcome (and a streamed call's chunks)."""
        # How long the job sat in the work queue: a metric, and a span beside this consume span.
        telemetry.observe_queue_wait(msg.raw_message, "member-worker", span_name="queue wait")
        try:
            job = CallJob.model_validate_json(msg.body)
        except ValidationError as exc:
            log.error("dropping malformed call job %s: %s", msg.headers.get(MSG_ID), exc.errors()[:3])
            await msg.reject()
            return
        attempt = msg.raw_message.metadata.num_delivered or 1
        telemetry.annotate(
            run_id=job.run_id, call_id=job.call_id, round=job.iteration, role=job.role, attempt=attempt
        )
        heartbeat = asyncio.create_task(_keep_alive(msg, settings.call_ack_wait_seconds / 3))

        async def publish_chunk(index: int, delta: str) -> None:
            chunk = FinalChunk(run_id=job.run_id, call_id=job.call_id, index=index, delta=delta)
            await _publish(broker, names, chunk)

        try:
            outcome = await caller.call(job, attempt, on_chunk=publish_chunk)
        finally:
            heartbeat.cancel()
        if isinstance(outcome, Retry):
            if attempt < settings.call_max_attempts:
                log.warning(
                    "call %s attempt %d: %s; retrying in %.1fs",
                    job.call_id,
                    attempt,
                    outcome.error_type,
                    outcome.delay,
                )
                await msg.nack(delay=outcome.delay)
                return
            outcome = outcome.give_up(job, attempt)
        try:
            await _publish(broker, names, await _by_reference(caller.texts, outcome))
        except Exception:
            # The call happened but its outcome could not be published: redeliver soon rather than
            # after ack_wait (the repeated call's outcome is deduplicated by its id).
            log.exception("call %s: outcome not published; redelivering", job.call_id)
            await msg.nack(delay=2.0)
            return
        await msg.ack()


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


async def _keep_alive(msg: NatsMessage, every: float) -> None:
    """Tell JetStream the job is still being worked on, so it is not handed to another worker."""
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            await asyncio.sleep(every)
            await msg.in_progress()
