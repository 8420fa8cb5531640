"""The chaos table of docs/reliability.md, from the results the scenarios appended.

    .venv/bin/python tests/chaos/report.py            # print the table (latest result per scenario)
    .venv/bin/python tests/chaos/report.py --write    # and put it in docs/reliability.md

Reads `$MOOT_CHAOS_RESULTS` (default `.moot/chaos/results.jsonl`, one JSON line per scenario run,
written by `harness.record`); the table goes between the `chaos-table` markers of the document.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "reliability.md"
START, END = "<!-- chaos-table:start -->", "<!-- chaos-table:end -->"
HEADER = (
    "| scenario | submitted | accepted | rejected | completed | failed (reasons) | lost | duplicates "
    "| recover s (API/Postgres) | wall s |\n"
    "| --- | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: |"
)


def _count(value: Any) -> int:
    return sum(value.values()) if isinstance(value, dict) else int(value or 0)


def _counts(value: dict[str, int]) -> str:
    return "; ".join(f"{n} x {k}" for k, n in sorted(value.items(), key=lambda kv: -kv[1]))


def row(r: dict[str, Any]) -> str:
    seconds = "/".join(
        "-" if r.get(k) is None else f"{r[k]:.0f}" for k in ("recover_seconds", "recorded_seconds")
    )
    failed = _count(r["failed"])
    cells = [
        r["scenario"],
        str(r["submitted"]),
        str(r["accepted"]),
        str(_count(r["rejected"])) + (f" ({_counts(r['rejected'])})" if r["rejected"] else ""),
        str(r["completed"]),
        str(failed) + (f" ({_counts(r['failed'])})" if r["failed"] else ""),
        str(_count(r["lost"])) + (f" ({_counts(r['lost'])})" if r["lost"] else ""),
        str(_count(r["duplicates"])) + (f" ({_counts(r['duplicates'])})" if r["duplicates"] else ""),
        seconds,
        f"{r['wall_seconds']:.0f}",
    ]
    return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"


def table(results: list[dict[str, Any]]) -> str:
    latest: dict[str, dict[str, Any]] = {}
    for r in results:
        latest[r["scenario"]] = r
    lines = [HEADER, *(row(r) for r in latest.values())]
    commands = sorted({r["command"] for r in latest.values()})
    dates = sorted(r["at"] for r in latest.values())
    lines += [
        "",
        f"Measured {dates[0]} to {dates[-1]} with: " + "; ".join(f"`{c}`" for c in commands) + ".",
        "",
        "Notes per scenario (faults injected, restarts, model server counts):",
        "",
    ]
    for r in latest.values():
        extra = list(r.get("notes") or [])
        if r.get("restarts"):
            extra.append("restarted: " + ", ".join(f"{k} x{v}" for k, v in r["restarts"].items()))
        if r.get("unknown_runs"):
            extra.append(f"{r['unknown_runs']} run(s) created by a POST whose answer was lost, all final")
        if r.get("double_outcomes"):
            extra.append(f"{r['double_outcomes']} call(s) with both outcomes recorded (the first counts)")
        lines.append(f"- {r['scenario']}: " + ("; ".join(extra) or "-"))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help=f"replace the table in {DOC}")
    args = parser.parse_args()
    path = Path(os.environ.get("MOOT_CHAOS_RESULTS") or REPO / ".moot" / "chaos" / "results.jsonl")
    results = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    text = table(results)
    print(text)
    if args.write:
        doc = DOC.read_text()
        head, _, rest = doc.partition(START)
        _, _, tail = rest.partition(END)
        DOC.write_text(f"{head}{START}\n{text}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
