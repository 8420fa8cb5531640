"""The council: rankings read from reviews, the Borda aggregate, and the state machine driven
without any server through every branch (failures, skipped reviews, budget, deadline, cancel)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from moot.messages import (
    CallCompleted,
    CallFailed,
    CallJob,
    CancelRequested,
    DeadLettered,
    DeadlinePassed,
    RunCancelled,
    RunCompleted,
    RunCreated,
    RunFailed,
    StepCompleted,
    StepStarted,
)
from moot.protocols import council
from moot.protocols.base import Transition
from moot.protocols.council import CouncilState, aggregate, parse_ranking
from moot.protocols.council.machine import LETTERS, Review
from moot.requests import ChatMessage, CouncilRequest
from moot.texts import TextRef, render
from moot.views import CouncilView, Usage, run_view_adapter

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
TEXTS: dict[str, str] = {}  # every text a transition handed out, by SHA-256


def kept(t: Transition[CouncilState]) -> Transition[CouncilState]:
    TEXTS.update(t.texts)
    return t


def request(models: Sequence[str] = ("a", "b", "c"), **kw: Any) -> CouncilRequest:
    body: dict[str, Any] = {
        "prompt": "What is 2+2?",
        "members": [{"model": m} for m in models],
        "chairman": "ch",
    }
    body.update(kw)
    return CouncilRequest.model_validate(body)


def start(req: CouncilRequest, run_id: str = "r1") -> Transition[CouncilState]:
    return kept(council.start(run_id, req, T0))


def decide(state: CouncilState, event: object) -> Transition[CouncilState]:
    return kept(council.decide(state, event))


def jobs(commands: Sequence[object]) -> list[CallJob]:
    return [c for c in commands if isinstance(c, CallJob)]


def steps(commands: Sequence[object]) -> list[tuple[str, int, str]]:
    return [
        (type(c).__name__, c.step, c.name) for c in commands if isinstance(c, StepStarted | StepCompleted)
    ]


def step_data(commands: Sequence[object], step: int) -> dict[str, Any]:
    [done] = [c for c in commands if isinstance(c, StepCompleted) and c.step == step]
    return done.data


def done(job: CallJob, text: str, tokens: int = 10, at: datetime = T0) -> CallCompleted:
    return job.completed(text, usage=Usage(input_tokens=tokens, output_tokens=tokens), at=at)


def failed(job: CallJob, error: str = "boom") -> CallFailed:
    return job.failed(error, at=T0)


def prompt_of(job: CallJob) -> str:
    """The job's last message as the member worker sends it."""
    text = render(job.conversation(TEXTS)[-1].content, TEXTS)
    assert isinstance(text, str)
    return text


def end_view(event: object) -> CouncilView:
    assert isinstance(event, RunCompleted | RunFailed | RunCancelled) and isinstance(event.run, TextRef)
    view = run_view_adapter.validate_json(TEXTS[event.run.sha])
    assert isinstance(view, CouncilView)
    return view


def review(state: CouncilState, job: CallJob) -> Review:
    """The review a reviewer job is for."""
    reviewers = state.plan.reviewer_instances()
    return next(r for r in state.reviews if reviewers[r.reviewer] == (job.model, job.instance))


def letter_of(r: Review, state: CouncilState, member: str) -> str:
    """The letter under which `r`'s reviewer saw `member`'s answer (`model#instance`)."""
    labels = [f"{m}#{i}" for m, i in state.plan.member_instances()]
    return LETTERS[r.shown.index(labels.index(member))]


def ranks(state: CouncilState, job: CallJob, best_first: Sequence[str]) -> str:
    """A well-formed review by `job`'s reviewer ranking `best_first` (member labels)."""
    r = review(state, job)
    items = "\n".join(f"{p}. Response {letter_of(r, state, m)}" for p, m in enumerate(best_first, start=1))
    return f"Each answer has merits.\n\nFINAL RANKING:\n{items}"


def answered(t: Transition[CouncilState], text: str = "{model} says 4") -> Transition[CouncilState]:
    """Every member job of `t` answered."""
    for job in jobs(t.commands):
        t = decide(t.state, done(job, text.format(model=job.model)))
    return t


