"""The `moot` command.

`moot up` starts the whole stack; `moot demo` starts it and runs a consortium. The other commands
talk to a running gateway (`MOOT_URL`, `MOOT_API_KEY`): a run of each mode (`run` for a
consortium, `debate`, `council`, `vote`, `moa`), `save`, `list`, `remove`, `runs`, `show`; `keys` manages API keys and `migrate` applies the schema's migrations,
in Postgres directly; `dead-letters` lists and replays dead letters, in NATS directly; `mcp`
serves the gateway's runs to MCP clients (`moot.mcp`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from moot.cli import configs as cli_configs
from moot.cli import database as cli_database
from moot.cli import deadletters as cli_deadletters
from moot.cli import evals as cli_evals
from moot.cli import keys as cli_keys
from moot.cli import runs as cli_runs
from moot.cli.client import GatewayError, MootClient
from moot.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, CliError, connect, err, explain, gateway_url
from moot.cli.requests import (
    MODES,
    add_call_options,
    add_consortium_options,
    add_council_options,
    add_debate_options,
    add_moa_options,
    add_model_options,
    add_submission_options,
    add_vote_options,
    submission,
)
from moot.devstack import home
from moot.devstack.demo import DEMO_PROMPT, run_demo
from moot.devstack.options import add_up_arguments
from moot.mcp import command as mcp_command
from moot.records.accounts import local_key

STACK_COMMANDS = ("up", "demo")
# A gateway command, once its options are checked: what to do with a connected client.
Action = Callable[[MootClient], Awaitable[int]]


def _make_stack(args: argparse.Namespace) -> Any:
    from moot.devstack.stack import stack_from_args  # imported late: `moot --help` should not pay for it

    return stack_from_args(args)


async def _up(args: argparse.Namespace) -> int:
    stack = _make_stack(args)

    async def print_local_key() -> None:
        assert stack.infrastructure is not None
        key = await local_key(stack.infrastructure.database_url, str(stack.data_dir))
        print(f"moot: API key for this stack (kept in {stack.data_dir}/local-api-key):", file=sys.stderr)
        print(f"export MOOT_URL={stack.gateway_url} MOOT_API_KEY={key}", flush=True)
        print(f"moot: the web view: {stack.gateway_url}/ (sign in with the API key)", file=sys.stderr)

    code: int = await stack.run_forever(on_ready=print_local_key)
    return code


# --------------------------------------------------------------------------- gateway commands


def _submit_action(mode: str) -> Callable[[argparse.ArgumentParser, argparse.Namespace], Action]:
    """The action of a command that submits a run of `mode` and follows it."""

    def prepare(p: argparse.ArgumentParser, args: argparse.Namespace) -> Action:
        body = submission(p, args, mode)
        return lambda client: cli_runs.submit_and_follow(client, body, args)

    return prepare


def _save_action(p: argparse.ArgumentParser, args: argparse.Namespace) -> Action:
    config = cli_configs.config_of(p, args)
    return lambda client: cli_configs.save_config(client, args, config)


def _simple(command: Callable[[MootClient, argparse.Namespace], Awaitable[int]]) -> Any:
    """An action for a command that needs no checks beyond argparse's."""
    return lambda _p, args: lambda client: command(client, args)


