"""The options of `moot up` (and `moot demo`), in one place for the CLI and `python -m moot.devstack.stack`.

Kept apart from `moot.devstack.stack` so that parsing them (and `moot --help`) imports nothing heavy.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_up_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the stack keeps its state, what it runs and where its servers are."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the stack's home: embedded NATS/Postgres data, logs, its API key (default: $MOOT_DATA_DIR,"
        " else the user data directory, e.g. ~/.local/share/moot); every moot command finds it there",
    )
    parser.add_argument("--port", type=int, default=8000, help="gateway port (default: 8000)")
    parser.add_argument("--host", default="127.0.0.1", help="gateway bind address (default: 127.0.0.1)")
    parser.add_argument("--workers", type=int, default=2, help="member-worker processes (default: 2)")
    parser.add_argument("--namespace", default=os.environ.get("MOOT_NAMESPACE", "moot"))
    parser.add_argument(
        "--models-file",
        type=Path,
        default=os.environ.get("MOOT_MODELS_FILE") or None,
        help="LiteLLM-style model list (default: $MOOT_MODELS_FILE)",
    )
    parser.add_argument(
        "--test-models",
        action="store_true",
        help="also start the test model server and use its models (fast, slow, arbiter)",
    )
    parser.add_argument(
        "--local",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run the embedded local model, named local (default: when no model list and no "
        "--test-models); installed on first use",
    )
    parser.add_argument("--nats-url", default=os.environ.get("NATS_URL") or None, help="default: $NATS_URL")
    parser.add_argument(
        "--database-url", default=os.environ.get("DATABASE_URL") or None, help="default: $DATABASE_URL"
    )
    docker = parser.add_mutually_exclusive_group()
    docker.add_argument("--docker", dest="use_docker", action="store_true", help="require Docker")
    docker.add_argument("--no-docker", dest="use_docker", action="store_false", help="never use Docker")
    parser.set_defaults(use_docker=None)  # None: use Docker if it answers
    parser.add_argument(
        "--ready-timeout", type=float, default=60.0, help="seconds each service may take to be ready"
    )


def wants_local_model(local: bool | None, models_file: object, test_models: bool) -> bool:
    """Whether `moot up` runs the local model: as asked (`--local` / `--no-local`), else when no
    provider is configured (no model list and no test models)."""
    if local is not None:
        return local
    return not models_file and not test_models