# ---------------------------------------------------------------------------------------------
# Reading a ranking


@pytest.mark.parametrize(
    "text",
    [
        "A is fine, B is wrong, C is best.\nFINAL RANKING:\n1. Response C\n2. Response A\n3. Response B",
        "FINAL RANKING:\n1) C\n2) A\n3) B",
        "FINAL RANKING:\nC\nA\nB",
        "FINAL RANKING:\n- **C**\n- **A**\n- **B**",
        "**Final Ranking:**\n1. **Response C**\n2. **Response A**\n3. **Response B**",
        "## FINAL RANKING\n\n1. c\n2. a\n3. b",
        "final ranking:\n1. response c\n2. response a\n3. response b",
        "FINAL RANKING: C > A > B",
        "FINAL RANKING: C, A, B",
        "FINAL RANKING: 1. C 2. A 3. B",
        "FINAL RANKING:\n1. C - the most complete\n   It explains the carry.\n2. A: right, but terse\n3. B (wrong)",
        "FINAL RANKING:\n1. Answer: C\n2. Answer: A\n3. Answer: B\n\nI hope this helps.",
        "FINAL RANKING:\n1. I think C is best\n2. then Response A\n3. B",
        "FINAL RANKING:\n3. B\n1. C\n2. A",  # numbered out of order: the numbers say the order
        # The header announced, then quoted in prose: the last one naming a letter counts.
        "I will end with a FINAL RANKING as asked.\nC is best, then A.\nFINAL RANKING:\n1. C\n2. A\n3. B",
        "FINAL RANKING:\n1. A\n2. B\n3. C\nOn reflection I change my mind.\nFINAL RANKING:\n1. C\n2. A\n3. B",
    ],
)
def test_a_ranking_is_read_in_the_forms_models_write(text: str) -> None:
    read = parse_ranking(text, "ABC")
    assert read.letters == ["C", "A", "B"]
    assert read.readable and read.problems == []


@pytest.mark.parametrize(
    "text",
    [
        "FINAL RANKING:\n1. I think C is best\n2. A\n3. B",
        "FINAL RANKING:\n1. A close call, but C\n2. A\n3. B",
        "FINAL RANKING:\n1. a bit better: C\n2. A\n3. B",
    ],
)
def test_a_leading_i_or_a_before_a_word_is_english_even_when_it_was_shown(text: str) -> None:
    assert parse_ranking(text, "ABCDEFGHI").letters[0] == "C"


def test_a_partial_ranking_is_used_as_far_as_it_goes() -> None:
    read = parse_ranking("FINAL RANKING:\n1. Response C", "ABC")
    assert read.letters == ["C"]
    assert read.problems == ["partial ranking: A, B not ranked"]


def test_a_repeated_letter_keeps_its_first_place_and_letters_not_shown_are_ignored() -> None:
    read = parse_ranking("FINAL RANKING:\n1. C\n2. D\n3. C\n4. A\n5. B", "ABC")
    assert read.letters == ["C", "A", "B"]
    assert read.problems == [
        "ignored D: not among the letters shown",
        "C ranked more than once: the first place kept",
    ]


