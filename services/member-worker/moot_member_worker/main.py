"""member-worker wiring: settings, model list, broker, text store, run states, the job consumer, health endpoints."""

from __future__ import annotations

from fastapi import FastAPI

from moot.observability import telemetry
from moot.runtime.models import ModelList
from moot.runtime.nats import ensure_topology, make_broker, open_texts, publish_all
from moot.runtime.runstore import RunStore
from moot.runtime.service import serve, service_app, setup_logging
from moot.runtime.settings import get_settings
from moot.runtime.subjects import Names
from moot_member_worker.calls import ModelCaller
from moot_member_worker.handlers import CallJobs
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
        allow_unlisted=settings.allow_unlisted_models,
    )
    jobs = CallJobs(
        broker,
        names,
        settings,
        caller,
        worker.concurrency,
        run_check_seconds=worker.run_check_seconds,
        drain_seconds=worker.drain_seconds,
    )

    async def publish(items: list[tuple[str, str, bytes]]) -> None:
        await publish_all(broker, names, items)

    async def on_start() -> None:
        js = broker.connection.jetstream()
        kv = await ensure_topology(js, names, settings)
        # Before the first job: every job's long texts are read from it.
        caller.texts = await open_texts(js, names, settings)
        # Read only (is a job's run still running?); the worker never writes run state.
        jobs.runs = RunStore(kv=kv, names=names, publish=publish, texts=caller.texts)
        await jobs.start(js)

    return service_app(
        "member-worker",
        broker,
        on_start=on_start,
        before_stop=jobs.stop,
        ready=lambda: jobs.consuming,
        consumers=[(names.jobs_stream, names.worker_consumer)],
    )


def main() -> None:
    serve(create_app(), default_port=8001)
