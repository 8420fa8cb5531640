"""The debate state machine, driven without any server: formats, judge modes, failures, requests."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, NamedTuple

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError

from moot.messages import (
    CallCompleted,
    CallFailed,
    CallJob,
    ConvergenceStatus,
    DebateComplete,
    DebateError,
    DebateStart,
    FinalChunk,
    FinalComplete,
    FinalStart,
    JobMessage,
    JudgeDecision,
    ModelEliminated,
    RoundComplete,
    RoundModelComplete,
    RoundStart,
    RunCompleted,
    RunFailed,
    parse_event,
)
from moot.protocols import debate, protocol_for
from moot.protocols.base import Command, Transition
from moot.protocols.debate import DebateState, parse_conviction, parse_judge_answer, prompts
from moot.requests import ConsortiumRequest, DebateRequest, RunMeta, RunRequest, run_request_adapter
from moot.texts import Parts, TextRef, render
from moot.views import DebateView, Usage, run_view_adapter

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
QUESTION = "Is a hot dog a sandwich?"


def request(**kw: Any) -> DebateRequest:
    base: dict[str, Any] = {
        "mode": "debate",
        "prompt": QUESTION,
        "members": [{"model": "a", "count": 2}, {"model": "b"}],
    }
    base.update(kw)
    return DebateRequest.model_validate(base)


# Every text the transitions referred to, as the run store keeps them: prompts are read back
# through it (`moot.texts.render`), as the member worker sends them.
TEXTS: dict[str, str] = {}


class Step(NamedTuple):
    state: DebateState
    commands: list[Command]


def keep(t: Transition[DebateState]) -> Transition[DebateState]:
    TEXTS.update(t.texts)
    return t


def begin(
    run_id: str, req: DebateRequest, at: datetime, meta: RunMeta | None = None
) -> Transition[DebateState]:
    return keep(debate.start(run_id, req, at, meta))


def decide(state: DebateState, event: Any) -> Step:
    t = keep(debate.decide(state, event))
    return Step(t.state, t.commands)


def jobs(commands: list[Command]) -> list[CallJob]:
    return [c for c in commands if isinstance(c, CallJob)]


def events(commands: list[Command]) -> list[str]:
    return [c.type for c in commands if not isinstance(c, CallJob)]


def only_job(commands: list[Command]) -> CallJob:
    [job] = jobs(commands)
    return job


def rendered(content: Parts) -> str | list[dict[str, Any]]:
    return render(content, TEXTS)


def text_of(job: CallJob) -> str:
    content = rendered(job.conversation(TEXTS)[-1].content)
    if isinstance(content, str):
        return content
    return "".join(part["text"] for part in content if part["type"] == "text")


def end_view(event: Command) -> DebateView:
    """An end event's view: the event carries it as one stored document."""
    assert isinstance(event, RunCompleted | RunFailed) and isinstance(event.run, TextRef) and event.run.json_
    view = run_view_adapter.validate_json(TEXTS[event.run.sha])
    assert isinstance(view, DebateView)
    return view


def document(ref: TextRef | None) -> Any:
    assert ref is not None and ref.json_
    return json.loads(TEXTS[ref.sha])


def label(job: CallJob) -> str:
    return f"{job.model}#{job.instance}"


def done(job: CallJob, text: str | None = None, tokens: int = 10) -> CallCompleted:
    return job.completed(
        text if text is not None else f"{label(job)} says round {job.iteration}",
        usage=Usage(input_tokens=tokens, output_tokens=tokens),
        at=T0,
    )


def failed(job: CallJob, error: str = "boom") -> CallFailed:
    return job.failed(error, at=T0)


def play_round(state: DebateState, commands: list[Command]) -> tuple[DebateState, list[Command]]:
    """Answer every debater job of the round, following the turn order; returns what follows it."""
    pending = [j for j in jobs(commands) if j.role == "debater"]
    number = pending[0].iteration
    while pending:
        job = pending.pop(0)
        state, commands = decide(state, done(job))
        pending += [j for j in jobs(commands) if j.role == "debater" and j.iteration == number]
    return state, commands


def play_rounds(req: DebateRequest, rounds: int) -> tuple[DebateState, list[Command]]:
    t = begin("r1", req, T0)
    state, commands = t.state, t.commands
    for _ in range(rounds):
        state, commands = play_round(state, commands)
    return state, commands


# ---------------------------------------------------------------------------------------------
# Round 1 and the turn order


def test_start_announces_and_asks_every_debater_at_once() -> None:
    t = begin("r1", request(), T0)
    assert events(t.commands) == ["debate.started", "round.started"]
    start = t.commands[0]
    assert isinstance(start, DebateStart) and start.judge_mode == "display_only"
    assert [d.label for d in start.debaters] == ["a#1", "a#2", "b#1"]
    assert [d.number for d in start.debaters] == [1, 2, 3]
    round_jobs = jobs(t.commands)
    assert [(j.model, j.instance, j.role) for j in round_jobs] == [
        ("a", 1, "debater"),
        ("a", 2, "debater"),
        ("b", 1, "debater"),
    ]
    assert round_jobs[0].call_id == "r1:1:debater:a:1"
    assert not any(j.stream for j in round_jobs)
    prompt = text_of(round_jobs[0])
    assert QUESTION in prompt and "on your own" in prompt
    assert "Earlier rounds" not in prompt and "says round" not in prompt


