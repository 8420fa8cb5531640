"""member-worker wiring: settings, model list, broker, text store, the call subscriber, health endpoints."""

from __future__ import annotations

from fastapi import FastAPI

from moot.observability import telemetry
from moot.runtime.models import ModelList
from moot.runtime.nats import ensure_topology, make_broker, open_texts
from moot.runtime.service import serve, service_app, setup_logging
from moot.runtime.settings import get_settings
from moot.runtime.subjects import Names
from moot_member_worker.calls import ModelCaller
from moot_member_worker.handlers import register
from moot_member_worker.settings import WorkerSettings


def create_app() -> FastAPI:
    settings = get_settings()
    worker = WorkerSettings()
    names = Names(settings.namespace)
    setup_logging(settings, "member-worker")
    telemetry.setup("member-worker")
    broker = make_broker(settings, name="moot-member-worker")
    caller = ModelCaller(
        ModelList.load(settings.models_file),
        timeout=settings.call_timeout_seconds,
        backoff_base=worker.backoff_base_seconds,
        backoff_max=worker.backoff_max_seconds,
    )
    register(broker, names, settings, caller, worker.concurrency)

    async def on_start() -> None:
        js = broker.connection.jetstream()
        await ensure_topology(js, names, settings)
        # Before the subscriber consumes: every job's long texts are read from it.
        caller.texts = await open_texts(js, names, settings)

    return service_app(
        "member-worker", broker, on_start=on_start, consumers=[(names.jobs_stream, names.worker_consumer)]
    )


def main() -> None:
    serve(create_app(), default_port=8001)
