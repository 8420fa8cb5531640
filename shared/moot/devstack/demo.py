"""`moot demo`: start the stack, run a consortium (and, on the local model, a short debate), print the answers, stop.

It prints where to watch the runs in a browser (the web view, docs/web.md) and the key to sign
in with; run from a terminal, it keeps the stack up after the runs until Ctrl-C, so they can be
looked at there.

Which models answer:
- no model list and no `--test-models` (or `--local`): the embedded local model (`moot.devstack.localmodel`),
  installed on first use; a consortium of `local:3` with arbiter `local`, then a debate of
  `local:2` under the external judge `local`, its verdict printed as it streams in; members and
  debaters at `LOCAL_TEMPERATURE`;
- `--test-models`: the project's test model server (canned answers), a consortium of
  `fast:2` + `slow:1` with arbiter `arbiter`;
- `--models-file`: the user's models, named with `-m MODEL[:COUNT]` and `--arbiter`.

The report goes to stdout: for a consortium, the members' answers, then the answer under a
heading (`moot.cli.runs.print_answer`), with a plain line first when the arbiter's synthesis
could not be read and the members' most agreed answer stands in; for a debate, the verdict as it
streams, under its heading. Progress goes to stderr. The exit code is 0 when every run completed
(a run whose arbiter or judge wrote something unreadable still completes: the report says so).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from typing import Any

from moot.cli.client import GatewayError, MootClient
from moot.cli.common import short
from moot.cli.render import Progress
from moot.cli.runs import print_answer, view_of
from moot.devstack.localmodel import MODEL_NAME as LOCAL
from moot.devstack.options import wants_local_model
from moot.records.accounts import local_key

# Short factual questions: the demo shows how the panel works, which needs answers a reader can
# check at a glance, and the local model (SmolLM2-135M) answers these sensibly and the same way
# each time, where open questions get rambling (docs/benchmarks.md, "Local model").
DEMO_PROMPT = "What is the capital of Japan?"
# Small enough that the local model on two cores finishes a run in a minute or two.
LOCAL_MAX_TOKENS = 300
LOCAL_DEBATE_MAX_TOKENS = 200
# The local model's members and debaters sample at this temperature: at the server's default
# (0.8) a third of its answers to the demo's question wander off; at 0.3 nearly all are the answer.
LOCAL_TEMPERATURE = 0.3


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


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
        # One iteration on the local model: its refinements ramble (docs/benchmarks.md, "Local model").
        "max_iterations": getattr(args, "max_iterations", None) or (1 if local and not args.member else 2),
    }
    if max_tokens:
        consortium["max_tokens"] = max_tokens
    if local and not args.member:
        consortium["temperature"] = LOCAL_TEMPERATURE
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
        if local and not args.member:
            for spec in debater_specs:
                spec["temperature"] = LOCAL_TEMPERATURE
        bodies.append(
            {
                "mode": "debate",
                "prompt": getattr(args, "debate_prompt", None) or args.prompt,
                "members": debater_specs,
                "format": "free_discussion",
                "judge_mode": "external_judge",
                "judge": judge,
                # One round on the local model: its later turns and its verdicts after them
                # ramble (docs/benchmarks.md, "Local model"); three otherwise.
                "max_rounds": getattr(args, "max_rounds", None) or (1 if local and not args.member else 3),
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
    _err(f"{body['mode']} {run_id}: {short(body['prompt'], 120)}")
    progress = Progress(_err, out)
    async for event in client.events(run_id):
        progress.show(event)
    run = view_of(await client.get_run(run_id))
    if run.status != "completed":
        _err(f"moot demo: {run.mode} {run.status}: {run.reason}")
        return False
    # The members' answers, a heading and the answer (a debate's verdict has streamed already,
    # under its heading, unless no chunk was seen), all on stdout: the demo's report.
    print_answer(run, progress, context=lambda line: out(line + "\n"))
    _err(f"{run.mode} {run.status}: {short(run.reason, 160)}")
    return True


def _stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


async def run_demo(args: argparse.Namespace, make_stack: Callable[..., Any]) -> int:
    """Start the stack from the `moot up` options, run the demo's runs, print their answers."""
    args.local = wants_local_model(getattr(args, "local", None), args.models_file, args.test_models)
    if not (args.local or args.test_models or args.models_file):
        _err("moot demo: no models: give --models-file, --test-models or --local")
        return 2
    bodies, problem = plan(args)
    if problem:
        _err(f"moot demo: {problem}")
        return 2
    # Late, as the stack itself: `moot --help` does not pay for it.
    from moot.devstack.stack import StackError

    stack = make_stack(args)
    signalled = _cancel_on_hangup_or_terminate()
    try:
        return await _demo(stack, bodies)
    except asyncio.CancelledError:
        if not signalled:
            raise
        # The terminal closed or someone asked it to stop: the stack has stopped on the way out.
        _err(f"moot demo: {signalled[0].name}: stopped")
        return 128 + signalled[0].value
    except StackError as exc:  # a message, not a traceback, for the person at the terminal
        _err(f"moot demo: error: {exc}")
        return 1


def _cancel_on_hangup_or_terminate() -> list[signal.Signals]:
    """SIGHUP (the terminal closed) and SIGTERM cancel the demo as Ctrl-C does, so its stack stops
    rather than being left running; the list gets the signal that came."""
    task = asyncio.current_task()
    came: list[signal.Signals] = []

    def cancel(sig: signal.Signals) -> None:
        if task is not None and not came:
            came.append(sig)
            task.cancel()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGHUP, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows / non-main thread
            loop.add_signal_handler(sig, cancel, sig)
    return came


async def _demo(stack: Any, bodies: list[dict[str, Any]]) -> int:
    ok = True
    async with stack:
        _err(f"moot is up: {stack.gateway_url}")
        key = await local_key(stack.infrastructure.database_url, str(stack.data_dir))
        _err(f"watch the runs in a browser: {stack.gateway_url}/runs (sign in with the API key {key})")
        async with MootClient(stack.gateway_url, api_key=key) as client:
            for number, body in enumerate(bodies):
                if len(bodies) > 1:
                    _stdout(f"{'' if number == 0 else chr(10)}== {body['mode']}: {body['prompt']}\n")
                ok = await _follow(client, body, _stdout) and ok
        if sys.stdin.isatty():
            # Someone at a terminal may be looking at the runs in the web view: keep it up for them
            # until Ctrl-C (or SIGHUP, SIGTERM): the wait is cancelled and the stack stops on the way out.
            _err(f"the stack stays up for the web view ({stack.gateway_url}/runs); Ctrl-C stops it")
            await asyncio.Event().wait()
    return 0 if ok else 1
