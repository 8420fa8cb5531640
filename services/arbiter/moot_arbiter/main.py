"""arbiter wiring: settings, broker, run store over the KV bucket and the text store, the outcome subscriber."""

from __future__ import annotations

import asyncio
import contextlib
import os

from fastapi import FastAPI

from moot.observability import telemetry
from moot.runtime.nats import ensure_topology, make_broker, open_texts, publish_all
from moot.runtime.runstore import RunStore
from moot.runtime.service import serve, service_app, setup_logging
from moot.runtime.settings import get_settings
from moot.runtime.subjects import Names
from moot_arbiter import dead_letters, sweeper
from moot_arbiter.handlers import register


def create_app() -> FastAPI:
    settings = get_settings()
    names = Names(settings.namespace)
    setup_logging(settings, "arbiter")
    telemetry.setup("arbiter")
    broker = make_broker(settings, name="moot-arbiter", handlers_take_the_message=True)
    # The bucket can only be opened once connected, but handlers must be registered before.
    holder: dict[str, RunStore] = {}
    background: list[asyncio.Task[None]] = []

    async def publish(items: list[tuple[str, str, bytes]]) -> None:
        await publish_all(broker, names, items)

    async def on_start() -> None:
        js = broker.connection.jetstream()
        kv = await ensure_topology(js, names, settings)
        texts = await open_texts(js, names, settings)
        holder["store"] = RunStore(kv=kv, names=names, publish=publish, texts=texts)
        # Every replica sweeps (deadlines, outboxes a crash left); CAS decides, no leader needed.
        background.append(
            asyncio.create_task(sweeper.run(lambda: holder["store"], settings.sweep_interval_seconds))
        )

    async def on_stop() -> None:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    concurrency = int(os.environ.get("MOOT_ARBITER_CONCURRENCY", "16"))
    register(broker, names, lambda: holder["store"], concurrency)
    # Messages consumers gave up on: copied to the dead-letter stream, their runs failed.
    dead_letters.register(broker, names, lambda: holder["store"])
    return service_app(
        "arbiter",
        broker,
        on_start=on_start,
        on_stop=on_stop,
        consumers=[
            (names.runs_stream, names.arbiter_consumer),
            (names.advisories_stream, names.advisory_consumer),
            (names.dead_stream, names.dead_run_consumer),
        ],
    )


def main() -> None:
    serve(create_app(), default_port=8002)
