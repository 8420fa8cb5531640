"""`moot run`, `debate`, `council`, `vote`, `moa`, `runs`, `show`: runs through the gateway.

A run's progress goes to stderr and its answer to stdout, so `moot run ... > answer.txt` keeps
just the answer. Ctrl-C cancels the run on the gateway and exits with 130.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from moot.cli.client import GatewayError, MootClient
from moot.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, CliError, err, out
from moot.cli.render import (
    Progress,
    answer_note,
    answer_title,
    heading,
    members_answers,
    outcome_line,
    run_summary,
    runs_table,
    transcript,
)

if TYPE_CHECKING:
    from moot.views import RunView

RECONNECTS = 5  # times the event stream is resumed after a dropped connection


async def follow_events(client: MootClient, run_id: str, progress: Progress) -> None:
    """Show the run's events until its final one, resuming (Last-Event-ID) when the stream drops."""
    from moot.messages import TERMINAL_EVENT_TYPES  # late: its models take a while to build

    last_id: str | None = None
    for attempt in range(RECONNECTS + 1):
        try:
            async for event in client.events(run_id, last_id):
                last_id = event.id
                progress.show(event)
                if event.type in TERMINAL_EVENT_TYPES:
                    return
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            if attempt == RECONNECTS:
                raise
            err(f"  (lost the event stream: {exc or type(exc).__name__}; resuming)")
        await asyncio.sleep(0.5)
    raise CliError(f"the event stream of run {run_id} kept ending before the run did")


async def follow_or_cancel(client: MootClient, run_id: str, progress: Progress) -> bool:
    """Follow the run; on Ctrl-C cancel it on the gateway. True when it was interrupted."""
    loop = asyncio.get_running_loop()
    following = asyncio.ensure_future(follow_events(client, run_id, progress))
    interrupted = False

    def on_interrupt() -> None:
        nonlocal interrupted
        if interrupted:  # a second Ctrl-C: give up on cancelling too
            raise KeyboardInterrupt
        interrupted = True
        following.cancel()

    with contextlib.suppress(NotImplementedError):  # no loop signal handlers on Windows
        loop.add_signal_handler(signal.SIGINT, on_interrupt)
    try:
        await following
        return False
    except asyncio.CancelledError:
        if not interrupted:
            raise
    finally:
        with contextlib.suppress(NotImplementedError):
            loop.remove_signal_handler(signal.SIGINT)
    err(f"interrupted: cancelling run {run_id}")
    await cancel_quietly(client, run_id)
    return True


async def cancel_quietly(client: MootClient, run_id: str) -> None:
    try:
        run = await client.cancel_run(run_id)
        err(f"run {run_id} {run.status}")
    except GatewayError as exc:  # 409: it ended meanwhile
        err(f"run {run_id} not cancelled: {exc.message}")


def view_of(record: dict[str, Any]) -> RunView:
    """The typed view of a run's record as the gateway serves it."""
    from moot.views import run_view_adapter  # late: its models take a while to build

    return run_view_adapter.validate_python(record)


def write_record(record: dict[str, Any], path: str) -> None:
    try:
        Path(path).write_text(json.dumps(record, indent=2) + "\n")
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror or exc}") from exc


def print_answer(run: RunView, progress: Progress, context: Callable[[str], None] = err) -> None:
    """The run's answer on stdout (a display-only debate's transcript), unless a verdict has
    streamed there already.

    Before a consortium's answer, what it was drawn from and a heading go to `context` (stderr
    by default: stdout keeps the answer alone): the members' answers, then, when the arbiter's
    synthesis could not be read, the plain line saying whose answer it is instead.
    """
    if progress.streamed:
        return
    if run.answer is not None:
        if run.mode == "consortium":
            context(members_answers(run).rstrip("\n"))
        context(heading(answer_title(run)))
        if note := answer_note(run):
            context(note)
        out(run.answer.rstrip() + "\n")
    elif shown := transcript(run):  # a display-only debate: the debate itself is what there is to show
        context(heading("transcript"))
        out(shown)


def report(record: dict[str, Any], progress: Progress, args: argparse.Namespace) -> int:
    """After the run: answer, --output, --raw, and the exit code (0 only when it completed)."""
    run = view_of(record)
    if run.status == "completed":
        print_answer(run, progress)
        err(outcome_line(run))
    else:
        err(f"moot: run {run.id} {run.status}: {run.reason or 'no reason given'}")
    if args.output:
        write_record(record, args.output)
    if args.raw:
        out(json.dumps(record, indent=2) + "\n")
    return 0 if run.status == "completed" else EXIT_FAILED


async def submit_and_follow(client: MootClient, body: dict[str, Any], args: argparse.Namespace) -> int:
    created = await client.create_run(body)
    run_id = created["id"]
    err(f"{created['mode']} {run_id}")
    progress = Progress(err, out)
    if await follow_or_cancel(client, run_id, progress):
        return EXIT_INTERRUPTED
    return report(await client.get_run(run_id), progress, args)


async def list_runs(client: MootClient, args: argparse.Namespace) -> int:
    runs = await client.list_runs(args.limit)
    if args.json:
        out(json.dumps(runs, indent=2) + "\n")
    elif runs:
        out(runs_table(runs))
    else:
        err("no runs yet")
    return 0


async def show_run(client: MootClient, args: argparse.Namespace) -> int:
    try:
        record = await client.get_run(args.run_id)
    except GatewayError as exc:
        if exc.status == 404:
            raise CliError(f"no run {args.run_id} (of this key's owner)") from exc
        raise
    out(json.dumps(record, indent=2) + "\n" if args.json else run_summary(view_of(record), full=args.full))
    return 0