def test_without_the_header_a_closing_numbered_list_of_letters_is_read() -> None:
    read = parse_ranking("C is best, B is weakest.\n\n1. C\n2. **A**\n3. Response B\n\n", "ABC")
    assert read.letters == ["C", "A", "B"]
    assert read.problems == ["no FINAL RANKING line: read the numbered list of letters that ends the review"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "no FINAL RANKING line, and no numbered list of letters at the end"),
        ("They are all good answers.", "no FINAL RANKING line, and no numbered list of letters at the end"),
        # Numbered comments in the letters' order are no ranking.
        (
            "1. A is accurate\n2. B is wrong\n3. C is verbose",
            "no FINAL RANKING line, and no numbered list of letters at the end",
        ),
        # A list that does not end the review, or is not numbered 1, 2, 3.
        (
            "1. C\n2. A\n3. B\nThat is my view.",
            "no FINAL RANKING line, and no numbered list of letters at the end",
        ),
        ("2. C\n3. A", "no FINAL RANKING line, and no numbered list of letters at the end"),
        (
            "FINAL RANKING:\n1. <the letter of the best answer>\n2. <the letter of the weakest answer>",
            "FINAL RANKING names none of the letters shown (A, B, C)",
        ),
        ("FINAL RANKING:\n1. D\n2. E", "FINAL RANKING names none of the letters shown (A, B, C)"),
        ("FINAL RANKING: I cannot decide.", "FINAL RANKING names none of the letters shown (A, B, C)"),
    ],
)
def test_a_review_without_any_letter_shown_is_unreadable(text: str, problem: str) -> None:
    read = parse_ranking(text, "ABC")
    assert not read.readable and read.letters == []
    assert read.problems == [problem]


@pytest.mark.parametrize(
    ("text", "letters"),
    [
        ("FINAL RANKING: 1. C" + " " * 100_000 + "x 2. A 3. B", ["C", "A", "B"]),
        ("FINAL RANKING:\n" + "a " * 50_000 + "!\n" + "> " * 50_000 + "x\n" + "response " * 20_000 + "!", []),
        ("1." + " " * 100_000 + "!", []),
        ("final ranking " * 10_000, []),  # each header reads the rest: only the last few are tried
    ],
)
def test_reading_a_pathological_review_takes_linear_time(text: str, letters: list[str]) -> None:
    """Model text is untrusted: long runs of what the patterns look for must not backtrack. The
    first and the last took minutes before the parser was made linear: the suite would hang here."""
    assert parse_ranking(text, "ABC").letters == letters


# ---------------------------------------------------------------------------------------------
# The Borda aggregate


def with_reviews(req: CouncilRequest, reviews: list[tuple[int, list[str], list[str] | None]]) -> CouncilState:
    """A state whose members all answered, with reviews by reviewer place: (reviewer, shown,
    ranking), answers named by member label."""
    state = answered(start(req)).state
    labels = [f"{m}#{i}" for m, i in state.plan.member_instances()]
    made = [
        Review(
            reviewer=r,
            status="completed",
            shown=[labels.index(s) for s in shown],
            ranking=[labels.index(m) for m in ranking] if ranking is not None else None,
        )
        for r, shown, ranking in reviews
    ]
    return state.model_copy(update={"reviews": made})


def test_borda_gives_k_minus_p_and_nothing_for_what_a_partial_ranking_leaves_out() -> None:
    req = request(["a", "b", "c", "d"], reviewers=[{"model": "x"}, {"model": "y"}, {"model": "z"}])
    everyone = ["a#1", "b#1", "c#1", "d#1"]
    state = with_reviews(
        req,
        [
            (0, everyone, ["b#1", "a#1", "c#1", "d#1"]),  # b 3, a 2, c 1, d 0
            (1, everyone, ["a#1", "b#1"]),  # a 3, b 2; c and d nothing
            (2, everyone, None),  # unreadable: counts for nothing
        ],
    )
    got = [(r.rank, r.label, r.score, r.reviews, r.average_position) for r in aggregate(state)]
    assert got == [
        (1, "a#1", 5.0, 2, 1.5),
        (2, "b#1", 5.0, 2, 1.5),  # tied with a#1 on everything: the request's order
        (3, "c#1", 1.0, 1, 3.0),
        (4, "d#1", 0.0, 1, 4.0),
    ]
    assert [(r.model, r.instance) for r in aggregate(state)] == [("a", 1), ("b", 1), ("c", 1), ("d", 1)]


