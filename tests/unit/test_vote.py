"""The vote state machine, driven without any server: reading answers, the count, the threshold,
and the escalation to a consortium or a debate seeded with the votes, in every phase of a run."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moot.messages import (
    CallCompleted,
    CallFailed,
    CallJob,
    CancelRequested,
    DeadLettered,
    DeadlinePassed,
    DebateError,
    IterationCompleted,
    RoundComplete,
    RunCancelled,
    RunCompleted,
    RunCreated,
    RunFailed,
    StepStarted,
)
from moot.protocols import consortium, debate, vote
from moot.protocols.base import Transition, prompt_tokens
from moot.protocols.vote import VoteState, read_vote
from moot.requests import ConsortiumRequest, DebateRequest, VoteRequest
from moot.texts import MESSAGE_BUDGET_BYTES, TextRef, hydrate, render
from moot.views import (
    ConsortiumView,
    DebateView,
    TallyEntry,
    Usage,
    VoteResult,
    VoteView,
    run_view_adapter,
)

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
QUESTION = "How many legs does a spider have?"
CITIES = ["London", "Paris", "Berlin", "Madrid"]

# Every text a transition handed out, by SHA-256, as the run store keeps them.
TEXTS: dict[str, str] = {}


def kept(t: Transition[Any]) -> Transition[Any]:
    TEXTS.update(t.texts)
    return t


def request(**kw: Any) -> VoteRequest:
    base: dict[str, Any] = {
        "prompt": QUESTION,
        "members": [{"model": "a", "count": 2}, {"model": "b", "count": 2}],
        "answer_format": "number",
    }
    base.update(kw)
    return VoteRequest.model_validate(base)


def start(req: VoteRequest, run_id: str = "r1") -> Transition[VoteState]:
    return kept(vote.start(run_id, req, T0))


def decide(state: VoteState, event: object) -> tuple[VoteState, list[Any]]:
    before = state.model_dump_json()
    t = kept(vote.decide(state, event))
    assert state.model_dump_json() == before, "decide() changed the state it was given"
    return t.state, t.commands


def jobs(commands: Sequence[object]) -> list[CallJob]:
    return [c for c in commands if isinstance(c, CallJob)]


def kinds(commands: Sequence[object]) -> list[str]:
    return [type(c).__name__ for c in commands]


def done(job: CallJob, text: str, tokens: int = 10) -> CallCompleted:
    return job.completed(text, usage=Usage(input_tokens=tokens, output_tokens=tokens), at=T0)


def cast_votes(
    state: VoteState, vote_jobs: list[CallJob], answers: list[str | None]
) -> tuple[VoteState, list[Any]]:
    """Every vote in, in order (None: the call failed); the commands of the last one."""
    commands: list[Any] = []
    for job, answer in zip(vote_jobs, answers, strict=True):
        event = job.failed("boom", at=T0) if answer is None else done(job, answer)
        state, commands = decide(state, event)
    return state, commands


def said(job: CallJob) -> list[Any]:
    """The job's messages as the member worker sends them: every reference resolved."""
    return [render(m.content, TEXTS) for m in job.conversation(TEXTS)]


def end_view(event: object) -> VoteView:
    """An end event's view, hydrated: the event carries it as one stored document."""
    assert isinstance(event, RunCompleted | RunFailed | RunCancelled) and isinstance(event.run, TextRef)
    view = run_view_adapter.validate_python(hydrate(json.loads(TEXTS[event.run.sha]), TEXTS))
    assert isinstance(view, VoteView)
    return view


def arbiter_xml(confidence: float, needs: bool = False, synthesis: str = "Eight legs.") -> str:
    return (
        f"<synthesis>{synthesis}</synthesis><confidence>{confidence}</confidence>"
        f"<needs_iteration>{str(needs).lower()}</needs_iteration>"
        "<refinement_areas><area>count again</area></refinement_areas>"
    )


