"""The typed run views: what `view(state)` builds travels as JSON and reads back the same."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from moot.messages import (
    CallCompleted,
    CallJob,
    CancelRequested,
    RunCancelled,
    RunCompleted,
    RunFailed,
    parse_event,
)
from moot.protocols import consortium, debate
from moot.protocols.base import Command, Transition
from moot.requests import ConsortiumRequest, DebateRequest, RunMeta
from moot.texts import TextRef, hydrate, refs_in
from moot.views import ConsortiumView, DebateView, RunSummary, run_view_adapter

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
META = RunMeta(owner="alice", config_name="panel", config_version=2, continued_from="f" * 32)

ANSWERS = {
    "member": "4. Confidence: 0.7",
    "arbiter": (
        "<synthesis>S</synthesis><confidence>0.9</confidence><analysis>A</analysis>"
        "<dissent>D</dissent><needs_iteration>false</needs_iteration><refinement_areas></refinement_areas>"
    ),
    "debater": "My position.",
    "judge": "CONTINUE: not settled",
    "conviction": "NOT CONVINCED",
    "final": "The verdict.",
}


# Every text the transitions referred to, as the text store keeps them.
TEXTS: dict[str, str] = {}


def play(module: Any, t: Transition[Any]) -> tuple[Any, list[Command]]:
    """Answer every job as it comes, until the run ends; every command published on the way."""
    state, commands = t.state, t.commands
    TEXTS.update(t.texts)
    published: list[Command] = list(commands)
    pending = [c for c in commands if isinstance(c, CallJob)]
    while pending:
        job = pending.pop(0)
        event = CallCompleted(
            run_id=job.run_id, call_id=job.call_id, iteration=job.iteration, role=job.role,
            model=job.model, instance=job.instance, text=ANSWERS[job.role], at=T0,
        )  # fmt: skip
        t = module.decide(state, event)
        state, more = t.state, t.commands
        TEXTS.update(t.texts)
        published += more
        pending += [c for c in more if isinstance(c, CallJob)]
    return state, published


def round_trip(view: ConsortiumView | DebateView) -> ConsortiumView | DebateView:
    return run_view_adapter.validate_json(view.model_dump_json())


def carries(end: Command, view: ConsortiumView | DebateView) -> None:
    """The end event carries `view` as one stored document; hydrated (as the recorder and the
    gateway read it), it parses into that view with its texts inline."""
    assert isinstance(end, RunCompleted | RunFailed | RunCancelled)
    assert isinstance(end.run, TextRef) and end.run.json_
    assert run_view_adapter.validate_json(TEXTS[end.run.sha]) == view
    again = parse_event(end.model_dump_json())
    assert again == end
    hydrated = parse_event(json.dumps(hydrate(json.loads(end.model_dump_json()), TEXTS)))
    assert isinstance(hydrated, type(end)) and isinstance(hydrated.run, type(view))
    assert hydrated.run.id == view.id and hydrated.run.status == view.status
    assert not refs_in(hydrated.run) and isinstance(hydrated.run.request, ConsortiumRequest | DebateRequest)


def test_a_consortium_view_round_trips_and_answers_its_synthesis() -> None:
    request = ConsortiumRequest(prompt="2 + 2?", members=[{"model": "a", "count": 2}], arbiter="j")
    t = consortium.start("r1", request, T0, META)
    state, published = play(consortium, t)
    view = consortium.view(state)
    assert isinstance(view, ConsortiumView) and view.status == "completed"
    assert view.answer == "S" and view.result is not None and view.result.confidence == 0.9
    assert round_trip(view) == view
    # The request travels as one stored document; readers hydrate it back.
    assert isinstance(view.request, TextRef) and view.request.json_
    assert json.loads(t.texts[view.request.sha])["prompt"] == "2 + 2?"

    data = json.loads(view.model_dump_json())
    # Times as isoformat() (+00:00), as the API has always shown them.
    assert data["created_at"] == T0.isoformat() and data["finished_at"] == T0.isoformat()
    assert data["config"] == {"name": "panel", "version": 2} and data["owner"] == "alice"
    assert list(data) == [
        "id", "mode", "status", "created_at", "finished_at", "reason", "owner", "config",
        "continued_from", "deadline", "stop_reason", "request", "result", "iterations", "usage",
    ]  # fmt: skip
    assert "role" not in data["iterations"][0]["members"][0]

    # The end event carries the typed view (by reference) and parses back to it.
    assert isinstance(published[-1], RunCompleted)
    carries(published[-1], view)


@pytest.mark.parametrize("judge_mode", ["external_judge", "self_convergence", "display_only"])
def test_a_debate_view_round_trips(judge_mode: str) -> None:
    request = DebateRequest(
        prompt="Tabs or spaces?",
        members=[{"model": "a", "count": 2}, {"model": "b"}],
        judge_mode=judge_mode,
        judge="j" if judge_mode == "external_judge" else None,
    )
    t = debate.start("r1", request, T0, META)
    state, published = play(debate, t)
    view = debate.view(state)
    assert isinstance(view, DebateView) and view.status == "completed"
    assert round_trip(view) == view
    assert isinstance(published[-1], RunCompleted)
    carries(published[-1], view)

    data = json.loads(view.model_dump_json())
    for rnd in data["rounds"]:
        assert all(t["label"] for t in rnd["turns"])
        # The judge has no label; a conviction call says whether it was convinced, and by whom.
        assert rnd["judge"] is None or "label" not in rnd["judge"]
        assert all({"convinced", "convinced_by"} <= set(c) for c in rnd["convictions"])
    if judge_mode == "display_only":
        assert view.answer is None and data["result"] is None
    else:
        assert view.answer == "The verdict."
        assert data["result"]["text"] == "The verdict."
    if judge_mode == "self_convergence":
        assert any(r.convictions for r in view.rounds)

    # The request travels as one stored document; readers hydrate it back.
    assert isinstance(view.request, TextRef) and view.request.json_
    assert json.loads(t.texts[view.request.sha])["prompt"] == "Tabs or spaces?"


def test_a_cancelled_run_carries_its_view() -> None:
    request = ConsortiumRequest(prompt="p", members=[{"model": "a"}], arbiter="j")
    t = consortium.start("r1", request, T0)
    TEXTS.update(t.texts)
    cancel = consortium.decide(t.state, CancelRequested(run_id="r1", at=T0))
    TEXTS.update(cancel.texts)  # the cancel's transition hands out the stored view
    [cancelled] = cancel.commands
    assert cancelled.type == "run.cancelled"
    carries(cancelled, consortium.view(cancel.state))
    assert consortium.view(cancel.state).status == "cancelled"


def test_views_written_by_older_versions_still_load() -> None:
    """The first views had no owner, config, continued_from or call worker."""
    old = {
        "id": "r1", "mode": "consortium", "status": "completed", "created_at": "2026-11-22T12:00:00+00:00",
        "finished_at": "2026-11-22T12:01:00+00:00", "reason": "done",
        "request": {"mode": "consortium", "prompt": "p", "members": [{"model": "a", "count": 1}], "arbiter": "j",
                    "confidence_threshold": 0.8, "min_iterations": 1, "max_iterations": 3, "system": None,
                    "temperature": None, "max_tokens": None},
        "result": {"synthesis": "S", "confidence": 0.9},
        "iterations": [{"number": 1, "members": [{"call_id": "r1:1:member:a:1", "model": "a", "instance": 1,
                                                  "status": "completed", "text": "t"}],
                        "arbiter": None, "verdict": None, "decision": "stop", "reason": "done"}],
        "usage": {"input_tokens": 1, "output_tokens": 2, "cost_usd": None},
    }  # fmt: skip
    view = run_view_adapter.validate_python(old)
    assert isinstance(view, ConsortiumView)
    assert (view.owner, view.config, view.answer) == ("", None, "S")
    assert view.iterations[0].members[0].worker == ""
    assert view.created_at == T0


def test_a_run_summary_reads_a_runs_row() -> None:
    row = {
        "id": "r1", "mode": "debate", "status": "running", "prompt": "p", "reason": None, "created_at": T0,
        "finished_at": None, "input_tokens": None, "output_tokens": None, "cost_usd": None,
    }  # fmt: skip
    assert RunSummary.model_validate(row).model_dump(mode="json")["created_at"] == T0.isoformat()


def test_event_names_are_consistent_and_former_names_still_parse() -> None:
    """Every event type is `thing.happened` (issue 13); a debate event stored under the reference
    program's name (`round_start`, ...) before the names changed reads as the event it is now."""
    from moot.messages import SEED_NAMES, AnyRunEvent, RoundStart, parse_event

    names = {t.model_fields["type"].default for t in AnyRunEvent.__args__}  # type: ignore[attr-defined]
    assert all("." in name and "_" not in name for name in names), sorted(names)
    assert set(SEED_NAMES) <= names
    old = '{"type": "round_start", "run_id": "r", "round": 2, "debaters": []}'
    event = parse_event(old)
    assert isinstance(event, RoundStart) and event.type == "round.started"
