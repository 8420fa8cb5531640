"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Response

from moot_gateway.deps import ClientsDep
from moot_gateway.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> dict[str, str]:
    return {"status": "ok", "service": "gateway"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(clients: ClientsDep, response: Response) -> dict[str, str]:
    checks = {"nats": "ok" if await clients.broker.ping(timeout=1.0) else "down", "postgres": "ok"}
    try:
        async with clients.pool.acquire(timeout=1.0) as conn:
            await conn.fetchval("SELECT 1")
    except Exception:
        checks["postgres"] = "down"
    if any(v != "ok" for v in checks.values()):
        response.status_code = 503
    return {"status": "ready" if response.status_code != 503 else "not ready", **checks}