# ---------------------------------------------------------------------------------------------
# Reading a vote


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("8", 8.0),
        ("8.0", 8.0),
        ("Answer: 8", 8.0),
        ("**Answer:** 1,234.5", 1234.5),
        ("The answer is eight.", 8.0),
        ("Forty-two.", 42.0),
        ("There are 3 apples and 5 pears, so 3 + 5 = 8.\nAnswer: 8", 8.0),
        ("Let me think.\n3 + 5 = 8", 8.0),  # the result, not the first number worked with
        ("A spider has 8 legs.\nConfidence: 0.9", 8.0),  # the stated confidence is not a number voted
        ("8\n\nA spider has eight legs, like every arachnid.", 8.0),  # answered first: its one number
        ("Final answer:\n8", 8.0),
        ("```\n8\n```", 8.0),
        ("-3", -3.0),
        ("\\boxed{42}", 42.0),
        # No vote: numbers worked with but none given, the placeholder copied, no number at all.
        ("We add 3 and 5.\nSo the total is what we get.", None),
        ("Answer: <the number>", None),
        ("Spiders have many legs.", None),
        ("", None),
    ],
)
def test_a_number_vote_is_read_from_its_answer_line(text: str, key: float | None) -> None:
    assert read_vote(text, "number").key == key


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("B", "B"),
        ("(b)", "B"),
        ("Answer: B", "B"),
        ("B. Paris", "B"),
        ("Paris", "B"),  # the option's text alone
        ("paris.", "B"),
        ("**Final answer: C**", "C"),
        ("I'd go with D.", "D"),
        ("I choose B because Paris is the capital.", "B"),
        ("The correct option is (b).", "B"),
        ("The capital of France is Paris, its largest city.\n\nAnswer: B", "B"),
        ("B) Paris\nParis has been the capital since 508.", "B"),  # answered first
        ("E", None),  # beyond the options
        ("Answer: <the letter>", None),
        ("I am not sure.", None),
        ("A city in France.", None),  # an article, not a letter
    ],
)
def test_a_choice_vote_is_its_options_letter(text: str, key: str | None) -> None:
    assert read_vote(text, "choice", CITIES).key == key


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("Yes.", "yes"),
        ("yes", "yes"),
        ("Yes, because water boils at 100 °C at sea level.", "yes"),
        ("Answer: yes", "yes"),
        ("Absolutely!", "yes"),
        ("No", "no"),
        ("Nope.", "no"),
        ("Not really.", "no"),
        ("Definitely not.", "no"),
        ("I don't think so.", "no"),
        ("Let me think about it.\nWater boils at 100 °C.\nAnswer: no", "no"),
        ("No. It boils at 100 °C only at sea level.\nAt altitude it boils lower.", "no"),  # answered first
        ("It depends on the pressure.", None),
        ("Yes and no.", None),
        ("Answer: <yes or no>", None),
        ("Maybe.", None),
    ],
)
def test_a_yes_no_vote_is_its_polarity(text: str, key: str | None) -> None:
    assert read_vote(text, "yes_no").key == key


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("Tokyo", "Tokyo"),
        ("Answer: **Tokyo**", "Tokyo"),
        ("The capital of Japan is Tokyo, of course.\nAnswer: Tokyo", "Tokyo"),
        ("The answer is Tokyo.", "Tokyo."),
        ("Tokyo\nConfidence: 0.8", "Tokyo"),
    ],
)
def test_a_free_vote_is_its_answer_line_normalised(text: str, answer: str) -> None:
    reading = read_vote(text, "free")
    assert (reading.key, reading.answer) == ("tokyo", answer)


# ---------------------------------------------------------------------------------------------
# The vote


def test_start_records_the_run_and_asks_every_voter_once_in_step_one() -> None:
    req = request(
        system="Be brief.", temperature=0.7, max_tokens=50, history=[{"role": "user", "content": "Hi"}]
    )
    t = start(req)
    assert kinds(t.commands) == ["RunCreated", "StepStarted", "CallJob", "CallJob", "CallJob", "CallJob"]
    created, started = t.commands[0], t.commands[1]
    assert isinstance(created, RunCreated) and created.request == t.state.request
    vote_jobs = jobs(t.commands)
    ids = ["r1:1:member:a:1", "r1:1:member:a:2", "r1:1:member:b:1", "r1:1:member:b:2"]
    assert started == StepStarted(run_id="r1", step=1, name="votes", call_ids=ids, at=T0)
    assert [j.call_id for j in vote_jobs] == ids
    assert {(j.role, j.iteration, j.temperature, j.max_tokens) for j in vote_jobs} == {("member", 1, 0.7, 50)}
    messages = said(vote_jobs[2])
    assert [m.role for m in vote_jobs[2].conversation(TEXTS)] == ["system", "user", "user"]
    assert messages[:2] == ["Be brief.", "Hi"]
    assert messages[2].startswith(QUESTION) and messages[2].endswith("Answer: <the number>")
    assert t.state.status == "running" and len(t.state.votes) == 4


@pytest.mark.parametrize(
    ("fmt", "words"),
    [
        ("free", ["Give a short, direct answer.", "Answer: <your short answer>"]),
        ("number", ["give it in digits", "Answer: <the number>"]),
        ("choice", ["Options:\nA. London\nB. Paris\nC. Berlin\nD. Madrid\n", "Answer: <the letter>"]),
        ("yes_no", ["Answer yes or no.", "Answer: <yes or no>"]),
    ],
)
def test_the_prompt_asks_for_the_answer_in_its_format_on_a_last_line(fmt: str, words: list[str]) -> None:
    t = start(request(answer_format=fmt, choices=CITIES if fmt == "choice" else None))
    [prompt] = said(jobs(t.commands)[0])
    assert prompt.startswith(QUESTION + "\n")
    assert all(w in prompt for w in words)
    assert prompt.splitlines()[-1] == words[-1]


def test_five_identical_samples_make_five_calls_and_answer_with_full_agreement() -> None:
    t = start(
        request(members=[{"model": "a", "count": 5}], escalate={"mode": "consortium", "arbiter": "judge"})
    )
    vote_jobs = jobs(t.commands)
    assert len(vote_jobs) == 5
    answers = ["8", "Answer: 8", "A spider has 8 legs.\nAnswer: 8", "eight", "8.0"]
    state = t.state
    for job in vote_jobs[:-1]:
        state, commands = decide(state, done(job, answers[vote_jobs.index(job)]))
        assert commands == []
    state, commands = decide(state, done(vote_jobs[-1], answers[-1]))
    assert kinds(commands) == ["StepCompleted", "RunCompleted"]
    assert commands[0].data == {
        "tally": [{"answer": "8", "count": 5, "voters": ["a#1", "a#2", "a#3", "a#4", "a#5"]}],
        "agreement": 1.0,
        "majority": "8",
        "counted": 5,
        "unreadable": [],
        "failed": [],
        "decision": "answer",
        "reason": "agreement 1 (5 of 5 counted votes) meets threshold 0.6",
    }
    assert commands[1].reason == "agreement 1 (5 of 5 counted votes) meets threshold 0.6"
    view = end_view(commands[1])
    assert view.status == "completed" and view.answer == "8"
    assert view.result == VoteResult(text="8", by="vote", agreement=1.0)
    assert (view.agreement, view.majority, view.escalated, view.escalation) == (1.0, "8", False, None)
    assert [v.normalized for v in view.votes] == ["8"] * 5
    assert view.usage == Usage(input_tokens=50, output_tokens=50)
    assert state.status == "completed"