def test_round_two_goes_turn_by_turn_with_history_own_position_and_round_so_far() -> None:
    t = begin("r1", request(), T0)
    state = t.state
    r1 = jobs(t.commands)
    for job in r1[:-1]:
        state, commands = decide(state, done(job))
        assert events(commands) == ["turn.completed"] and jobs(commands) == []
    state, commands = decide(state, done(r1[-1]))
    assert events(commands) == ["turn.completed", "round.completed", "round.started"]
    complete = commands[1]
    assert isinstance(complete, RoundComplete)
    assert next((r.label, r.text) for r in complete.responses) == ("a#1", "a#1 says round 1")

    first = only_job(commands)  # one speaker at a time
    assert (label(first), first.iteration, first.call_id) == ("a#1", 2, "r1:2:debater:a:1")
    prompt = text_of(first)
    for said in ("a#1 says round 1", "a#2 says round 1", "b#1 says round 1"):
        assert said in prompt.split("Earlier rounds:")[1]
    own = prompt.split("Your position so far:")[1].split("Earlier rounds:")[0]
    assert "a#1 says round 1" in own and "a#2 says" not in own
    assert "nobody has spoken yet this round" in prompt

    state, commands = decide(state, done(first, "a#1 insists, round 2"))
    assert events(commands) == ["turn.completed"]
    second = only_job(commands)
    assert label(second) == "a#2"
    prompt = text_of(second)
    own = prompt.split("Your position so far:")[1].split("Earlier rounds:")[0]
    assert "a#2 says round 1" in own and "a#1 says" not in own  # its own voice, not its twin's
    so_far = prompt.split("Round 2 so far:")[1]
    assert "[a#1]\na#1 insists, round 2" in so_far

    state, commands = decide(state, done(second))
    third = only_job(commands)
    assert label(third) == "b#1"
    assert "a#1 insists, round 2" in text_of(third) and "a#2 says round 2" in text_of(third)


def test_a_model_listed_twice_continues_its_instance_numbers() -> None:
    req = request(
        members=[{"model": "a"}, {"model": "b"}, {"model": "a", "system": "Play devil's advocate."}]
    )
    t = begin("r1", req, T0)
    round_jobs = jobs(t.commands)
    assert [label(j) for j in round_jobs] == ["a#1", "b#1", "a#2"]
    assert round_jobs[0].messages[0].role == "user"
    assert rendered(round_jobs[2].messages[0].content) == "Play devil's advocate."
    _state, commands = play_round(t.state, t.commands)
    assert label(only_job(commands)) == "a#1"


