"""llm-moot: moot's consortiums and debates in Simon Willison's `llm` CLI.

Two hooks: every saved configuration of the key's owner becomes a model (`llm -m panel "..."`),
and `llm moot run|debate|save|list|remove` run and manage them on a moot gateway (`MOOT_URL`;
the key from `llm keys set moot` or `MOOT_API_KEY`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click
import llm

from llm_moot.commands import moot_group
from llm_moot.gateway import Gateway, GatewayError
from llm_moot.models import MootModel, model_for

# Listing the saved configurations must not hold up every `llm` command when the gateway is
# slow or gone: this long at most.
LIST_TIMEOUT_SECONDS = 5.0


def gateway_key() -> str | None:
    """The key `llm keys set moot` stored, else `MOOT_API_KEY`."""
    return llm.get_key(alias="moot", env="MOOT_API_KEY")


@functools.cache
def saved_models() -> tuple[MootModel, ...]:
    """The key owner's saved configurations as models, asked of the gateway once per process
    (`llm` looks its models up several times in one command).

    Without a key, or with the gateway unreachable or refusing, none: `llm` keeps working with
    its other models, and one line on stderr says why these are missing.
    """
    key = gateway_key()
    if not key:
        click.echo("llm-moot: no key (`llm keys set moot` or MOOT_API_KEY): no moot models", err=True)
        return ()
    try:
        with Gateway(key, timeout=LIST_TIMEOUT_SECONDS) as gateway:
            configs = gateway.configs()
    except GatewayError as exc:
        click.echo(f"llm-moot: no moot models: {exc}", err=True)
        return ()
    return tuple(model_for(saved["name"], saved["config"]) for saved in configs)


@llm.hookimpl
def register_models(register: Callable[..., None]) -> None:
    for model in saved_models():
        register(model)


@llm.hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(moot_group)