def test_ties_go_to_the_answer_whose_first_voter_comes_first() -> None:
    t = start(
        request(members=[{"model": "a", "count": 3}, {"model": "b", "count": 3}], agreement_threshold=0.0)
    )
    answers: list[str | None] = ["6", "8", "8", None, "six legs, I think", "6"]
    _, commands = cast_votes(t.state, jobs(t.commands), answers)
    data = commands[0].data
    assert data["tally"] == [
        {"answer": "6", "count": 2, "voters": ["a#1", "b#3"]},
        {"answer": "8", "count": 2, "voters": ["a#2", "a#3"]},
    ]
    assert (data["majority"], data["agreement"], data["counted"]) == ("6", 0.5, 4)
    assert (data["unreadable"], data["failed"]) == (["b#2"], ["b#1"])
    view = end_view(commands[1])
    assert view.tally == [
        TallyEntry(answer="6", count=2, voters=["a#1", "b#3"]),
        TallyEntry(answer="8", count=2, voters=["a#2", "a#3"]),
    ]
    assert [v.normalized for v in view.votes] == ["6", "8", "8", None, None, "6"]
    assert [v.status for v in view.votes] == ["completed"] * 3 + ["failed"] + ["completed"] * 2


@pytest.mark.parametrize(
    ("answers", "threshold", "decision"),
    [
        (["8", "8", "8", "6", "6"], 0.6, "answer"),  # 3/5 is exactly 0.6: it meets it
        (["8", "8", "8", "6", "6"], 0.61, "escalate"),
        (["8", "8", "6", "6", "x"], 0.5, "answer"),  # the unreadable vote is not counted: 2/4
        (["8", "8", "6", "6", "x"], 0.51, "escalate"),
        (["8", "8", "8", "8", "6"], 1.0, "escalate"),
        (["8", "8", "8", "8", "x"], 1.0, "answer"),
        (["1", "2", "3", "4", "5"], 0.0, "answer"),
        (["1", "2", "3", "4", "5"], 0.2, "answer"),
        (["1", "2", "3", "4", "5"], 0.21, "escalate"),
    ],
)
def test_the_threshold_decides_between_the_majority_and_the_escalation(
    answers: list[str | None], threshold: float, decision: str
) -> None:
    req = request(
        members=[{"model": "a", "count": 5}],
        agreement_threshold=threshold,
        escalate={"mode": "consortium", "arbiter": "judge"},
    )
    t = start(req)
    _, commands = cast_votes(t.state, jobs(t.commands), answers)
    assert commands[0].data["decision"] == decision
    assert kinds(commands) == (
        ["StepCompleted", "RunCompleted"] if decision == "answer" else ["StepCompleted", "CallJob"]
    )


def test_without_an_escalation_the_majority_stands_below_the_threshold() -> None:
    t = start(request(agreement_threshold=0.9))
    _, commands = cast_votes(t.state, jobs(t.commands), ["6", "8", "8", "Answer: 6"])
    assert kinds(commands) == ["StepCompleted", "RunCompleted"]
    assert commands[1].reason == (
        "agreement 0.5 (2 of 4 counted votes) is below threshold 0.9; without an escalation the majority's answer stands"
    )
    assert end_view(commands[1]).result == VoteResult(text="6", by="vote", agreement=0.5)


def test_a_free_vote_answers_with_the_first_majority_voters_words() -> None:
    t = start(request(prompt="What is the capital of Japan?", answer_format="free"))
    answers: list[str | None] = ["Kyoto", "The capital is Tokyo.\nAnswer: **Tokyo**", "tokyo", "TOKYO!"]
    _, commands = cast_votes(t.state, jobs(t.commands), answers)
    assert commands[0].data["tally"][0] == {"answer": "tokyo", "count": 3, "voters": ["a#2", "b#1", "b#2"]}
    view = end_view(commands[1])
    assert view.result == VoteResult(text="Tokyo", by="vote", agreement=0.75)
    assert view.majority == "tokyo"


def test_a_long_free_answer_is_counted_by_reference() -> None:
    long = "Tokyo, " + "the largest city of Japan and its capital since 1868, " * 10
    t = start(request(answer_format="free", members=[{"model": "a", "count": 3}]))
    state, commands = cast_votes(t.state, jobs(t.commands), [long, long.upper(), "Kyoto"])
    [first, second] = commands[0].data["tally"]
    assert set(first["answer"]) == {"$text", "chars"} and first["count"] == 2 and second["answer"] == "kyoto"
    assert isinstance(state.votes[0].key, TextRef) and state.votes[0].key == state.votes[1].key
    view = end_view(commands[1])
    assert view.answer == long.strip() and view.majority == " ".join(
        long.casefold().replace(",", " ").split()
    )


def test_a_choice_vote_answers_with_the_letter() -> None:
    t = start(request(answer_format="choice", choices=CITIES, members=[{"model": "a", "count": 3}]))
    _, commands = cast_votes(t.state, jobs(t.commands), ["B. Paris", "Paris", "Answer: (c)"])
    assert end_view(commands[1]).result == VoteResult(text="B", by="vote", agreement=2 / 3)


