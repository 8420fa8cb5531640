"""gateway wiring: one NATS connection, the run store, a Postgres pool, the routers."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import uvicorn
from fastapi import FastAPI

from moot.nats import ensure_topology, make_broker, publish_all
from moot.runstore import RunStore
from moot.service import setup_logging
from moot.settings import get_settings
from moot.subjects import Names
from moot_gateway.deps import Clients
from moot_gateway.routes import health, runs
from moot_gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    gw = GatewaySettings()
    names = Names(settings.namespace)
    # Connect a NatsBroker in the lifespan (faststream's FastAPI plugin is deprecated).
    broker = make_broker(settings, name="moot-gateway")
    await broker.connect()
    kv = await ensure_topology(broker.connection.jetstream(), names, settings)

    async def publish(items: list[tuple[str, str, bytes]]) -> None:
        await publish_all(broker, names, items)

    pool: asyncpg.Pool | None = None
    try:
        pool = await asyncpg.create_pool(
            settings.database_url, min_size=gw.db_pool_min, max_size=gw.db_pool_max
        )
    except (OSError, asyncpg.PostgresError) as exc:
        # Runs still work without it; only finished runs that left KV cannot be read. /readyz says so.
        log.error("Postgres unavailable at start: %s", type(exc).__name__)
    app.state.clients = Clients(settings, names, broker, RunStore(kv=kv, names=names, publish=publish), pool)
    try:
        yield
    finally:
        await broker.stop()
        if pool is not None:
            await pool.close()


def create_app() -> FastAPI:
    setup_logging(get_settings(), "gateway")
    app = FastAPI(title="moot", version="0.1.0", lifespan=lifespan)
    app.include_router(health.router)
    app.include_router(runs.router)
    return app


def main() -> None:
    port = int(os.environ.get("MOOT_HTTP_PORT", "8000"))
    host = os.environ.get("MOOT_HTTP_HOST", "0.0.0.0")
    uvicorn.run(create_app(), host=host, port=port, log_level="warning", access_log=False)
