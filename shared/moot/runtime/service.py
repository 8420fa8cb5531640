"""Process wiring shared by the worker services: logging, health endpoints, serving.

Each worker service (member-worker, arbiter, recorder) is a faststream NATS broker inside a
small FastAPI app whose lifespan starts and stops it; the app serves `/healthz` (the process
is alive) and `/readyz` (connected and ready to take work) for Kubernetes probes and `moot up`,
and `/metrics` (Prometheus) with the pending counts of the service's durable consumers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI, Response
from faststream.nats import NatsBroker

from moot.observability import telemetry
from moot.runtime.settings import MootSettings


def setup_logging(settings: MootSettings, service: str) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s",
    )
    # litellm and httpx log request details (URLs, sometimes headers) at INFO; keep them quiet.
    for noisy in ("LiteLLM", "litellm", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def service_app(
    name: str,
    broker: NatsBroker,
    *,
    on_start: Callable[[], Awaitable[None]] | None = None,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    before_stop: Callable[[], Awaitable[None]] | None = None,
    ready: Callable[[], bool] | None = None,
    consumers: Sequence[tuple[str, str]] = (),
) -> FastAPI:
    """A FastAPI app that runs `broker` for its lifetime and answers health probes.

    `consumers` are the (stream, durable) pairs whose lag `/metrics` reports. `before_stop` runs
    while the connection is still open (a consumer of its own hands its messages back);
    `on_stop` after the broker stopped.
    """
    started = asyncio.Event()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await broker.connect()
        if on_start:
            await on_start()
        await broker.start()
        started.set()
        lag = (
            asyncio.create_task(telemetry.watch_consumers(broker.connection.jetstream(), consumers))
            if consumers
            else None
        )
        try:
            yield
        finally:
            started.clear()
            if lag is not None:
                lag.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await lag
            if before_stop:
                await before_stop()
            await broker.stop()
            if on_stop:
                await on_stop()
            telemetry.flush()

    app = FastAPI(title=f"moot {name}", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok", "service": name}

    @app.get("/readyz")
    async def readyz(response: Response) -> dict[str, str]:
        ok = started.is_set() and await broker.ping(timeout=1.0) and (ready() if ready else True)
        if not ok:
            response.status_code = 503
        return {"status": "ready" if ok else "not ready", "service": name}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        return telemetry.metrics_response()

    return app


def serve(app: FastAPI, default_port: int) -> None:
    """Run the app until SIGTERM/SIGINT; the lifespan drains the broker on the way out."""
    port = int(os.environ.get("MOOT_HTTP_PORT", default_port))
    host = os.environ.get("MOOT_HTTP_HOST", "0.0.0.0")
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    # uvicorn installs its own SIGINT/SIGTERM handlers; default SIGPIPE behaviour is fine.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    server.run()