def test_per_debater_options_go_into_the_jobs() -> None:
    tool = {"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}
    req = request(
        members=[
            {
                "model": "a",
                "system": "You are terse.",
                "temperature": 0.2,
                "max_tokens": 300,
                "tools": [tool],
                "attachments": [{"name": "notes.txt", "content": "Mustard is essential."}],
                "images": ["https://example.com/hotdog.png"],
            },
            {"model": "b"},
        ]
    )
    t = begin("r1", req, T0)
    a, b = jobs(t.commands)
    assert [m.role for m in a.messages] == ["system", "user"]
    assert rendered(a.messages[0].content) == "You are terse."
    assert (a.temperature, a.max_tokens, document(a.tools)) == (0.2, 300, [tool])
    parts = rendered(a.messages[1].content)
    assert isinstance(parts, list)
    assert parts[1] == {"type": "image_url", "image_url": {"url": "https://example.com/hotdog.png"}}
    assert "notes.txt" in text_of(a) and "Mustard is essential." in text_of(a)
    assert (b.temperature, b.tools, rendered(b.messages[0].content)) == (None, None, text_of(b))

    _state, commands = play_round(t.state, t.commands)
    a2 = only_job(commands)
    assert isinstance(rendered(a2.messages[-1].content), str)  # images in round 1 only
    assert "Mustard is essential." in text_of(a2)  # attachments every turn
    assert document(a2.tools) == [tool] and rendered(a2.messages[0].content) == "You are terse."


def test_a_debaters_images_are_one_reference_and_render_in_order() -> None:
    images = ["https://example.com/1.png", "data:image/png;base64," + "A" * 1_000]
    t = begin("r1", request(members=[{"model": "a", "images": images}, {"model": "b"}]), T0)
    a, _b = jobs(t.commands)
    [asked] = a.messages
    assert isinstance(asked, JobMessage)
    [stored] = [p for p in asked.content if isinstance(p, TextRef) and p.json_]
    assert t.state.members[0].images == [stored]
    content = rendered(asked.content)
    assert isinstance(content, list)
    assert [p["image_url"]["url"] for p in content if p["type"] == "image_url"] == images


# ---------------------------------------------------------------------------------------------
# Formats


@pytest.mark.parametrize(
    ("fmt", "first_words", "later_words"),
    [
        ("free_discussion", "becomes your position", "do not drop it without a strong reason"),
        ("structured_opposition", "Debater 1 (a#1)", "Say why your answer is the better one"),
        ("iterative_improvement", "improving their answers", "improved version of your own answer"),
    ],
)
def test_each_format_has_its_own_prompts(fmt: str, first_words: str, later_words: str) -> None:
    t = begin("r1", request(format=fmt), T0)
    first = jobs(t.commands)[0]
    assert first_words in text_of(first) and QUESTION in text_of(first)
    assert later_words not in text_of(first)
    _, commands = play_round(t.state, t.commands)
    later = only_job(commands)
    assert later_words in text_of(later) and "a#1 says round 1" in text_of(later)


CUSTOM = (
    "Q={question} | R{round} | {model_name} no.{debater_number} | mine: {own_position} | "
    "before: {history} | now: {current_round} | {{literal}}"
)


def test_custom_template_placeholders_are_substituted_each_round() -> None:
    t = begin("r1", request(format="custom", custom_prompt=CUSTOM), T0)
    a2 = jobs(t.commands)[1]
    text = text_of(a2)
    assert text.startswith(f"Q={QUESTION} | R1 | a no.2 | mine: (you have not stated a position yet)")
    assert "before: (no earlier rounds)" in text and "now: (round 1:" in text
    assert text.endswith("| {literal}")

    state, commands = play_round(t.state, t.commands)
    first = only_job(commands)
    text = text_of(first)
    assert "R2 | a no.1 | mine: Round 1:\na#1 says round 1 | before: === Round 1 ===" in text
    assert "now: (nobody has spoken yet this round" in text
    state, commands = decide(state, done(first, "first in round 2"))
    assert "now: [a#1]\nfirst in round 2 | {literal}" in text_of(only_job(commands))


# ---------------------------------------------------------------------------------------------
# Display only


def test_display_only_plays_every_round_then_completes_without_judge_or_final() -> None:
    state, commands = play_rounds(request(max_rounds=3), 3)
    assert events(commands)[-4:] == [
        "turn.completed",
        "round.completed",
        "debate.completed",
        "run.completed",
    ]
    assert jobs(commands) == []
    assert state.status == "completed" and len(state.rounds) == 3 and state.final is None
    assert state.reason == "reached max_rounds (3)"
    assert isinstance(commands[-1], RunCompleted)
    view = end_view(commands[-1])
    assert view.mode == "debate" and view.result is None
    # 3 debaters x 3 rounds, 10 in / 10 out each
    assert state.usage.input_tokens == 90 and state.usage.output_tokens == 90


def test_a_single_round_debate() -> None:
    state, commands = play_rounds(request(max_rounds=1), 1)
    assert state.status == "completed"
    assert events(commands)[-2:] == ["debate.completed", "run.completed"]


# ---------------------------------------------------------------------------------------------
# External judge


def judged(**kw: Any) -> DebateRequest:
    return request(judge_mode="external_judge", judge="j", **kw)


def test_judge_decides_after_rounds_two_to_max_minus_one_then_gives_a_streamed_verdict() -> None:
    state, commands = play_rounds(judged(max_rounds=3), 1)
    assert all(j.role == "debater" for j in jobs(commands))  # no judge after round 1
    state, commands = play_round(state, commands)
    judge = only_job(commands)
    assert (judge.role, judge.model, judge.call_id, judge.stream) == ("judge", "j", "r1:2:judge:j:1", False)
    assert "CONTINUE or STOP" in text_of(judge) and "b#1 says round 2" in text_of(judge)

    state, commands = decide(state, done(judge, "CONTINUE\nThey still disagree on buns."))
    decision = commands[0]
    assert isinstance(decision, JudgeDecision)
    assert decision.continue_ and decision.readable and decision.reason == "They still disagree on buns."
    assert '"continue":true' in decision.model_dump_json()
    assert events(commands) == ["judge.decided", "round.started"]

    state, commands = play_round(state, commands)  # round 3, the last: no decision, the verdict
    assert events(commands)[-2:] == ["round.completed", "final.started"]
    final = only_job(commands)
    assert (final.role, final.model, final.stream, final.call_id) == ("final", "j", True, "r1:3:final:j:1")
    assert "verdict" in text_of(final) and "a#2 says round 3" in text_of(final)
    start = commands[-2]
    assert isinstance(start, FinalStart) and start.by == "judge" and start.call_id == final.call_id

    # the worker streams chunks; the protocol ignores them
    chunk = FinalChunk(run_id="r1", call_id=final.call_id, index=0, delta="The", at=T0)
    assert decide(state, chunk) == (state, [])

    state, commands = decide(state, done(final, "The verdict."))
    assert events(commands) == ["final.completed", "debate.completed", "run.completed"]
    complete = commands[0]
    assert isinstance(complete, FinalComplete) and complete.text == "The verdict." and complete.by == "judge"
    assert state.status == "completed" and state.result == "The verdict."
    assert state.reason == "reached max_rounds (3)"
    assert isinstance(commands[-1], RunCompleted)
    view = end_view(commands[-1])
    assert view.result is not None
    assert view.result.model_dump() == {"text": "The verdict.", "model": "j", "by": "judge"}
    assert view.rounds[1].decision == "continue"


def test_judge_stop_ends_early_with_the_verdict() -> None:
    state, commands = play_rounds(judged(max_rounds=5), 2)
    state, commands = decide(state, done(only_job(commands), "**STOP** - the positions converged."))
    decision = commands[0]
    assert isinstance(decision, JudgeDecision) and not decision.continue_
    assert decision.reason == "the positions converged."
    assert events(commands) == ["judge.decided", "final.started"]
    final = only_job(commands)
    assert final.role == "final" and final.iteration == 2 and final.stream
    state, commands = decide(state, done(final, "Verdict."))
    assert state.status == "completed" and len(state.rounds) == 2
    assert state.reason == "the judge stopped the debate after round 2: the positions converged."
    debate_complete = commands[1]
    assert isinstance(debate_complete, DebateComplete) and debate_complete.rounds == 2


def test_unreadable_judge_answer_is_recorded_and_the_debate_continues() -> None:
    state, commands = play_rounds(judged(max_rounds=3), 2)
    state, commands = decide(state, done(only_job(commands), "Both sides have merit."))
    decision = commands[0]
    assert isinstance(decision, JudgeDecision)
    assert decision.continue_ and not decision.readable and decision.raw == "Both sides have merit."
    assert "neither CONTINUE nor STOP" in decision.reason
    assert events(commands) == ["judge.decided", "round.started"]
    assert state.rounds[1].decision_readable is False


def test_failed_judge_call_fails_the_run_with_the_reason() -> None:
    state, commands = play_rounds(judged(max_rounds=3), 2)
    state, commands = decide(state, failed(only_job(commands), "503 after 4 attempts"))
    assert events(commands) == ["debate.failed", "run.failed"]
    error = commands[0]
    assert isinstance(error, DebateError) and error.round == 2
    assert error.message == "the judge's call after round 2 failed: 503 after 4 attempts"
    assert state.status == "failed" and isinstance(commands[1], RunFailed)
    assert commands[1].reason == error.message


def test_failed_final_call_fails_the_run() -> None:
    state, commands = play_rounds(judged(max_rounds=2), 2)
    state, commands = decide(state, failed(only_job(commands), "context too long"))
    assert events(commands) == ["debate.failed", "run.failed"]
    assert state.status == "failed" and "final verdict call (j) failed: context too long" in (
        state.reason or ""
    )


@pytest.mark.parametrize(
    ("answer", "word", "reason"),
    [
        ("CONTINUE - more to say", "CONTINUE", "more to say"),
        ("stop.\nEnough.", "STOP", "Enough."),
        ("Decision: STOP: converged", "STOP", "converged"),
        ("I think they should CONTINUE; or maybe STOP", "CONTINUE", "; or maybe STOP"),
        ("Hmm.\nWe should stop here: nothing new.", "STOP", "here: nothing new."),
        ("The debaters discontinued nothing", None, "The debaters discontinued nothing"),
        ("", None, ""),
    ],
)
def test_parse_judge_answer(answer: str, word: str | None, reason: str) -> None:
    assert parse_judge_answer(answer) == (word, reason)


# ---------------------------------------------------------------------------------------------
# Self-convergence


def converging(**kw: Any) -> DebateRequest:
    return request(judge_mode="self_convergence", **kw)


def answer_convictions(
    state: DebateState, commands: list[Command], answers: dict[str, str | None]
) -> tuple[DebateState, list[Command]]:
    """Answer the conviction jobs by label; None makes the call fail."""
    asked = jobs(commands)
    assert {j.role for j in asked} == {"conviction"}
    for job in asked:
        answer = answers[label(job)]
        state, commands = decide(state, done(job, answer) if answer is not None else failed(job))
    return state, commands


def test_convinced_debaters_are_eliminated_and_the_last_one_summarizes() -> None:
    state, commands = play_rounds(converging(max_rounds=4), 1)
    assert all(j.role == "debater" for j in jobs(commands))
    state, commands = play_round(state, commands)
    asked = jobs(commands)
    assert [label(j) for j in asked] == ["a#1", "a#2", "b#1"]
    assert asked[0].call_id == "r1:2:conviction:a:1"
    prompt = text_of(asked[0])
    assert "The other participants are: a#2, b#1." in prompt and "CONVINCED:" in prompt

    state, commands = answer_convictions(
        state,
        commands,
        {
            "a#1": "CONVINCED: b#1\nBetter bun logic.",
            "a#2": "**Convinced**: debater 3",
            "b#1": "NOT CONVINCED",
        },
    )
    assert events(commands) == [
        "debater.eliminated",
        "debater.eliminated",
        "convergence.checked",
        "final.started",
    ]
    gone = commands[0]
    assert isinstance(gone, ModelEliminated)
    assert (gone.label, gone.convinced_by, gone.round, gone.reasoning) == (
        "a#1",
        "b#1",
        2,
        "CONVINCED: b#1\nBetter bun logic.",
    )
    status = commands[2]
    assert isinstance(status, ConvergenceStatus)
    assert (status.eliminated, status.remaining, status.kept) == (["a#1", "a#2"], ["b#1"], None)
    final = only_job(commands)
    assert (final.role, label(final), final.stream) == ("final", "b#1", True)
    assert "the one left standing" in text_of(final)

    state, commands = decide(state, done(final, "Summary."))
    assert events(commands) == ["final.completed", "debate.completed", "run.completed"]
    assert state.reason == "only b#1 remains after round 2" and state.result == "Summary."
    v = debate.view(state)
    assert [(d.label, d.active, d.convinced_by) for d in v.debaters] == [
        ("a#1", False, "b#1"),
        ("a#2", False, "b#1"),
        ("b#1", True, None),
    ]
    assert v.result is not None
    assert v.result.model_dump() == {"text": "Summary.", "model": "b", "by": "debater"}


def test_eliminated_debaters_no_longer_speak_and_the_first_remaining_sums_up_at_the_end() -> None:
    req = converging(max_rounds=3, members=[{"model": "a", "count": 2}, {"model": "b"}, {"model": "c"}])
    state, commands = play_rounds(req, 2)
    state, commands = answer_convictions(
        state,
        commands,
        {"a#1": "CONVINCED: c#1", "a#2": "NOT CONVINCED", "b#1": "NOT CONVINCED", "c#1": "not convinced"},
    )
    assert events(commands) == ["debater.eliminated", "convergence.checked", "round.started"]
    start = commands[2]
    assert isinstance(start, RoundStart) and [d.label for d in start.debaters] == ["a#2", "b#1", "c#1"]
    assert label(only_job(commands)) == "a#2"
    state, commands = play_round(state, commands)  # round 3 is the last: no conviction check
    assert [label(j) for j in jobs(commands)] == ["a#2"]
    final = only_job(commands)
    assert final.role == "final" and "ended after 3 rounds" in text_of(final)
    assert state.rounds[2].speakers == [2, 3, 4]


@pytest.mark.parametrize(
    ("answers", "kept"),
    [
        ({"a#1": "CONVINCED: b#1", "a#2": "CONVINCED: b#1", "b#1": "CONVINCED: a#1"}, "b#1"),
        ({"a#1": "CONVINCED: a#2", "a#2": "CONVINCED: a#1", "b#1": "CONVINCED"}, "a#1"),  # tie: earliest
    ],
)
def test_when_everyone_is_convinced_the_most_named_stays(answers: dict[str, str | None], kept: str) -> None:
    state, commands = play_rounds(converging(max_rounds=4), 2)
    state, commands = answer_convictions(state, commands, answers)
    status = next(c for c in commands if isinstance(c, ConvergenceStatus))
    assert status.kept == kept and status.remaining == [kept]
    assert len([c for c in commands if isinstance(c, ModelEliminated)]) == 2
    final = only_job(commands)
    assert label(final) == kept and final.role == "final"


def test_a_failed_conviction_call_counts_as_not_convinced() -> None:
    state, commands = play_rounds(converging(max_rounds=4), 2)
    state, commands = answer_convictions(
        state, commands, {"a#1": None, "a#2": "CONVINCED: b#1", "b#1": "CONVINCED: a#2"}
    )
    status = next(c for c in commands if isinstance(c, ConvergenceStatus))
    assert status.unanswered == ["a#1"] and status.kept is None
    assert status.eliminated == ["a#2", "b#1"] and status.remaining == ["a#1"]
    conviction = state.rounds[1].convictions[0]
    assert (conviction.status, conviction.convinced) == ("failed", False)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("CONVINCED: b#1\nbecause", (True, 4)),
        ("Convinced: B#1.", (True, 4)),
        ("CONVINCED by Debater #2", (True, 2)),
        ("CONVINCED: b", (True, 4)),  # the only debater of model b
        ("CONVINCED: a", (True, None)),  # two other instances of a: ambiguous
        ("CONVINCED", (True, None)),
        ("NOT CONVINCED: a#2 is wrong", (False, None)),
        ("I am convinced by b#1", (False, None)),  # the first line must start with CONVINCED
        ("", (False, None)),
    ],
)
def test_parse_conviction(answer: str, expected: tuple[bool, int | None]) -> None:
    # line-up a#1 (1), a#2 (2), a#3 (3), b#1 (4); a#1 is answering
    t = begin("r1", request(members=[{"model": "a", "count": 3}, {"model": "b"}]), T0)
    others = [d for d in t.state.debaters if d.number != 1]
    assert parse_conviction(answer, others) == expected


