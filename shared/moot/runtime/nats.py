"""NATS wiring shared by the services: the broker, the streams, the run-state bucket, publishing."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from faststream.nats import NatsBroker
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError
from nats.js.kv import KeyValue

from moot.observability.telemetry import broker_middlewares
from moot.runtime.settings import MootSettings
from moot.runtime.subjects import Names
from moot.runtime.textstore import TextStore, open_text_store
from moot.texts import MESSAGE_BUDGET_BYTES, NATS_MAX_PAYLOAD_BYTES

log = logging.getLogger(__name__)

MSG_ID = "Nats-Msg-Id"


def make_broker(settings: MootSettings, **kwargs: object) -> NatsBroker:
    """A faststream NATS broker; one connection per process, reused for everything.

    With tracing on, every publish and consume goes through the telemetry middleware: W3C trace
    context travels in the message headers (see `moot.observability.telemetry`).
    """
    return NatsBroker(
        settings.nats_url,
        name=kwargs.pop("name", "moot"),  # type: ignore[arg-type]
        max_reconnect_attempts=-1,
        logger=log,
        # faststream logs every message received and processed; at INFO that is two lines per
        # message with nothing to identify it (see docs/benchmarks.md). Debug level keeps them.
        log_level=logging.DEBUG,
        middlewares=broker_middlewares(),
        **kwargs,  # type: ignore[arg-type]
    )


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError:
        # Exists with other settings (e.g. retention changed): update what can be updated.
        await js.update_stream(config)


async def open_texts(js: JetStreamContext, names: Names, settings: MootSettings) -> TextStore:
    """The text store (created if missing): where every long text of every run is kept."""
    return await open_text_store(js, names.text_bucket, settings.text_ttl_seconds)


async def ensure_topology(js: JetStreamContext, names: Names, settings: MootSettings) -> KeyValue:
    """Create (idempotently) the streams (runs, jobs, dead letters, advisories) and the run-state
    bucket; return the bucket."""
    await _ensure_stream(
        js,
        StreamConfig(
            name=names.runs_stream,
            subjects=[names.runs_wildcard],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=settings.event_retention_seconds,
            duplicate_window=120.0,
        ),
    )
    await _ensure_stream(
        js,
        StreamConfig(
            name=names.jobs_stream,
            subjects=[names.jobs_wildcard],
            # A job is gone once a worker acks it: the stream is a queue, not a history.
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=120.0,
        ),
    )
    await _ensure_stream(
        js,
        StreamConfig(
            name=names.dead_stream,
            subjects=[names.dead_wildcard],
            # Kept until replayed (`moot dead-letters replay` deletes it) or for a month.
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=settings.dead_letter_retention_seconds,
            duplicate_window=120.0,
        ),
    )
    await _ensure_stream(
        js,
        StreamConfig(
            name=names.advisories_stream,
            # JetStream's max-deliveries advisories are core NATS messages, lost when no arbiter
            # listens; captured here, one arbiter (a durable consumer) turns each into a dead letter.
            subjects=names.max_deliveries_advisories,
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=settings.dead_letter_retention_seconds,
        ),
    )
    try:
        return await js.key_value(names.state_bucket)
    except Exception:
        from nats.js.api import KeyValueConfig

        return await js.create_key_value(
            KeyValueConfig(bucket=names.state_bucket, history=1, ttl=settings.state_ttl_seconds)
        )


# faststream's default JetStream publish timeout is 0.5 s, which a loaded server exceeds; a publish
# that times out may still have been stored, so retrying it is safe (the message id deduplicates).
PUBLISH_TIMEOUT_SECONDS = 5.0
PUBLISH_ATTEMPTS = 3


class PayloadTooLarge(ValueError):
    """A message (or KV value) larger than NATS's max_payload: the server would refuse it."""


def check_payload(what: str, payload: bytes, budget: int = MESSAGE_BUDGET_BYTES) -> None:
    """Refuse a payload over max_payload (PayloadTooLarge); log one over `budget` as an error.

    `what` names the message (its type or subject) in both, never its content. Over the budget
    it still goes out: the message is carried, but something travels inline that should not.
    """
    size = len(payload)
    if size > NATS_MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(f"{what}: {size} bytes, over NATS max_payload ({NATS_MAX_PAYLOAD_BYTES} bytes)")
    if size > budget:
        log.error(
            "%s: %d bytes, over the budget of %d bytes (texts should travel by reference)", what, size, budget
        )


async def publish(broker: NatsBroker, names: Names, subject: str, msg_id: str, payload: bytes) -> None:
    """Publish one message to JetStream, deduplicated by `msg_id`, retrying timeouts.

    PayloadTooLarge, before anything is sent, for a message NATS would refuse.
    """
    # Every message, a run's end too (its view travels by reference): the same budget.
    check_payload(subject, payload)
    for attempt in range(1, PUBLISH_ATTEMPTS + 1):
        try:
            await broker.publish(
                payload,
                subject,
                headers={MSG_ID: msg_id},
                stream=names.stream_for(subject),
                timeout=PUBLISH_TIMEOUT_SECONDS,
            )
            return
        except (TimeoutError, NatsTimeoutError):
            if attempt == PUBLISH_ATTEMPTS:
                raise
            log.warning("publish of %s timed out (attempt %d); retrying", msg_id, attempt)


async def publish_all(broker: NatsBroker, names: Names, items: Iterable[tuple[str, str, bytes]]) -> None:
    """Publish (subject, msg_id, payload) triples to JetStream in order, each deduplicated by its id."""
    for subject, msg_id, payload in items:
        await publish(broker, names, subject, msg_id, payload)