def test_ties_go_to_more_reviews_then_a_better_average_place_then_the_request_order() -> None:
    req = request(["a", "b", "c", "d"], reviewers=[{"model": "x"}, {"model": "c"}, {"model": "y"}])
    everyone = ["a#1", "b#1", "c#1", "d#1"]
    state = with_reviews(
        req,
        [
            (0, everyone, ["b#1", "c#1"]),  # b 3 (1st), c 2 (2nd)
            (1, ["a#1", "b#1", "d#1"], ["a#1", "d#1", "b#1"]),  # a 2, d 1, b 0 (3rd)
            (2, everyone, ["a#1", "d#1", "c#1"]),  # a 3, d 2, c 1 (3rd)
        ],
    )
    # b, c and d score 3 from 2 reviews each: b and d have an average place of 2, c of 2.5.
    assert [(r.label, r.score, r.average_position) for r in aggregate(state)] == [
        ("a#1", 5.0, 1.0),
        ("b#1", 3.0, 2.0),
        ("d#1", 3.0, 2.0),
        ("c#1", 3.0, 2.5),
    ]

    req = request(["a", "b", "c", "d"], reviewers=[{"model": "x"}, {"model": "y"}])
    state = with_reviews(
        req,
        [
            (0, ["a#1", "b#1", "c#1", "d#1"], ["c#1", "a#1"]),  # c 3, a 2
            (1, ["a#1", "b#1", "c#1"], ["b#1", "a#1"]),  # b 2, a 1
        ],
    )
    # a and c score 3, a from two reviews: a first, though its average place is worse; d, ranked
    # by nobody, last, without an average place.
    assert [(r.label, r.score, r.reviews, r.average_position) for r in aggregate(state)] == [
        ("a#1", 3.0, 2, 2.0),
        ("c#1", 3.0, 1, 1.0),
        ("b#1", 2.0, 1, 1.0),
        ("d#1", 0.0, 0, None),
    ]


def test_no_readable_review_means_no_ranking() -> None:
    req = request(reviewers=[{"model": "x"}])
    assert aggregate(with_reviews(req, [(0, ["a#1", "b#1", "c#1"], None)])) == []


# ---------------------------------------------------------------------------------------------
# A run


def test_a_council_of_three_makes_three_answers_three_reviews_and_one_chairman_call() -> None:
    t = start(request(system="Be terse."))
    assert isinstance(t.commands[0], RunCreated)
    assert steps(t.commands) == [("StepStarted", 1, "answers")]
    member_jobs = jobs(t.commands)
    assert [j.call_id for j in member_jobs] == ["r1:1:member:a:1", "r1:1:member:b:1", "r1:1:member:c:1"]
    assert t.commands[1].call_ids == [j.call_id for j in member_jobs]  # type: ignore[union-attr]
    assert prompt_of(member_jobs[0]) == "What is 2+2?"
    assert render(member_jobs[0].conversation(TEXTS)[0].content, TEXTS) == "Be terse."

    t = answered(t)
    assert steps(t.commands) == [("StepCompleted", 1, "answers"), ("StepStarted", 2, "reviews")]
    assert step_data(t.commands, 1) == {"answered": 3, "failed": 0}
    review_jobs = jobs(t.commands)
    assert [j.call_id for j in review_jobs] == ["r1:2:reviewer:a:1", "r1:2:reviewer:b:1", "r1:2:reviewer:c:1"]
    assert all(j.iteration == 2 and j.role == "reviewer" for j in review_jobs)

    state = t.state
    for job, order in zip(review_jobs, [["b#1", "c#1"], ["a#1", "c#1"], ["a#1", "b#1"]], strict=True):
        t = decide(t.state, done(job, ranks(state, job, order)))
    assert steps(t.commands) == [("StepCompleted", 2, "reviews"), ("StepStarted", 3, "chairman")]
    assert step_data(t.commands, 2) == {
        "ranking": [
            {"rank": 1, "label": "a#1", "score": 2.0},
            {"rank": 2, "label": "b#1", "score": 1.0},
            {"rank": 3, "label": "c#1", "score": 0.0},
        ],
        "unreadable": [],
        "failed": [],
        "not_asked": [],
    }
    [chair] = jobs(t.commands)
    assert (chair.call_id, chair.role, chair.iteration) == ("r1:3:chairman:ch:1", "chairman", 3)
    asked = prompt_of(chair)
    for member in ("a#1", "b#1", "c#1"):
        assert f"Member {member}:\n<answer-" in asked
    assert "How 3 readable reviews ranked" in asked
    assert "1. a#1: score 2, ranked by 2 reviews, average place 1.0" in asked

    t = decide(t.state, done(chair, "Four."))
    closed, end = t.commands
    assert isinstance(closed, StepCompleted) and (closed.step, closed.name, closed.data) == (
        3, "chairman", {"answered": 1},
    )  # fmt: skip
    assert isinstance(end, RunCompleted) and t.state.status == "completed"
    assert end.reason == "the chairman answered, from 3 answers and 3 readable reviews"
    v = end_view(end)
    assert v.result is not None and (v.result.text, v.result.model) == ("Four.", "ch")
    assert v.answer == "Four." and v.steps == 3
    assert [r.label for r in v.ranking] == ["a#1", "b#1", "c#1"]
    assert [r.ranking for r in v.reviews] == [["b#1", "c#1"], ["a#1", "c#1"], ["a#1", "b#1"]]
    assert v.usage.input_tokens == 70
    calls = [*v.answers, *v.reviews, v.chairman]
    assert len(calls) == 7 and all(c is not None and c.status == "completed" for c in calls)