# ---------------------------------------------------------------------------------------------
# Failures, duplicates, late events


def test_a_failed_turn_is_recorded_and_the_turn_order_goes_on() -> None:
    state, commands = play_rounds(request(), 1)
    first = only_job(commands)
    state, commands = decide(state, failed(first, "rate limited"))
    turn = commands[0]
    assert isinstance(turn, RoundModelComplete)
    assert (turn.failed, turn.error, turn.text, turn.label) == (True, "rate limited", None, "a#1")
    second = only_job(commands)
    assert label(second) == "a#2"
    assert "[a#1]\n(no answer: the call failed)" in text_of(second)
    state, commands = play_round(state, commands)
    assert state.status == "running" and len(state.rounds) == 3


def test_every_debater_failing_in_a_round_fails_the_run() -> None:
    state, commands = play_rounds(request(), 1)
    for _ in range(3):
        state, commands = decide(state, failed(only_job(commands), "down"))
    assert events(commands) == ["turn.completed", "round.completed", "debate.failed", "run.failed"]
    assert state.status == "failed"
    assert state.reason == "every debater failed in round 2: a#1: down; a#2: down; b#1: down"
    assert jobs(commands) == []


def test_every_debater_failing_in_round_one_fails_the_run() -> None:
    t = begin("r1", request(), T0)
    state = t.state
    for job in jobs(t.commands):
        state, commands = decide(state, failed(job))
    assert events(commands)[-2:] == ["debate.failed", "run.failed"] and state.status == "failed"


