"""`llm moot`: run a consortium or a debate, save, list and remove configurations.

The options are the `llm consortium` plugin's (`-m model:count`, `--arbiter`,
`--confidence-threshold`, `--max-iterations`, `--min-iterations`, `--system`, `--output`,
`--raw`, text piped on stdin appended to the prompt), plus a debate's. The answer goes to
stdout (a debate's verdict as it is written), the run's id and progress to stderr. Options not
given are left to the gateway's defaults. `llm moot "..."` is `llm moot run "..."`.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import llm
from click_default_group import DefaultGroup

from llm_moot.gateway import Gateway, GatewayError, RunFailed, answer_of

F = TypeVar("F", bound=Callable[..., Any])

# `MODEL:COUNT`, where COUNT is a number: a model's name may itself hold colons (`ollama:llama3`).
_COUNT_SUFFIX = re.compile(r"^(?P<model>.+):(?P<count>\d+)$")
# The exit code of a run stopped by Ctrl-C (after cancelling it), as for any interrupted command.
INTERRUPTED = 130


def members_of(specs: tuple[str, ...]) -> list[dict[str, Any]]:
    """`-m MODEL[:COUNT]` values as member specs; a model named twice gets its counts added up."""
    counts: dict[str, int] = {}
    for spec in specs:
        match = _COUNT_SUFFIX.match(spec)
        model, count = (match["model"], int(match["count"])) if match else (spec, 1)
        if count < 1:
            raise click.BadParameter(f"{spec!r}: the count must be at least 1", param_hint="-m")
        counts[model] = counts.get(model, 0) + count
    return [{"model": model, "count": count} for model, count in counts.items()]


def prompt_with_stdin(prompt: str | None, read_stdin: bool) -> str:
    """PROMPT with text piped on stdin appended after a blank line; the piped text alone without one."""
    piped = None
    if read_stdin and sys.stdin is not None and not sys.stdin.isatty():
        piped = sys.stdin.read().strip() or None
    if prompt and piped:
        return f"{prompt}\n\n{piped}"
    if prompt or piped:
        return prompt or piped or ""
    raise click.UsageError("No prompt: give PROMPT or pipe it on stdin.")


def _given(**options: Any) -> dict[str, Any]:
    return {name: value for name, value in options.items() if value is not None}


def consortium_request(
    models: tuple[str, ...],
    arbiter: str,
    confidence_threshold: float | None,
    max_iterations: int | None,
    min_iterations: int | None,
    system: str | None,
) -> dict[str, Any]:
    return {
        "mode": "consortium",
        "members": members_of(models),
        "arbiter": arbiter,
        **_given(
            confidence_threshold=confidence_threshold,
            max_iterations=max_iterations,
            min_iterations=min_iterations,
            system=system,
        ),
    }


def debate_request(
    models: tuple[str, ...],
    judge: str | None,
    judge_mode: str | None,
    debate_format: str | None,
    max_rounds: int | None,
    system: str | None,
) -> dict[str, Any]:
    """A debate; `--system` is every debater's (a debate's system prompts are per debater)."""
    members = [{**m, **_given(system=system)} for m in members_of(models)]
    return {
        "mode": "debate",
        "members": members,
        **_given(judge=judge, judge_mode=judge_mode, format=debate_format, max_rounds=max_rounds),
    }


def _gateway() -> Gateway:
    return Gateway(llm.get_key(alias="moot", env="MOOT_API_KEY"))


def _refused(exc: GatewayError) -> click.ClickException:
    """A validation error (422) is a usage error (exit 2, each field on its line); anything else exit 1."""
    if exc.fields:
        return click.UsageError("\n".join(f"{field}: {message}" for field, message in exc.fields))
    return click.ClickException(exc.message)


def _progress(event_type: str, data: dict[str, Any]) -> str | None:
    """A line on stderr for the events that mark a step: an iteration's verdict, a round, a judge."""
    if event_type == "iteration.completed":
        confidence = data.get("verdict", {}).get("confidence")
        shown = "unreadable" if confidence is None else f"{confidence:.2f}"
        return f"iteration {data.get('iteration')}: confidence {shown} -> {data.get('decision')}"
    if event_type == "round.completed":
        return f"round {data.get('round')} done"
    if event_type == "judge.decided":
        return f"judge {data.get('model')}: {'continue' if data.get('continue') else 'stop'}"
    return None


