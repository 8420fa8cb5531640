"""The consortium state machine, driven without any server: every branch of the stop rule and more."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from moot.messages import (
    CallCompleted,
    CallFailed,
    CallJob,
    IterationCompleted,
    IterationStarted,
    RunCompleted,
    RunCreated,
    RunFailed,
)
from moot.protocols import consortium
from moot.protocols.consortium import ConsortiumState, should_stop
from moot.requests import ConsortiumRequest, MemberSpec
from moot.views import ArbiterVerdict, Usage

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def arbiter_xml(conf: str | float | None = 0.9, needs: str | None = "false", synthesis: str = "S") -> str:
    parts = [f"<synthesis>{synthesis}</synthesis>"]
    if conf is not None:
        parts.append(f"<confidence>{conf}</confidence>")
    if needs is not None:
        parts.append(f"<needs_iteration>{needs}</needs_iteration>")
    parts.append("<refinement_areas><area>be precise</area></refinement_areas>")
    return "".join(parts)


def request(**kw: object) -> ConsortiumRequest:
    base: dict[str, object] = {
        "prompt": "What is 2+2?",
        "members": [MemberSpec(model="a", count=2), MemberSpec(model="b")],
        "arbiter": "judge",
    }
    base.update(kw)
    return ConsortiumRequest.model_validate(base)


def jobs(commands: list[object]) -> list[CallJob]:
    return [c for c in commands if isinstance(c, CallJob)]


def done(job: CallJob, text: str, tokens: int = 10) -> CallCompleted:
    return job.completed(
        text,
        usage=Usage(input_tokens=tokens, output_tokens=tokens),
        at=T0,
    )


def failed(job: CallJob, error: str = "boom") -> CallFailed:
    return job.failed(error, at=T0)


def answer_members(
    state: ConsortiumState, member_jobs: list[CallJob]
) -> tuple[ConsortiumState, list[object]]:
    commands: list[object] = []
    for job in member_jobs:
        state, commands = consortium.decide(
            state, done(job, f"{job.model}#{job.instance} says 4\nConfidence: 0.7")
        )
    return state, commands


def test_start_publishes_run_created_iteration_started_and_one_job_per_instance() -> None:
    t = consortium.start("r1", request(system="Be terse."), T0)
    assert isinstance(t.commands[0], RunCreated)
    assert isinstance(t.commands[1], IterationStarted)
    member_jobs = jobs(t.commands)
    assert [(j.model, j.instance) for j in member_jobs] == [("a", 1), ("a", 2), ("b", 1)]
    assert len({j.call_id for j in member_jobs}) == 3
    assert member_jobs[0].call_id == "r1:1:member:a:1"
    assert member_jobs[0].messages[0].role == "system" and member_jobs[0].messages[0].content == "Be terse."
    assert member_jobs[0].messages[-1].content.startswith("What is 2+2?")
    assert t.state.status == "running" and len(t.state.iterations) == 1


def test_arbiter_is_asked_only_when_every_member_is_in_and_sees_all_answers() -> None:
    t = consortium.start("r1", request(), T0)
    member_jobs = jobs(t.commands)
    state = t.state
    for job in member_jobs[:-1]:
        state, commands = consortium.decide(state, done(job, "4"))
        assert commands == []
    state, commands = consortium.decide(state, failed(member_jobs[-1], "rate limited"))
    [arb] = jobs(commands)
    assert arb.role == "arbiter" and arb.model == "judge" and arb.call_id == "r1:1:arbiter:judge:1"
    prompt = arb.messages[0].content
    assert "<synthesis>" in prompt and "What is 2+2?" in prompt
    assert prompt.count("<answer ") == 3
    assert "the call failed: rate limited" in prompt


def test_stops_when_confident_and_arbiter_wants_no_more() -> None:
    t = consortium.start("r1", request(), T0)
    state, commands = answer_members(t.state, jobs(t.commands))
    [arb] = jobs(commands)
    state, commands = consortium.decide(state, done(arb, arbiter_xml(0.9, "false")))
    assert state.status == "completed"
    assert isinstance(commands[0], IterationCompleted) and commands[0].decision == "stop"
    assert isinstance(commands[1], RunCompleted)
    assert commands[1].run.answer == "S"
    assert state.result is not None and state.result.confidence == pytest.approx(0.9)
    # 3 members + 1 arbiter, 10 in / 10 out each
    assert state.usage.input_tokens == 40 and state.usage.output_tokens == 40


def test_low_confidence_iterates_with_refinement_prompt_and_conversation_continuity() -> None:
    t = consortium.start("r1", request(system="sys"), T0)
    state, commands = answer_members(t.state, jobs(t.commands))
    state, commands = consortium.decide(state, done(jobs(commands)[0], arbiter_xml(0.5, "true", "Four.")))
    assert state.status == "running"
    completed = next(c for c in commands if isinstance(c, IterationCompleted))
    assert completed.decision == "iterate"
    assert "confidence 0.50 below threshold 0.80" in completed.reason
    assert "the arbiter asked for another iteration" in completed.reason
    second = jobs(commands)
    assert [j.iteration for j in second] == [2, 2, 2]
    msgs = second[1].messages  # a#2
    assert [m.role for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[2].content.startswith("a#2 says 4")  # its own earlier answer, not another instance's
    assert "Four." in msgs[3].content and "be precise" in msgs[3].content


def test_member_that_failed_earlier_has_no_turn_in_its_history() -> None:
    t = consortium.start("r1", request(), T0)
    member_jobs = jobs(t.commands)
    state = t.state
    state, _ = consortium.decide(state, failed(member_jobs[0]))
    for job in member_jobs[1:]:
        state, commands = consortium.decide(state, done(job, "4"))
    state, commands = consortium.decide(state, done(jobs(commands)[0], arbiter_xml(0.1, "true")))
    a1 = jobs(commands)[0]
    assert (a1.model, a1.instance) == ("a", 1)
    assert [m.role for m in a1.messages] == ["user"]


@pytest.mark.parametrize(
    ("iteration", "conf", "needs", "expected", "reason_part"),
    [
        (1, 0.9, False, "stop", "meets threshold"),
        (1, 0.9, None, "stop", "meets threshold"),  # no needs_iteration tag: not asking for more
        (1, 0.8, False, "stop", "meets threshold"),  # equal to the threshold is enough
        (1, 0.79, False, "iterate", "below threshold"),
        (1, 0.9, True, "iterate", "asked for another iteration"),
        (1, None, False, "iterate", "no readable confidence"),
        (3, 0.1, True, "stop", "reached max_iterations (3)"),
        (3, None, None, "stop", "reached max_iterations (3)"),
    ],
)
def test_stop_rule_branches(
    iteration: int, conf: float | None, needs: bool | None, expected: str, reason_part: str
) -> None:
    verdict = ArbiterVerdict(synthesis="s", confidence=conf, needs_iteration=needs)
    decision, reason = should_stop(iteration, verdict, request())
    assert decision == expected
    assert reason_part in reason


def test_stop_rule_minimum_iterations() -> None:
    req = request(min_iterations=2, max_iterations=3)
    verdict = ArbiterVerdict(synthesis="s", confidence=0.99, needs_iteration=False)
    assert should_stop(1, verdict, req) == ("iterate", "minimum of 2 iterations not reached")
    assert should_stop(2, verdict, req)[0] == "stop"


def test_full_run_to_max_iterations() -> None:
    t = consortium.start("r1", request(max_iterations=2), T0)
    state, commands = t.state, t.commands
    for _ in range(2):
        state, commands = answer_members(state, jobs(commands))
        state, commands = consortium.decide(state, done(jobs(commands)[0], arbiter_xml(0.3, "true")))
    assert state.status == "completed"
    assert isinstance(commands[-1], RunCompleted)
    assert "reached max_iterations (2)" in commands[-1].reason
    assert len(state.iterations) == 2


def test_every_member_failing_fails_the_run_with_reasons() -> None:
    t = consortium.start("r1", request(), T0)
    state = t.state
    commands: list[object] = []
    for job in jobs(t.commands):
        state, commands = consortium.decide(state, failed(job, f"{job.model} down"))
    assert state.status == "failed"
    [ended] = commands
    assert isinstance(ended, RunFailed)
    assert "every member call failed in iteration 1" in ended.reason and "a#2: a down" in ended.reason


def test_arbiter_failure_fails_the_run() -> None:
    t = consortium.start("r1", request(), T0)
    state, commands = answer_members(t.state, jobs(t.commands))
    state, commands = consortium.decide(state, failed(jobs(commands)[0], "503 after 4 attempts"))
    assert state.status == "failed"
    assert isinstance(commands[0], RunFailed) and "arbiter call failed" in commands[0].reason


def test_malformed_arbiter_output_is_recorded_not_silently_zero() -> None:
    t = consortium.start("r1", request(max_iterations=1), T0)
    state, commands = answer_members(t.state, jobs(t.commands))
    state, commands = consortium.decide(state, done(jobs(commands)[0], "I like all the answers."))
    assert state.status == "completed"
    verdict = state.iterations[0].verdict
    assert verdict is not None and verdict.malformed and verdict.confidence is None
    assert verdict.synthesis == "I like all the answers."
    assert "no readable confidence" in (state.reason or "")


def test_duplicate_and_late_events_change_nothing() -> None:
    t = consortium.start("r1", request(), T0)
    member_jobs = jobs(t.commands)
    state, _ = consortium.decide(t.state, done(member_jobs[0], "4"))
    again = consortium.decide(state, done(member_jobs[0], "different"))
    assert again.state is state and again.commands == []
    stray = CallJob(**{**member_jobs[0].model_dump(), "call_id": "r1:9:member:a:1"})
    assert consortium.decide(state, done(stray, "x")).commands == []
    finished = state.model_copy(update={"status": "failed"})
    assert consortium.decide(finished, done(member_jobs[1], "4")).commands == []


def test_view_shows_iterations_members_and_usage() -> None:
    t = consortium.start("r1", request(), T0)
    state, commands = answer_members(t.state, jobs(t.commands))
    state, _ = consortium.decide(state, done(jobs(commands)[0], arbiter_xml()))
    v = consortium.view(state)
    assert v.status == "completed" and v.mode == "consortium"
    assert v.result is not None and v.result.synthesis == "S"
    [it] = v.iterations
    assert [(m.model, m.instance, m.status) for m in it.members] == [
        ("a", 1, "completed"),
        ("a", 2, "completed"),
        ("b", 1, "completed"),
    ]
    assert it.members[0].confidence == pytest.approx(0.7)
    assert it.arbiter is not None and it.arbiter.status == "completed" and it.decision == "stop"
    assert v.usage.model_dump() == {"input_tokens": 40, "output_tokens": 40, "cost_usd": None}


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"members": []}, "members"),
        ({"members": [{"model": "a", "count": 0}]}, "count"),
        ({"members": [{"model": "a"}, {"model": "a"}]}, "members"),
        ({"confidence_threshold": 1.5}, "confidence_threshold"),
        ({"min_iterations": 3, "max_iterations": 2}, "min_iterations"),
        ({"arbiter": "bad name!"}, "arbiter"),
        ({"temperature": 3}, "temperature"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_request_validation_names_the_field(patch: dict[str, object], field: str) -> None:
    from pydantic import ValidationError

    body: dict[str, object] = {"prompt": "p", "members": [{"model": "a"}], "arbiter": "j", **patch}
    with pytest.raises(ValidationError) as info:
        ConsortiumRequest.model_validate(body)
    assert field in str(info.value)


def test_defaults_match_the_seed() -> None:
    req = ConsortiumRequest.model_validate({"prompt": "p", "members": [{"model": "a"}], "arbiter": "j"})
    assert (req.confidence_threshold, req.min_iterations, req.max_iterations) == (0.8, 1, 3)
    assert req.members[0].count == 1 and req.system is None
