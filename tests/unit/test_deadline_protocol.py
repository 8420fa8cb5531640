"""Deadlines in the protocols: `DeadlinePassed` ends a run where it stands, honestly, once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from moot.messages import CallJob, DeadlinePassed, DebateError, RunCompleted, RunFailed
from moot.protocols import consortium, debate
from moot.protocols.base import Transition
from moot.requests import ConsortiumRequest, DebateRequest, run_request_adapter
from moot.texts import TextRef
from moot.views import ConsortiumView, DebateView, Usage, run_view_adapter

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
TEXTS: dict[str, str] = {}


def kept(t: Transition[Any]) -> Transition[Any]:
    TEXTS.update(t.texts)
    return t


def jobs(commands: list[Any]) -> list[CallJob]:
    return [c for c in commands if isinstance(c, CallJob)]


def answer(state: Any, protocol: Any, job: CallJob, text: str, at: datetime) -> Transition[Any]:
    return kept(protocol.decide(state, job.completed(text, usage=Usage(input_tokens=1), at=at)))


def end_view(event: Any) -> ConsortiumView | DebateView:
    assert isinstance(event, RunCompleted | RunFailed) and isinstance(event.run, TextRef)
    return run_view_adapter.validate_json(TEXTS[event.run.sha])


def consortium_run(seconds: int = 60) -> Transition[Any]:
    req = ConsortiumRequest.model_validate(
        {
            "prompt": "2+2?",
            "members": [{"model": "a", "count": 2}],
            "arbiter": "judge",
            "budget": {"seconds": seconds},
        }
    )
    return kept(consortium.start("r1", req, T0))


def arbiter_xml(confidence: float, needs: bool, synthesis: str) -> str:
    return (
        f"<synthesis>{synthesis}</synthesis><confidence>{confidence}</confidence>"
        f"<needs_iteration>{str(needs).lower()}</needs_iteration>"
    )


# ---------------------------------------------------------------------------------------------
# Requests and views


def test_budget_defaults_to_900_seconds_and_is_bounded() -> None:
    req = run_request_adapter.validate_python({"prompt": "p", "members": [{"model": "a"}], "arbiter": "j"})
    assert req.budget.seconds == 900
    for bad in (0, 86_401, "soon"):
        with pytest.raises(ValidationError) as err:
            run_request_adapter.validate_python(
                {"prompt": "p", "members": [{"model": "a"}], "arbiter": "j", "budget": {"seconds": bad}}
            )
        assert err.value.errors()[0]["loc"][:2] == ("consortium", "budget")
    with pytest.raises(ValidationError):  # a limit it does not know is refused, not ignored
        DebateRequest.model_validate(
            {"prompt": "p", "members": [{"model": "a", "count": 2}], "budget": {"minutes": 5}}
        )


def test_the_state_and_view_carry_the_deadline_and_old_views_still_load() -> None:
    t = consortium_run(seconds=30)
    assert t.state.deadline == T0 + timedelta(seconds=30)
    view = consortium.view(t.state)
    assert view.deadline == T0 + timedelta(seconds=30) and view.stop_reason is None
    old = {"id": "r", "mode": "debate", "status": "completed", "request": {"$text": "0" * 64, "chars": 1}}
    loaded = run_view_adapter.validate_python(old)
    assert loaded.deadline is None and loaded.stop_reason is None
    # A state stored before budgets has no deadline: no sweep ends it.
    old_state = consortium.State.model_validate_json(t.state.model_dump_json(exclude={"deadline"}))
    assert old_state.deadline is None
    assert consortium.decide(old_state, DeadlinePassed(run_id="r1", at=T0 + timedelta(days=9))).commands == []


# ---------------------------------------------------------------------------------------------
# Consortium


def test_consortium_before_any_synthesis_fails_naming_the_deadline() -> None:
    t = consortium_run(seconds=60)
    before = t.state.model_dump_json()
    early = consortium.decide(t.state, DeadlinePassed(run_id="r1", at=T0 + timedelta(seconds=59)))
    assert early.state is t.state and early.commands == []  # not yet

    at = T0 + timedelta(seconds=61)
    ended = kept(consortium.decide(t.state, DeadlinePassed(run_id="r1", at=at)))
    assert t.state.model_dump_json() == before  # pure: the input is unchanged
    assert ended.state.status == "failed" and ended.state.stop_reason == "deadline"
    assert ended.state.reason == "deadline of 60 s passed during iteration 1, before any result"
    [end] = ended.commands
    assert isinstance(end, RunFailed) and end.reason == ended.state.reason and end.at == at
    view = end_view(end)
    assert view.status == "failed" and view.stop_reason == "deadline" and view.finished_at == at

    # Outcomes that arrive later change nothing, as for a cancelled run; so does a second sweep.
    late = consortium.decide(ended.state, jobs(t.commands)[0].completed("4", at=at))
    assert late.state is ended.state and late.commands == []
    again = consortium.decide(ended.state, DeadlinePassed(run_id="r1", at=at + timedelta(seconds=5)))
    assert again.state is ended.state and again.commands == []


def test_consortium_after_a_finished_iteration_completes_with_its_synthesis() -> None:
    t = consortium_run(seconds=60)
    state, commands = t.state, t.commands
    for job in jobs(commands):
        state, commands, _ = answer(state, consortium, job, "4", T0 + timedelta(seconds=1))
    [arb] = jobs(commands)
    state, commands, _ = answer(state, consortium, arb, arbiter_xml(0.5, True, "Four, roughly."), T0)
    assert state.status == "running" and state.current.number == 2  # iterating
    before = state.model_dump_json()

    ended = kept(consortium.decide(state, DeadlinePassed(run_id="r1", at=T0 + timedelta(seconds=61))))
    assert state.model_dump_json() == before
    assert ended.state.status == "completed" and ended.state.stop_reason == "deadline"
    assert ended.state.reason == (
        "deadline of 60 s passed during iteration 2; the run ends with the synthesis of iteration 1"
    )
    [end] = ended.commands
    assert isinstance(end, RunCompleted)
    view = end_view(end)
    assert isinstance(view, ConsortiumView) and view.answer == "Four, roughly."
    assert view.stop_reason == "deadline" and view.result is not None and view.result.confidence == 0.5
    # The second iteration's member jobs, still queued, are answered into a run that has ended.
    late = consortium.decide(ended.state, jobs(commands)[0].completed("5", at=T0 + timedelta(seconds=62)))
    assert late.state is ended.state and late.commands == []


def test_a_consortium_that_ended_on_its_own_is_left_alone() -> None:
    t = consortium_run(seconds=60)
    state, commands = t.state, t.commands
    for job in jobs(commands):
        state, commands, _ = answer(state, consortium, job, "4", T0)
    state, commands, _ = answer(state, consortium, jobs(commands)[0], arbiter_xml(0.95, False, "4"), T0)
    assert state.status == "completed" and state.stop_reason is None
    late = consortium.decide(state, DeadlinePassed(run_id="r1", at=T0 + timedelta(hours=1)))
    assert late.state is state and late.commands == []


# ---------------------------------------------------------------------------------------------
# Debate


def test_debate_mid_round_fails_with_an_error_then_run_failed() -> None:
    req = DebateRequest.model_validate(
        {
            "prompt": "Is a hot dog a sandwich?",
            "members": [{"model": "a"}, {"model": "b"}],
            "max_rounds": 3,
            "budget": {"seconds": 120},
        }
    )
    t = kept(debate.start("d1", req, T0))
    assert t.state.deadline == T0 + timedelta(seconds=120)
    state, commands = t.state, t.commands
    for job in jobs(commands):  # round 1, everyone at once
        state, commands, _ = answer(state, debate, job, f"{job.model} says yes", T0)
    [turn] = jobs(commands)  # round 2, the first turn is asked
    assert turn.iteration == 2
    before = state.model_dump_json()

    at = T0 + timedelta(seconds=121)
    ended = kept(debate.decide(state, DeadlinePassed(run_id="d1", at=at)))
    assert state.model_dump_json() == before
    assert ended.state.status == "failed" and ended.state.stop_reason == "deadline"
    assert ended.state.reason == "deadline of 120 s passed during round 2, before any result"
    error, end = ended.commands
    assert isinstance(error, DebateError) and error.round == 2 and error.message == ended.state.reason
    assert isinstance(end, RunFailed)
    view = end_view(end)
    assert isinstance(view, DebateView) and view.stop_reason == "deadline" and view.result is None
    late = debate.decide(ended.state, turn.completed("no", at=at))
    assert late.state is ended.state and late.commands == []
