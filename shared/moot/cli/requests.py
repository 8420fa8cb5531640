"""Command-line options -> run requests, for `moot run`, `debate`, `council`, `vote`, `moa` and `save`.

Every option defaults to None and only options given on the command line go into the request,
so the gateway's defaults (and a saved configuration's values, with `--config`) hold otherwise.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

FORMATS = ("free_discussion", "structured_opposition", "iterative_improvement", "custom")
JUDGE_MODES = ("external_judge", "self_convergence", "display_only")
ANSWER_FORMATS = ("free", "number", "choice", "yes_no")

# A vote's escalation, by the options that ask for it: the request's `escalate` fields, prefixed.
ESCALATE_CONSORTIUM = (
    "escalate_arbiter",
    "escalate_confidence_threshold",
    "escalate_min_iterations",
    "escalate_max_iterations",
)
ESCALATE_DEBATE = (
    "escalate_debate",
    "escalate_judge",
    "escalate_judge_mode",
    "escalate_format",
    "escalate_max_rounds",
)

# The options (by `dest`) that belong to one mode; the others (--system, --budget-*, ...) are every mode's.
MODE_OPTIONS: dict[str, tuple[str, ...]] = {
    "consortium": ("members", "arbiter", "confidence_threshold", "min_iterations", "max_iterations"),
    "debate": ("members", "format", "custom_prompt", "judge_mode", "judge", "max_rounds"),
    "council": ("members", "chairman", "reviewers"),
    "vote": (
        "members",
        "answer_format",
        "choices",
        "agreement_threshold",
        *ESCALATE_CONSORTIUM,
        *ESCALATE_DEBATE,
    ),
    "moa": ("layers", "aggregator"),
}
MODES = tuple(MODE_OPTIONS)  # `moot.requests.MODES`, without building its models at every start
# Options whose flag is not `--` + their dest with dashes.
_FLAGS = {"members": "-m", "reviewers": "--reviewer", "choices": "--choice", "layers": "--layer"}
_MODE_DESTS = list(dict.fromkeys(n for names in MODE_OPTIONS.values() for n in names))

_MEMBERS = ("members", "the models with -m MODEL[:COUNT]")
# What a request of each mode must name when no saved configuration or continued run names it.
_REQUIRED: dict[str, tuple[tuple[str, str], ...]] = {
    "consortium": (_MEMBERS, ("arbiter", "the arbiter with --arbiter MODEL")),
    "debate": (_MEMBERS,),
    "council": (_MEMBERS, ("chairman", "the chairman with --chairman MODEL")),
    "vote": (_MEMBERS,),
    "moa": (
        ("layers", "the layers with --layer MODEL[:COUNT],... (once per layer, first layer first)"),
        ("aggregator", "the aggregator with --aggregator MODEL"),
    ),
}
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


def layer_spec(text: str) -> list[tuple[str, int]]:
    """`MODEL[:COUNT],MODEL[:COUNT]...` -> the layer's (model, count)s (model names have no commas)."""
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"{text!r}: a layer is models separated by commas, none empty")
    return [member_spec(item) for item in items]


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: must be between 0 and 1")
    return value


def add_call_options(p: argparse.ArgumentParser) -> None:
    """How every call of a run is made and what the run may spend: options of every mode."""
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


def add_model_options(p: argparse.ArgumentParser) -> None:
    """Who takes part (`-m`) and how they are called: options of every mode but the Mixture-of-Agents'."""
    p.add_argument(
        "-m",
        "--model",
        dest="members",
        action="append",
        type=member_spec,
        metavar="MODEL[:COUNT]",
        help="a model taking part, COUNT independent instances (default 1); repeatable",
    )
    add_call_options(p)


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


def add_council_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--chairman", metavar="MODEL", help="the model that writes the answer, knowing the ranking"
    )
    p.add_argument(
        "--reviewer",
        dest="reviewers",
        action="append",
        type=member_spec,
        metavar="MODEL[:COUNT]",
        help="a model ranking the answers, COUNT instances; repeatable (default: the members rank each"
        " other's answers, never their own)",
    )