def test_duplicate_and_late_events_change_nothing() -> None:
    t = begin("r1", request(), T0)
    r1 = jobs(t.commands)
    state, _ = decide(t.state, done(r1[0]))
    again = decide(state, done(r1[0], "different"))
    assert again.state is state and again.commands == []
    again = decide(state, failed(r1[0]))
    assert again.state is state and again.commands == []
    stray = CallJob(**{**r1[0].model_dump(), "call_id": "r1:9:debater:a:1"})
    assert decide(state, done(stray)).state is state
    assert decide(state, "not an event").commands == []

    state, commands = play_round(t.state, t.commands)
    late = decide(state, done(r1[1], "late"))  # round 1 is over
    assert late.state is state and late.commands == []

    finished = state.model_copy(update={"status": "failed"})
    assert decide(finished, done(only_job(commands))).commands == []


def test_every_debate_event_survives_the_wire() -> None:
    state, commands = play_rounds(converging(max_rounds=3), 2)
    collected = list(commands)
    state, commands = answer_convictions(
        state, commands, {"a#1": "CONVINCED: b#1", "a#2": "CONVINCED: b#1", "b#1": "NOT CONVINCED"}
    )
    collected += commands
    state, commands = decide(state, done(only_job(commands), "S"))
    collected += commands
    collected.append(FinalChunk(run_id="r1", call_id="c", index=3, delta="x", at=T0))
    decision = {"run_id": "r1", "round": 2, "model": "j", "continue": False, "reason": "r", "raw": "STOP r"}
    collected.append(JudgeDecision.model_validate({**decision, "at": T0}))
    collected.append(DebateError(run_id="r1", message="m", at=T0))
    for event in collected:
        if isinstance(event, CallJob):
            continue
        assert parse_event(event.model_dump_json()) == event
    ids = [e.event_id() for e in collected if not isinstance(e, CallJob)]
    assert len(ids) == len(set(ids))