def test_a_reviewer_never_sees_its_own_answer_nor_who_wrote_the_others() -> None:
    t = answered(start(request(["model-a", "model-b", "model-c"])), "the answer of {model}")
    for job in jobs(t.commands):
        r = review(t.state, job)
        own = t.state.plan.member_instances().index((job.model, job.instance))
        assert own not in r.shown and len(r.shown) == 2
        asked = prompt_of(job)
        assert f"the answer of {job.model}" not in asked
        assert "Answer A:" in asked and "Answer B:" in asked and "Answer C:" not in asked
        assert not any(f"model-{x}" in asked.replace("the answer of model-", "") for x in "abc")


def test_letters_are_the_same_for_a_run_and_reviewer_and_shuffled_afresh_for_each_reviewer() -> None:
    req = request(["a", "b", "c", "d", "e"], reviewers=[{"model": "x", "count": 4}])

    def orders(run_id: str) -> list[list[int]]:
        return [r.shown for r in answered(start(req, run_id)).state.reviews]

    first = orders("r1")
    assert orders("r1") == first
    assert all(sorted(shown) == [0, 1, 2, 3, 4] for shown in first)
    assert len({tuple(shown) for shown in first}) > 1
    assert orders("r2") != first

    t = answered(start(req))
    v = council.view(t.state)
    for r, shown in zip(v.reviews, first, strict=True):
        assert r.letters == {LETTERS[i]: f"{'abcde'[m]}#1" for i, m in enumerate(shown)}


def test_a_reviewer_that_is_not_a_member_ranks_every_answer_and_members_keep_their_instances() -> None:
    req = request(members=[{"model": "a", "count": 2}], reviewers=[{"model": "a", "count": 3}])
    t = answered(start(req))
    # a#1 and a#2 see the other instance's answer only: nothing to compare. a#3 answered nothing.
    assert [j.call_id for j in jobs(t.commands)] == ["r1:2:reviewer:a:3"]
    assert review(t.state, jobs(t.commands)[0]).shown in ([0, 1], [1, 0])


def test_unreadable_and_failed_reviews_are_recorded_and_left_out() -> None:
    t = answered(start(request()))
    state = t.state
    a, b, c = jobs(t.commands)
    t = decide(t.state, done(a, "All three are fine."))
    t = decide(t.state, failed(b, "rate limited"))
    t = decide(t.state, done(c, ranks(state, c, ["b#1"])))
    assert step_data(t.commands, 2) == {
        "ranking": [
            {"rank": 1, "label": "b#1", "score": 1.0},
            {"rank": 2, "label": "a#1", "score": 0.0},
            {"rank": 3, "label": "c#1", "score": 0.0},
        ],
        "unreadable": ["a#1"],
        "failed": ["b#1"],
        "not_asked": [],
    }
    v = council.view(t.state)
    assert v.reviews[0].ranking is None and v.reviews[0].problem is not None
    assert v.reviews[1].status == "failed" and v.reviews[1].error == "rate limited"
    letter = letter_of(review(state, c), state, "a#1")
    assert v.reviews[2].ranking == ["b#1"] and v.reviews[2].problem == f"partial ranking: {letter} not ranked"
    assert "How 1 readable review ranked" in prompt_of(jobs(t.commands)[0])


