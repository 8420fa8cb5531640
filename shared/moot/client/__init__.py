"""A typed Python client of a moot gateway, blocking (`Client`) and asyncio (`AsyncClient`).

It speaks the API's own contract: requests are `moot.requests` models, runs come back as
`moot.views` models, a run's events as `moot.messages` models. `pip install moot` (the `shared/`
folder) installs it with pydantic and httpx alone, no server package.

    from moot.client import Client
    from moot.requests import ConsortiumRequest, MemberSpec

    with Client("http://127.0.0.1:8000", api_key="mk-...") as moot:
        run = moot.create_run(
            ConsortiumRequest(prompt="Is P = NP?", members=[MemberSpec(model="fast", count=2)], arbiter="arb")
        )
        for item in moot.events(run.id):  # FinalChunk, IterationCompleted, ..., RunCompleted
            print(item.event.type)
        print(moot.get_run(run.id).answer)

docs/clients.md ("Python client") has the rest: saved configurations, errors, resuming a stream.
"""

from moot.client.api import (
    ApiError,
    ErrorDetail,
    FieldError,
    MootError,
    RawEvent,
    RunAccepted,
    SavedConfig,
    StreamedEvent,
    StreamEnded,
)
from moot.client.clients import AsyncClient, Client

__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "ErrorDetail",
    "FieldError",
    "MootError",
    "RawEvent",
    "RunAccepted",
    "SavedConfig",
    "StreamEnded",
    "StreamedEvent",
]
