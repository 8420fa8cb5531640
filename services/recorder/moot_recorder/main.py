"""recorder wiring: settings, broker, text store, Postgres pool (schema checked, never applied), the batch subscriber, health endpoints."""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
from fastapi import FastAPI
from nats.js import JetStreamContext
from nats.js.errors import Error as JetStreamError

from moot.observability import telemetry
from moot.records.migrate import require_current
from moot.runtime.nats import ensure_topology, make_broker, open_texts
from moot.runtime.service import serve, service_app, setup_logging
from moot.runtime.settings import MootSettings, get_settings
from moot.runtime.subjects import Names
from moot_recorder.handlers import BatchRecorder, consumer_config, register
from moot_recorder.settings import RecorderSettings
from moot_recorder.writer import Writer

log = logging.getLogger(__name__)


async def connect_database(settings: MootSettings, rs: RecorderSettings) -> asyncpg.Pool:
    """A pool, retried for a while: in compose or Kubernetes Postgres may come up after us."""
    deadline = time.monotonic() + rs.connect_timeout_seconds
    delay = 0.5
    while True:
        try:
            return await asyncpg.create_pool(
                settings.database_url,
                min_size=rs.pool_min_size,
                max_size=rs.pool_max_size,
                command_timeout=rs.command_timeout_seconds,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            # The URL may carry a password: the error type only.
            log.warning("database not reachable (%s); retrying in %.1fs", type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def ensure_consumer(js: JetStreamContext, names: Names, rs: RecorderSettings) -> None:
    """Create the durable consumer, or update it so changed settings (ack_wait, ...) take effect.

    The subscriber would create it too, but never updates an existing one.
    """
    try:
        await js.add_consumer(names.runs_stream, consumer_config(names, rs))
    except JetStreamError as exc:
        log.warning("consumer %s keeps its current settings: %s", names.recorder_consumer, exc)


def create_app(
    settings: MootSettings | None = None, recorder_settings: RecorderSettings | None = None
) -> FastAPI:
    """The recorder app; `app.state.recorder.stats` holds its counters."""
    settings = settings or get_settings()
    rs = recorder_settings or RecorderSettings()
    names = Names(settings.namespace)
    telemetry.setup("recorder")
    broker = make_broker(settings, name="moot-recorder")
    recorder = BatchRecorder(names, rs)
    # Registered before start (faststream wants it so); it consumes only once on_start has run.
    register(broker, names, rs, recorder)
    pool: asyncpg.Pool | None = None
    schema_current = False

    async def on_start() -> None:
        nonlocal pool, schema_current
        js = broker.connection.jetstream()
        await ensure_topology(js, names, settings)
        await ensure_consumer(js, names, rs)
        recorder.texts = await open_texts(js, names, settings)
        recorder.js = js
        pool = await connect_database(settings, rs)
        # `moot migrate` owns the schema: replicas applying it at once would race on DDL.
        try:
            await require_current(pool, wait_seconds=settings.schema_wait_seconds)
        except BaseException:
            await pool.close()
            pool = None
            raise
        schema_current = True
        recorder.writer = Writer(pool)

    async def on_stop() -> None:
        nonlocal pool, schema_current
        recorder.writer = None
        schema_current = False
        if pool is not None:
            await pool.close()
            pool = None

    def ready() -> bool:
        return pool is not None and schema_current

    app = service_app(
        "recorder",
        broker,
        on_start=on_start,
        on_stop=on_stop,
        ready=ready,
        consumers=[(names.runs_stream, names.recorder_consumer)],
    )
    app.state.recorder = recorder
    return app


def main() -> None:
    settings = get_settings()
    setup_logging(settings, "recorder")
    serve(create_app(settings), default_port=8003)
