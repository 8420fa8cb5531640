"""`moot save`, `moot list`, `moot remove`: saved configurations on the gateway."""

from __future__ import annotations

import argparse
import json
from typing import Any

from moot.cli.client import GatewayError, MootClient
from moot.cli.common import CliError, err, out
from moot.cli.render import configs_table
from moot.cli.requests import check_mode_options, fields_of


def saved_mode(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """`--mode`, or `--debate` (which predates it), or a consortium."""
    if args.debate and args.mode not in (None, "debate"):
        parser.error(f"--debate and --mode {args.mode}: give one")
    return "debate" if args.debate else args.mode or "consortium"


def config_of(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The configuration `moot save` stores: a run request without its prompt."""
    mode = saved_mode(parser, args)
    check_mode_options(parser, args, mode)
    return fields_of(parser, args, mode)


async def save_config(client: MootClient, args: argparse.Namespace, config: dict[str, Any]) -> int:
    saved = await client.save_config(args.name, config)
    out(f"saved {saved['name']} version {saved['version']} ({saved['config']['mode']})\n")
    return 0


async def list_configs(client: MootClient, args: argparse.Namespace) -> int:
    configs = await client.list_configs()
    if args.json:
        out(json.dumps(configs, indent=2) + "\n")
    elif configs:
        out(configs_table(configs))
    else:
        err("no saved configurations yet (save one with `moot save NAME -m MODEL --arbiter MODEL`)")
    return 0


async def remove_config(client: MootClient, args: argparse.Namespace) -> int:
    try:
        await client.delete_config(args.name)
    except GatewayError as exc:
        if exc.status == 404:
            raise CliError(f"no saved configuration {args.name!r}") from exc
        raise
    out(f"removed {args.name}\n")
    return 0
