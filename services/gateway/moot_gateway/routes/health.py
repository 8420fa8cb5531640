"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response

from moot_gateway.deps import Clients, ClientsDep
from moot_gateway.schemas import Health, Readiness

router = APIRouter(tags=["health"])

# Each check answers within this, or counts as down (a probe must not hang on a dead server).
PROBE_SECONDS = 2.0


@router.get("/healthz", response_model=Health)
async def healthz() -> dict[str, str]:
    return {"status": "ok", "service": "gateway"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(clients: ClientsDep, response: Response) -> dict[str, str]:
    """Each dependency `ok` or `down`. 503 without NATS or its buckets (no run can be served).

    Postgres down is `degraded` but still 200: keys seen lately still authenticate and runs go on
    (see "Outages" in docs/architecture.md); taking every replica out of rotation would stop them.
    """
    nats, kv, postgres = await asyncio.gather(_nats(clients), _kv(clients), _postgres(clients))
    checks = {"nats": nats, "kv": kv, "postgres": postgres}
    if nats != "ok" or kv != "ok":
        response.status_code = 503
        status = "not ready"
    else:
        status = "ready" if postgres == "ok" else "degraded"
    return {"status": status, **checks}


async def _nats(clients: Clients) -> str:
    return "ok" if await clients.broker.ping(timeout=PROBE_SECONDS) else "down"


async def _kv(clients: Clients) -> str:
    """The run-state and text buckets answer (JetStream is up and they exist)."""
    try:
        async with asyncio.timeout(PROBE_SECONDS):
            await clients.store.kv.status()
            await clients.store.texts.kv.status()
    except Exception:
        return "down"
    return "ok"


async def _postgres(clients: Clients) -> str:
    try:
        async with clients.pool.acquire(timeout=PROBE_SECONDS) as conn:
            await conn.fetchval("SELECT 1", timeout=PROBE_SECONDS)
    except Exception:
        return "down"
    return "ok"
