"""`moot demo` as a user runs it: a process that starts the stack and answers.

The test model server plays the provider here (fast); `tests/slow` runs the local model.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from pathlib import Path


async def test_moot_demo_prints_the_members_answers_and_the_synthesis(
    nats_url: str, database_url: str, tmp_path: Path
) -> None:
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
    # The demo's report on stdout: what the members said, then the answer under its heading.
    report = out.decode()
    assert report.startswith("members' answers (iteration 1):\n  fast#1")
    members, _, answer = report.partition("\n\n── synthesis ──\n")
    assert len(members.splitlines()) == 4  # the title, fast#1, fast#2, slow#1
    assert answer.startswith("Synthesis by arbiter")
