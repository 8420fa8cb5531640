"""Command-line options -> run requests, for `moot run`, `moot debate` and `moot save`.

Every option defaults to None and only options given on the command line go into the request,
so the gateway's defaults (and a saved configuration's values, with `--config`) hold otherwise.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

CONSORTIUM_OPTIONS = ("arbiter", "confidence_threshold", "min_iterations", "max_iterations")
DEBATE_OPTIONS = ("format", "custom_prompt", "judge_mode", "judge", "max_rounds")
FORMATS = ("free_discussion", "structured_opposition", "iterative_improvement", "custom")
JUDGE_MODES = ("external_judge", "self_convergence", "display_only")
_COUNT_SUFFIX = re.compile(r"^(?P<model>.+):(?P<count>-?\d+)$")


def member_spec(text: str) -> tuple[str, int]:
    """`MODEL[:COUNT]` -> (model, count); a non-numeric tail belongs to the model name."""
    match = _COUNT_SUFFIX.match(text)
    model, count = (match["model"], int(match["count"])) if match else (text, 1)
    if not model:
        raise argparse.ArgumentTypeError(f"{text!r}: no model name")
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the count must be at least 1")
    return model, count


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: must be between 0 and 1")
    return value


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Who takes part and how they are called: options of consortiums and debates alike."""
    p.add_argument(
        "-m",
        "--model",
        dest="members",
        action="append",
        type=member_spec,
        metavar="MODEL[:COUNT]",
        help="a model taking part, COUNT independent instances (default 1); repeatable",
    )
    p.add_argument("--system", help="system prompt (in a debate: every debater's)")
    p.add_argument("--temperature", type=float, help="sampling temperature of every answer")
    p.add_argument("--max-tokens", type=int, help="at most this many tokens per answer")
    p.add_argument(
        "--budget-seconds",
        type=int,
        metavar="N",
        help="the run's deadline: it ends N seconds after it starts (default 900)",
    )
    p.add_argument(
        "--budget-tokens",
        type=int,
        metavar="N",
        help="at most N tokens (input + output) over all calls: the run ends before calls that could exceed it",
    )
    p.add_argument(
        "--budget-usd",
        type=float,
        metavar="X",
        help="at most X US dollars over all calls (priced models only): the run ends before exceeding it",
    )


def add_consortium_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arbiter", metavar="MODEL", help="the model that synthesizes the answers")
    p.add_argument(
        "--confidence-threshold",
        type=_probability,
        metavar="0..1",
        help="stop once the arbiter is this confident (default 0.8)",
    )
    p.add_argument("--max-iterations", type=int, metavar="N", help="iterations at most (default 3)")
    p.add_argument("--min-iterations", type=int, metavar="N", help="iterations at least (default 1)")


def add_debate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=FORMATS, help="how debaters are prompted (default free_discussion)")
    p.add_argument(
        "--custom-prompt",
        metavar="TEMPLATE",
        help="the debate prompt for --format custom ({question}, {history}, {own_position}, ...)",
    )
    p.add_argument(
        "--judge-mode",
        choices=JUDGE_MODES,
        help="who ends the debate (default: external_judge with --judge, else display_only)",
    )
    p.add_argument("--judge", metavar="MODEL", help="the external judge, who also writes the verdict")
    p.add_argument("--max-rounds", type=int, metavar="N", help="rounds at most (default 3)")


def add_submission_options(p: argparse.ArgumentParser) -> None:
    """The prompt and what happens around one run: saved configuration, continuation, output."""
    p.add_argument("prompt", nargs="?", help="the question; text piped on stdin is appended to it")
    p.add_argument("--config", metavar="NAME", help="run a saved configuration; other options override it")
    p.add_argument(
        "--config-version", type=int, metavar="N", help="that version of --config (default latest)"
    )
    p.add_argument(
        "--continue", dest="continue_from", metavar="RUN_ID", help="continue a finished run's conversation"
    )
    p.add_argument("--no-stdin", dest="stdin", action="store_false", help="do not read stdin")
    p.add_argument("--output", metavar="FILE", help="also write the full run record (JSON) to FILE")
    p.add_argument("--raw", action="store_true", help="print the full run record (JSON) after the answer")


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _members(args: argparse.Namespace) -> list[dict[str, Any]]:
    """`-m` options as member specs; a model named twice gets the counts added up."""
    counts: dict[str, int] = {}
    for model, count in args.members or []:
        counts[model] = counts.get(model, 0) + count
    return [{"model": model, "count": count} for model, count in counts.items()]


