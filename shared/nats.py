"""NATS wiring shared by the services: the broker, the streams, the run-state bucket, publishing."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from faststream.nats import NatsBroker
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError
from nats.js.kv import KeyValue

from moot.settings import MootSettings
from moot.subjects import Names

log = logging.getLogger(__name__)

MSG_ID = "Nats-Msg-Id"


def make_broker(settings: MootSettings, **kwargs: object) -> NatsBroker:
    """A faststream NATS broker; one connection per process, reused for everything."""
    return NatsBroker(
        settings.nats_url,
        name=kwargs.pop("name", "moot"),  # type: ignore[arg-type]
        max_reconnect_attempts=-1,
        logger=log,
        **kwargs,  # type: ignore[arg-type]
    )


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except BadRequestError:
        # Exists with other settings (e.g. retention changed): update what can be updated.
        await js.update_stream(config)


async def ensure_topology(js: JetStreamContext, names: Names, settings: MootSettings) -> KeyValue:
    """Create (idempotently) the two streams and the run-state bucket; return the bucket."""
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
    try:
        return await js.key_value(names.state_bucket)
    except Exception:
        from nats.js.api import KeyValueConfig

        return await js.create_key_value(
            KeyValueConfig(bucket=names.state_bucket, history=1, ttl=settings.state_ttl_seconds)
        )


async def publish_all(broker: NatsBroker, names: Names, items: Iterable[tuple[str, str, bytes]]) -> None:
    """Publish (subject, msg_id, payload) triples to JetStream in order, each deduplicated by its id."""
    for subject, msg_id, payload in items:
        await broker.publish(payload, subject, headers={MSG_ID: msg_id}, stream=names.stream_for(subject))