def _gateway_command(sub: Any, name: str, prepare: Any, **kwargs: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(name, **kwargs)
    p.set_defaults(prepare=prepare, subparser=p)
    return p


def _add_gateway_commands(sub: Any) -> None:
    run = _gateway_command(
        sub,
        "run",
        _submit_action("consortium"),
        help="run a consortium: progress on stderr, the synthesis on stdout",
        description="Members answer in parallel, the arbiter synthesizes, until it is confident enough. "
        "Progress goes to stderr, the synthesis to stdout. Ctrl-C cancels the run.",
    )
    add_submission_options(run)
    add_model_options(run)
    add_consortium_options(run)

    debate = _gateway_command(
        sub,
        "debate",
        _submit_action("debate"),
        help="run a debate: progress on stderr, the verdict streamed to stdout",
        description="Debaters state positions, then argue turn by turn until the judge mode ends it. "
        "Progress goes to stderr, the verdict streams to stdout. Ctrl-C cancels the run.",
    )
    add_submission_options(debate)
    add_model_options(debate)
    add_debate_options(debate)

    council = _gateway_command(
        sub,
        "council",
        _submit_action("council"),
        help="run a council: members answer, rank each other's answers anonymized, a chairman answers",
        description="Members answer in parallel; reviewers (the members by default) rank the answers"
        " anonymized, never their own; the chairman writes the answer knowing the answers and their"
        " ranking. Progress goes to stderr, the answer to stdout. Ctrl-C cancels the run.",
    )
    add_submission_options(council)
    add_model_options(council)
    add_council_options(council)

    vote = _gateway_command(
        sub,
        "vote",
        _submit_action("vote"),
        help="run a vote: members answer once, the most common answer wins (or the run escalates)",
        description="Every member instance answers once; the most common answer (compared as numbers,"
        " choices, yes/no or normalized text) is the answer when enough of them agree. Below the"
        " threshold the run can go on as a consortium or a debate whose first iteration or round is"
        " the votes. Progress goes to stderr, the answer to stdout. Ctrl-C cancels the run.",
    )
    add_submission_options(vote)
    add_model_options(vote)
    add_vote_options(vote, answer_format_flags=("--format", "--answer-format"))

    moa = _gateway_command(
        sub,
        "moa",
        _submit_action("moa"),
        help="run a Mixture-of-Agents: layers of proposers refine, an aggregator answers",
        description="Each layer's proposers answer seeing the previous layer's answers (the first"
        " layer: the question alone); the aggregator writes the answer from the last layer's."
        " Progress goes to stderr, the answer to stdout. Ctrl-C cancels the run.",
        epilog='example: moot moa "Why is the sky blue?" --layer m1,m2:2 --layer m3 --aggregator m3',
    )
    add_submission_options(moa)
    add_moa_options(moa)
    add_call_options(moa)

    save = _gateway_command(
        sub,
        "save",
        _save_action,
        help="save a run configuration of any mode (--mode; a consortium by default) under a name",
        description="Save the options of a run, without its prompt, under NAME; run it with"
        " `moot <command> --config NAME PROMPT`. Each save adds a version.",
    )
    save.add_argument("name", metavar="NAME", help="lowercase letters, digits, '.', '_' and '-'")
    save.add_argument("--mode", choices=MODES, help="the run's mode (default consortium)")
    save.add_argument("--debate", action="store_true", help="same as --mode debate")
    add_model_options(save)
    add_consortium_options(save)
    add_debate_options(save)
    add_council_options(save)
    add_vote_options(save, answer_format_flags=("--answer-format",))
    add_moa_options(save)

    listing = _gateway_command(
        sub, "list", _simple(cli_configs.list_configs), help="the saved configurations"
    )
    listing.add_argument("--json", action="store_true", help="as JSON")
    remove = _gateway_command(
        sub, "remove", _simple(cli_configs.remove_config), help="remove a saved configuration"
    )
    remove.add_argument("name", metavar="NAME")

    runs = _gateway_command(sub, "runs", _simple(cli_runs.list_runs), help="your recent runs, newest first")
    runs.add_argument("--limit", type=int, default=20, help="at most this many (default 20)")
    runs.add_argument("--json", action="store_true", help="as JSON")
    show = _gateway_command(sub, "show", _simple(cli_runs.show_run), help="one run: status, answers, result")
    show.add_argument("run_id", metavar="RUN_ID")
    show.add_argument("--json", action="store_true", help="the full run record as JSON")
    show.add_argument("--full", action="store_true", help="every answer in full, not just its first line")

    cli_evals.add_commands(sub, _gateway_command)


async def _with_gateway(action: Action) -> int:
    url = gateway_url()
    try:
        async with connect() as client:
            return await action(client)
    except (GatewayError, httpx.HTTPError) as exc:
        raise explain(exc, url) from exc


def _run_admin_or_gateway_command(args: argparse.Namespace) -> int:
    """Run a command other than `up`/`demo`; its exit code (CliError's message goes to stderr)."""
    try:
        if args.command == "keys":
            return asyncio.run(cli_keys.COMMANDS[args.keys_command](args))
        if args.command == "migrate":
            return asyncio.run(cli_database.migrate_command(args))
        if args.command == "dead-letters":
            return asyncio.run(cli_deadletters.COMMANDS[args.dead_letters_command](args))
        if args.command == "mcp":
            return mcp_command.run(args)
        if args.command == "dataset":
            return cli_evals.dataset_command(args)
        action = args.prepare(args.subparser, args)  # usage errors exit here, before connecting
        return asyncio.run(_with_gateway(action))
    except CliError as exc:
        err(f"moot: {exc.message}")
        return exc.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `moot runs | head -1`: nobody reads stdout any more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


def command_parser() -> argparse.ArgumentParser:
    """`moot` and its commands."""
    parser = argparse.ArgumentParser(prog="moot", description="Deliberation of language models, distributed.")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser(
        "up", help="start NATS, Postgres (embedded unless NATS_URL/DATABASE_URL) and all services"
    )
    add_up_arguments(up)

    demo = sub.add_parser(
        "demo",
        help="start the stack, run a consortium (and on the local model a short debate), print the answers,"
        " stop (from a terminal: after Ctrl-C, so the runs can be watched in the web view)",
    )
    add_up_arguments(demo)
    demo.add_argument("prompt", nargs="?", default=DEMO_PROMPT)
    demo.add_argument("-m", "--member", action="append", help="MODEL[:COUNT], repeatable")
    demo.add_argument("--arbiter")
    demo.add_argument(
        "--max-iterations",
        type=int,
        default=None,
        help="iterations at most (default: 1 on the local model, else 2)",
    )
    demo.add_argument("--max-tokens", type=int, help="per answer (default on the local model: 300)")
    demo.add_argument(
        "--debate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run a short debate (default: on the local model's default line-up)",
    )
    demo.add_argument("--debate-prompt", help="the debate's question")
    demo.add_argument("--judge", help="the debate's judge (default: the arbiter)")
    demo.add_argument(
        "--max-rounds",
        type=int,
        default=None,
        help="debate rounds at most (default: 1 on the local model, else 3)",
    )

    _add_gateway_commands(sub)
    cli_keys.add_commands(sub)
    cli_database.add_command(sub)
    cli_deadletters.add_command(sub)
    mcp_command.add_command(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = command_parser().parse_args(argv)
    if args.command not in STACK_COMMANDS:
        sys.exit(_run_admin_or_gateway_command(args))
    args.data_dir = home.data_dir(args.data_dir)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    runner = {"up": _up, "demo": lambda a: run_demo(a, _make_stack)}[args.command]
    try:
        sys.exit(asyncio.run(runner(args)))
    except KeyboardInterrupt:
        sys.exit(130)
