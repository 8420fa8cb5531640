"""`moot demo`: start the stack, run a consortium, print the answer, stop."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from moot.accounts import local_key
from moot.client import GatewayError, MootClient, RunEventMessage

DEMO_PROMPT = "What are the three most important things to check before deploying a web service?"


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


async def run_demo(args: argparse.Namespace, make_stack: Callable[..., Any]) -> int:
    test_models = args.test_models or not args.models_file
    stack = make_stack(args, test_models=test_models)
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
        key = await local_key(stack.infrastructure.database_url, str(stack.data_dir))
        async with MootClient(stack.gateway_url, api_key=key) as client:
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
