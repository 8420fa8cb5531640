"""Several runs at once on the one local model: do calls queue without timeouts? (docs/benchmarks.md)

Not a test: a measurement, run by hand with the local model installed and NATS/Postgres given:

    NATS_URL=nats://127.0.0.1:4222 DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test \\
        .venv/bin/python tests/slow/local_model_load.py --runs 3

It starts the stack as `moot up` does with no model list (local model, default workers and
their concurrency for it), submits `--runs` consortiums of `local:3` at once, follows them to
their end, and prints per run: status, wall time, and the slowest call; overall: calls, calls
that needed more than one attempt (a timeout is retried), failed calls.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import tempfile
import time
from typing import Any

from moot.cli.client import MootClient
from moot.devstack.localmodel import LocalModelConfig
from moot.devstack.stack import Stack
from moot.records.accounts import local_key


async def _one(client: MootClient, n: int, max_tokens: int) -> tuple[dict[str, Any], float]:
    started = time.monotonic()
    created = await client.create_run(
        {
            "prompt": f"Name {n + 2} benefits of regular exercise.",
            "members": [{"model": "local", "count": 3}],
            "arbiter": "local",
            "max_iterations": 2,
            "max_tokens": max_tokens,
        }
    )
    async for _ in client.events(created["id"]):
        pass
    return await client.get_run(created["id"]), time.monotonic() - started


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="moot-load-") as data_dir:
        async with Stack(
            data_dir,
            port=0,
            namespace=f"load_{secrets.token_hex(4)}",
            nats_url=os.environ.get("NATS_URL"),
            database_url=os.environ.get("DATABASE_URL"),
            local_model=True,
            local_model_config=LocalModelConfig(install=False),
            progress=None,
        ) as stack:
            assert stack.infrastructure is not None
            key = await local_key(stack.infrastructure.database_url, str(stack.data_dir))
            async with MootClient(stack.gateway_url, api_key=key) as client:
                started = time.monotonic()
                results = await asyncio.gather(*(_one(client, n, args.max_tokens) for n in range(args.runs)))
                total = time.monotonic() - started
    calls = [
        c for run, _ in results for it in run["iterations"] for c in [*it["members"], it["arbiter"]] if c
    ]
    for run, seconds in results:
        run_calls = [c for it in run["iterations"] for c in [*it["members"], it["arbiter"]] if c]
        slowest = max((c["latency_ms"] for c in run_calls), default=0) / 1000
        print(
            f"run {run['id']}: {run['status']} in {seconds:.0f}s, {len(run['iterations'])} iterations, "
            f"{len(run_calls)} calls, slowest call {slowest:.1f}s ({run['reason']})"
        )
    retried = sum(c["attempts"] > 1 for c in calls)
    failed = sum(c["status"] == "failed" for c in calls)
    tokens = sum(c["usage"]["output_tokens"] for c in calls)
    print(f"{args.runs} runs at once: {total:.0f}s in all; {len(calls)} calls, {tokens} tokens out")
    print(f"calls retried: {retried}, failed: {failed}")
    return 0 if all(run["status"] == "completed" for run, _ in results) and not failed else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