@pytest.mark.parametrize("escalate", [None, {"mode": "consortium", "arbiter": "judge"}])
def test_every_call_failed_fails_the_run_even_with_an_escalation(escalate: dict[str, Any] | None) -> None:
    t = start(request(escalate=escalate))
    state, commands = cast_votes(t.state, jobs(t.commands), [None] * 4)
    assert kinds(commands) == ["StepCompleted", "RunFailed"]
    assert commands[0].data["decision"] == "fail" and commands[0].data["failed"] == [
        "a#1",
        "a#2",
        "b#1",
        "b#2",
    ]
    assert commands[1].reason == "every vote call failed: a#1: boom; a#2: boom; b#1: boom; b#2: boom"
    assert state.status == "failed" and state.escalation is None


def test_no_readable_vote_fails_the_run_without_an_escalation_and_escalates_with_one() -> None:
    answers: list[str | None] = ["Many.", None, "I do not know.", "Answer: <the number>"]
    t = start(request())
    _, commands = cast_votes(t.state, jobs(t.commands), answers)
    assert kinds(commands) == ["StepCompleted", "RunFailed"]
    assert commands[1].reason == "no vote could be read as a number"
    assert commands[0].data["agreement"] is None and commands[0].data["majority"] is None

    t = start(request(escalate={"mode": "consortium", "arbiter": "judge"}))
    _, commands = cast_votes(t.state, jobs(t.commands), answers)
    assert kinds(commands) == ["StepCompleted", "CallJob"]
    assert commands[0].data["reason"] == "no vote could be read as a number: the vote goes on as a consortium"
    [prompt] = said(jobs(commands)[0])
    assert "Many." in prompt and "I do not know." in prompt  # the arbiter reads what the count could not


def test_duplicates_and_unknown_outcomes_change_nothing() -> None:
    t = start(request())
    vote_jobs = jobs(t.commands)
    state, _ = decide(t.state, done(vote_jobs[0], "8"))
    for event in (
        done(vote_jobs[0], "6"),
        CallJob(
            call_id="r1:1:member:c:1",
            run_id="r1",
            iteration=1,
            role="member",
            model="c",
            instance=1,
            messages=[],
        ).failed("x", at=T0),
        DeadlinePassed(run_id="r1", at=T0 + timedelta(seconds=899)),
    ):
        again = vote.decide(state, event)
        assert again.state is state and again.commands == []


# ---------------------------------------------------------------------------------------------
# Escalation to a consortium


def consortium_vote(**kw: Any) -> VoteRequest:
    return request(escalate={"mode": "consortium", "arbiter": "judge", **kw.pop("escalation", {})}, **kw)


def split_consortium(**kw: Any) -> tuple[VoteState, list[Any], list[CallJob]]:
    """A 2 + 2 vote that escalated to a consortium: its state, the last commands, the vote jobs."""
    t = start(consortium_vote(**kw))
    vote_jobs = jobs(t.commands)
    state, commands = cast_votes(t.state, vote_jobs, ["8", "Answer: 8", "6", "six"])
    return state, commands, vote_jobs


def test_the_votes_have_the_call_ids_of_the_consortiums_first_iteration() -> None:
    req = consortium_vote()
    same = ConsortiumRequest(prompt=req.prompt, members=req.members, arbiter="judge")
    assert [j.call_id for j in jobs(start(req).commands)] == [
        j.call_id for j in jobs(kept(consortium.start("r1", same, T0)).commands)
    ]


def test_a_split_vote_with_a_confident_arbiter_makes_four_votes_and_one_arbiter_call() -> None:
    state, commands, vote_jobs = split_consortium()
    assert kinds(commands) == ["StepCompleted", "CallJob"]
    assert commands[0].data["decision"] == "escalate"
    assert (
        commands[0].data["reason"]
        == "agreement 0.5 (2 of 4 counted votes) is below threshold 0.6: the vote goes on as a consortium"
    )
    [arbiter] = jobs(commands)
    assert (arbiter.call_id, arbiter.role) == ("r1:1:arbiter:judge:1", "arbiter")
    [prompt] = said(arbiter)
    assert QUESTION in prompt and prompt.count("stated_confidence=") == 4 and "six" in prompt

    t = kept(vote.decide(state, done(arbiter, arbiter_xml(0.9))))
    state, commands = t.state, list[Any](t.commands)
    assert kinds(commands) == ["IterationCompleted", "RunCompleted"]
    assert len({j.call_id for j in [*vote_jobs, arbiter]}) == 5  # 4 votes, 1 arbiter: nobody asked twice
    assert state.status == "completed"
    view = end_view(commands[-1])
    assert view.mode == "vote" and view.status == "completed" and view.escalated
    assert view.result == VoteResult(text="Eight legs.", by="consortium", agreement=0.5)
    assert view.reason == commands[-1].reason == "confidence 0.90 meets threshold 0.80 at iteration 1"
    inner = view.escalation
    assert isinstance(inner, ConsortiumView) and inner.id == view.id == "r1" and inner.status == "completed"
    assert isinstance(inner.request, ConsortiumRequest) and inner.request.arbiter == "judge"
    [first] = inner.iteration_views
    assert (
        [m.call_id for m in first.members]
        == [v.call_id for v in view.votes]
        == [j.call_id for j in vote_jobs]
    )
    assert [m.text for m in first.members] == ["8", "Answer: 8", "6", "six"]
    # 4 votes and 1 arbiter call, 20 tokens each; the escalation's usage is the run's.
    assert view.usage == inner.usage == Usage(input_tokens=50, output_tokens=50)
    # The escalation's own end view is not stored: only the vote's, which holds it.
    assert stored_views(t.texts) == ["vote"]


def stored_views(texts: Mapping[str, str]) -> list[str]:
    """The mode of every run view among `texts`."""
    modes = []
    for text in texts.values():
        try:
            doc = json.loads(text)
        except ValueError:
            continue
        if isinstance(doc, dict) and {"id", "mode", "status"} <= doc.keys():
            modes.append(doc["mode"])
    return modes


