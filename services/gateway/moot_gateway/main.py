"""gateway wiring: one NATS connection, the run store and the text store, a Postgres pool, the body cap, the routers."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import nats.errors
import uvicorn
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from moot.observability import telemetry
from moot.records.migrate import require_current
from moot.runtime.models import ModelList
from moot.runtime.nats import ensure_topology, make_broker, open_texts, publish_all
from moot.runtime.runstore import RunStore
from moot.runtime.service import setup_logging
from moot.runtime.settings import MootSettings, get_settings
from moot.runtime.subjects import Names
from moot_gateway.deps import Clients
from moot_gateway.errors import (
    DEPENDENCY_ERRORS,
    ApiError,
    api_error_handler,
    dependency_error_handler,
    http_error_handler,
    validation_error_handler,
)
from moot_gateway.evals import EvalDriver
from moot_gateway.limits import BodyLimit
from moot_gateway.routes import configs, evals, health, openai, runs, web
from moot_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

API_DESCRIPTION = """Several language models deliberate on a question: a consortium iterates under an
arbiter, a debate runs under a judge. Submit a run, follow its events (SSE), read its record.

Every `/v1` request needs `Authorization: Bearer <key>` (`moot keys create`, or the key `moot up`
prints). Runs and saved configurations belong to the owner of the key that made them: another
owner's key does not see them. Errors have one shape, `{"error": {"message", "type", "param",
"code"}}`; a 429 says when to try again (`Retry-After`)."""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: MootSettings = app.state.settings
    gw: GatewaySettings = app.state.gateway_settings
    names = Names(settings.namespace)
    # Connect a NatsBroker in the lifespan (faststream's FastAPI plugin is deprecated).
    broker = make_broker(settings, name="moot-gateway")
    await broker.connect()
    js = broker.connection.jetstream()
    kv = await ensure_topology(js, names, settings)
    # Every text people read (views, events) is put back from here before it is answered.
    texts = await open_texts(js, names, settings)

    async def publish(items: list[tuple[str, str, bytes]]) -> None:
        await publish_all(broker, names, items)

    # Postgres holds the API keys: without it no request can be authenticated, so the gateway
    # does not start (its supervisor, or Kubernetes, restarts it until Postgres answers).
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=gw.db_pool_min,
        max_size=gw.db_pool_max,
        timeout=gw.db_connect_timeout_seconds,  # reconnecting after an outage: fail fast, answer 503
    )
    # `moot migrate` owns the schema (replicas applying it at once would race on DDL): wait for it.
    try:
        await require_current(pool, wait_seconds=settings.schema_wait_seconds)
    except BaseException:
        await pool.close()
        await broker.stop()
        raise
    store = RunStore(kv=kv, names=names, publish=publish, texts=texts)
    models = ModelList.load(settings.models_file)
    clients = app.state.clients = Clients(settings, names, broker, store, pool, gw, models)
    # Evaluations this gateway drives, and those whose gateway died (moot_gateway.evals).
    driver = app.state.evals = EvalDriver(clients, gw.eval_lease_seconds, gw.eval_poll_seconds)
    driver.start()
    try:
        yield
    finally:
        await driver.stop()
        try:
            await broker.stop()
        except nats.errors.Error:
            # NATS is away (the client is reconnecting): nothing to drain, only stop trying. What
            # the client buffered meanwhile cannot be sent (OSError): the process is going anyway.
            with contextlib.suppress(OSError):
                await broker.connection.close()
        finally:
            await pool.close()
            telemetry.flush()


def create_app(settings: MootSettings | None = None, gateway: GatewaySettings | None = None) -> FastAPI:
    """The gateway; `settings` and `gateway` default to the environment's (tests pass their own)."""
    settings = settings or get_settings()
    gateway = gateway or GatewaySettings()
    setup_logging(settings, "gateway")
    telemetry.setup("gateway")
    # Swagger UI (/docs) and ReDoc (/redoc) from the package's own assets, not a CDN.
    app = FastAPIOffline(title="moot", version="0.1.0", lifespan=lifespan, description=API_DESCRIPTION)
    app.state.settings, app.state.gateway_settings = settings, gateway
    # Added before the instrumentation, so a refused body still gets its server span.
    app.add_middleware(BodyLimit, max_bytes=gateway.max_body_bytes)
    # Browsers may call the API from other origins only where the operator says so (off by default).
    if origins := gateway.cors_origin_list():
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            expose_headers=["Location", "Retry-After"],
        )
    # A server span per request (the root of a run's trace for POST /v1/runs), HTTP metrics.
    telemetry.instrument_fastapi(app)
    app.add_api_route("/metrics", telemetry.metrics_response, methods=["GET"], include_in_schema=False)
    app.add_exception_handler(ApiError, api_error_handler)
    # One error shape everywhere: validation errors and Starlette's own refusals too.
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    # NATS or Postgres failing under a request is a 503 with Retry-After, never a 500.
    for error in DEPENDENCY_ERRORS:
        app.add_exception_handler(error, dependency_error_handler)
    app.include_router(health.router)
    app.include_router(runs.router)
    app.include_router(configs.router)
    app.include_router(openai.router)
    app.include_router(evals.router)  # evaluations (docs/eval.md)
    app.include_router(web.router)  # the web view (docs/web.md)
    return app


def main() -> None:
    port = int(os.environ.get("MOOT_HTTP_PORT", "8000"))
    host = os.environ.get("MOOT_HTTP_HOST", "0.0.0.0")
    uvicorn.run(create_app(), host=host, port=port, log_level="warning", access_log=False)