def run_and_print(request: dict[str, Any], output: str | None, raw: bool) -> None:
    """Submit the run, stream a verdict to stdout as it is written, print the answer, save the record."""
    with _gateway() as gateway:
        try:
            run_id = gateway.submit(request)
        except GatewayError as exc:
            raise _refused(exc) from exc
        click.echo(f"{request.get('mode', 'consortium')} {run_id}", err=True)
        streamed = ""
        try:
            for event in gateway.events(run_id):
                if event.type == "final.chunk":
                    delta = event.data.get("delta", "")
                    click.echo(delta, nl=False)
                    streamed += delta
                elif (line := _progress(event.type, event.data)) is not None:
                    click.echo(line, err=True)
            view = gateway.run(run_id)
        except KeyboardInterrupt:
            gateway.cancel(run_id)
            click.echo(f"\ncancelled run {run_id}", err=True)
            sys.exit(INTERRUPTED)
        except GatewayError as exc:
            raise click.ClickException(f"run {run_id}: {exc}") from exc
    if output:
        Path(output).write_text(json.dumps(view, indent=2) + "\n")
    try:
        answer = answer_of(view)
    except RunFailed as exc:
        if streamed:
            click.echo()
        raise click.ClickException(str(exc)) from exc
    if streamed:
        click.echo("" if streamed.endswith("\n") else "\n", nl=False)
    else:
        click.echo(answer)
    if raw:
        click.echo("\n--- Execution Trace ---\n" + json.dumps(view, indent=2))


# ---------------------------------------------------------------------------------------------
# Options, shared by the commands that take them


def _models_option(f: F) -> F:
    return click.option(
        "-m",
        "--model",
        "models",
        multiple=True,
        required=True,
        metavar="MODEL[:COUNT]",
        help="A model of the gateway's list and how many instances of it (repeatable).",
    )(f)


def _consortium_options(f: F) -> F:
    for option in reversed(
        [
            click.option("--arbiter", help="The model that synthesizes the members' answers."),
            click.option(
                "--confidence-threshold",
                type=click.FloatRange(0, 1),
                help="Stop once the arbiter is this confident (gateway default 0.8).",
            ),
            click.option(
                "--max-iterations", type=click.IntRange(min=1), help="Iterations at most (default 3)."
            ),
            click.option(
                "--min-iterations", type=click.IntRange(min=1), help="Iterations at least (default 1)."
            ),
        ]
    ):
        f = option(f)
    return f


def _debate_options(f: F) -> F:
    for option in reversed(
        [
            click.option(
                "--judge", help="The model that decides when the debate stops and gives the verdict."
            ),
            click.option(
                "--judge-mode",
                type=click.Choice(["external_judge", "self_convergence", "display_only"]),
                help="Who ends the debate (external_judge when --judge is given).",
            ),
            click.option(
                "--format",
                "debate_format",
                type=click.Choice(["free_discussion", "structured_opposition", "iterative_improvement"]),
                help="How the debaters argue (default free_discussion).",
            ),
            click.option("--max-rounds", type=click.IntRange(min=1), help="Rounds at most (default 3)."),
        ]
    ):
        f = option(f)
    return f


def _run_options(f: F) -> F:
    for option in reversed(
        [
            click.argument("prompt", required=False),
            click.option("--system", help="System prompt (in a debate: every debater's)."),
            click.option(
                "--output",
                type=click.Path(dir_okay=False, writable=True),
                help="Save the run's full record as JSON.",
            ),
            click.option(
                "--stdin/--no-stdin", "read_stdin", default=True, help="Append text piped on stdin."
            ),
            click.option("--raw", is_flag=True, help="Print the run's full record after the answer."),
        ]
    ):
        f = option(f)
    return f


# ---------------------------------------------------------------------------------------------
# Commands


@click.command(name="run")
@_run_options
@_models_option
@_consortium_options
def run_command(
    prompt: str | None,
    system: str | None,
    output: str | None,
    read_stdin: bool,
    raw: bool,
    models: tuple[str, ...],
    arbiter: str | None,
    confidence_threshold: float | None,
    max_iterations: int | None,
    min_iterations: int | None,
) -> None:
    """Run a consortium: members answer, the arbiter synthesizes, until it is confident.

    Example: llm moot run "Is P = NP?" -m gpt-4o-mini:2 -m claude --arbiter gpt-4o-mini
    """
    if not arbiter:
        raise click.UsageError("Missing option '--arbiter'.")
    request = consortium_request(
        models, arbiter, confidence_threshold, max_iterations, min_iterations, system
    )
    run_and_print({**request, "prompt": prompt_with_stdin(prompt, read_stdin)}, output, raw)