def add_vote_options(p: argparse.ArgumentParser, answer_format_flags: Sequence[str]) -> None:
    """A vote's options; `answer_format_flags` name its answer format (`moot vote` also takes
    `--format`, which `moot save` keeps for the debate's)."""
    p.add_argument(
        *answer_format_flags,
        dest="answer_format",
        choices=ANSWER_FORMATS,
        help="how answers are compared: as numbers, by option letter (with --choice), by yes or no,"
        " or as normalized free text (default free)",
    )
    p.add_argument(
        "--choice",
        dest="choices",
        action="append",
        metavar="TEXT",
        help="an option of a choice vote, shown as A., B., ...; repeatable (implies --answer-format choice)",
    )
    p.add_argument(
        "--agreement-threshold",
        "--threshold",
        dest="agreement_threshold",
        type=_probability,
        metavar="0..1",
        help="the share of counted votes the most common answer needs to be the answer (default 0.6)",
    )
    escalate = p.add_argument_group(
        "escalation",
        "below the threshold, go on as a consortium or a debate whose first iteration or round is the votes",
    )
    escalate.add_argument("--escalate-arbiter", metavar="MODEL", help="as a consortium with this arbiter")
    escalate.add_argument(
        "--escalate-confidence-threshold", type=_probability, metavar="0..1", help="its confidence threshold"
    )
    escalate.add_argument("--escalate-min-iterations", type=int, metavar="N", help="its iterations at least")
    escalate.add_argument(
        "--escalate-max-iterations", type=int, metavar="N", help="its iterations at most, the votes' included"
    )
    escalate.add_argument(
        "--escalate-debate",
        action="store_true",
        default=None,
        help="as a debate (display only unless --escalate-judge or --escalate-judge-mode)",
    )
    escalate.add_argument("--escalate-judge", metavar="MODEL", help="as a debate with this external judge")
    escalate.add_argument("--escalate-judge-mode", choices=JUDGE_MODES, help="the debate's judge mode")
    escalate.add_argument("--escalate-format", choices=FORMATS[:-1], help="the debate's format")
    escalate.add_argument(
        "--escalate-max-rounds",
        type=int,
        metavar="N",
        help="the debate's rounds at most, the votes' included",
    )


def add_moa_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--layer",
        dest="layers",
        action="append",
        type=layer_spec,
        metavar="MODEL[:COUNT],...",
        help="the proposers of one layer, comma-separated; once per layer, first layer first",
    )
    p.add_argument(
        "--aggregator", metavar="MODEL", help="the model that writes the answer from the last layer's"
    )


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


