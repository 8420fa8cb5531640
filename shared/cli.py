"""The `moot` command: `moot up` starts the whole stack; `moot demo` starts it and runs a consortium."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from moot.client import GatewayError, MootClient, RunEventMessage

DEMO_PROMPT = "What are the three most important things to check before deploying a web service?"


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


def _progress(event: RunEventMessage) -> str | None:
    d = event.data
    match event.type:
        case "iteration.started":
            return f"iteration {d['iteration']}: asking {len(d['call_ids'])} member instances"
        case "call.completed":
            who = f"{d['model']}#{d['instance']}" if d["role"] == "member" else f"arbiter {d['model']}"
            return f"  {who} answered ({d['latency_ms']} ms, {d['usage']['output_tokens']} tokens)"
        case "call.failed":
            return f"  {d['model']}#{d['instance']} failed: {d['error']}"
        case "iteration.completed":
            conf = d["verdict"]["confidence"]
            conf_text = f"{conf:.2f}" if conf is not None else "unreadable"
            return f"  arbiter: confidence {conf_text} -> {d['decision']} ({d['reason']})"
    return None


async def _demo(args: argparse.Namespace) -> int:
    test_models = args.test_models or not args.models_file
    stack = _make_stack(args, test_models=test_models)
    members = args.member or (["fast:2", "slow:1"] if test_models else None)
    arbiter = args.arbiter or ("arbiter" if test_models else None)
    if not members or not arbiter:
        print("moot demo: with --models-file, give -m MODEL[:COUNT] and --arbiter MODEL", file=sys.stderr)
        return 2
    body = {
        "mode": "consortium",
        "prompt": args.prompt,
        "members": [_member(m) for m in members],
        "arbiter": arbiter,
        "max_iterations": args.max_iterations,
    }
    async with stack:
        print(f"moot is up: {stack.gateway_url}", file=sys.stderr)
        async with MootClient(stack.gateway_url) as client:
            try:
                created = await client.create_run(body)
            except GatewayError as exc:
                print(f"moot demo: the gateway refused the run: {exc}", file=sys.stderr)
                return 1
            print(f"run {created['id']}", file=sys.stderr)
            async for event in client.events(created["id"]):
                line = _progress(event)
                if line:
                    print(line, file=sys.stderr)
            run = await client.get_run(created["id"])
    if run["status"] != "completed":
        print(f"moot demo: run {run['status']}: {run.get('reason')}", file=sys.stderr)
        return 1
    print(run["result"]["synthesis"])
    return 0


def _member(spec: str) -> dict[str, Any]:
    name, _, count = spec.rpartition(":") if spec.rsplit(":", 1)[-1].isdigit() else (spec, "", "1")
    return {"model": name, "count": int(count)}


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
    runner = {"up": _up, "demo": _demo}[args.command]
    try:
        sys.exit(asyncio.run(runner(args)))
    except KeyboardInterrupt:
        sys.exit(130)
