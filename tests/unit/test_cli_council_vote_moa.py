"""The CLI's council, vote and Mixture-of-Agents: options -> request bodies (checked by the gateway's
own request models), usage errors, live progress from the events the protocols publish, and
`moot show` of a finished run of each mode."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from moot.cli import requests as cli_requests
from moot.cli.client import RunEventMessage
from moot.cli.configs import config_of
from moot.cli.main import command_parser
from moot.cli.render import Progress, answer_title, configs_table, outcome_line, run_summary, transcript
from moot.cli.requests import submission
from moot.messages import CallJob
from moot.protocols import consortium, council, moa, vote
from moot.protocols.base import RunProtocol
from moot.requests import (
    MODES,
    ConsortiumEscalation,
    ConsortiumRequest,
    CouncilRequest,
    DebateEscalation,
    MoaRequest,
    VoteRequest,
    run_request_adapter,
)
from moot.texts import hydrate, render
from moot.views import (
    ArbiterVerdict,
    CallView,
    ConsortiumView,
    IterationView,
    TallyEntry,
    Usage,
    VoteCallView,
    VoteResult,
    VoteView,
    run_view_adapter,
)

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def body_of(*argv: str) -> dict[str, Any]:
    """The body `moot <argv>` would POST, stdin not read."""
    args = command_parser().parse_args([*argv, "--no-stdin"])
    return submission(args.subparser, args, args.command if args.command != "run" else "consortium")


def usage_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """What `moot <argv>` says on stderr when it refuses its options (exit 2) before connecting."""
    with pytest.raises(SystemExit) as exit_:
        body_of(*argv)
    assert exit_.value.code == 2
    return capsys.readouterr().err


def test_the_cli_knows_every_mode_the_gateway_does() -> None:
    assert cli_requests.MODES == MODES


def test_moot_help_lists_the_new_commands_with_one_line_each() -> None:
    shown = command_parser().format_help()
    for line in [
        "council             run a council: members answer, rank each other's",
        "vote                run a vote: members answer once, the most common",
        "moa                 run a Mixture-of-Agents: layers of proposers refine,",
    ]:
        assert line in shown


# --------------------------------------------------------------------------- options -> request


def test_a_council_request() -> None:
    body = body_of(
        "council", "What is 2+2?", "-m", "a:2", "-m", "b", "-m", "a", "--chairman", "ch",
        "--reviewer", "r:2", "--system", "Be brief.", "--temperature", "0.2", "--max-tokens", "100",
        "--budget-tokens", "5000",
    )  # fmt: skip
    assert body == {
        "mode": "council",
        "prompt": "What is 2+2?",
        "members": [{"model": "a", "count": 3}, {"model": "b", "count": 1}],  # a named twice: added up
        "chairman": "ch",
        "reviewers": [{"model": "r", "count": 2}],
        "system": "Be brief.",
        "temperature": 0.2,
        "max_tokens": 100,
        "budget": {"tokens": 5000},
    }
    request = run_request_adapter.validate_python(body, strict=True)
    assert isinstance(request, CouncilRequest) and request.reviewers is not None


def test_a_council_reviewed_by_its_members_names_no_reviewers() -> None:
    body = body_of("council", "Q", "-m", "a:3", "--chairman", "ch")
    assert body == {
        "mode": "council",
        "prompt": "Q",
        "members": [{"model": "a", "count": 3}],
        "chairman": "ch",
    }
    request = run_request_adapter.validate_python(body, strict=True)
    assert isinstance(request, CouncilRequest) and request.reviewers is None


def test_a_vote_escalating_to_a_consortium() -> None:
    body = body_of(
        "vote", "What is 17 * 23?", "-m", "a:3", "-m", "b:2", "--format", "number", "--threshold", "0.7",
        "--escalate-arbiter", "arb", "--escalate-max-iterations", "2",
    )  # fmt: skip
    assert body == {
        "mode": "vote",
        "prompt": "What is 17 * 23?",
        "members": [{"model": "a", "count": 3}, {"model": "b", "count": 2}],
        "answer_format": "number",
        "agreement_threshold": 0.7,
        "escalate": {"mode": "consortium", "arbiter": "arb", "max_iterations": 2},
    }
    request = run_request_adapter.validate_python(body, strict=True)
    assert isinstance(request, VoteRequest) and isinstance(request.escalate, ConsortiumEscalation)
    assert request.escalate.max_iterations == 2 and request.escalate.confidence_threshold == 0.8


@pytest.mark.parametrize(
    ("options", "escalate"),
    [
        (
            [
                "--escalate-judge",
                "j",
                "--escalate-max-rounds",
                "2",
                "--escalate-format",
                "structured_opposition",
            ],
            {
                "mode": "debate",
                "judge": "j",
                "judge_mode": "external_judge",
                "max_rounds": 2,
                "format": "structured_opposition",
            },
        ),
        (["--escalate-debate"], {"mode": "debate"}),
        (
            ["--escalate-judge-mode", "self_convergence"],
            {"mode": "debate", "judge_mode": "self_convergence"},
        ),
    ],
)
def test_a_vote_escalating_to_a_debate(options: list[str], escalate: dict[str, Any]) -> None:
    body = body_of("vote", "Q", "-m", "a:2", "-m", "b", *options)
    assert body["escalate"] == escalate
    request = run_request_adapter.validate_python(body, strict=True)
    assert isinstance(request, VoteRequest) and isinstance(request.escalate, DebateEscalation)
    if options == ["--escalate-debate"]:
        assert request.escalate.judge_mode == "display_only"


def test_choices_make_a_choice_vote() -> None:
    body = body_of("vote", "Capital of France?", "-m", "a:3", "--choice", "Paris", "--choice", "Lyon")
    assert body["answer_format"] == "choice" and body["choices"] == ["Paris", "Lyon"]
    assert "escalate" not in body
    request = run_request_adapter.validate_python(body, strict=True)
    assert isinstance(request, VoteRequest) and request.escalate is None


def test_a_moa_request_has_a_layer_per_option() -> None:
    body = body_of(
        "moa", "Why is the sky blue?", "--layer", "m1,m2:2", "--layer", "m3, m3:2", "--aggregator", "agg",
        "--temperature", "0.5",
    )  # fmt: skip
    assert body == {
        "mode": "moa",
        "prompt": "Why is the sky blue?",
        "layers": [
            [{"model": "m1", "count": 1}, {"model": "m2", "count": 2}],
            [{"model": "m3", "count": 3}],
        ],
        "aggregator": "agg",
        "temperature": 0.5,
    }
    request = run_request_adapter.validate_python(body, strict=True)
    assert isinstance(request, MoaRequest) and [len(layer) for layer in request.layers] == [2, 1]


def test_model_names_keep_their_colons_in_a_layer() -> None:
    body = body_of("moa", "Q", "--layer", "llama3:8b,qwen:7b:2", "--aggregator", "llama3:8b")
    assert body["layers"] == [[{"model": "llama3:8b", "count": 1}, {"model": "qwen:7b", "count": 2}]]


def test_piped_stdin_follows_the_prompt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("Show your work.\n"))
    args = command_parser().parse_args(["council", "What is 2+2?", "-m", "a:2", "--chairman", "ch"])
    assert submission(args.subparser, args, "council")["prompt"] == "What is 2+2?\n\nShow your work."


def test_a_saved_configuration_needs_no_models_and_keeps_the_mode() -> None:
    assert body_of("moa", "--config", "panel", "--config-version", "2", "Q") == {
        "mode": "moa",
        "prompt": "Q",
        "config": "panel",
        "config_version": 2,
    }
    assert body_of("vote", "--continue", "r" * 32, "--budget-seconds", "60", "Q") == {
        "mode": "vote",
        "prompt": "Q",
        "budget": {"seconds": 60},
        "continue_from": "r" * 32,
    }


@pytest.mark.parametrize(
    ("argv", "config"),
    [
        (
            ["--mode", "council", "-m", "a:2", "--chairman", "ch"],
            {"mode": "council", "members": [{"model": "a", "count": 2}], "chairman": "ch"},
        ),
        (
            ["--mode", "vote", "-m", "a:3", "--answer-format", "yes_no", "--escalate-debate"],
            {
                "mode": "vote",
                "members": [{"model": "a", "count": 3}],
                "answer_format": "yes_no",
                "escalate": {"mode": "debate"},
            },
        ),
        (
            ["--mode", "moa", "--layer", "a,b", "--aggregator", "c", "--max-tokens", "200"],
            {
                "mode": "moa",
                "layers": [[{"model": "a", "count": 1}, {"model": "b", "count": 1}]],
                "aggregator": "c",
                "max_tokens": 200,
            },
        ),
    ],
)
def test_moot_save_saves_every_mode(argv: list[str], config: dict[str, Any]) -> None:
    args = command_parser().parse_args(["save", "panel", *argv])
    saved = config_of(args.subparser, args)
    assert saved == config
    # What the gateway stores: a run request without its prompt.
    run_request_adapter.validate_python({**saved, "prompt": "Q"}, strict=True)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["council", "Q", "-m", "a:2"], "give the chairman with --chairman MODEL (or run a saved one"),
        (["council", "Q", "--chairman", "ch"], "give the models with -m MODEL[:COUNT]"),
        (["council", "Q", "-m", "a", "--chairman", "ch", "--reviewer", "r:0"], "'r:0': the count must be"),
        (["moa", "Q", "--aggregator", "agg"], "give the layers with --layer MODEL[:COUNT],..."),
        (["moa", "Q", "--layer", "a"], "give the aggregator with --aggregator MODEL"),
        (["moa", "Q", "--layer", "a,,b", "--aggregator", "c"], "a layer is models separated by commas"),
        (["moa", "Q", "-m", "a", "--aggregator", "c"], "unrecognized arguments: -m a"),
        (["vote", "Q"], "give the models with -m MODEL[:COUNT]"),
        (["vote", "Q", "-m", "a:3", "--threshold", "1.5"], "1.5: must be between 0 and 1"),
        (
            ["vote", "Q", "-m", "a:3", "--escalate-arbiter", "arb", "--escalate-judge", "j"],
            "--escalate-arbiter, --escalate-judge: escalate to a consortium (--escalate-arbiter) or to a"
            " debate (--escalate-debate, --escalate-judge), not both",
        ),
        (
            ["vote", "Q", "-m", "a:3", "--escalate-max-iterations", "2"],
            "--escalate-max-iterations: escalating to a consortium needs --escalate-arbiter MODEL",
        ),
        (
            ["vote", "Q", "-m", "a:3", "--format", "number", "--choice", "x"],
            "--choice: options are for --answer-format choice, not number",
        ),
        (["vote", "Q", "-m", "a:3", "--escalate-format", "custom"], "invalid choice: 'custom'"),
        (["council", "-m", "a:2", "--chairman", "ch"], "no prompt: give PROMPT or pipe it on stdin"),
    ],
)
def test_usage_errors_say_what_is_missing(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert message in usage_error(capsys, *argv)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--mode", "council", "-m", "a:2", "--chairman", "ch", "--arbiter", "arb"],
            "--arbiter: not options of a council (options of --mode consortium)",
        ),
        (
            ["--mode", "moa", "-m", "a", "--layer", "a", "--aggregator", "c"],
            "-m: not options of a moa (options of --mode consortium or --mode debate or --mode council"
            " or --mode vote)",
        ),
        (
            ["-m", "a", "--arbiter", "arb", "--chairman", "ch", "--escalate-debate"],
            "--chairman, --escalate-debate: not options of a consortium (options of --mode council or"
            " --mode vote)",
        ),
        (["--debate", "--mode", "vote", "-m", "a:2"], "--debate and --mode vote: give one"),
        (["--mode", "moa", "--layer", "a"], "give the aggregator with --aggregator MODEL"),
    ],
)
def test_moot_save_refuses_options_of_other_modes(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    args = command_parser().parse_args(["save", "panel", *argv])
    with pytest.raises(SystemExit):
        config_of(args.subparser, args)
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- live progress


def record(
    protocol: Any, request: Any, answer: Callable[[CallJob, dict[str, str]], str | None]
) -> tuple[list[RunEventMessage], Any]:
    """A whole run of `protocol`, every job answered by `answer` (None: the call fails), in the
    order issued: the events as the gateway streams them (texts inline), and the run's view as
    `moot show` gets it."""
    texts: dict[str, str] = {}
    events: list[Any] = []

    def published(commands: list[Any]) -> list[CallJob]:
        events.extend(c for c in commands if not isinstance(c, CallJob))
        return [c for c in commands if isinstance(c, CallJob)]

    run: RunProtocol = protocol
    t = run.start("r1", request, T0)
    texts.update(t.texts)
    state, queue = t.state, published(t.commands)
    while queue:
        job = queue.pop(0)
        text = answer(job, texts)
        usage = Usage(input_tokens=10, output_tokens=5)
        outcome = (
            job.failed("boom", at=T0)
            if text is None
            else job.completed(text, usage=usage, latency_ms=120, at=T0)
        )
        events.append(outcome)
        t = run.decide(state, outcome)
        texts.update(t.texts)
        state = t.state
        queue += published(t.commands)
    messages = [
        RunEventMessage(str(n), e.type, hydrate(e.model_dump(mode="json"), texts))
        for n, e in enumerate(events)
    ]
    return messages, run_view_adapter.validate_python(hydrate(run.view(state).model_dump(mode="json"), texts))


def progress_of(events: list[RunEventMessage]) -> list[str]:
    lines: list[str] = []
    progress = Progress(lines.append, lines.append)
    for event in events:
        progress.show(event)
    return "\n".join(lines).splitlines()


def event(type_: str, **data: Any) -> RunEventMessage:
    return RunEventMessage("0", type_, data)


# Every reviewer of the council below prefers b's answer, then a's, then c's; c cannot rank.
PREFERENCE = ["b#1", "a#1", "c#1"]


def council_answer(job: CallJob, texts: dict[str, str]) -> str:
    if job.role == "member":
        return f"{job.model}#{job.instance} says 4"
    if job.role == "chairman":
        return "It is 4."
    if job.model == "c":
        return "They are all fine."
    asked = render(job.messages[-1].content, texts)  # type: ignore[union-attr]
    assert isinstance(asked, str)
    letters = {
        who: letter for letter, who in re.findall(r"Answer ([A-Z]):\n<answer-[^>]+>\n(\S+) says", asked)
    }
    best_first = [letters[who] for who in PREFERENCE if who in letters]
    return "FINAL RANKING:\n" + "\n".join(f"{n}. {letter}" for n, letter in enumerate(best_first, start=1))


def council_run() -> tuple[list[RunEventMessage], Any]:
    request = CouncilRequest.model_validate(
        {"prompt": "What is 2+2?", "members": [{"model": m} for m in "abc"], "chairman": "ch"}
    )
    return record(council, request, council_answer)


def test_council_progress() -> None:
    events, _ = council_run()
    # a ranks b over c, b ranks a over c: one point each, tied, a first by the request's order.
    assert progress_of(events) == [
        "council: a, b, c; the members rank each other's answers; chairman ch",
        "answers: asking 3 members",
        "  a#1 answered [1/3] (120 ms, 5 tokens)",
        "  b#1 answered [2/3] (120 ms, 5 tokens)",
        "  c#1 answered [3/3] (120 ms, 5 tokens)",
        "reviews: asking 3 reviewers to rank the answers, anonymized",
        "  a#1 reviewed [1/3] (120 ms, 5 tokens)",
        "  b#1 reviewed [2/3] (120 ms, 5 tokens)",
        "  c#1 reviewed [3/3] (120 ms, 5 tokens)",
        "  ranking: 1. a#1 (1 point), 2. b#1 (1 point), 3. c#1 (0 points)",
        "  unreadable reviews, left out: c#1",
        "chairman: ch writes the answer",
        "  chairman ch answered (120 ms, 5 tokens)",
    ]


def test_a_council_without_reviews_says_why() -> None:
    events = [
        event("step.started", step=2, name="reviews", call_ids=[]),
        event("step.completed", step=2, name="reviews", data={"ranking": [], "unreadable": [], "failed": []}),
    ]
    assert progress_of(events) == [
        "reviews: no reviewer has two answers to rank",
        "  no ranking: no review could be read",
    ]


def moa_answer(job: CallJob, texts: dict[str, str]) -> str | None:
    if (job.model, job.instance) == ("b", 2):
        return None
    return f"{job.model}#{job.instance}: air scatters blue light most"


def moa_run() -> tuple[list[RunEventMessage], Any]:
    request = MoaRequest.model_validate(
        {
            "prompt": "Why is the sky blue?",
            "layers": [[{"model": "a"}, {"model": "b", "count": 2}], [{"model": "c"}]],
            "aggregator": "agg",
        }
    )
    return record(moa, request, moa_answer)


def test_moa_progress() -> None:
    events, _ = moa_run()
    assert progress_of(events) == [
        "mixture of agents: layer 1: a, b x2; layer 2: c; aggregator agg",
        "layer 1: asking 3 proposers",
        "  a#1 answered [1/3] (120 ms, 5 tokens)",
        "  b#1 answered [2/3] (120 ms, 5 tokens)",
        "  b#2 failed [3/3]: boom",
        "layer 2: asking 1 proposer",
        "  c#1 answered (120 ms, 5 tokens)",
        "aggregate: agg writes the answer",
        "  aggregator agg answered (120 ms, 5 tokens)",
    ]


def test_consortium_progress_still_counts_the_members_only() -> None:
    request = ConsortiumRequest.model_validate(
        {"prompt": "Q", "members": [{"model": "m", "count": 2}], "arbiter": "arb", "max_iterations": 1}
    )
    events, _ = record(
        consortium, request, lambda job, _: "<synthesis>S</synthesis><confidence>0.9</confidence>"
    )
    lines = progress_of(events)
    assert lines[:4] == [
        "consortium: m x2; arbiter arb; up to 1 iterations, stopping at confidence 0.80",
        "iteration 1: asking 2 member instances",
        "  m#1 answered [1/2] (120 ms, 5 tokens)",
        "  m#2 answered [2/2] (120 ms, 5 tokens)",
    ]
    assert lines[4].startswith("  arbiter: confidence 0.90 -> stop")
    assert not any("arb answered" in line for line in lines)  # the arbiter is told by its verdict


VOTE_REQUEST: dict[str, Any] = {
    "mode": "vote",
    "prompt": "What is 17 * 23?",
    "members": [{"model": "a", "count": 3}, {"model": "b", "count": 2}],
    "answer_format": "number",
    "choices": None,
    "agreement_threshold": 0.8,
    "escalate": {
        "mode": "consortium",
        "arbiter": "arb",
        "confidence_threshold": 0.8,
        "min_iterations": 1,
        "max_iterations": 3,
    },
}


# Five votes on 17 * 23 (b#2's call fails), and what an escalation's calls answer.
VOTES = {("a", 1): "It is 391.", ("a", 2): "391", ("a", 3): "381", ("b", 1): "Answer: 391"}


def vote_answer(job: CallJob, texts: dict[str, str]) -> str | None:
    if job.iteration == 1 and job.role in ("member", "debater"):
        return VOTES.get((job.model, job.instance))
    if job.role == "arbiter":
        return "<synthesis>17 * 23 = 391.</synthesis><confidence>0.95</confidence>"
    return f"{job.model}#{job.instance}: 391"


def vote_progress(escalate: dict[str, Any] | None) -> list[str]:
    request = VoteRequest.model_validate({**VOTE_REQUEST, "escalate": escalate})
    events, _ = record(vote, request, vote_answer)
    return progress_of(events)


VOTES_IN = [
    "votes: asking 5 members",
    "  a#1 answered [1/5] (120 ms, 5 tokens)",
    "  a#2 answered [2/5] (120 ms, 5 tokens)",
    "  a#3 answered [3/5] (120 ms, 5 tokens)",
    "  b#1 answered [4/5] (120 ms, 5 tokens)",
    "  b#2 failed [5/5]: boom",
]
COUNTED = "  4 counted, agreement 0.75: 391 (3), 381 (1) -> "


def test_vote_progress() -> None:
    assert vote_progress(None) == [
        "vote: a x3, b x2; number answers; agreement threshold 0.80, below it no escalation",
        *VOTES_IN,
        COUNTED + "answer",
    ]


def test_a_vote_escalating_to_a_consortium_goes_on_with_its_iterations() -> None:
    lines = vote_progress(VOTE_REQUEST["escalate"])
    assert lines[: len(VOTES_IN) + 3] == [
        "vote: a x3, b x2; number answers; agreement threshold 0.80, below it escalates to a consortium"
        " by arbiter arb (up to 3 iterations)",
        *VOTES_IN,
        COUNTED + "escalating to a consortium: arbiter arb synthesizes the votes",
        "  arbiter: confidence 0.95 -> stop (confidence 0.95 meets threshold 0.80 at iteration 1)",
    ]


def test_a_vote_escalating_to_a_debate_goes_on_with_its_rounds() -> None:
    lines = vote_progress({"mode": "debate", "judge": "j", "max_rounds": 2})
    assert lines == [
        "vote: a x3, b x2; number answers; agreement threshold 0.80, below it escalates to a debate,"
        " external_judge by j (up to 2 rounds)",
        *VOTES_IN,
        COUNTED + "escalating to a debate, the votes its round 1",
        "round 2: a#1, a#2, a#3, b#1, b#2",
        "  a#1 answered [1/5]: a#1: 391",
        "  a#2 answered [2/5]: a#2: 391",
        "  a#3 answered [3/5]: a#3: 391",
        "  b#1 answered [4/5]: b#1: 391",
        "  b#2 answered [5/5]: b#2: 391",
        "",
        "── verdict by the judge j ──",
        "debate over after 2 rounds: reached max_rounds (2)",
    ]


# --------------------------------------------------------------------------- moot show


def test_council_summary() -> None:
    _, view = council_run()
    assert outcome_line(view) == (
        "completed: the chairman answered, from 3 answers and 2 readable reviews"
        " (3 answers, 3 reviews, 70 tokens in, 35 out)"
    )
    shown = run_summary(view).splitlines()
    assert shown[2:4] == [
        "council: a, b, c; the members rank each other's answers; chairman ch",
        "prompt: What is 2+2?",
    ]
    assert shown[5:] == [
        "answers:",
        "  a#1: a#1 says 4",
        "  b#1: b#1 says 4",
        "  c#1: c#1 says 4",
        "reviews:",
        # Each review's ranking by the members it ranked, not the letters it saw.
        "  a#1: 1. b#1, 2. c#1",
        "  b#1: 1. a#1, 2. c#1",
        "  c#1: unreadable (no FINAL RANKING line, and no numbered list of letters at the end)",
        "ranking: 1. a#1 (1 point, 1 review), 2. b#1 (1 point, 1 review), 3. c#1 (0 points, 2 reviews)",
        "chairman:",
        "  ch#1: It is 4.",
        "",
        "answer by the chairman ch:",
        "It is 4.",
    ]
    full = run_summary(view, full=True)
    assert (
        "  c#1: unreadable (no FINAL RANKING line, and no numbered list of letters at the end)\n    They are all fine.\n"
        in full
    )


def test_a_council_ended_before_its_chairman_says_whose_answer_it_is() -> None:
    _, view = council_run()
    ended = view.model_copy(
        update={"chairman": None, "result": view.result.model_copy(update={"model": "b"})}
    )
    assert answer_title(ended) == "answer by b (the run ended before the chairman answered)"


def test_moa_summary() -> None:
    _, view = moa_run()
    assert run_summary(view).splitlines()[1:] == [
        "completed: the aggregator answered after 2 layers (2 layers, 40 tokens in, 20 out)",
        "mixture of agents: layer 1: a, b x2; layer 2: c; aggregator agg",
        "prompt: Why is the sky blue?",
        "",
        "layer 1:",
        "  a#1: a#1: air scatters blue light most",
        "  b#1: b#1: air scatters blue light most",
        "  b#2: failed: boom",
        "layer 2:",
        "  c#1: c#1: air scatters blue light most",
        "aggregator:",
        "  agg#1: agg#1: air scatters blue light most",
        "",
        "answer by the aggregator agg:",
        "agg#1: air scatters blue light most",
    ]


def vote_view(escalated: bool) -> VoteView:
    """Five votes on 17 * 23, one failed; with `escalated`, a consortium synthesized them."""
    said = [
        ("a", 1, "It is 391.", "391"),
        ("a", 2, "391", "391"),
        ("a", 3, "381", "381"),
        ("b", 1, "391!", "391"),
    ]
    votes = [
        VoteCallView(call_id=f"r1:1:member:{m}:{i}", model=m, instance=i, status="completed", text=text,
                     label=f"{m}#{i}", normalized=normalized)
        for m, i, text, normalized in said
    ]  # fmt: skip
    votes.append(
        VoteCallView(
            call_id="r1:1:member:b:2", model="b", instance=2, status="failed", error="timeout", label="b#2"
        )
    )
    request = VoteRequest.model_validate(
        {k: v for k, v in VOTE_REQUEST.items() if escalated or k != "escalate"}
    )
    escalation = None
    result = VoteResult(text="391", by="vote", agreement=0.75)
    if escalated:
        verdict = ArbiterVerdict(synthesis="17 * 23 = 391.", confidence=0.95)
        escalation = ConsortiumView(
            id="r1",
            status="completed",
            request=ConsortiumRequest(prompt=request.prompt, members=request.members, arbiter="arb"),
            iterations=[
                IterationView(
                    number=1,
                    members=[CallView(**v.model_dump(include=set(CallView.model_fields))) for v in votes],
                    arbiter=CallView(
                        call_id="r1:1:arbiter:arb:1", model="arb", instance=1, status="completed", text="..."
                    ),
                    verdict=verdict,
                    decision="stop",
                    reason="confidence 0.95 >= 0.80",
                )
            ],
            result=verdict,
        )
        result = VoteResult(text="17 * 23 = 391.", by="consortium", agreement=0.75)
    return VoteView(
        id="r1",
        status="completed",
        reason="the arbiter is confident" if escalated else "4 of 5 votes agree",
        request=request,
        votes=votes,
        tally=[
            TallyEntry(answer="391", count=3, voters=["a#1", "a#2", "b#1"]),
            TallyEntry(answer="381", count=1, voters=["a#3"]),
        ],
        agreement=0.75,
        majority="391",
        escalated=escalated,
        escalation=escalation,
        result=result,
        usage=Usage(input_tokens=50, output_tokens=12),
    )


def test_vote_summary() -> None:
    shown = run_summary(vote_view(escalated=False)).splitlines()
    assert shown[1:] == [
        "completed: 4 of 5 votes agree (5 votes, 50 tokens in, 12 out)",
        "vote: a x3, b x2; number answers; agreement threshold 0.80, below it no escalation",
        "prompt: What is 17 * 23?",
        "",
        "votes: 4 counted, agreement 0.75",
        "  a#1 -> 391: It is 391.",
        "  a#2 -> 391: 391",
        "  a#3 -> 381: 381",
        "  b#1 -> 391: 391!",
        "  b#2: failed: timeout",
        "tally: 391 (3: a#1, a#2, b#1), 381 (1: a#3)",
        "",
        "answer by vote (agreement 0.75):",
        "391",
    ]


def test_an_escalated_vote_shows_the_consortium_it_went_on_as() -> None:
    view = vote_view(escalated=True)
    shown = run_summary(view)
    assert (
        "tally: 391 (3: a#1, a#2, b#1), 381 (1: a#3)\nescalated to a consortium:\niteration 1: confidence 0.95 -> stop"
        in shown
    )
    assert "  arbiter arb: 17 * 23 = 391.\n" in shown
    assert shown.endswith("\nsynthesis:\n17 * 23 = 391.\n")
    assert outcome_line(view).endswith("(5 votes, then 1 iteration, 50 tokens in, 12 out)")
    assert transcript(view) == ""  # no debate to show


def test_saved_configurations_of_every_mode_are_listed() -> None:
    configs = [
        {"name": "c", "version": 1, "config": {"mode": "council", "members": [{"model": "a", "count": 3}], "chairman": "ch"}},
        {"name": "v", "version": 2, "config": VOTE_REQUEST},
        {"name": "v2", "version": 1, "config": {**VOTE_REQUEST, "escalate": None}},
        {"name": "m", "version": 1, "config": {"mode": "moa", "layers": [[{"model": "a", "count": 2}, {"model": "b"}], [{"model": "c"}]], "aggregator": "agg"}},
    ]  # fmt: skip
    assert configs_table(configs).splitlines() == [
        "NAME  VERSION  MODE     MEMBERS      ARBITER/JUDGE",
        "c     1        council  a x3         chairman ch",
        "v     2        vote     a x3, b x2   majority, else arbiter arb",
        "v2    1        vote     a x3, b x2   majority",
        "m     1        moa      a x2, b | c  aggregator agg",
    ]
