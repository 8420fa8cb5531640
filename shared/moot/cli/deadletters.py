"""`moot dead-letters list|replay`: what consumers gave up on, in NATS directly (no gateway).

NATS is `NATS_URL` (one URL or several, comma-separated), else the embedded server `moot up` runs for `--data-dir` (found by its ports
file); the namespace is `MOOT_NAMESPACE` (default `moot`). See `moot.runtime.deadletters`.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from moot.cli.common import EXIT_FAILED, EXIT_USAGE, CliError, err, out, short, table
from moot.devstack import home
from moot.runtime import deadletters
from moot.runtime.nats import nats_servers
from moot.runtime.settings import MootSettings
from moot.runtime.subjects import Names


def _embedded_url(data_dir: str) -> str | None:
    """The URL of the embedded nats-server of `data_dir`, if one runs (its ports file names its pid)."""
    for ports in sorted((Path(data_dir).expanduser() / "nats").glob("*.ports")):
        try:
            pid = int(ports.stem.rsplit("_", 1)[1])
            os.kill(pid, 0)
            return str(json.loads(ports.read_text())["nats"][0])
        except (IndexError, ValueError, OSError, KeyError):
            continue
    return None


@asynccontextmanager
async def _jetstream(given_dir: str | None) -> AsyncIterator[tuple[JetStreamContext, Names]]:
    data_dir = home.data_dir(given_dir)
    stack = home.running_stack(data_dir)
    url = os.environ.get("NATS_URL") or (stack.nats_url if stack else _embedded_url(str(data_dir)))
    if not url:
        raise CliError(f"NATS_URL is not set and no `moot up` runs from {data_dir}: set NATS_URL")
    try:
        nc = await nats.connect(
            nats_servers(url), connect_timeout=5, max_reconnect_attempts=0, allow_reconnect=False
        )
    except Exception as exc:
        raise CliError(f"cannot connect to NATS at {url}: {type(exc).__name__}: {exc}") from exc
    try:
        yield nc.jetstream(), Names(MootSettings().namespace)
    finally:
        await nc.close()


async def list_command(args: argparse.Namespace) -> int:
    async with _jetstream(args.data_dir) as (js, names):
        try:
            letters = await deadletters.read_all(js, names)
        except NotFoundError:
            letters = []  # no dead-letter stream yet: no service has started in this namespace
    letters = letters[-args.limit :] if args.limit > 0 else letters
    if args.json:
        out(json.dumps([d.summary() for d in letters], indent=2) + "\n")
        return 0
    if not letters:
        err("no dead letters")
        return 0
    rows = [
        [
            str(d.seq),
            d.time.strftime("%Y-%m-%d %H:%M:%S") if d.time else "-",
            d.subject or "-",
            d.run_id or "-",
            short(d.reason, 100),
        ]
        for d in letters
    ]
    out(table(["ID", "TIME (UTC)", "SUBJECT", "RUN", "REASON"], rows))
    return 0


async def replay_command(args: argparse.Namespace) -> int:
    if not args.ids and not args.all:
        raise CliError(
            "name the dead letters to replay (IDs from `moot dead-letters list`) or --all", EXIT_USAGE
        )
    failed = 0
    async with _jetstream(args.data_dir) as (js, names):
        if args.all:
            letters = await deadletters.read_all(js, names)
        else:
            letters = []
            for seq in args.ids:
                letter = await deadletters.read_one(js, names, seq)
                if letter is None:
                    err(f"no dead letter {seq}")
                    failed += 1
                else:
                    letters.append(letter)
        for letter in letters:
            try:
                seq = await deadletters.replay(js, names, letter)
            except deadletters.NotReplayed as exc:
                err(f"dead letter {letter.seq} not replayed: {exc}")
                failed += 1
                continue
            except (nats.errors.Error, TimeoutError) as exc:  # e.g. no stream takes the subject now
                err(f"dead letter {letter.seq} not replayed: {type(exc).__name__}: {exc}")
                failed += 1
                continue
            out(f"replayed {letter.seq} to {letter.subject} (stream sequence {seq})\n")
    return EXIT_FAILED if failed else 0


COMMANDS = {"list": list_command, "replay": replay_command}


def add_command(sub: Any) -> None:
    """`moot dead-letters ...` under the CLI's subcommands."""
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--data-dir",
        default=None,
        help="without NATS_URL: the NATS of the `moot up` of this data dir (default: $MOOT_DATA_DIR,"
        " else the user data directory)",
    )
    dead = sub.add_parser(
        "dead-letters",
        help="messages a consumer gave up on (in NATS directly): list them, replay them",
        description="Messages a consumer could not decode or gave up on after max deliveries, kept "
        "with the reason. NATS_URL (else the local stack's NATS) and MOOT_NAMESPACE say where.",
    )
    actions = dead.add_subparsers(dest="dead_letters_command", required=True, metavar="{list,replay}")
    listing = actions.add_parser(
        "list", parents=[where], help="the dead letters, oldest first: id, time, subject, run, reason"
    )
    listing.add_argument("--limit", type=int, default=50, help="the newest N (default 50; 0: all)")
    listing.add_argument("--json", action="store_true", help="as JSON, with every header named")
    replay = actions.add_parser(
        "replay",
        parents=[where],
        help="send dead letters back to their original subject (original message id), then delete them",
    )
    replay.add_argument("ids", nargs="*", type=int, metavar="ID", help="ids from `moot dead-letters list`")
    replay.add_argument("--all", action="store_true", help="every dead letter")