def test_a_second_iteration_asks_the_voters_again_with_their_votes_as_their_earlier_turns() -> None:
    state, commands, vote_jobs = split_consortium(system="Be brief.")
    issued = {j.call_id for j in vote_jobs} | {j.call_id for j in jobs(commands)}
    state, commands = decide(state, done(jobs(commands)[0], arbiter_xml(0.4, True)))
    assert kinds(commands) == ["IterationCompleted", "IterationStarted", *["CallJob"] * 4]
    second = jobs(commands)
    assert [j.call_id for j in second] == [
        "r1:2:member:a:1",
        "r1:2:member:a:2",
        "r1:2:member:b:1",
        "r1:2:member:b:2",
    ]
    assert issued.isdisjoint(j.call_id for j in second)  # no call asked twice
    b2 = second[3]
    assert [m.role for m in b2.conversation(TEXTS)] == ["system", "user", "assistant", "user"]
    system, asked, answered, refine = said(b2)
    assert system == "Be brief."
    assert asked == said(vote_jobs[3])[-1]  # the vote's prompt, as the voter saw it
    assert answered == "six"  # its own vote, nobody else's
    assert "Eight legs." in refine and "count again" in refine
    for job in second:
        state, commands = decide(state, done(job, "8\nConfidence: 0.9"))
    state, commands = decide(state, done(jobs(commands)[0], arbiter_xml(0.95)))
    view = end_view(commands[-1])
    assert view.escalation is not None and view.escalation.steps == 2 == view.steps
    assert view.usage == Usage(input_tokens=100, output_tokens=100)  # 4 + 1 + 4 + 1 calls


def test_the_arbiter_sees_the_conversation_the_vote_continues() -> None:
    history = [
        {"role": "user", "content": "We talk about spiders."},
        {"role": "assistant", "content": "Yes."},
    ]
    _, commands, vote_jobs = split_consortium(history=history)
    [prompt] = said(jobs(commands)[0])
    assert (
        "The question continues this earlier conversation:\nUSER: We talk about spiders.\nASSISTANT: Yes."
        in prompt
    )
    assert said(vote_jobs[0])[:2] == ["We talk about spiders.", "Yes."]


def test_the_consortium_fallback_reads_the_votes_when_the_arbiter_cannot_be_read() -> None:
    state, commands, _ = split_consortium()
    state, commands = decide(state, done(jobs(commands)[0], ""))
    assert isinstance(commands[0], IterationCompleted) and commands[0].verdict.synthesis_from == "members"
    assert state.escalation is not None and state.status == "running"


# ---------------------------------------------------------------------------------------------
# Escalation to a debate


def debate_vote(**escalation: Any) -> VoteRequest:
    return request(
        prompt="Is a hot dog a sandwich?",
        answer_format="yes_no",
        system="Be brief.",
        escalate={"mode": "debate", **escalation},
    )


def split_debate(**escalation: Any) -> tuple[VoteState, list[Any], list[CallJob]]:
    t = start(debate_vote(**escalation))
    vote_jobs = jobs(t.commands)
    state, commands = cast_votes(
        t.state, vote_jobs, ["Yes.", "Yes, it is bread around a filling.", "No.", "Not really."]
    )
    return state, commands, vote_jobs


def test_the_votes_have_the_call_ids_of_the_debates_first_round() -> None:
    req = debate_vote(judge="j")
    same = DebateRequest.model_validate(
        {"prompt": req.prompt, "members": [m.model_dump() for m in req.members], "judge": "j"}
    )
    vote_jobs = jobs(start(req).commands)
    assert {j.role for j in vote_jobs} == {"debater"}
    assert [j.call_id for j in vote_jobs] == [
        j.call_id for j in jobs(kept(debate.start("r1", same, T0)).commands)
    ]


def test_a_split_vote_goes_on_as_a_debate_after_its_first_round() -> None:
    state, commands, vote_jobs = split_debate(judge="j", max_rounds=3)
    assert kinds(commands) == ["StepCompleted", "RoundComplete", "RoundStart", "CallJob"]
    closed = commands[1]
    assert isinstance(closed, RoundComplete) and closed.round == 1
    assert [(r.call_id, r.label, r.text) for r in closed.responses] == [
        (j.call_id, f"{j.model}#{j.instance}", text)
        for j, text in zip(
            vote_jobs, ["Yes.", "Yes, it is bread around a filling.", "No.", "Not really."], strict=True
        )
    ]
    [turn] = jobs(commands)
    assert (turn.call_id, turn.role, turn.iteration) == ("r1:2:debater:a:1", "debater", 2)
    system, prompt = said(turn)
    assert system == "Be brief."
    assert "Your position so far:\nRound 1:\nYes." in prompt  # its own vote is its position
    assert "[b#1]\nNo." in prompt and "[a#2]\nYes, it is bread around a filling." in prompt

    issued = [j.call_id for j in vote_jobs] + [turn.call_id]
    job = turn
    for text in ["Yes: bread.", "Yes.", "No: a taco.", "No."]:
        state, commands = decide(state, done(job, text))
        issued += [j.call_id for j in jobs(commands)]
        job = jobs(commands)[0]
    assert (job.role, job.call_id) == ("judge", "r1:2:judge:j:1")
    state, commands = decide(state, done(job, "STOP\nThe positions are clear."))
    assert kinds(commands) == ["JudgeDecision", "FinalStart", "CallJob"]
    final = jobs(commands)[0]
    issued.append(final.call_id)
    state, commands = decide(state, done(final, "Verdict: a hot dog is not a sandwich."))
    assert kinds(commands) == ["FinalComplete", "DebateComplete", "RunCompleted"]
    assert len(issued) == len(set(issued)) == 4 + 4 + 1 + 1
    view = end_view(commands[-1])
    assert view.result == VoteResult(text="Verdict: a hot dog is not a sandwich.", by="debate", agreement=0.5)
    inner = view.escalation
    assert isinstance(inner, DebateView) and inner.id == "r1" and [r.number for r in inner.rounds] == [1, 2]
    assert [t.call_id for t in inner.rounds[0].turns] == [v.call_id for v in view.votes]
    assert isinstance(inner.request, DebateRequest) and inner.request.judge_mode == "external_judge"
    assert view.usage == inner.usage == Usage(input_tokens=100, output_tokens=100)


