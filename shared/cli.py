"""The `moot` command: `moot up` starts the whole stack; `moot demo` starts it and runs a consortium."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from moot.demo import DEMO_PROMPT, run_demo


def _stack_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=".moot", help="where embedded NATS/Postgres keep data and logs")
    p.add_argument("--port", type=int, default=8000, help="gateway port")
    p.add_argument("--workers", type=int, default=2, help="member-worker processes")
    p.add_argument("--namespace", default=os.environ.get("MOOT_NAMESPACE", "moot"))
    p.add_argument(
        "--models-file",
        default=os.environ.get("MOOT_MODELS_FILE"),
        help="LiteLLM-style model list (default: $MOOT_MODELS_FILE)",
    )
    p.add_argument(
        "--test-models",
        action="store_true",
        help="also start the test model server and use its models (fast, slow, arbiter)",
    )


def _make_stack(args: argparse.Namespace, *, test_models: bool) -> Any:
    from moot.stack import Stack  # imported late: `moot --help` should not pay for it

    return Stack(
        args.data_dir,
        port=args.port,
        workers=args.workers,
        namespace=args.namespace,
        models_file=args.models_file,
        nats_url=os.environ.get("NATS_URL"),
        database_url=os.environ.get("DATABASE_URL"),
        test_model_server=test_models,
    )


async def _up(args: argparse.Namespace) -> int:
    stack = _make_stack(args, test_models=args.test_models)
    code: int = await stack.run_forever()
    return code


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="moot", description="Deliberation of language models, distributed.")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser(
        "up", help="start NATS, Postgres (embedded unless NATS_URL/DATABASE_URL) and all services"
    )
    _stack_args(up)

    demo = sub.add_parser("demo", help="start the stack, run one consortium, print its answer, stop")
    _stack_args(demo)
    demo.add_argument("prompt", nargs="?", default=DEMO_PROMPT)
    demo.add_argument("-m", "--member", action="append", help="MODEL[:COUNT], repeatable")
    demo.add_argument("--arbiter")
    demo.add_argument("--max-iterations", type=int, default=2)

    args = parser.parse_args(argv)
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    runner = {"up": _up, "demo": lambda a: run_demo(a, _make_stack)}[args.command]
    try:
        sys.exit(asyncio.run(runner(args)))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