def _per_call(args: argparse.Namespace) -> dict[str, Any]:
    return _given(args, ("system", "temperature", "max_tokens"))


def _budget(args: argparse.Namespace) -> dict[str, Any]:
    """The limits given (`--budget-seconds`, `--budget-tokens`, `--budget-usd`) as `budget`; the
    gateway fills in the others (from a saved configuration, limit by limit, or the defaults)."""
    limits = {
        limit: getattr(args, f"budget_{limit}")
        for limit in ("seconds", "tokens", "usd")
        if getattr(args, f"budget_{limit}", None) is not None
    }
    return {"budget": limits} if limits else {}


def consortium_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "mode": "consortium",
        **_given(args, CONSORTIUM_OPTIONS),
        **_per_call(args),
        **_budget(args),
    }
    if args.members:
        fields["members"] = _members(args)
    return fields


def debate_fields(args: argparse.Namespace) -> dict[str, Any]:
    """A debate's fields; --system, --temperature and --max-tokens go to every debater."""
    fields: dict[str, Any] = {"mode": "debate", **_given(args, DEBATE_OPTIONS), **_budget(args)}
    if args.judge is not None and args.judge_mode is None:
        fields["judge_mode"] = "external_judge"
    if args.members:
        fields["members"] = [{**m, **_per_call(args)} for m in _members(args)]
    return fields


def check_complete(parser: argparse.ArgumentParser, args: argparse.Namespace, mode: str) -> None:
    """Without a saved configuration or a run to continue (whose models the gateway takes), the
    options must name the models (usage error otherwise)."""
    if getattr(args, "continue_from", None) and not getattr(args, "config", None):
        return
    if getattr(args, "config", None):
        if mode == "debate" and _per_call(args) and not args.members:
            parser.error(
                "--system, --temperature and --max-tokens of a debate apply to -m models: give -m too"
            )
        return
    if not args.members:
        parser.error("give the models with -m MODEL[:COUNT] (or run a saved one with --config NAME)")
    if mode == "consortium" and not args.arbiter:
        parser.error("give the arbiter with --arbiter MODEL (or run a saved one with --config NAME)")


def check_mode_options(parser: argparse.ArgumentParser, args: argparse.Namespace, mode: str) -> None:
    """`moot save`: refuse options of the other mode instead of silently dropping them."""
    other = DEBATE_OPTIONS if mode == "consortium" else CONSORTIUM_OPTIONS
    stray = ["--" + n.replace("_", "-") for n in other if getattr(args, n, None) is not None]
    if stray:
        hint = "save a debate with --debate" if mode == "consortium" else "these are consortium options"
        parser.error(f"{', '.join(stray)}: not options of a {mode} ({hint})")


def piped_stdin() -> str | None:
    """What was piped on stdin, stripped; None when stdin is a terminal, closed or empty."""
    if sys.stdin is None or sys.stdin.closed or sys.stdin.isatty():
        return None
    return sys.stdin.read().strip() or None


def prompt_of(args: argparse.Namespace) -> str | None:
    """The prompt argument, with piped stdin appended after a blank line; stdin alone without one."""
    piped = piped_stdin() if args.stdin else None
    if args.prompt and piped:
        return f"{args.prompt}\n\n{piped}"
    return args.prompt or piped


def submission(parser: argparse.ArgumentParser, args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """The body of POST /v1/runs for `moot run` (mode consortium) or `moot debate`."""
    check_complete(parser, args, mode)
    prompt = prompt_of(args)
    if not prompt:
        parser.error("no prompt: give PROMPT or pipe it on stdin")
    fields = consortium_fields(args) if mode == "consortium" else debate_fields(args)
    body: dict[str, Any] = {**fields, "prompt": prompt}
    if args.config:
        body["config"] = args.config  # `mode` stays: `moot debate --config` of a consortium is refused
        if args.config_version is not None:
            body["config_version"] = args.config_version
    elif args.config_version is not None:
        parser.error("--config-version needs --config")
    if args.continue_from:
        body["continue_from"] = args.continue_from
    if args.output and not Path(args.output).resolve().parent.is_dir():
        parser.error(f"--output {args.output}: no such directory")
    return body