def test_a_one_round_debate_asks_for_its_verdict_at_once() -> None:
    _, commands, _ = split_debate(judge="j", max_rounds=1)
    assert kinds(commands) == ["StepCompleted", "RoundComplete", "FinalStart", "CallJob"]
    [final] = jobs(commands)
    assert (final.call_id, final.stream) == ("r1:1:final:j:1", True)
    assert "[b#2]\nNot really." in said(final)[-1]


def test_a_display_only_debate_completes_the_vote_without_an_answer() -> None:
    _, commands, _ = split_debate(max_rounds=1)
    assert kinds(commands) == ["StepCompleted", "RoundComplete", "DebateComplete", "RunCompleted"]
    view = end_view(commands[-1])
    assert view.status == "completed" and view.result is None and view.answer is None
    assert view.reason == "reached max_rounds (1)" and view.agreement == 0.5


def test_self_convergence_asks_every_debater_after_round_two() -> None:
    state, commands, _ = split_debate(judge_mode="self_convergence", max_rounds=3)
    job = jobs(commands)[0]
    for text in ["Yes.", "Yes.", "No.", "No."]:
        state, commands = decide(state, done(job, text))
        job = jobs(commands)[0]
    assert {j.role for j in jobs(commands)} == {"conviction"} and len(jobs(commands)) == 4


# ---------------------------------------------------------------------------------------------
# seeded(): what the escalations take


def test_a_seeded_run_takes_only_its_first_iterations_or_rounds_calls() -> None:
    state, _, _ = split_consortium()
    assert state.escalation is not None and isinstance(state.escalation, consortium.ConsortiumState)
    members = consortium.view(state.escalation).iteration_views[0].members
    fresh = state.escalation.model_copy(update={"iterations": [], "done": []})
    with pytest.raises(ValueError, match="a seeded run has no iteration yet"):
        consortium.seeded(state.escalation, [], members, T0)
    with pytest.raises(ValueError, match="iteration 1's member calls"):
        consortium.seeded(fresh, [], members[::-1], T0)
    with pytest.raises(ValueError, match="every one ended"):
        consortium.seeded(fresh, [], [members[0].model_copy(update={"status": "pending"}), *members[1:]], T0)

    state, _, _ = split_debate(judge="j")
    assert isinstance(state.escalation, debate.DebateState)
    turns = debate.view(state.escalation).rounds[0].turns
    with pytest.raises(ValueError, match="round 1's debater calls"):
        debate.seeded(state.escalation.model_copy(update={"rounds": []}), turns[:-1], T0)


# ---------------------------------------------------------------------------------------------
# Cancel, deadline, dead letters and budgets, during the votes and after the escalation


def test_cancelled_during_the_votes() -> None:
    t = start(request())
    vote_jobs = jobs(t.commands)
    state, _ = decide(t.state, done(vote_jobs[0], "8"))
    state, commands = decide(state, CancelRequested(run_id="r1", reason="enough", at=T0))
    assert kinds(commands) == ["RunCancelled"]
    view = end_view(commands[0])
    assert (view.status, view.reason, view.agreement) == ("cancelled", "enough", None)
    assert view.tally == [TallyEntry(answer="8", count=1, voters=["a#1"])]
    assert vote.decide(state, done(vote_jobs[1], "8")).commands == []


def test_cancelled_during_the_escalation() -> None:
    state, _, _ = split_consortium()
    state, commands = decide(state, CancelRequested(run_id="r1", at=T0))
    assert kinds(commands) == ["RunCancelled"]
    view = end_view(commands[0])
    assert (
        view.status == "cancelled" and view.escalation is not None and view.escalation.status == "cancelled"
    )
    assert vote.decide(state, CancelRequested(run_id="r1", at=T0)).commands == []


def test_the_deadline_during_the_votes_fails_the_run() -> None:
    t = start(request(budget={"seconds": 60}))
    state, _ = decide(t.state, done(jobs(t.commands)[0], "8"))
    assert vote.decide(state, DeadlinePassed(run_id="r1", at=T0 + timedelta(seconds=59))).state is state
    state, commands = decide(state, DeadlinePassed(run_id="r1", at=T0 + timedelta(seconds=61)))
    assert kinds(commands) == ["RunFailed"]
    view = end_view(commands[0])
    assert (
        view.stop_reason == "deadline"
        and view.reason == "deadline of 60 s passed during the vote, before any result"
    )


