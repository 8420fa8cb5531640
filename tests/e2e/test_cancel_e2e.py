"""Cancel stops work (issue 11): the queued jobs of a cancelled run never reach the model.

The stack's two workers take two calls each; a run asks eight members of the slow model, so at
least four jobs wait in the queue while the first calls run. After the cancel those are fetched,
found not running and acked without a call: the model server sees no request after the cancel.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time

from moot.cli.client import MootClient
from moot.devstack.model_server import ModelServer
from support import follow


def _requests_for(server: ModelServer, marker: str) -> int:
    return sum(marker in json.dumps(r["messages"]) for r in server.requests("slowpoke"))


async def test_queued_jobs_of_a_cancelled_run_are_not_called(
    client: MootClient, model_server: ModelServer
) -> None:
    marker = f"cancel-queued-{secrets.token_hex(4)}"
    created = await client.create_run(
        {"prompt": marker, "members": [{"model": "slowpoke", "count": 8}], "arbiter": "arb"}
    )
    deadline = time.monotonic() + 20
    while _requests_for(model_server, marker) == 0:
        assert time.monotonic() < deadline, "no call reached the model"
        await asyncio.sleep(0.05)
    await client.cancel_run(created["id"])
    events = await follow(client, created["id"])
    assert events[-1].type == "run.cancelled"
    called = _requests_for(model_server, marker)
    assert called <= 4  # two workers, two calls each
    # The calls in flight end (3 s); the workers then fetch the queued jobs and skip them.
    await asyncio.sleep(5.0)
    assert _requests_for(model_server, marker) == called