@click.command(name="debate")
@_run_options
@_models_option
@_debate_options
def debate_command(
    prompt: str | None,
    system: str | None,
    output: str | None,
    read_stdin: bool,
    raw: bool,
    models: tuple[str, ...],
    judge: str | None,
    judge_mode: str | None,
    debate_format: str | None,
    max_rounds: int | None,
) -> None:
    """Run a debate: debaters argue round by round; the judge's verdict streams to stdout.

    Example: llm moot debate "Is a hot dog a sandwich?" -m gpt-4o-mini:2 --judge claude
    """
    request = debate_request(models, judge, judge_mode, debate_format, max_rounds, system)
    run_and_print({**request, "prompt": prompt_with_stdin(prompt, read_stdin)}, output, raw)


@click.command(name="save")
@click.argument("name")
@click.option("--debate", is_flag=True, help="Save a debate (the debate options) instead of a consortium.")
@click.option("--system", help="System prompt (in a debate: every debater's).")
@_models_option
@_consortium_options
@_debate_options
def save_command(
    name: str,
    debate: bool,
    system: str | None,
    models: tuple[str, ...],
    arbiter: str | None,
    confidence_threshold: float | None,
    max_iterations: int | None,
    min_iterations: int | None,
    judge: str | None,
    judge_mode: str | None,
    debate_format: str | None,
    max_rounds: int | None,
) -> None:
    """Save a consortium (or, with --debate, a debate) under NAME; saving again adds a version.

    It is then a model: llm -m NAME "..."
    """
    if debate:
        misplaced = _given(
            arbiter=arbiter,
            confidence_threshold=confidence_threshold,
            max_iterations=max_iterations,
            min_iterations=min_iterations,
        )
        request = debate_request(models, judge, judge_mode, debate_format, max_rounds, system)
    else:
        misplaced = _given(judge=judge, judge_mode=judge_mode, format=debate_format, max_rounds=max_rounds)
        if not arbiter:
            raise click.UsageError("Missing option '--arbiter' (or --debate).")
        request = consortium_request(
            models, arbiter, confidence_threshold, max_iterations, min_iterations, system
        )
    if misplaced:
        options = ", ".join("--" + option.replace("_", "-") for option in misplaced)
        raise click.UsageError(f"{options}: not an option of a {'debate' if debate else 'consortium'}")
    with _gateway() as gateway:
        try:
            saved = gateway.save(name, request)
        except GatewayError as exc:
            raise _refused(exc) from exc
    click.echo(f"saved {saved['name']} version {saved['version']} ({request['mode']})")


def describe(config: dict[str, Any]) -> str:
    """One line: a saved configuration's members and who decides."""

    def members(specs: list[dict[str, Any]]) -> str:
        return ", ".join(m["model"] + (f" x{m['count']}" if m.get("count", 1) > 1 else "") for m in specs)

    mode = config.get("mode", "consortium")
    if mode == "consortium":
        return (
            f"{members(config['members'])}; arbiter {config['arbiter']}; "
            f"confidence {config.get('confidence_threshold', 0.8):.2f}; "
            f"iterations {config.get('min_iterations', 1)}-{config.get('max_iterations', 3)}"
        )
    if mode == "debate":
        judge_mode = config.get("judge_mode", "display_only")
        judged = f"{judge_mode} by {config['judge']}" if config.get("judge") else judge_mode
        return (
            f"{members(config['members'])}; {config.get('format', 'free_discussion')}; {judged}; "
            f"up to {config.get('max_rounds', 3)} rounds"
        )
    specs = config.get("members") or [m for layer in config.get("layers", []) for m in layer]
    return members(specs)


@click.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="The saved configurations as JSON.")
def list_command(as_json: bool) -> None:
    """List the saved configurations (each is also a model: llm -m NAME)."""
    with _gateway() as gateway:
        try:
            configs = gateway.configs()
        except GatewayError as exc:
            raise _refused(exc) from exc
    if as_json:
        click.echo(json.dumps(configs, indent=2))
        return
    if not configs:
        click.echo("No saved configurations.")
        return
    for saved in configs:
        config = saved["config"]
        click.echo(
            f"- {saved['name']} ({config.get('mode', 'consortium')}, version {saved['version']}): "
            + describe(config)
        )


@click.command(name="remove")
@click.argument("name")
def remove_command(name: str) -> None:
    """Remove the saved configuration NAME (every version)."""
    with _gateway() as gateway:
        try:
            gateway.remove(name)
        except GatewayError as exc:
            raise _refused(exc) from exc
    click.echo(f"removed {name}")


moot_group: click.Group = DefaultGroup(
    name="moot",
    help="""Run and manage moot consortiums and debates.

    The gateway is MOOT_URL (default http://127.0.0.1:8000); its key comes from
    `llm keys set moot`, else MOOT_API_KEY. Every saved configuration is also a model:
    `llm -m NAME "..."`. `llm moot "..."` is `llm moot run "..."`.
    """,
    commands=[run_command, debate_command, save_command, list_command, remove_command],
    default="run",
    default_if_no_args=False,
)
