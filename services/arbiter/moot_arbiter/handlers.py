"""The one subscriber: a call outcome arrives, the run's state machine decides what follows."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from faststream import AckPolicy
from faststream.nats import ConsumerConfig, JStream, NatsBroker, NatsMessage, PullSub
from nats.js.api import AckPolicy as JsAckPolicy
from opentelemetry.trace import StatusCode
from pydantic import ValidationError

from moot.messages import parse_event
from moot.observability import metrics, telemetry
from moot.runtime import deadletters
from moot.runtime.deadletters import undecodable
from moot.runtime.runstore import RunStore
from moot.runtime.subjects import Names

log = logging.getLogger(__name__)


def register(broker: NatsBroker, names: Names, get_store: Callable[[], RunStore], concurrency: int) -> None:
    @broker.subscriber(
        names.call_results,
        stream=JStream(names.runs_stream, declare=False),
        durable=names.arbiter_consumer,
        title=names.arbiter_consumer,  # its name in docs/asyncapi.json
        pull_sub=PullSub(batch_size=1, timeout=5.0),
        max_workers=concurrency,
        ack_policy=AckPolicy.MANUAL,
        # A decision takes milliseconds, so an outcome a killed arbiter held goes to another within
        # 20 s (issue 11); one faststream fetched ahead waits for a slot for as long as a few decisions.
        config=ConsumerConfig(ack_policy=JsAckPolicy.EXPLICIT, ack_wait=20.0, max_deliver=50),
    )
    async def fold_call_outcome(msg: NatsMessage) -> None:
        """arbiter: fold each call outcome into its run's state; publish the jobs and events that follow."""
        telemetry.observe_queue_wait(msg.raw_message, "arbiter")
        try:
            event = parse_event(msg.body)
        except ValidationError as exc:
            log.error("malformed event on %s: %s", msg.raw_message.subject, exc.errors()[:3])
            metrics.arbiter_decisions.add(1, {"moot.event.type": "unknown", "moot.outcome": "malformed"})
            try:
                # Kept, never dropped; the run (named by the subject) fails with the reason.
                js = broker.connection.jetstream()
                await deadletters.write_delivered(js, names, msg.raw_message, "undecodable", undecodable(exc))
            except Exception:
                log.exception(
                    "malformed event on %s: no dead letter yet; redelivering", msg.raw_message.subject
                )
                await msg.nack(delay=1.0)
                return
            await msg.ack()
            return
        started = time.perf_counter()
        # One span per decision, child of this message's consume span: the run's state machine
        # folds the outcome in, and what it publishes (next jobs, run events) descends from here.
        with telemetry.tracer.start_as_current_span(
            f"decide {event.type}", attributes=_decision_attributes(event)
        ) as span:
            try:
                known = await get_store().apply(event.run_id, event)
            except Exception as exc:
                # KV or NATS trouble: let JetStream redeliver; decide() is idempotent.
                log.exception("run %s: could not apply %s", event.run_id, event.type)
                span.set_status(StatusCode.ERROR, type(exc).__name__)
                span.set_attribute("error.type", type(exc).__name__)
                _observe(event.type, "error", started)
                await msg.nack(delay=1.0)
                return
            span.set_attribute("moot.run_known", known)
        _observe(event.type, "applied" if known else "unknown_run", started)
        if not known:
            log.warning(
                "run %s: %s for a run with no state (expired or never created)", event.run_id, event.type
            )
        await msg.ack()


def _decision_attributes(event: Any) -> dict[str, Any]:
    attributes = {"moot.run_id": event.run_id, "moot.event.type": event.type}
    for name in ("call_id", "iteration", "role", "model", "instance"):
        value = getattr(event, name, None)
        if value is not None:
            attributes["moot.round" if name == "iteration" else f"moot.{name}"] = value
    return attributes


def _observe(event_type: str, outcome: str, started: float) -> None:
    metrics.arbiter_decisions.add(1, {"moot.event.type": event_type, "moot.outcome": outcome})
    metrics.arbiter_decision_duration.record(time.perf_counter() - started, {"moot.outcome": outcome})