# --------------------------------------------------------------------------- options -> request fields


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _specs(pairs: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """(model, count)s as member specs; a model named twice gets the counts added up."""
    counts: dict[str, int] = {}
    for model, count in pairs:
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


def _common(args: argparse.Namespace, mode: str, names: tuple[str, ...]) -> dict[str, Any]:
    """`mode`, the options `names` that were given, and what every call of the run shares."""
    return {"mode": mode, **_given(args, names), **_per_call(args), **_budget(args)}


def consortium_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields = _common(
        args, "consortium", ("arbiter", "confidence_threshold", "min_iterations", "max_iterations")
    )
    if args.members:
        fields["members"] = _specs(args.members)
    return fields


def debate_fields(args: argparse.Namespace) -> dict[str, Any]:
    """A debate's fields; --system, --temperature and --max-tokens go to every debater."""
    fields: dict[str, Any] = {
        "mode": "debate",
        **_given(args, ("format", "custom_prompt", "judge_mode", "judge", "max_rounds")),
        **_budget(args),
    }
    if args.judge is not None and args.judge_mode is None:
        fields["judge_mode"] = "external_judge"
    if args.members:
        fields["members"] = [{**m, **_per_call(args)} for m in _specs(args.members)]
    return fields


def council_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields = _common(args, "council", ("chairman",))
    if args.members:
        fields["members"] = _specs(args.members)
    if args.reviewers:
        fields["reviewers"] = _specs(args.reviewers)
    return fields


def _escalation(args: argparse.Namespace) -> dict[str, Any] | None:
    """The vote's `escalate`, from the `--escalate-*` options given; None without any."""
    if args.escalate_arbiter is not None:
        given = _given(args, ESCALATE_CONSORTIUM)
        return {"mode": "consortium", **{n.removeprefix("escalate_"): v for n, v in given.items()}}
    given = _given(args, ESCALATE_DEBATE)
    if not given:
        return None
    escalate = {
        "mode": "debate",
        **{n.removeprefix("escalate_"): v for n, v in given.items() if n != "escalate_debate"},
    }
    if "judge" in escalate and "judge_mode" not in escalate:
        escalate["judge_mode"] = "external_judge"
    return escalate


def vote_fields(args: argparse.Namespace) -> dict[str, Any]:
    """A vote's fields; `--choice` alone makes it a choice vote."""
    fields = _common(args, "vote", ("answer_format", "choices", "agreement_threshold"))
    if args.choices and args.answer_format is None:
        fields["answer_format"] = "choice"
    if (escalate := _escalation(args)) is not None:
        fields["escalate"] = escalate
    if args.members:
        fields["members"] = _specs(args.members)
    return fields


def moa_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields = _common(args, "moa", ("aggregator",))
    if args.layers:
        fields["layers"] = [_specs(layer) for layer in args.layers]
    return fields


FIELDS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "consortium": consortium_fields,
    "debate": debate_fields,
    "council": council_fields,
    "vote": vote_fields,
    "moa": moa_fields,
}


# --------------------------------------------------------------------------- checks


def _flag(dest: str) -> str:
    return _FLAGS.get(dest, "--" + dest.replace("_", "-"))


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
    for dest, what in _REQUIRED[mode]:
        if not getattr(args, dest, None):
            parser.error(f"give {what} (or run a saved one with --config NAME)")


def check_vote(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A vote escalates to one consortium or one debate, and a consortium's options need its
    arbiter (they replace a saved configuration's `escalate` as a whole); --choice is for choice votes."""
    consortium = [_flag(n) for n in ESCALATE_CONSORTIUM if getattr(args, n, None) is not None]
    debate = [_flag(n) for n in ESCALATE_DEBATE if getattr(args, n, None) is not None]
    if consortium and debate:
        parser.error(
            f"{', '.join(consortium + debate)}: escalate to a consortium (--escalate-arbiter) or to a"
            " debate (--escalate-debate, --escalate-judge), not both"
        )
    if consortium and args.escalate_arbiter is None:
        parser.error(f"{', '.join(consortium)}: escalating to a consortium needs --escalate-arbiter MODEL")
    if args.choices and args.answer_format not in (None, "choice"):
        parser.error(f"--choice: options are for --answer-format choice, not {args.answer_format}")


def check_mode_options(parser: argparse.ArgumentParser, args: argparse.Namespace, mode: str) -> None:
    """`moot save`: refuse options of other modes instead of silently dropping them."""
    stray = [n for n in _MODE_DESTS if n not in MODE_OPTIONS[mode] and getattr(args, n, None) is not None]
    if stray:
        owners = [m for m in MODE_OPTIONS if set(stray) & set(MODE_OPTIONS[m])]
        hint = " or ".join(f"--mode {m}" for m in owners)
        parser.error(f"{', '.join(map(_flag, stray))}: not options of a {mode} (options of {hint})")


def fields_of(parser: argparse.ArgumentParser, args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """The request fields the options give for a run of `mode`; a usage error when they are
    incomplete or contradict each other."""
    check_complete(parser, args, mode)
    if mode == "vote":
        check_vote(parser, args)
    return FIELDS[mode](args)


# --------------------------------------------------------------------------- the prompt


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
    """The body of POST /v1/runs for a run of `mode` (`moot run` runs a consortium)."""
    fields = fields_of(parser, args, mode)
    prompt = prompt_of(args)
    if not prompt:
        parser.error("no prompt: give PROMPT or pipe it on stdin")
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
