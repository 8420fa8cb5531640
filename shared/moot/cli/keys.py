"""`moot keys create|list|limits|revoke`: API keys and their limits, written straight to Postgres
(admin commands, no gateway).

The database is `DATABASE_URL`, else the embedded Postgres under `--data-dir` (the one `moot up`
uses): attached to when it runs, started for the command (and stopped after it) when it does not.
Pending migrations are applied first, so the commands work on a fresh database.
A new key is printed once, on stdout alone, and never logged; Postgres keeps only its hash.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from moot.cli.common import EXIT_USAGE, CliError, err, out, table
from moot.cli.database import data_dir_option, migrated_connection
from moot.records.accounts import UNCHANGED, Limits, create_key, list_keys, revoke_key, set_limits

# The gateway caches key lookups this long (moot_gateway.auth.CACHE_SECONDS).
GATEWAY_CACHE_SECONDS = 30


def _when(at: datetime | None) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if at else "-"


def _limit(kind: type[int] | type[float]) -> Any:
    """An argparse type: a number >= 0 (0: no limit), or `default` (the deployment's default)."""

    def parse(text: str) -> int | float | None:
        if text == "default":
            return None
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number or 'default', not {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError("0 means no limit; a limit cannot be negative")
        return value

    return parse


def _add_limit_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument(
        "--rpm", type=_limit(int), default=default, help="runs the key may start per minute (0: no limit)"
    )
    parser.add_argument(
        "--max-concurrent-runs",
        type=_limit(int),
        default=default,
        help="runs of the key under way at once (0: no limit)",
    )
    parser.add_argument(
        "--usd-per-day",
        type=_limit(float),
        default=default,
        help="spend of the runs the key starts in a UTC day, in USD (0: no limit)",
    )


async def create(args: argparse.Namespace) -> int:
    limits = Limits(rpm=args.rpm, max_concurrent_runs=args.max_concurrent_runs, usd_per_day=args.usd_per_day)
    async with migrated_connection(args.data_dir) as conn:
        try:
            key_id, key = await create_key(conn, args.name, args.owner, limits)
        except ValueError as exc:
            raise CliError(str(exc), EXIT_USAGE) from exc
    out(key + "\n")
    err(
        f"created {key_id} for owner {args.owner or args.name} ({limits.described()}). The key is shown"
        " only now and cannot be shown again (only its hash is stored): keep it, e.g. export"
        " MOOT_API_KEY=<the key>"
    )
    return 0


async def limits(args: argparse.Namespace) -> int:
    changes = {
        name: getattr(args, name)
        for name in ("rpm", "max_concurrent_runs", "usd_per_day")
        if getattr(args, name) is not UNCHANGED
    }
    if not changes:
        raise CliError("say which limits to change: --rpm, --max-concurrent-runs, --usd-per-day", EXIT_USAGE)
    async with migrated_connection(args.data_dir) as conn:
        now = await set_limits(conn, args.key_id, **changes)
    if now is None:
        raise CliError(f"no active key {args.key_id!r} (see `moot keys list`)")
    out(f"{args.key_id}: {now.described()}; gateways apply it within {GATEWAY_CACHE_SECONDS} s\n")
    return 0


async def list_all(args: argparse.Namespace) -> int:
    async with migrated_connection(args.data_dir) as conn:
        keys = await list_keys(conn)
    if not keys:
        err("no keys yet (create one with `moot keys create --name NAME`)")
        return 0
    rows = [
        [k.id, k.owner, k.name, _when(k.created_at), _when(k.revoked_at), k.limits.described()] for k in keys
    ]
    out(table(["ID", "OWNER", "NAME", "CREATED (UTC)", "REVOKED (UTC)", "LIMITS"], rows))
    return 0


async def revoke(args: argparse.Namespace) -> int:
    async with migrated_connection(args.data_dir) as conn:
        revoked = await revoke_key(conn, args.key_id)
    if not revoked:
        raise CliError(f"no active key {args.key_id!r} (see `moot keys list`)")
    out(f"revoked {args.key_id}: the gateway refuses it within {GATEWAY_CACHE_SECONDS} s\n")
    return 0


COMMANDS = {"create": create, "list": list_all, "limits": limits, "revoke": revoke}


def add_commands(sub: Any) -> None:
    """`moot keys ...` under the CLI's subcommands."""
    where = data_dir_option()
    keys = sub.add_parser("keys", help="create, list, limit and revoke API keys (in Postgres directly)")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="{create,list,limits,revoke}")
    new = actions.add_parser(
        "create", parents=[where], help="create a key; it is printed once and cannot be shown again"
    )
    new.add_argument("--name", required=True, help="what the key is for (and its owner, unless --owner)")
    new.add_argument("--owner", help="who the key's runs and configurations belong to (default: --name)")
    _add_limit_options(new, None)
    actions.add_parser(
        "list", parents=[where], help="every key: id, owner, name, created, revoked, limits (never the key)"
    )
    change = actions.add_parser(
        "limits",
        parents=[where],
        help="change a key's limits (a number, 0 for no limit, or `default` for the deployment's)",
    )
    change.add_argument("key_id", metavar="KEY_ID")
    _add_limit_options(change, UNCHANGED)
    gone = actions.add_parser(
        "revoke",
        parents=[where],
        help=f"revoke a key by its id (the gateway refuses it within {GATEWAY_CACHE_SECONDS} s)",
    )
    gone.add_argument("key_id", metavar="KEY_ID")
