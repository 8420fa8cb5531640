"""Dead letters, the arbiter's part: give up on a message for its consumer, fail its run.

Two subscribers (see `moot.runtime.deadletters` for what a dead letter is):

- `write_dead_letter`: JetStream's max-deliveries advisory names a message (stream, sequence) a
  consumer was given `max_deliver` times without acking. The message is copied to the dead-letter
  stream with that reason and, for the work-queue jobs stream, removed (a work queue keeps an
  unacked job after its last delivery, and no consumer takes it again: seen on the real server,
  `tests/integration/test_dead_letters.py`).
  The advisories are core NATS messages, sent once, to whoever listens at that moment; the
  `<NS>_ADVISORIES` stream captures them, so none is lost while no arbiter runs, and a durable
  consumer gives each to one arbiter replica (a queue group would do the latter, not the former).
- `fail_dead_lettered_run`: every dead letter, whoever wrote it, fails its run (a `DeadLettered`
  input to `decide()`, by the same compare-and-set as the outcomes), so a run never waits forever
  on a message that will not come. One place does it: the arbiter owns run state.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from faststream import AckPolicy
from faststream.nats import ConsumerConfig, DeliverPolicy, JStream, NatsBroker, NatsMessage, PullSub
from nats.js import JetStreamContext
from nats.js.api import AckPolicy as JsAckPolicy
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ValidationError

from moot.messages import DeadLettered
from moot.runtime import deadletters
from moot.runtime.runstore import RunStore
from moot.runtime.subjects import Names

log = logging.getLogger(__name__)

# Retry a failed step (NATS or KV trouble) this much later; the durable consumer keeps the message.
RETRY_SECONDS = 5.0


class MaxDeliveries(BaseModel):
    """JetStream's `io.nats.jetstream.advisory.v1.max_deliver` (the fields used here)."""

    stream: str
    consumer: str
    stream_seq: int
    deliveries: int


async def copy_to_dead_letters(js: JetStreamContext, names: Names, advisory: MaxDeliveries) -> None:
    """The dead letter of one max-deliveries advisory; the job removed from the work queue."""
    origin = deadletters.Origin(
        "", advisory.stream, advisory.stream_seq, advisory.consumer, advisory.deliveries
    )
    reason = f"max deliveries: delivered {advisory.deliveries} times to {advisory.consumer} without an ack"
    try:
        raw = await js.get_msg(advisory.stream, advisory.stream_seq)
    except NotFoundError:
        # Acked (or deleted) after its last delivery: kept as a record, with nothing to replay.
        await deadletters.write(
            js, names, origin, "max_deliveries", f"{reason} (no longer in the stream)", b"", None, lost=True
        )
        return
    origin = dataclasses.replace(origin, subject=raw.subject or "")
    await deadletters.write(js, names, origin, "max_deliveries", reason, raw.data or b"", raw.headers)
    if advisory.stream == names.jobs_stream:
        try:
            await js.delete_msg(advisory.stream, advisory.stream_seq)
        except NotFoundError:
            pass


def register(broker: NatsBroker, names: Names, get_store: Callable[[], RunStore]) -> None:
    @broker.subscriber(
        # The stream holds only our streams' advisories (`Names.max_deliveries_advisories`).
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>",
        stream=JStream(names.advisories_stream, declare=False),
        durable=names.advisory_consumer,
        title=names.advisory_consumer,
        pull_sub=PullSub(batch_size=1, timeout=5.0),
        ack_policy=AckPolicy.MANUAL,
        config=ConsumerConfig(
            ack_policy=JsAckPolicy.EXPLICIT, ack_wait=60.0, deliver_policy=DeliverPolicy.ALL
        ),
    )
    async def write_dead_letter(msg: NatsMessage) -> None:
        """arbiter: copy each message a consumer gave up on (max deliveries) to the dead-letter stream."""
        try:
            advisory = MaxDeliveries.model_validate_json(msg.body)
        except ValidationError as exc:
            log.error("ignoring an unreadable max-deliveries advisory: %s", exc.errors()[:3])
            await msg.ack()
            return
        try:
            await copy_to_dead_letters(broker.connection.jetstream(), names, advisory)
        except Exception:
            log.exception(
                "max deliveries of %s seq %d: no dead letter yet; retrying",
                advisory.stream,
                advisory.stream_seq,
            )
            await msg.nack(delay=RETRY_SECONDS)
            return
        await msg.ack()

    @broker.subscriber(
        names.dead_wildcard,
        stream=JStream(names.dead_stream, declare=False),
        durable=names.dead_run_consumer,
        title=names.dead_run_consumer,
        pull_sub=PullSub(batch_size=1, timeout=5.0),
        ack_policy=AckPolicy.MANUAL,
        config=ConsumerConfig(
            ack_policy=JsAckPolicy.EXPLICIT, ack_wait=60.0, deliver_policy=DeliverPolicy.ALL
        ),
    )
    async def fail_dead_lettered_run(msg: NatsMessage) -> None:
        """arbiter: fail the run of each dead letter with its reason (a run that has ended stays)."""
        headers = msg.raw_message.headers or {}
        run_id = headers.get(deadletters.RUN_ID)
        if not run_id:
            await msg.ack()  # no run to end (an undecodable job, a lost message)
            return
        event = DeadLettered(run_id=run_id, reason=headers.get(deadletters.REASON) or "dead letter")
        try:
            known = await get_store().apply(run_id, event)
        except Exception:
            log.exception("run %s: could not fail it for its dead letter; retrying", run_id)
            await msg.nack(delay=RETRY_SECONDS)
            return
        if known:
            log.warning("run %s: failed (if still running): %s", run_id, event.reason)
        await msg.ack()
