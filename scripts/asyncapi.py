#!/usr/bin/env python3
"""Generate docs/asyncapi.json, the NATS contract, from the code that runs.

Every service's subscribers are registered, through the service's own `handlers.register`, on
one broker that never connects; `moot.runtime.contract` adds the declared publishers and turns
the broker into faststream's AsyncAPI document. This script lives outside `shared/` because it
imports every service, which `moot` never does.

Usage:
  python scripts/asyncapi.py            print the document
  python scripts/asyncapi.py --write    rewrite docs/asyncapi.json
  python scripts/asyncapi.py --check    exit 1 if docs/asyncapi.json is not what the code generates
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path
from typing import Any

from faststream.nats import NatsBroker

from moot.runtime import contract
from moot.runtime.settings import MootSettings
from moot.runtime.subjects import Names
from moot_arbiter.dead_letters import register as register_dead_letters
from moot_arbiter.handlers import register as register_arbiter
from moot_member_worker.handlers import register as register_member_worker
from moot_recorder.handlers import BatchRecorder
from moot_recorder.handlers import register as register_recorder
from moot_recorder.settings import RecorderSettings

DOCUMENT = Path(__file__).resolve().parents[1] / "docs" / "asyncapi.json"
REGENERATE = ".venv/bin/python scripts/asyncapi.py --write"


def register_services(broker: NatsBroker, names: Names) -> None:
    """Each service's subscribers, as its main.py registers them; what they would call is never called."""
    # Defaults, not the environment: nothing of the settings reaches the document, but a
    # developer's MOOT_* variables must not be able to make the generation fail.
    settings = MootSettings.model_construct()
    recorder = RecorderSettings.model_construct()
    never_called: Any = None  # the model caller, the run store: only a handler would use them
    register_member_worker(broker, names, settings, 1)
    register_arbiter(broker, names, lambda: never_called, 1)
    register_dead_letters(broker, names, lambda: never_called)
    register_recorder(broker, names, recorder, BatchRecorder(names, recorder))


def generate() -> str:
    """The document, rendered as it is checked in."""
    names = Names()  # the default namespace, `moot`
    broker = contract.documentation_broker()
    register_services(broker, names)
    return contract.render(contract.asyncapi(broker, names))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help=f"rewrite {DOCUMENT.name}")
    mode.add_argument("--check", action="store_true", help=f"fail if {DOCUMENT.name} is stale")
    args = parser.parse_args(argv)
    fresh = generate()
    if args.write:
        DOCUMENT.write_text(fresh, encoding="utf-8")
        print(f"wrote {DOCUMENT}")
        return 0
    if args.check:
        current = DOCUMENT.read_text(encoding="utf-8") if DOCUMENT.exists() else ""
        if current == fresh:
            print(f"{DOCUMENT.name} is up to date")
            return 0
        diff = difflib.unified_diff(
            current.splitlines(keepends=True),
            fresh.splitlines(keepends=True),
            fromfile=f"docs/{DOCUMENT.name} (checked in)",
            tofile=f"docs/{DOCUMENT.name} (generated)",
            n=2,
        )
        sys.stdout.writelines(list(diff)[:200])
        print(
            f"\ndocs/{DOCUMENT.name} is stale: the NATS contract changed. Regenerate it with\n  {REGENERATE}"
        )
        return 1
    sys.stdout.write(fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
