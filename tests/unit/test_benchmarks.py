"""Every benchmark starts (its imports and options hold): they are not run in CI, where their
figures would mean nothing, but a fresh clone must be able to run each with one command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted(
    p for p in (Path(__file__).resolve().parents[2] / "benchmarks").glob("*.py") if p.name != "harness.py"
)


def test_the_suite_has_every_benchmark_of_issue_14() -> None:
    names = {p.stem for p in BENCHMARKS}
    assert {
        "latency_overhead",
        "cpu_per_run",
        "many_in_flight",
        "scaling",
        "recorder_throughput",
        "peers",
    } <= names


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.stem)
def test_a_benchmark_starts(script: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
