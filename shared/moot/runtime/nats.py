"""NATS wiring shared by the services: the broker, the streams, the run-state bucket, publishing."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterable
from typing import Any

from faststream.nats import NatsBroker
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from moot.observability.telemetry import broker_middlewares
from moot.runtime.settings import MootSettings
from moot.runtime.subjects import Names
from moot.runtime.textstore import TextStore, open_text_store
from moot.texts import MESSAGE_BUDGET_BYTES, NATS_MAX_PAYLOAD_BYTES

log = logging.getLogger(__name__)

MSG_ID = "Nats-Msg-Id"


def nats_servers(url: str) -> list[str]:
    """The servers of a `NATS_URL`: one URL, or several separated by commas (a cluster's nodes,
    e.g. `nats://a:4222,nats://b:4222`), as nats-py and faststream take them (a list)."""
    servers = [part.strip() for part in url.split(",") if part.strip()]
    if not servers:
        raise ValueError(f"no NATS server in {url!r}")
    return servers


def make_broker(settings: MootSettings, **kwargs: object) -> NatsBroker:
    """A faststream NATS broker; one connection per process, reused for everything.

    `NATS_URL` may name several servers (comma-separated): the client connects to one of them
    and fails over to the others (and to any node the cluster announces).

    With tracing on, every publish and consume goes through the telemetry middleware: W3C trace
    context travels in the message headers (see `moot.observability.telemetry`).
    """
    if kwargs.pop("handlers_take_the_message", False):
        # Every handler takes the message itself (`msg: NatsMessage`) and nothing else: no
        # dependency injection. faststream's injection resolved the message parameter in a worker
        # thread on every message (8 % of the arbiter's profile, a thread hop per decision:
        # docs/benchmarks.md, "CPU per run and profiles"); the decoder hands the message over.
        kwargs["apply_types"] = False
        kwargs["decoder"] = _the_message
    return NatsBroker(
        nats_servers(settings.nats_url),
        name=kwargs.pop("name", "moot"),  # type: ignore[arg-type]
        max_reconnect_attempts=-1,
        logger=log,
        # faststream logs every message received and processed; at INFO that is two lines per
        # message with nothing to identify it (see docs/benchmarks.md). Debug level keeps them.
        log_level=logging.DEBUG,
        middlewares=broker_middlewares(),
        **kwargs,  # type: ignore[arg-type]
    )


async def _the_message(msg: Any) -> Any:
    """A decoder that decodes nothing: the handler gets the message (ack, nack, headers, body)."""
    return msg


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    assert config.name is not None
    try:
        await js.add_stream(config)
    except BadRequestError as refused:
        # Exists with other settings (e.g. retention or replicas changed): update what can be
        # updated. (Refused for another reason, e.g. replicas > 1 on a single server: say why.)
        try:
            await js.update_stream(config)
        except NotFoundError:
            raise refused from None
        except BadRequestError:
            # A server that cannot change a stream's replica count (before NATS 2.10) refuses the
            # whole update: keep the stream's replicas, update the rest.
            current = (await js.stream_info(config.name)).config.num_replicas
            if current == config.num_replicas:
                raise
            log.warning(
                "stream %s: cannot change its replicas from %s to %s on this server; kept %s",
                config.name, current, config.num_replicas, current,
            )  # fmt: skip
            await js.update_stream(dataclasses.replace(config, num_replicas=current))


async def _ensure_bucket_replicas(js: JetStreamContext, bucket: str, replicas: int) -> None:
    """An existing KV bucket (its stream `KV_<bucket>`) brought to `replicas` where the server
    allows it (NATS 2.10+); otherwise it keeps its own, with a warning."""
    stream = f"KV_{bucket}"
    config = (await js.stream_info(stream)).config
    if config.num_replicas == replicas:
        return
    try:
        await js.update_stream(dataclasses.replace(config, num_replicas=replicas))
    except Exception as exc:  # best effort: the bucket works with the replicas it has
        log.warning(
            "KV bucket %s: cannot change its replicas from %s to %s: %s",
            bucket,
            config.num_replicas,
            replicas,
            exc,
        )


async def _ensure_key_value(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    """The bucket, created with `config` if missing, else with its replicas updated."""
    try:
        kv = await js.key_value(config.bucket)
    except BucketNotFoundError:
        return await js.create_key_value(config)
    await _ensure_bucket_replicas(js, config.bucket, config.replicas)
    return kv


async def open_texts(js: JetStreamContext, names: Names, settings: MootSettings) -> TextStore:
    """The text store (created if missing): where every long text of every run is kept."""
    store = await open_text_store(
        js, names.text_bucket, settings.text_ttl_seconds, replicas=settings.nats_replicas
    )
    await _ensure_bucket_replicas(js, names.text_bucket, settings.nats_replicas)
    return store


async def ensure_topology(js: JetStreamContext, names: Names, settings: MootSettings) -> KeyValue:
    """Create (idempotently) the streams (runs, jobs, dead letters, advisories) and the run-state
    bucket, each with `MOOT_NATS_REPLICAS` replicas; return the bucket."""
    await _ensure_stream(
        js,
        StreamConfig(
            name=names.runs_stream,
            subjects=[names.runs_wildcard],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=settings.event_retention_seconds,
            duplicate_window=120.0,
            num_replicas=settings.nats_replicas,
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
            num_replicas=settings.nats_replicas,
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
            num_replicas=settings.nats_replicas,
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
            num_replicas=settings.nats_replicas,
        ),
    )
    return await _ensure_key_value(
        js,
        KeyValueConfig(
            bucket=names.state_bucket,
            history=1,
            ttl=settings.state_ttl_seconds,
            replicas=settings.nats_replicas,
        ),
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
    """Publish (subject, msg_id, payload) triples to JetStream, each deduplicated by its id.

    Run events go out one after another, in order (a run's stream is read in order: its end
    last). Call jobs have no order among themselves (workers take them in any order): a run of
    consecutive jobs goes out at once, the acknowledgements awaited together, which saves a round
    trip per job on the way to the workers (docs/benchmarks.md, "Latency overhead").
    """
    jobs: list[tuple[str, str, bytes]] = []

    async def send_jobs() -> None:
        if jobs:
            await asyncio.gather(*(publish(broker, names, *job) for job in jobs))
            jobs.clear()

    for item in items:
        if names.stream_for(item[0]) == names.jobs_stream:
            jobs.append(item)
            continue
        await send_jobs()
        await publish(broker, names, *item)
    await send_jobs()
