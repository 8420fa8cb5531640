"""`moot demo` as a user runs it: a process that starts the stack and answers.

The test model server plays the provider here (fast); `tests/slow` runs the local model.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from pathlib import Path


async def test_moot_demo_prints_the_synthesis(nats_url: str, database_url: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "DATABASE_URL": database_url,
        "MOOT_NAMESPACE": f"demo_{secrets.token_hex(4)}",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "moot.cli", "demo", "--test-models", "--port", "0",
        "--data-dir", str(tmp_path / "moot"),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=180)
    assert proc.returncode == 0, err.decode()[-2000:]
    progress = err.decode()
    assert "iteration 1: asking 3 member instances" in progress
    assert "arbiter: confidence 0.90 -> stop" in progress
    assert out.decode().strip().startswith("Synthesis by arbiter")
