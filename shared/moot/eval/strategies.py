"""Strategies written on a command line: `NAME=SPEC` -> `Strategy` (`moot eval --strategy`).

SPEC is one of:

- `single:MODEL`: one call of MODEL (a vote of one, so its answer is read as a vote reads it);
- `MODE:MEMBERS[;FIELD=VALUE...]` for the modes `vote`, `consortium`, `debate`, `council`:
  MEMBERS are `MODEL[:COUNT]` separated by commas, the fields are the run request's
  (`vote:gpt:5`, `consortium:a,b:2;arbiter=c;max_iterations=2`, `debate:a,b;judge=c`,
  `council:a,b,c;chairman=d`); a VALUE is read as JSON when it is JSON (numbers, booleans,
  objects), else as text;
- `moa:LAYER|LAYER...;aggregator=MODEL[;FIELD=VALUE...]`, each layer MEMBERS;
- `config:NAME[;FIELD=VALUE...]`: a saved configuration, with overrides;
- a JSON object (a run request without its prompt), or `@FILE` holding one.

Separators are `,` `;` `|` and `=`, which model names do not use (they may hold `/` and `:`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from moot.cli.requests import member_spec
from moot.eval.models import Strategy

MEMBER_MODES = ("vote", "consortium", "debate", "council")
FORMS = "single:MODEL, vote|consortium|debate|council:MEMBERS[;FIELD=VALUE...], moa:LAYER|LAYER;aggregator=MODEL, config:NAME, a JSON object or @FILE"


class StrategyError(ValueError):
    """A strategy that cannot be read; its message names the strategy and what is wrong."""


def _members(text: str) -> list[dict[str, Any]]:
    members = []
    for item in text.split(","):
        try:
            model, count = member_spec(item.strip())
        except argparse.ArgumentTypeError as exc:
            raise StrategyError(str(exc)) from exc
        members.append({"model": model, "count": count})
    return members


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _fields(parts: list[str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise StrategyError(f"{part!r}: a field is FIELD=VALUE")
        fields[key.strip()] = _value(value.strip())
    return fields


def run_of(spec: str) -> dict[str, Any]:
    """The run submission SPEC stands for (see the module's docstring)."""
    spec = spec.strip()
    if spec.startswith("@"):
        try:
            spec = Path(spec[1:]).read_text()
        except OSError as exc:
            raise StrategyError(f"cannot read {spec[1:]}: {exc.strerror}") from exc
    if spec.startswith("{"):
        try:
            run = json.loads(spec)
        except ValueError as exc:
            raise StrategyError(f"not a JSON object: {exc}") from exc
        if not isinstance(run, dict):
            raise StrategyError("not a JSON object")
        return run
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise StrategyError(f"{spec!r}: write one of {FORMS}")
    head, *more = rest.split(";")
    fields = _fields(more)
    if kind == "single":
        return {"mode": "vote", "members": [{"model": head.strip(), "count": 1}], **fields}
    if kind in MEMBER_MODES:
        return {"mode": kind, "members": _members(head), **fields}
    if kind == "moa":
        return {"mode": "moa", "layers": [_members(layer) for layer in head.split("|")], **fields}
    if kind == "config":
        return {"config": head.strip(), **fields}
    raise StrategyError(f"{kind!r} is not a kind of strategy: write one of {FORMS}")


def parse(text: str) -> Strategy:
    """`NAME=SPEC` -> the strategy; StrategyError naming it when it cannot be read."""
    name, sep, spec = text.partition("=")
    if not sep:
        raise StrategyError(f"{text!r}: write NAME=SPEC, e.g. single=single:MODEL or vote5=vote:MODEL:5")
    try:
        return Strategy(name=name.strip(), run=run_of(spec))
    except StrategyError as exc:
        raise StrategyError(f"strategy {name.strip()!r}: {exc}") from exc
    except ValidationError as exc:
        problem = "; ".join(e["msg"] for e in exc.errors(include_url=False))
        raise StrategyError(f"strategy {name.strip()!r}: {problem}") from exc
