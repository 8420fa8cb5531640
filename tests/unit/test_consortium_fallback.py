"""When the arbiter's synthesis cannot be read, the members' most agreed answer stands in.

The arbiter's answers are SmolLM2-135M's own (`fixtures/smollm2/`), the member answers too
(iteration 1 of the runs docs/benchmarks.md, "Local model", measured): the machine is driven
without any server, and what the CLI shows of the result is checked from the run's view.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from moot.cli.client import RunEventMessage
from moot.cli.render import Progress, answer_note, members_answers, run_summary
from moot.messages import CallJob, IterationCompleted, RunCompleted
from moot.protocols import consortium
from moot.protocols.base import Transition
from moot.protocols.consortium import ConsortiumState
from moot.requests import ConsortiumRequest
from moot.texts import hydrate, render
from moot.views import ArbiterVerdict, ConsortiumView, run_view_adapter

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
FIXTURES = Path(__file__).parent / "fixtures" / "smollm2"
TEXTS: dict[str, str] = {}

# Three members of `local:3` asked "What is the capital of Japan?" (the last states a confidence).
MEMBERS = [
    "The capital of Japan is Tokyo.",
    "Japan's capital is Tokyo. You can find it on your map with Google Maps.",
    '"The capital of Japan is Tokyo."\nConfidence: 0.6',
]
ECHO = "Your task: combine these answers into the single best answer to the question.\nThe list above is complete."


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def kept(t: Transition[ConsortiumState]) -> Transition[ConsortiumState]:
    TEXTS.update(t.texts)
    return t


def jobs(commands: list[Any]) -> list[CallJob]:
    return [c for c in commands if isinstance(c, CallJob)]


def iteration(
    arbiter: str, members: list[str] = MEMBERS, max_iterations: int = 1
) -> tuple[ConsortiumState, list[Any]]:
    """A run of `local:3` under arbiter `local` through its first iteration: the members' and arbiter's answers."""
    req = ConsortiumRequest.model_validate(
        {
            "prompt": "What is the capital of Japan?",
            "members": [{"model": "local", "count": len(members)}],
            "arbiter": "local",
            "max_iterations": max_iterations,
            "confidence_threshold": 0.8,
        }
    )
    t = kept(consortium.start("r1", req, T0))
    state, commands = t.state, t.commands
    for job, text in zip(jobs(commands), members, strict=True):
        t = kept(consortium.decide(state, job.completed(text, at=T0)))
        state, commands = t.state, t.commands
    (job,) = jobs(commands)
    assert job.role == "arbiter"
    t = kept(consortium.decide(state, job.completed(arbiter, at=T0)))
    return t.state, t.commands


def verdict_of(commands: list[Any]) -> ArbiterVerdict:
    (done,) = [c for c in commands if isinstance(c, IterationCompleted)]
    return ArbiterVerdict.model_validate(hydrate(done.verdict.model_dump(mode="json"), TEXTS))


def end_view(commands: list[Any]) -> ConsortiumView:
    (end,) = [c for c in commands if isinstance(c, RunCompleted)]
    view = run_view_adapter.validate_python(hydrate(json.loads(TEXTS[end.run.sha]), TEXTS))  # type: ignore[union-attr]
    assert isinstance(view, ConsortiumView)
    return view


@pytest.mark.parametrize(
    "arbiter",
    [
        fixture("arbiter-instructions-paraphrased.txt"),  # "You are the arbiter of a panel of AI models. ..."
        fixture("arbiter-instructions-first-person.txt"),  # "I am the arbiter of a panel of AI models. ..."
        fixture("arbiter-template-echoed.txt"),  # an older template's placeholder, in <synthesis>
        ECHO,  # what the issue reported
    ],
)
def test_an_arbiter_that_repeats_its_instructions_gives_way_to_the_members(arbiter: str) -> None:
    _, commands = iteration(arbiter)
    v = verdict_of(commands)
    assert v.synthesis == "The capital of Japan is Tokyo."
    assert v.synthesis_from == "members" and v.malformed
    assert v.fallback == (
        "the arbiter's synthesis was unreadable (it repeated its instructions);"
        " the answer is the one 2 of 3 members agree on"
    )
    assert v.fallback in v.problems
    view = end_view(commands)
    assert view.answer == "The capital of Japan is Tokyo."
    assert view.result is not None and view.result.synthesis_from == "members"
    # Nothing is lost: the arbiter's own answer is in its call.
    (it,) = view.iteration_views
    assert it.arbiter is not None and it.arbiter.text == arbiter


def test_an_empty_synthesis_gives_way_to_the_members() -> None:
    _, commands = iteration("<synthesis> </synthesis><confidence>0.9</confidence>")
    v = verdict_of(commands)
    assert v.synthesis == "The capital of Japan is Tokyo." and v.synthesis_from == "members"
    assert v.fallback is not None and v.fallback.startswith(
        "the arbiter's synthesis was unreadable (it was empty)"
    )


def test_the_confidence_of_an_unreadable_synthesis_does_not_end_the_run() -> None:
    _, commands = iteration(ECHO + "\n<confidence>0.95</confidence>", max_iterations=2)
    v = verdict_of(commands)
    assert v.confidence is None
    assert "the arbiter's confidence is not used: it was about that unreadable synthesis" in v.problems
    (done,) = [c for c in commands if isinstance(c, IterationCompleted)]
    assert done.decision == "iterate"
    # The next iteration refines the members' answer, not the echo.
    asked = render(jobs(commands)[0].messages[-1].content, TEXTS)  # type: ignore[union-attr]
    assert isinstance(asked, str)
    assert "The panel's current best answer (confidence unknown):\nThe capital of Japan is Tokyo." in asked
    assert "Your task" not in asked


def test_a_readable_synthesis_stays_the_arbiters_even_when_malformed() -> None:
    _, commands = iteration(fixture("arbiter-closing-tag-only.txt"))
    v = verdict_of(commands)
    assert v.synthesis_from == "arbiter" and v.fallback is None
    assert v.synthesis.startswith("The best way to learn a new language")  # type: ignore[union-attr]
    assert not any(p.startswith(ArbiterVerdict.UNREADABLE) for p in v.problems)


def test_without_agreement_the_highest_stated_confidence_wins() -> None:
    members = ["Tokyo.\nConfidence: 0.4", "Kyoto.", "It is Osaka.\nConfidence: 0.7"]
    _, commands = iteration(ECHO, members)
    v = verdict_of(commands)
    assert v.synthesis == "It is Osaka."
    assert v.fallback is not None and v.fallback.endswith(
        "; no two members agree: the answer is local#3's, the highest stated confidence"
    )


def test_without_agreement_nor_confidence_the_first_answer_is_taken() -> None:
    _, commands = iteration(ECHO, ["Tokyo.", "Kyoto.", ""])
    v = verdict_of(commands)
    assert v.synthesis == "Tokyo."
    assert v.fallback is not None and v.fallback.endswith(
        "no two members agree: the answer is local#1's, the first"
    )


def test_long_member_answers_agree_by_their_exact_text() -> None:
    long = "The capital of Japan is Tokyo. " * 20  # held by reference: the machine never sees it
    _, commands = iteration(ECHO, [long, "Kyoto.", long])
    v = verdict_of(commands)
    assert v.synthesis == long and v.synthesis_from == "members"
    assert v.fallback is not None and v.fallback.endswith("the answer is the one 2 of 3 members agree on")


def test_with_no_member_answer_to_fall_back_on_the_problem_is_said() -> None:
    _, commands = iteration("", ["", " ", ""])
    v = verdict_of(commands)
    assert v.synthesis_from == "arbiter" and v.malformed
    assert (
        "the arbiter's synthesis was unreadable (it was empty); no member answer could be read either"
        in v.problems
    )


def test_a_verdict_stored_before_the_field_existed_is_the_arbiters() -> None:
    old = {"synthesis": "S", "confidence": 0.9, "malformed": False, "problems": []}
    v = ArbiterVerdict.model_validate(old)
    assert v.synthesis_from == "arbiter" and v.fallback is None


# --------------------------------------------------------------------------- what the CLI shows


def test_the_cli_says_whose_answer_it_is() -> None:
    _, commands = iteration(fixture("arbiter-instructions-paraphrased.txt"))
    view = end_view(commands)
    assert answer_note(view) == (
        "The arbiter's synthesis was unreadable (it repeated its instructions);"
        " the answer is the one 2 of 3 members agree on."
    )
    assert members_answers(view).splitlines() == [
        "members' answers (iteration 1):",
        "  local#1: The capital of Japan is Tokyo.",
        "  local#2: Japan's capital is Tokyo. You can find it on your map with Google Maps.",
        '  local#3 (confidence 0.60): "The capital of Japan is Tokyo."',
    ]
    shown = run_summary(view)
    assert "  arbiter local: You are the arbiter of a panel of AI models." in shown  # its own text
    assert shown.endswith(
        "answer (the members'):\n"
        "The arbiter's synthesis was unreadable (it repeated its instructions);"
        " the answer is the one 2 of 3 members agree on.\n"
        "The capital of Japan is Tokyo.\n"
    )


def test_progress_tells_of_the_fallback_in_one_line() -> None:
    _, commands = iteration(ECHO)
    (done,) = [c for c in commands if isinstance(c, IterationCompleted)]
    lines: list[str] = []
    Progress(lines.append, lines.append).show(
        RunEventMessage(id="1", type="iteration.completed", data=done.model_dump(mode="json"))
    )
    (shown,) = lines
    assert shown.splitlines() == [
        "  arbiter: confidence unreadable -> stop (reached max_iterations (1); the arbiter gave no readable confidence)",
        "  the arbiter's synthesis was unreadable: the members' most agreed answer stands in",
    ]


def test_a_readable_answer_is_shown_as_the_synthesis() -> None:
    _, commands = iteration("<synthesis>Tokyo.</synthesis><confidence>0.9</confidence>")
    view = end_view(commands)
    assert answer_note(view) is None
    assert run_summary(view).endswith("synthesis:\nTokyo.\n")