def test_view_shows_rounds_turns_and_decisions() -> None:
    state, commands = play_rounds(judged(max_rounds=3), 2)
    state, commands = decide(state, done(only_job(commands), "STOP: done"))
    v = debate.view(state)
    assert v.mode == "debate" and v.status == "running"
    assert [d.label for d in v.debaters] == ["a#1", "a#2", "b#1"]
    second = v.rounds[1]
    assert second.speakers == ["a#1", "a#2", "b#1"]
    assert [(t.label, t.status) for t in second.turns] == [
        ("a#1", "completed"),
        ("a#2", "completed"),
        ("b#1", "completed"),
    ]
    assert second.judge is not None
    assert (second.decision, second.decision_reason, second.judge.model) == ("stop", "done", "j")
    assert v.final is not None and v.final.status == "pending"
    assert isinstance(v.request, TextRef) and document(v.request)["judge"] == "j"


def test_decide_never_changes_the_state_it_is_given() -> None:
    """decide() copies only what an event touches; the input must still come out unchanged."""
    for req in (
        judged(max_rounds=3),
        converging(max_rounds=3, members=[{"model": "a", "count": 2}, {"model": "b"}, {"model": "c"}]),
    ):
        t = begin("r1", req, T0)
        state, pending = t.state, jobs(t.commands)
        answers = {"judge": "CONTINUE: more", "conviction": "CONVINCED: c#1", "final": "The end."}
        while pending:
            job = pending.pop(0)
            before = state.model_dump_json()
            new_state, commands = decide(state, done(job, answers.get(job.role)))
            assert state.model_dump_json() == before
            state = new_state
            pending += jobs(commands)
        assert state.status == "completed"


# ---------------------------------------------------------------------------------------------
# Prompts as the worker renders them: the same text as before texts went by reference. The
# expected texts are built the way the prompts were built before (`str.format` over the whole
# texts), from the same templates.

LONG_QUESTION = "Is a hot dog a sandwich? Think of {buns} and " + "bread " * 60
NOTES = "Mustard is essential. " * 30


def said(label: str, number: int) -> str:
    """A turn longer than what travels inline, with braces that must stay as they are."""
    return f"{label} says round {number}: {{not a placeholder}} " + "argument " * 40


def old_transcript(rounds: list[list[tuple[str, str | None]]]) -> str:
    """The transcript as the old prompts wrote it; a None turn is a failed call."""
    return "\n\n".join(
        f"=== Round {n} ===\n\n"
        + "\n\n".join(
            f"[{who}]\n{text if text is not None else '(no answer: the call failed)'}" for who, text in turns
        )
        for n, turns in enumerate(rounds, 1)
    )


def old_own(label: str, rounds: int) -> str:
    return "\n\n".join(f"Round {n}:\n{said(label, n)}" for n in range(1, rounds + 1))


def long_request(**kw: Any) -> DebateRequest:
    members = [
        {"model": "a", "count": 2, "attachments": [{"name": "notes.txt", "content": NOTES}]},
        {"model": "b"},
    ]
    return request(prompt=LONG_QUESTION, members=members, **kw)


def play_long(req: DebateRequest, until: int) -> tuple[DebateState, list[Command]]:
    """Rounds 1..until, every turn `said(...)`, except b#1's failed call in round 1."""
    t = begin("r1", req, T0)
    state, commands = t.state, t.commands
    pending = jobs(commands)
    while pending and pending[0].role == "debater" and pending[0].iteration <= until:
        job = pending.pop(0)
        if (label(job), job.iteration) == ("b#1", 1):
            state, commands = decide(state, failed(job))
        else:
            state, commands = decide(state, done(job, said(label(job), job.iteration)))
        pending += jobs(commands)
    return state, commands


R1: list[tuple[str, str | None]] = [("a#1", said("a#1", 1)), ("a#2", said("a#2", 1)), ("b#1", None)]
R2: list[tuple[str, str | None]] = [("a#1", said("a#1", 2)), ("a#2", said("a#2", 2)), ("b#1", said("b#1", 2))]


def test_a_later_turn_renders_as_the_old_prompt_did() -> None:
    t = begin("r1", long_request(), T0)
    state, pending = t.state, jobs(t.commands)
    for job in pending:
        answer = failed(job) if label(job) == "b#1" else done(job, said(label(job), 1))
        state, commands = decide(state, answer)
    state, commands = decide(state, done(only_job(commands), said("a#1", 2)))
    job = only_job(commands)
    assert label(job) == "a#2"
    expected = prompts.LATER_ROUNDS_CONTEXT.format(
        label="a#2",
        number=2,
        question=LONG_QUESTION,
        own_position=old_own("a#2", 1),
        history=old_transcript([R1]),
        current_round=f"[a#1]\n{said('a#1', 2)}",
        round=2,
    ) + prompts.LATER_ROUNDS["free_discussion"].format(round=2)
    expected += f"\n\n----- attached document: notes.txt -----\n{NOTES}\n----- end of notes.txt -----"
    assert text_of(job) == expected
    # by reference: the question, its own position, round 1 (one stored block, quoting its two
    # answers), a#1's turn, the attachment
    [asked] = job.messages
    assert isinstance(asked, JobMessage)
    assert sum(isinstance(p, TextRef) for p in asked.content) == 5
    assert state.rounds[0].transcript is not None and state.rounds[0].transcript[0] in asked.content


