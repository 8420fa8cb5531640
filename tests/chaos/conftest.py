"""Chaos fixtures: where a scenario's moot keeps its files and which Postgres server it uses.

Every scenario builds its own moot with `harness.Chaos` (its own nats-server and database), since
it breaks them; only the Postgres server is shared (`DATABASE_URL`, else the session's).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from moot.devstack.embedded import Infrastructure


@pytest.fixture
def server_url(infrastructure: Infrastructure) -> str:
    """The Postgres server's URL (its default database); scenarios create their own database on it."""
    return infrastructure.database_url


@pytest.fixture
def work_dir() -> Iterator[Path]:
    """A scenario's files (NATS store, service logs), outside pytest's tmp dirs.

    pytest keeps only the last three sessions' tmp dirs, so a concurrent pytest run (CI steps,
    other developers' tests) deletes a running scenario's NATS store and log dir under it. Kept
    after the test when `MOOT_CHAOS_KEEP` is set, to read the logs.
    """
    path = Path(tempfile.mkdtemp(prefix="moot-chaos-"))
    print(f"\nchaos work dir: {path}")
    yield path
    if not os.environ.get("MOOT_CHAOS_KEEP"):
        shutil.rmtree(path, ignore_errors=True)
