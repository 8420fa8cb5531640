"""Request dependencies: the process-wide clients the lifespan opened, as typed aliases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import asyncpg
from fastapi import Depends, Request
from faststream.nats import NatsBroker

from moot.runtime.models import ModelList
from moot.runtime.runstore import RunStore
from moot.runtime.settings import MootSettings
from moot.runtime.subjects import Names
from moot_gateway.settings import GatewaySettings


@dataclass
class Clients:
    settings: MootSettings
    names: Names
    broker: NatsBroker
    store: RunStore
    pool: asyncpg.Pool  # the gateway does not start without Postgres: it could authenticate nobody
    gateway: GatewaySettings
    models: ModelList  # which model names a run may use (`moot.runtime.models`)


async def get_clients(request: Request) -> Clients:
    # `async`: FastAPI runs a plain `def` dependency in its thread pool, a hop on every request.
    clients: Clients = request.app.state.clients
    return clients


ClientsDep = Annotated[Clients, Depends(get_clients)]