def test_the_deadline_during_the_escalation_is_the_consortiums() -> None:
    state, _, _ = split_consortium(budget={"seconds": 60})
    _, commands = decide(state, DeadlinePassed(run_id="r1", at=T0 + timedelta(seconds=61)))
    assert kinds(commands) == ["RunFailed"]
    assert end_view(commands[0]).reason == "deadline of 60 s passed during iteration 1, before any result"

    state, commands, _ = split_consortium(budget={"seconds": 60})
    state, _ = decide(state, done(jobs(commands)[0], arbiter_xml(0.4, True, "Probably eight.")))
    state, commands = decide(state, DeadlinePassed(run_id="r1", at=T0 + timedelta(seconds=61)))
    assert kinds(commands) == ["RunCompleted"]
    view = end_view(commands[0])
    assert view.stop_reason == "deadline" and view.status == "completed"
    assert view.result == VoteResult(text="Probably eight.", by="consortium", agreement=0.5)


def test_a_dead_letter_fails_the_run_in_either_phase() -> None:
    t = start(request())
    _, commands = decide(t.state, DeadLettered(run_id="r1", reason="undecodable", at=T0))
    assert kinds(commands) == ["RunFailed"] and end_view(commands[0]).reason == "dead letter: undecodable"

    state, _, _ = split_debate(judge="j")
    state, commands = decide(state, DeadLettered(run_id="r1", reason="undecodable", at=T0))
    assert kinds(commands) == ["DebateError", "RunFailed"]
    assert isinstance(commands[0], DebateError) and commands[0].message == "dead letter: undecodable"
    assert end_view(commands[1]).escalation is not None and state.status == "failed"


def test_a_budget_too_small_for_the_votes_fails_the_run_before_them() -> None:
    t = start(request(budget={"tokens": 10}))
    assert kinds(t.commands) == ["RunCreated", "RunFailed"]
    view = end_view(t.commands[1])
    assert view.stop_reason == "budget" and view.votes == [] and view.status == "failed"
    assert view.reason is not None and view.reason.startswith("token budget of 10 would be exceeded")


def test_the_budget_counts_the_question_whole() -> None:
    long = QUESTION + " Think of every kind of spider." * 400  # ~12,800 characters: ~3,200 tokens a vote
    assert kinds(start(request(prompt=long, budget={"tokens": 4 * 3_000})).commands) == [
        "RunCreated",
        "RunFailed",
    ]
    assert kinds(start(request(prompt=long, budget={"tokens": 4 * 3_400})).commands)[:2] == [
        "RunCreated",
        "StepStarted",
    ]


def test_a_budget_too_small_for_the_arbiter_fails_the_escalated_run_before_it() -> None:
    t = start(consortium_vote(max_tokens=10, budget={"tokens": 1000}))
    vote_jobs = jobs(t.commands)
    assert sum(prompt_tokens(j) + 10 for j in vote_jobs) <= 1000  # the votes fit
    state = t.state
    for job, text in zip(vote_jobs, ["8", "8", "6", "6"], strict=True):
        state, commands = decide(
            state, job.completed(text, usage=Usage(input_tokens=200, output_tokens=50), at=T0)
        )
    assert kinds(commands) == ["StepCompleted", "RunFailed"]
    view = end_view(commands[1])
    assert view.stop_reason == "budget" and view.escalated
    assert view.reason is not None and "the next call may take up to" in view.reason


def test_a_budget_too_small_for_the_next_turn_fails_the_escalated_debate() -> None:
    t = start(
        request(
            prompt="Is a hot dog a sandwich?",
            answer_format="yes_no",
            max_tokens=10,
            budget={"tokens": 1000},
            escalate={"mode": "debate", "judge": "j"},
        )
    )
    state = t.state
    for job, text in zip(jobs(t.commands), ["Yes.", "Yes.", "No.", "No."], strict=True):
        state, commands = decide(
            state, job.completed(text, usage=Usage(input_tokens=200, output_tokens=50), at=T0)
        )
    assert kinds(commands) == ["StepCompleted", "RoundComplete", "DebateError", "RunFailed"]
    assert end_view(commands[-1]).stop_reason == "budget"


# ---------------------------------------------------------------------------------------------
# The state: stored as JSON, and small


@pytest.mark.parametrize("split", [split_consortium, split_debate])
def test_an_escalated_state_reads_back_from_its_json(split: Any) -> None:
    state = split()[0]
    again = VoteState.model_validate_json(state.model_dump_json())
    assert again == state and type(again.escalation) is type(state.escalation)


def test_thirty_two_long_votes_and_their_escalation_keep_the_state_small() -> None:
    members = [{"model": f"provider-{i:02d}/model-{i:02d}", "count": 2} for i in range(16)]
    req = consortium_vote(
        members=members,
        prompt="Explain, then answer: " + "how many legs? " * 500,
        system="Be careful. " * 300,
        history=[{"role": "user", "content": "earlier " * 1000}],
        escalation={"max_iterations": 3},
    )
    t = start(req)
    state, largest_state, largest_job = t.state, len(t.state.model_dump_json()), 0
    pending = jobs(t.commands)
    assert max(len(j.model_dump_json()) for j in pending) < 1024  # a vote's job: a few references
    number = 0
    while pending and state.status == "running":
        job = pending.pop(0)
        largest_job = max(largest_job, len(job.model_dump_json()))
        if job.role == "arbiter":
            text = f"<synthesis>{'A careful synthesis. ' * 800}</synthesis><confidence>0.2</confidence><needs_iteration>true</needs_iteration>"
        else:
            number += 1
            text = f"{'I reasoned at length about it. ' * 130}\nAnswer: {number % 3}"  # ~4,000 characters
        state, commands = decide(state, done(job, text))
        pending += jobs(commands)
        largest_state = max(largest_state, len(state.model_dump_json()))
        assert "I reasoned at length" not in state.model_dump_json()  # every long text by reference
    assert state.status == "completed" and state.escalation is not None
    assert len(state.votes) == 32
    print(f"\nlargest state {largest_state:,} bytes, largest job {largest_job:,} bytes")
    # Measured: 24 KB (32 votes, and the consortium's iteration of 32 calls), the arbiter's job 9 KB.
    assert largest_state < 32 * 1024
    assert largest_job < MESSAGE_BUDGET_BYTES // 4  # the arbiter's: 32 answers quoted by reference