def test_the_conversation_a_debate_continues_is_one_reference_in_every_job() -> None:
    history = [
        {"role": "user", "content": "Earlier question " * 30},
        {"role": "assistant", "content": "Short answer."},
    ]
    members = [{"model": "a", "system": "You are terse."}, {"model": "b"}]
    t = begin("r1", request(members=members, history=history, judge_mode="external_judge", judge="j"), T0)
    conversation = t.state.history
    assert isinstance(conversation, TextRef) and conversation.json_
    a, b = jobs(t.commands)
    assert a.messages[1:-1] == [conversation] and b.messages[:-1] == [conversation]
    sent = [(m.role, rendered(m.content)) for m in a.conversation(TEXTS)]
    assert sent == [
        ("system", "You are terse."),
        ("user", "Earlier question " * 30),
        ("assistant", "Short answer."),
        ("user", text_of(a)),
    ]
    state, commands = play_round(t.state, t.commands)
    state, commands = play_round(state, commands)
    judge = only_job(commands)
    assert judge.role == "judge" and judge.messages[:-1] == [conversation]


def test_a_custom_template_renders_as_the_old_prompt_did() -> None:
    template = CUSTOM + "\n" + "Be brief. " * 40
    state, commands = play_long(long_request(format="custom", custom_prompt=template), 1)
    job = only_job(commands)
    values = {
        "question": LONG_QUESTION,
        "round": "2",
        "model_name": "a",
        "debater_number": "1",
        "own_position": old_own("a#1", 1),
        "history": old_transcript([R1]),
        "current_round": prompts.FIRST_TO_SPEAK,
    }
    notes = f"\n\n----- attached document: notes.txt -----\n{NOTES}\n----- end of notes.txt -----"
    assert text_of(job) == template.format(**values) + notes
    assert state.template is not None  # split once: placeholders by name, the literal text by reference
    names = [p.placeholder for p in state.template if isinstance(p, prompts.Placeholder)]
    assert names == [
        "question",
        "round",
        "model_name",
        "debater_number",
        "own_position",
        "history",
        "current_round",
    ]
    assert isinstance(state.template[-1], TextRef)


def test_the_judge_conviction_verdict_and_summary_prompts_render_as_before() -> None:
    transcript = old_transcript([R1, R2])
    _, commands = play_long(long_request(judge_mode="external_judge", judge="j"), 2)
    assert text_of(only_job(commands)) == prompts.JUDGE_DECISION_PROMPT.format(
        question=LONG_QUESTION, last_round=2, transcript=transcript
    )

    _, commands = play_long(long_request(judge_mode="external_judge", judge="j", max_rounds=2), 2)
    assert text_of(only_job(commands)) == prompts.JUDGE_VERDICT_PROMPT.format(
        question=LONG_QUESTION, transcript=transcript
    )

    _, commands = play_long(long_request(judge_mode="self_convergence"), 2)
    first = jobs(commands)[0]
    assert text_of(first) == prompts.CONVICTION_PROMPT.format(
        label="a#1",
        number=1,
        question=LONG_QUESTION,
        own_position=old_own("a#1", 2),
        transcript=transcript,
        others="a#2, b#1",
        others_example="a#2",
    )

    _, commands = play_long(long_request(judge_mode="self_convergence", max_rounds=2), 2)
    assert text_of(only_job(commands)) == prompts.SUMMARY_PROMPT.format(
        label="a#1",
        question=LONG_QUESTION,
        transcript=transcript,
        standing=prompts.SUMMARY_FIRST.format(rounds=2),
    )


def test_a_long_judge_reason_is_shortened_where_the_run_quotes_it() -> None:
    state, commands = play_rounds(judged(max_rounds=5), 2)
    answer = "STOP\n" + "The positions converged. " * 100
    state, commands = decide(state, done(only_job(commands), answer))
    decision = commands[0]
    assert isinstance(decision, JudgeDecision) and not decision.continue_
    assert isinstance(decision.raw, TextRef) and TEXTS[decision.raw.sha] == answer
    assert (
        isinstance(decision.reason, str)
        and len(decision.reason) == 300
        and decision.reason.endswith("\u2026")
    )
    assert state.reason is not None and len(state.reason) < 400
    assert state.reason == f"the judge stopped the debate after round 2: {decision.reason}"


def test_debate_is_a_registered_protocol() -> None:
    assert protocol_for("debate") is debate
    t = protocol_for("debate").start("r1", request(), T0)
    assert debate.State.model_validate(t.state.model_dump(mode="json")) == t.state


# ---------------------------------------------------------------------------------------------
# Requests


def test_defaults() -> None:
    req = request()
    assert (req.format, req.judge_mode, req.judge, req.max_rounds, req.custom_prompt) == (
        "free_discussion",
        "display_only",
        None,
        3,
        None,
    )