def test_without_any_readable_review_the_chairman_answers_told_there_is_no_ranking() -> None:
    t = answered(start(request()))
    first, *rest = jobs(t.commands)
    t = decide(t.state, failed(first))
    for job in rest:
        t = decide(t.state, done(job, "I like them both."))
    assert step_data(t.commands, 2) == {
        "ranking": [],
        "unreadable": ["b#1", "c#1"],
        "failed": ["a#1"],
        "not_asked": [],
    }
    [chair] = jobs(t.commands)
    asked = prompt_of(chair)
    assert "None of the reviews gave a ranking that could be read" in asked and "score" not in asked
    t = decide(t.state, done(chair, "Four."))
    assert t.state.status == "completed" and end_view(t.commands[-1]).ranking == []


def test_every_member_failing_fails_the_run() -> None:
    t = start(request())
    for job in jobs(t.commands):
        t = decide(t.state, failed(job, "down"))
    assert steps(t.commands) == [("StepCompleted", 1, "answers")]
    assert step_data(t.commands, 1) == {"answered": 0, "failed": 3}
    end = t.commands[-1]
    assert isinstance(end, RunFailed) and t.state.status == "failed" and len(t.commands) == 2
    assert end.reason == "every member call failed: a#1: down; b#1: down; c#1: down"
    assert [c.status for c in end_view(end).answers] == ["failed"] * 3


def test_with_one_answer_nobody_reviews_and_the_chairman_is_told_so() -> None:
    t = start(request())
    a, b, c = jobs(t.commands)
    t = decide(t.state, failed(a))
    t = decide(t.state, done(b, "4"))
    t = decide(t.state, failed(c))
    assert steps(t.commands) == [
        ("StepCompleted", 1, "answers"),
        ("StepStarted", 2, "reviews"),
        ("StepCompleted", 2, "reviews"),
        ("StepStarted", 3, "chairman"),
    ]
    assert t.commands[1].call_ids == []  # type: ignore[union-attr]
    assert step_data(t.commands, 1) == {"answered": 1, "failed": 2}
    assert step_data(t.commands, 2) == {
        "ranking": [],
        "unreadable": [],
        "failed": [],
        "not_asked": ["a#1", "b#1", "c#1"],
    }
    [chair] = jobs(t.commands)
    assert "Only one member answered, so there was nothing to rank." in prompt_of(chair)
    t = decide(t.state, done(chair, "Four."))
    assert t.state.status == "completed" and t.state.result is not None


def test_a_reviewer_who_would_see_fewer_than_two_answers_is_not_asked() -> None:
    t = start(request())
    a, b, c = jobs(t.commands)
    t = decide(t.state, done(a, "4"))
    t = decide(t.state, failed(b))
    t = decide(t.state, done(c, "four"))
    # a#1 and c#1 would see each other's answer only; b#1, whose call failed, sees both.
    assert [j.call_id for j in jobs(t.commands)] == ["r1:2:reviewer:b:1"]
    assert t.state.not_asked == [0, 2]

    two = answered(start(request(["a", "b"])))
    assert jobs(two.commands)[0].role == "chairman"
    assert step_data(two.commands, 2)["not_asked"] == ["a#1", "b#1"]
    assert "No reviewer had two answers or more to compare" in prompt_of(jobs(two.commands)[0])
    assert council.view(two.state).steps == 3  # step 2 had no calls


def test_a_failed_chairman_call_fails_the_run() -> None:
    t = answered(start(request(["a", "b"])))
    [chair] = jobs(t.commands)
    t = decide(t.state, failed(chair, "context too long"))
    closed, end = t.commands
    assert isinstance(closed, StepCompleted) and (closed.step, closed.data) == (
        3,
        {"answered": 0, "failed": 1},
    )
    assert isinstance(end, RunFailed) and end.reason == "the chairman's call failed: context too long"
    assert end_view(end).chairman is not None and t.state.result is None