# ---------------------------------------------------------------------------------------------
# decide() under random events


# As tests/unit/test_properties.py: bounded, and 25 times longer with MOOT_HYPOTHESIS_PROFILE=deep.
PROFILE = settings(
    max_examples=5_000 if os.environ.get("MOOT_HYPOTHESIS_PROFILE") == "deep" else 200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
_ANSWERS = [
    "8", "Answer: 6", "Yes.", "No.", "B", "garbage", "",
    "<synthesis>S</synthesis><confidence>0.95</confidence><needs_iteration>false</needs_iteration>",
    "<synthesis>S</synthesis><confidence>0.2</confidence><needs_iteration>true</needs_iteration>",
    "STOP\nclear", "CONTINUE\nmore", "CONVINCED: a#1", "NOT CONVINCED",
]  # fmt: skip
_ENDS = (RunCompleted, RunFailed, RunCancelled)


@dataclass
class Run:
    state: VoteState
    issued: dict[str, CallJob] = field(default_factory=dict)
    answered: set[str] = field(default_factory=set)
    sent: list[CallCompleted | CallFailed] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    ends: int = 0

    def take(self, t: Transition[VoteState], event: Any = None) -> None:
        status = self.state.status
        if status != "running":
            assert t.commands == [] and t.state.status == status, "an ended run changed"
        for job in jobs(t.commands):
            assert job.call_id not in self.issued, f"call {job.call_id} issued twice"
            self.issued[job.call_id] = job
        if (
            isinstance(event, CallCompleted | CallFailed)
            and status == "running"
            and event.call_id in self.issued
        ):
            if event.call_id not in self.answered and isinstance(event, CallCompleted):
                self.usage = self.usage.plus(event.usage)
            self.answered.add(event.call_id)
        ends = [c for c in t.commands if isinstance(c, _ENDS)]
        self.ends += len(ends)
        for end in ends:
            assert isinstance(end.run, TextRef) and json.loads(t.texts[end.run.sha])["mode"] == "vote"
        if t.state.status == "running":
            assert not ends and set(self.issued) - self.answered, "running, but waiting for nothing"
        else:
            assert self.ends == 1
        assert t.state.usage == self.usage
        vote.view(t.state)
        self.state = t.state

    def decide(self, event: Any) -> None:
        frozen = self.state.model_dump_json()
        t = vote.decide(self.state, event)
        assert self.state.model_dump_json() == frozen, "decide() changed the state it was given"
        self.take(t, event)


def _outcome(job: CallJob, data: st.DataObject) -> CallCompleted | CallFailed:
    if data.draw(st.booleans(), label="fail"):
        return job.failed("boom", at=T0)
    usage = Usage(input_tokens=data.draw(st.integers(0, 50)), output_tokens=data.draw(st.integers(0, 50)))
    return job.completed(data.draw(st.sampled_from(_ANSWERS), label="answer"), usage=usage, at=T0)


@PROFILE
@given(
    data=st.data(),
    fmt=st.sampled_from(["free", "number", "choice", "yes_no"]),
    escalate=st.sampled_from(
        [
            None,
            {"mode": "consortium", "arbiter": "judge", "max_iterations": 2},
            {"mode": "debate", "judge": "j", "max_rounds": 2},
            {"mode": "debate", "judge_mode": "self_convergence", "max_rounds": 3},
        ]
    ),
    threshold=st.sampled_from([0.0, 0.5, 1.0]),
    tokens=st.one_of(st.none(), st.integers(100, 2000)),
)
def test_decide_under_random_events(
    data: st.DataObject, fmt: str, escalate: dict[str, Any] | None, threshold: float, tokens: int | None
) -> None:
    req = request(
        members=[{"model": "a", "count": 2}, {"model": "b"}],
        answer_format=fmt,
        agreement_threshold=threshold,
        escalate=escalate,
        budget={"seconds": 60, **({"tokens": tokens} if tokens else {})},
    )
    t = vote.start("r1", req, T0)
    run = Run(t.state.model_copy(update={"status": "running"}))  # as it was before its first transition
    run.take(t)
    for _ in range(data.draw(st.integers(0, 30), label="steps")):
        action = data.draw(
            st.sampled_from(["answer"] * 6 + ["duplicate", "cancel", "deadline", "dead_letter"])
        )
        pending = sorted(set(run.issued) - run.answered)
        if action == "answer" and pending:
            event: Any = _outcome(run.issued[data.draw(st.sampled_from(pending))], data)
            run.sent.append(event)
        elif action == "duplicate" and run.sent:
            event = data.draw(st.sampled_from(run.sent))
        elif action == "cancel":
            event = CancelRequested(run_id="r1", at=T0)
        elif action == "deadline":
            event = DeadlinePassed(run_id="r1", at=T0 + timedelta(seconds=data.draw(st.integers(55, 65))))
        elif action == "dead_letter":
            event = DeadLettered(run_id="r1", reason="undecodable", at=T0)
        else:
            continue
        run.decide(event)
    for _ in range(100):
        pending = sorted(set(run.issued) - run.answered)
        if run.state.status != "running":
            break
        event = _outcome(run.issued[pending[0]], data)
        run.sent.append(event)
        run.decide(event)
    assert run.state.status != "running"
    for event in run.sent[-3:]:
        run.decide(event)
