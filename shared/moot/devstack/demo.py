"""`moot demo`: start the stack, run a consortium (and, on the local model, a short debate), print the answers, stop.

Which models answer:
- no model list and no `--test-models` (or `--local`): the embedded local model (`moot.devstack.localmodel`),
  installed on first use; a consortium of `local:3` with arbiter `local`, then a debate of
  `local:2` under the external judge `local`, its verdict printed as it streams in;
- `--test-models`: the project's test model server (canned answers), a consortium of
  `fast:2` + `slow:1` with arbiter `arbiter`;
- `--models-file`: the user's models, named with `-m MODEL[:COUNT]` and `--arbiter`.

Answers go to stdout, progress to stderr. The exit code is 0 when every run completed (a run
whose arbiter or judge wrote something unreadable still completes: the progress says so).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from moot.cli.client import GatewayError, MootClient, RunEventMessage
from moot.devstack.localmodel import MODEL_NAME as LOCAL
from moot.records.accounts import local_key

DEMO_PROMPT = "What are the three most important things to check before deploying a web service?"
DEBATE_PROMPT = "Should a small team write automated tests before adding new features?"
# Small enough that the local model on two cores finishes a run in a minute or two.
LOCAL_MAX_TOKENS = 300
LOCAL_DEBATE_MAX_TOKENS = 200


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _who(d: dict[str, Any]) -> str:
    role = d.get("role")
    if role in ("member", "debater", "conviction"):
        return f"{d['model']}#{d['instance']}"
    return f"{role} {d['model']}"


def _progress(event: RunEventMessage) -> str | None:
    d = event.data
    match event.type:
        case "iteration.started":
            return f"iteration {d['iteration']}: asking {len(d['call_ids'])} member instances"
        case "call.completed":
            return f"  {_who(d)} answered ({d['latency_ms']} ms, {d['usage']['output_tokens']} tokens)"
        case "call.failed":
            return f"  {_who(d)} failed: {d['error']}"
        case "iteration.completed":
            verdict = d["verdict"]
            conf = verdict["confidence"]
            conf_text = f"{conf:.2f}" if conf is not None else "unreadable"
            line = f"  arbiter: confidence {conf_text} -> {d['decision']} ({d['reason']})"
            if verdict.get("malformed"):
                line += f"\n  arbiter's answer was malformed: {'; '.join(verdict.get('problems') or [])}"
            return line
        case "debate_start":
            judge = f", judge {d['judge']}" if d.get("judge") else ""
            return f"debate: {len(d['debaters'])} debaters, up to {d['max_rounds']} rounds{judge}"
        case "round_start":
            return f"round {d['round']}: " + ", ".join(x["label"] for x in d["debaters"])
        case "judge_decision":
            readable = "" if d.get("readable", True) else " (unreadable answer: the debate goes on)"
            word = "continue" if d["continue"] else "stop"
            return f"  judge: {word}{readable}: {_short(d.get('reason') or '')}"
        case "final_start":
            return f"verdict by {d['model']}:" if d.get("by") == "judge" else f"summary by {d['label']}:"
        case "error":
            return f"  error: {d.get('message')}"
    return None


def _short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _member(spec: str) -> dict[str, Any]:
    name, _, count = spec.rpartition(":") if spec.rsplit(":", 1)[-1].isdigit() else (spec, "", "1")
    return {"model": name, "count": int(count)}


def plan(args: argparse.Namespace) -> tuple[list[dict[str, Any]], str | None]:
    """The run bodies the demo submits, or an error message."""
    local = bool(getattr(args, "local", False))
    test_models = bool(args.test_models)
    if local and not args.member:
        members, arbiter = [f"{LOCAL}:3"], args.arbiter or LOCAL
        debaters, judge = [f"{LOCAL}:2"], getattr(args, "judge", None) or LOCAL
        max_tokens: int | None = getattr(args, "max_tokens", None) or LOCAL_MAX_TOKENS
    elif test_models and not args.member:
        members, arbiter = ["fast:2", "slow:1"], args.arbiter or "arbiter"
        debaters, judge = ["fast:2"], getattr(args, "judge", None) or "arbiter"
        max_tokens = getattr(args, "max_tokens", None)
    else:
        members, arbiter = args.member or [], args.arbiter
        debaters, judge = members, getattr(args, "judge", None) or arbiter
        max_tokens = getattr(args, "max_tokens", None)
    if not members or not arbiter:
        return [], "with --models-file, give -m MODEL[:COUNT] and --arbiter MODEL"
    consortium: dict[str, Any] = {
        "mode": "consortium",
        "prompt": args.prompt,
        "members": [_member(m) for m in members],
        "arbiter": arbiter,
        "max_iterations": args.max_iterations,
    }
    if max_tokens:
        consortium["max_tokens"] = max_tokens
    bodies = [consortium]
    debate = getattr(args, "debate", None)
    if debate is None:
        debate = local and not args.member
    if debate:
        debater_specs = [_member(m) for m in debaters]
        if sum(m["count"] for m in debater_specs) < 2:
            debater_specs[0]["count"] = 2
        if max_tokens:
            for spec in debater_specs:
                spec["max_tokens"] = min(max_tokens, LOCAL_DEBATE_MAX_TOKENS) if local else max_tokens
        bodies.append(
            {
                "mode": "debate",
                "prompt": getattr(args, "debate_prompt", None) or DEBATE_PROMPT,
                "members": debater_specs,
                "format": "free_discussion",
                "judge_mode": "external_judge",
                "judge": judge,
                "max_rounds": getattr(args, "max_rounds", None) or 3,
            }
        )
    return bodies, None


async def _follow(client: MootClient, body: dict[str, Any], out: Callable[[str], None]) -> bool:
    """Submit one run, show its progress, print its answer; True when it completed."""
    try:
        created = await client.create_run(body)
    except GatewayError as exc:
        _err(f"moot demo: the gateway refused the run: {exc}")
        return False
    run_id = created["id"]
    _err(f"{body['mode']} {run_id}: {_short(body['prompt'])}")
    streamed = False
    async for event in client.events(run_id):
        if event.type == "final_chunk":
            if not streamed:
                out("")
            out(event.data.get("delta", ""))
            streamed = True
            continue
        if event.type == "final_complete" and streamed:
            out("\n")
        line = _progress(event)
        if line:
            _err(line)
    run = await client.get_run(run_id)
    if run["status"] != "completed":
        _err(f"moot demo: {body['mode']} {run['status']}: {run.get('reason')}")
        return False
    if body["mode"] == "consortium":
        out(run["result"]["synthesis"].rstrip() + "\n")
    elif not streamed:  # a judge mode without a final answer, or chunks that were not seen
        result = run.get("result") or {}
        out((result.get("text") or "").rstrip() + "\n")
    _err(f"{body['mode']} {run['status']}: {run.get('reason')}")
    return True


def _stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


async def run_demo(args: argparse.Namespace, make_stack: Callable[..., Any]) -> int:
    from moot.devstack.stack import wants_local_model

    args.local = wants_local_model(getattr(args, "local", None), args.models_file, args.test_models)
    if not (args.local or args.test_models or args.models_file):
        _err("moot demo: no models: give --models-file, --test-models or --local")
        return 2
    bodies, problem = plan(args)
    if problem:
        _err(f"moot demo: {problem}")
        return 2
    stack = make_stack(args, test_models=args.test_models)
    ok = True
    async with stack:
        _err(f"moot is up: {stack.gateway_url}")
        key = await local_key(stack.infrastructure.database_url, str(stack.data_dir))
        async with MootClient(stack.gateway_url, api_key=key) as client:
            for number, body in enumerate(bodies):
                if len(bodies) > 1:
                    what = "consortium" if body["mode"] == "consortium" else "debate"
                    _stdout(f"{'' if number == 0 else chr(10)}== {what}: {body['prompt']}\n")
                ok = await _follow(client, body, _stdout) and ok
    return 0 if ok else 1