def test_mode_missing_means_consortium_and_debate_is_chosen_by_mode() -> None:
    consortium = run_request_adapter.validate_python(
        {"prompt": "p", "members": [{"model": "a"}], "arbiter": "j"}
    )
    assert isinstance(consortium, ConsortiumRequest) and consortium.mode == "consortium"
    chosen = run_request_adapter.validate_json(
        '{"mode": "debate", "prompt": "p", "members": [{"model": "a", "count": 2}]}'
    )
    assert isinstance(chosen, DebateRequest)
    assert run_request_adapter.validate_python(chosen) is chosen


def test_unknown_mode_is_an_error_at_mode() -> None:
    with pytest.raises(ValidationError) as info:
        run_request_adapter.validate_python({"mode": "poetry", "prompt": "p", "members": [{"model": "a"}]})
    [error] = info.value.errors()
    assert error["loc"] == ("mode",) and "'consortium', 'debate', 'council', 'vote' or 'moa'" in error["msg"]


def debate_error_locs(patch: dict[str, Any]) -> list[tuple[Any, ...]]:
    body = {"mode": "debate", "prompt": "p", "members": [{"model": "a", "count": 2}], **patch}
    with pytest.raises(ValidationError) as info:
        run_request_adapter.validate_python(body)
    return [tuple(e["loc"]) for e in info.value.errors()]


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"judge_mode": "external_judge"}, "judge"),
        ({"judge": "j", "judge_mode": "display_only"}, "judge"),  # display_only takes no judge
        ({"judge_mode": "self_convergence", "judge": "j"}, "judge"),
        ({"judge_mode": "external_judge", "judge": "bad name!"}, "judge"),
        ({"max_rounds": 0}, "max_rounds"),
        ({"max_rounds": 21}, "max_rounds"),
        ({"format": "custom"}, "custom_prompt"),
        ({"format": "free_discussion", "custom_prompt": "{question}"}, "custom_prompt"),
        ({"custom_prompt": "Answer {question}"}, "custom_prompt"),  # default format is not custom
        ({"format": "custom", "custom_prompt": "Answer {question} like {persona}"}, "custom_prompt"),
        ({"format": "custom", "custom_prompt": "   \n "}, "custom_prompt"),
        ({"format": "custom", "custom_prompt": "Round {round:>3}"}, "custom_prompt"),
        ({"format": "custom", "custom_prompt": "Answer {question"}, "custom_prompt"),
        ({"format": "custom", "custom_prompt": "Answer {}"}, "custom_prompt"),
        ({"format": "custom", "custom_prompt": "Answer {question.upper}"}, "custom_prompt"),
        ({"format": "debate_club"}, "format"),
        ({"judge_mode": "coin_flip"}, "judge_mode"),
        ({"members": [{"model": "a"}]}, "members"),  # one voice is no debate
        ({"members": [{"model": "a", "count": 17}]}, "count"),
        ({"members": [{"model": "a", "count": 2, "images": ["file:///etc/passwd"]}]}, "images"),
        ({"members": [{"model": "a", "count": 2, "tools": [{"function": {}}]}]}, "tools"),
        ({"members": [{"model": "a", "count": 2, "colour": "red"}]}, "colour"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_request_validation_names_the_field(patch: dict[str, Any], field: str) -> None:
    locs = debate_error_locs(patch)
    assert any(loc[0] == "debate" and loc[-1] == field for loc in locs), locs


def test_a_judge_alone_means_an_external_judge() -> None:
    """As `moot debate --judge` does: the API and the CLI agree (issue 13)."""
    body = {"mode": "debate", "prompt": "p", "members": [{"model": "a", "count": 2}], "judge": "j"}
    request = DebateRequest.model_validate(body)
    assert (request.judge_mode, request.judge) == ("external_judge", "j")
    assert DebateRequest.model_validate({**body, "judge": None}).judge_mode == "display_only"


def test_unknown_placeholder_error_says_which_and_what_is_allowed() -> None:
    body = {"mode": "debate", "prompt": "p", "members": [{"model": "a", "count": 2}]}
    with pytest.raises(ValidationError) as info:
        run_request_adapter.validate_python({**body, "format": "custom", "custom_prompt": "{persona}"})
    [error] = info.value.errors()
    assert error["loc"] == ("debate", "custom_prompt")
    assert "unknown placeholder {persona}" in error["msg"] and "{own_position}" in error["msg"]


def test_valid_custom_templates() -> None:
    for template in ("{question}", "Say {{hello}} to {model_name}", "No placeholders at all."):
        req = request(format="custom", custom_prompt=template)
        assert req.custom_prompt == template


async def test_gateway_style_422_locations() -> None:
    from fastapi.exceptions import RequestValidationError

    from moot_gateway.errors import validation_error_handler

    app = FastAPI()
    app.add_exception_handler(RequestValidationError, validation_error_handler)

    @app.post("/v1/runs")
    def create(request: RunRequest) -> dict[str, str]:
        return {"mode": request.mode}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        r = await http.post("/v1/runs", json={"prompt": "p", "members": [{"model": "a"}], "arbiter": "j"})
        assert r.json() == {"mode": "consortium"}
        r = await http.post("/v1/runs", json={"mode": "poetry", "prompt": "p"})
        assert r.status_code == 422 and r.json()["error"]["param"] == "mode"
        custom = {"format": "custom", "custom_prompt": "{nope}"}
        r = await http.post(
            "/v1/runs",
            json={"mode": "debate", "prompt": "p", "members": [{"model": "a", "count": 2}], **custom},
        )
        assert r.status_code == 422 and r.json()["error"]["param"] == "custom_prompt"