def test_duplicate_late_and_unknown_outcomes_change_nothing() -> None:
    t = start(request())
    a, b, c = jobs(t.commands)
    t = decide(t.state, done(a, "4"))
    before = t.state
    snapshot = before.model_dump()
    for event in (
        done(a, "4 again"),
        failed(a),
        done(a, "4").model_copy(update={"call_id": "r1:1:member:z:1"}),
    ):
        again = decide(before, event)
        assert again.state is before and again.commands == []
    t = decide(decide(before, done(b, "4")).state, done(c, "4"))
    assert before.model_dump() == snapshot  # never mutated
    assert t.state.step == 2
    late = decide(t.state, done(a, "late"))
    assert late.state is t.state and late.commands == []
    other_run = done(jobs(t.commands)[0], "FINAL RANKING: A").model_copy(
        update={"call_id": "r2:2:reviewer:a:1"}
    )
    assert decide(t.state, other_run).state is t.state


def test_history_and_system_reach_every_call() -> None:
    history = [ChatMessage(role="user", content="Hi"), ChatMessage(role="assistant", content="Hello")]
    t = start(request(system="Be terse.", history=history, temperature=0.2, max_tokens=300))
    t = answered(t)
    for job in [*jobs(start(request(system="Be terse.", history=history)).commands), *jobs(t.commands)]:
        said = [render(m.content, TEXTS) for m in job.conversation(TEXTS)]
        assert said[:3] == ["Be terse.", "Hi", "Hello"]
    for job in jobs(t.commands):
        assert (job.temperature, job.max_tokens) == (0.2, 300)
        assert "It continues the conversation above." in prompt_of(job)


# ---------------------------------------------------------------------------------------------
# Budget, deadline, cancel, dead letters


def budget_request(tokens: int) -> CouncilRequest:
    return request(max_tokens=1_000, budget={"tokens": tokens})


def test_a_budget_too_small_for_the_members_fails_the_run_at_once() -> None:
    t = start(budget_request(2_000))  # three members may take 3 x 1,000 tokens
    assert [type(c).__name__ for c in t.commands] == ["RunCreated", "RunFailed"]
    assert t.state.stop_reason == "budget" and t.state.status == "failed"


def test_a_budget_too_small_for_the_reviews_fails_the_run_before_them() -> None:
    t = start(budget_request(5_000))
    for job in jobs(t.commands):
        t = decide(t.state, done(job, "4", tokens=500))  # 3,000 spent; the reviews may take 3 x 1,000 more
    assert [type(c).__name__ for c in t.commands] == ["StepCompleted", "RunFailed"]
    assert jobs(t.commands) == [] and t.state.stop_reason == "budget" and t.state.result is None
    assert t.state.reason is not None and t.state.reason.startswith("token budget of 5000 would be exceeded")


def test_a_budget_too_small_for_the_chairman_ends_with_the_answer_ranked_first() -> None:
    t = start(budget_request(5_000))
    for job in jobs(t.commands):
        t = decide(t.state, done(job, f"{job.model} says 4", tokens=50))  # 300 spent
    state = t.state
    for job, order in zip(jobs(t.commands), [["c#1", "b#1"], ["c#1", "a#1"], ["b#1", "a#1"]], strict=True):
        t = decide(t.state, done(job, ranks(state, job, order), tokens=750))  # 4,800 spent
    assert [type(c).__name__ for c in t.commands] == ["StepCompleted", "RunCompleted"]
    assert t.state.stop_reason == "budget" and t.state.status == "completed"
    assert t.state.result is not None and (t.state.result.text, t.state.result.model) == ("c says 4", "c")
    assert t.state.reason is not None and t.state.reason.endswith(
        "the run ends with the answer ranked first (c#1)"
    )


