"""The one subscriber: a call outcome arrives, the run's state machine decides what follows."""

from __future__ import annotations

import logging
from collections.abc import Callable

from faststream import AckPolicy
from faststream.nats import ConsumerConfig, JStream, NatsBroker, NatsMessage, PullSub
from nats.js.api import AckPolicy as JsAckPolicy
from pydantic import ValidationError

from moot.messages import parse_event
from moot.runstore import RunStore
from moot.subjects import Names

log = logging.getLogger(__name__)


def register(broker: NatsBroker, names: Names, get_store: Callable[[], RunStore], concurrency: int) -> None:
    @broker.subscriber(
        names.call_results,
        stream=JStream(names.runs_stream, declare=False),
        durable=names.arbiter_consumer,
        pull_sub=PullSub(batch_size=1, timeout=5.0),
        max_workers=concurrency,
        ack_policy=AckPolicy.MANUAL,
        config=ConsumerConfig(ack_policy=JsAckPolicy.EXPLICIT, ack_wait=60.0, max_deliver=50),
    )
    async def fold_call_outcome(msg: NatsMessage) -> None:
        try:
            event = parse_event(msg.body)
        except ValidationError as exc:
            log.error("dropping malformed event on %s: %s", msg.raw_message.subject, exc.errors()[:3])
            await msg.reject()
            return
        try:
            known = await get_store().apply(event.run_id, event)
        except Exception:
            # KV or NATS trouble: let JetStream redeliver; decide() is idempotent.
            log.exception("run %s: could not apply %s", event.run_id, event.type)
            await msg.nack(delay=1.0)
            return
        if not known:
            log.warning(
                "run %s: %s for a run with no state (expired or never created)", event.run_id, event.type
            )
        await msg.ack()
