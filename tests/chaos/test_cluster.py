"""The production shape of NATS (issue 11): a 3-node JetStream cluster, one node killed mid-load.

Three nats-servers from the wheel on loopback, routed to each other (one cluster, a file store
each); every stream and KV bucket with 3 replicas (`MOOT_NATS_REPLICAS=3`, as deploy/k8s sets
it); the services get all three URLs in `NATS_URL`. Once 40% of the runs are accepted, the node
leading the runs stream is SIGKILLed and started again 5 s later on its store. What it exercises
beyond the single-server restart: leader elections for the streams, their consumers and the KV
buckets, clients failing over to the surviving nodes (publishes and fetches cut mid-election are
retried, redelivered, or covered by the outbox and the sweeper), and the node catching up.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import Chaos, chaos_runs, check, mixed_runs

pytestmark = pytest.mark.chaos


async def test_cluster_node_killed_mid_load(work_dir: Path, server_url: str) -> None:
    name = "NATS 3-node cluster (R3), stream leader killed and back after 5 s"
    async with Chaos(name, work_dir, server_url, nats_nodes=3) as c:
        result = await c.scenario(mixed_runs(chaos_runs()), c.restart_nats_node)
    check(result)