def test_at_the_deadline_a_run_ends_with_the_best_it_has() -> None:
    late = T0 + timedelta(seconds=900)

    t = start(request())
    early = decide(t.state, DeadlinePassed(run_id="r1", at=late - timedelta(seconds=1)))
    assert early.state is t.state and early.commands == []
    during_answers = decide(
        decide(t.state, done(jobs(t.commands)[0], "4")).state, DeadlinePassed(run_id="r1", at=late)
    )
    [end] = during_answers.commands
    assert (
        isinstance(end, RunFailed)
        and end.reason == "deadline of 900 s passed during the answers, before any result"
    )

    t = answered(t)
    state = t.state
    a, b, c = jobs(t.commands)
    t = decide(t.state, done(a, ranks(state, a, ["c#1", "b#1"])))
    t = decide(t.state, failed(b))
    during_reviews = decide(t.state, DeadlinePassed(run_id="r1", at=late))
    [end] = during_reviews.commands
    assert isinstance(end, RunCompleted) and during_reviews.state.stop_reason == "deadline"
    assert (
        end.reason
        == "deadline of 900 s passed during the reviews; the run ends with the answer ranked first (c#1)"
    )
    assert [r.label for r in end_view(end).ranking] == ["c#1", "b#1", "a#1"]
    assert t.state.ranking == []  # the state decided on is not changed

    t = decide(t.state, done(c, ranks(state, c, ["b#1", "a#1"])))
    during_chairman = decide(t.state, DeadlinePassed(run_id="r1", at=late))
    [end] = during_chairman.commands
    assert isinstance(end, RunCompleted)
    assert end.reason.endswith("the answer ranked first (b#1)")  # b 1 + 1, c 1, a 0
    assert decide(during_chairman.state, DeadlinePassed(run_id="r1", at=late)).commands == []


def test_cancel_ends_the_run_where_it_stands_and_later_outcomes_change_nothing() -> None:
    t = answered(start(request()))
    cancelled = decide(t.state, CancelRequested(run_id="r1", at=T0))
    [end] = cancelled.commands
    assert isinstance(end, RunCancelled) and cancelled.state.status == "cancelled"
    assert len(end_view(end).reviews) == 3
    after = decide(cancelled.state, done(jobs(t.commands)[0], "FINAL RANKING: A, B"))
    assert after.state is cancelled.state and after.commands == []


def test_a_dead_letter_fails_the_run() -> None:
    t = start(request())
    dead = decide(t.state, DeadLettered(run_id="r1", reason="job r1:1:member:a:1 delivered 5 times", at=T0))
    [end] = dead.commands
    assert isinstance(end, RunFailed) and end.reason == "dead letter: job r1:1:member:a:1 delivered 5 times"


# ---------------------------------------------------------------------------------------------
# Sizes


def test_state_and_jobs_stay_small_whatever_the_answers_length() -> None:
    members = [{"model": f"provider-{i:02d}/model-{i:02d}"} for i in range(8)]
    req = CouncilRequest.model_validate(
        {"prompt": "Explain TCP. " * 2_000, "members": members, "chairman": "provider/chair"}
    )
    t = start(req, "3f2b8c1d9e7a4b6c8d0e1f2a3b4c5d6e")
    for job in jobs(t.commands):
        t = decide(t.state, done(job, f"{job.model}: " + "a long and careful answer. " * 2_000))
    review_jobs = jobs(t.commands)
    assert all(len(j.model_dump_json()) < 4_000 for j in review_jobs)  # the answers by reference
    state = t.state
    for job in review_jobs:
        labels = [f"{m}#1" for m in (s["model"] for s in members) if m != job.model]
        t = decide(t.state, done(job, "Long evaluation. " * 3_000 + "\n" + ranks(state, job, labels)))
    t = decide(t.state, done(jobs(t.commands)[0], "The final answer. " * 3_000))
    assert t.state.status == "completed"
    size = len(t.state.model_dump_json())
    assert size < 20_000, size
    assert "a long and careful answer. a long" not in t.state.model_dump_json()
    assert len(json.dumps([c.model_dump(mode="json") for c in t.commands])) < 2_000
