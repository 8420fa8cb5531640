"""`moot demo` as a user runs it: a process that starts the stack and answers.

The test model server plays the provider here (fast); `tests/slow` runs the local model.
"""

from __future__ import annotations

import asyncio
import os
import pty
import secrets
import signal
import sys
from pathlib import Path

import httpx
import pytest


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


async def test_from_a_terminal_the_demo_stays_up_and_a_closed_terminal_stops_its_stack(
    nats_url: str, database_url: str, tmp_path: Path
) -> None:
    """Run from a terminal, the demo keeps its stack up for the web view after its runs; a hangup
    (the terminal closed) stops it, every process of the stack with it."""
    env = {
        **os.environ,
        "NATS_URL": nats_url,
        "DATABASE_URL": database_url,
        "MOOT_NAMESPACE": f"demo_{secrets.token_hex(4)}",
    }
    terminal, other_end = pty.openpty()  # the demo's stdin is a terminal
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "moot.cli", "demo", "--test-models", "--port", "0",
            "--data-dir", str(tmp_path / "moot"),
            env=env, stdin=other_end, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        assert proc.stderr is not None
        said: list[str] = []
        while not any("stays up for the web view" in line for line in said):
            line = await asyncio.wait_for(proc.stderr.readline(), timeout=180)
            assert line, "".join(said)[-2000:]
            said.append(line.decode())
        watch = next(line for line in said if line.startswith("watch the runs in a browser: "))
        gateway = watch.split(": ", 1)[1].split("/runs")[0]
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{gateway}/healthz")).status_code == 200  # still up after the runs
            proc.send_signal(signal.SIGHUP)
            assert await asyncio.wait_for(proc.wait(), timeout=60) == 128 + signal.SIGHUP
            with pytest.raises(httpx.ConnectError):
                await http.get(f"{gateway}/healthz")
        rest = (await proc.stderr.read()).decode()
        assert "moot demo: SIGHUP: stopped" in rest
        assert not _group_alive(proc.pid), "the demo's process group is left running"
    finally:
        os.close(terminal)
        os.close(other_end)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
