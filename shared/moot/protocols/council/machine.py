"""The council protocol: members answer, reviewers rank the answers anonymized, a chairman answers.

Pure, like `moot.protocols.consortium`: `start()` and `decide()` take state and an event and
return the new state and the commands (call jobs, run events). No I/O, no clock: times come
from events. Duplicate and late call outcomes return the same state object and no commands.

Steps, in order (each is one `step.started`, its calls, and when they are all in one
`step.completed`; the call ids are `CallJob.make_id(run, step, role, model, instance)`):
1. `_ask_members`    "answers": every member instance answers the question, in parallel
                     (role `member`);
2. `_ask_reviewers`  "reviews": every reviewer instance (the members, unless the request names
                     `reviewers`) is shown the answers under letters A, B, C... and ranks them
                     (role `reviewer`, `prompts.review_prompt`, read by `parsing.parse_ranking`);
                     `aggregate` adds the rankings up (Borda count);
3. `_ask_chairman`   "chairman": the chairman (instance 1) writes the final answer, shown every
                     answer under its member's label and the aggregate ranking with its scores
                     (role `chairman`). Its answer is the run's result; the run completes.

Events: `run.created`; `step.started` 1 "answers"; `step.completed` 1 "answers" with data
{answered, failed} (counts); `step.started` 2 "reviews"; `step.completed` 2 "reviews" with data
{ranking: [{rank, label, score}], unreadable, failed, not_asked} (reviewer labels);
`step.started` 3 "chairman"; `step.completed` 3 "chairman" with data {answered: 1};
`run.completed` (or `run.failed`, `run.cancelled`).

Decisions where the behaviour had room:
- A reviewer never sees its own answer: one that is also a member (same model and instance)
  ranks the others'. The order it sees them in is its own: the answers sorted by the SHA-256 of
  the run's id, the reviewer's label and the answer's member label (`_shown`), which is as good as
  a shuffle, fresh for every reviewer, and the same for the same run and reviewer on any machine
  and Python version (`random.shuffle` promises no such thing). The order is kept in the state
  and in the view (`ReviewView.letters`).
- A reviewer is asked only when it would see two answers at least: ranking one answer against
  nothing says nothing (its Borda points are 0 whatever it writes). So with a single answer in
  (the others failed) nobody reviews, and a council of two members reviewing each other has no
  reviews either; reviewers not asked are listed in step 2's `not_asked`. Step 2 is still
  announced (`step.started` without calls, then `step.completed`), so every council goes 1, 2, 3.
- Borda count over the readable reviews: a reviewer shown k answers gives the answer it put in
  place p (1 = best) k - p points; an answer a partial ranking leaves out gets 0 from it, and is
  not counted among the reviews that ranked it. Unreadable reviews and failed calls count for
  nothing. Ties are broken by more reviews that ranked the answer, then a better (lower) average
  place, then the request's order of the members. Every answer is in the aggregate ranking (one
  no review ranked comes after those ranked, 0 points); with no readable review there is no
  ranking at all, and the chairman is told so.
- Every member call failed: the run fails (after step 1's `step.completed`). The chairman's
  call failed: the run fails (the reviews' favourite is no answer the chairman wrote). A failed
  reviewer call is recorded and left out.
- Every job gets the request's system prompt (as a system message), the conversation the run
  continues (one stored document), `temperature` and `max_tokens`.
- A budget of tokens or US dollars is checked before each step's calls are issued
  (`moot.protocols.base.over_budget`): when they could take the run past it, the run ends before
  them (`stop_reason: budget`). At the deadline, or by the budget, the run ends `completed` with
  the answer ranked first (by the readable reviews in so far; before the chairman, that is the
  aggregate), or with the only answer when a single member answered; otherwise it fails.
"""

from __future__ import annotations

import hashlib
import string
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from moot.messages import (
    CallCompleted,
    CallFailed,
    CallJob,
    CancelRequested,
    DeadLettered,
    DeadlinePassed,
    RunCompleted,
    RunCreated,
    RunFailed,
    StepCompleted,
    StepStarted,
)
from moot.protocols.base import (
    Command,
    Limits,
    Transition,
    cancel,
    dead_lettered,
    end_at_deadline,
    end_early,
    is_none,
    job_messages,
    outcome_of,
    over_budget,
    stored_history,
)
from moot.protocols.council import prompts
from moot.protocols.council.parsing import parse_ranking
from moot.requests import CouncilRequest, MemberSpec, RunMeta
from moot.texts import Parts, Text, TextRef, TextSink
from moot.views import (
    CallStatus,
    CallView,
    CouncilView,
    RankedAnswer,
    ReviewView,
    RunResult,
    RunStatus,
    StopReason,
    Usage,
    origin,
)

Step = Literal[1, 2, 3]
STEP_NAMES: dict[int, str] = {1: "answers", 2: "reviews", 3: "chairman"}
ROLES: dict[int, Literal["member", "reviewer", "chairman"]] = {1: "member", 2: "reviewer", 3: "chairman"}
LETTERS = string.ascii_uppercase  # a council has at most 16 member instances


def _is_empty(value: list[Any]) -> bool:
    return not value


class Call(BaseModel):
    """One model call and what came of it; its answer by reference when long. Who was called
    comes from where it sits (`CouncilState`), its id is derived (`CallJob.make_id`)."""

    status: CallStatus = "pending"
    text: Text | None = Field(None, exclude_if=is_none)
    error: str | None = Field(None, exclude_if=is_none)
    usage: Usage = Field(default_factory=Usage)
    latency_ms: int = 0
    attempts: int = 0
    worker: str = ""


class Review(Call):
    """A reviewer's call: the answers it was shown and the ranking read from its answer."""

    reviewer: int  # its place in `Plan.reviewer_instances()`
    # The answers it saw under A, B, C..., in that order, by their member's place in `Plan.member_instances()`.
    shown: list[int]
    # Member places, best first, as read from its answer; None while pending, failed or unreadable.
    ranking: list[int] | None = Field(None, exclude_if=is_none)
    problem: str | None = Field(None, exclude_if=is_none)


class Plan(BaseModel):
    """What the run's decisions need from its request: who is asked, and how."""

    members: list[MemberSpec]
    reviewers: list[MemberSpec]  # the members when the request names none
    chairman: str
    temperature: float | None = None
    max_tokens: int | None = None

    def member_instances(self) -> list[tuple[str, int]]:
        """(model, instance) of every member instance, in the request's order."""
        return [(spec.model, i) for spec in self.members for i in range(1, spec.count + 1)]

    def reviewer_instances(self) -> list[tuple[str, int]]:
        return [(spec.model, i) for spec in self.reviewers for i in range(1, spec.count + 1)]


class CouncilState(BaseModel):
    """A run: its plan, the request's texts by reference, and every call so far.

    One KV value, rewritten on every call outcome: it holds references, never long texts, so
    its size grows with the number of calls only.
    """

    run_id: str
    plan: Plan
    prompt: Text
    system: Text | None = None
    history: TextRef | None = None  # the conversation the run continues: one stored list of messages
    request: TextRef  # the whole request (a JSON document), for the view
    status: RunStatus = "running"
    created_at: datetime
    finished_at: datetime | None = None
    deadline: datetime | None = None
    limits: Limits | None = Field(None, exclude_if=is_none)
    stop_reason: StopReason | None = Field(None, exclude_if=is_none)
    step: int = 0  # the step under way (1, 2, 3); 0 before the first is issued
    # One per member instance, in the order of `Plan.member_instances()`.
    answers: list[Call] = Field(default_factory=list)
    reviews: list[Review] = Field(default_factory=list)  # one per reviewer asked
    not_asked: list[int] = Field(default_factory=list, exclude_if=_is_empty)  # reviewer places
    ranking: list[RankedAnswer] = Field(default_factory=list, exclude_if=_is_empty)
    chairman: Call | None = Field(None, exclude_if=is_none)
    usage: Usage = Field(default_factory=Usage)
    result: RunResult | None = Field(None, exclude_if=is_none)
    reason: str | None = None
    meta: RunMeta = Field(default_factory=RunMeta)


State = CouncilState


def label(model: str, instance: int) -> str:
    """How a member or reviewer instance is named in views, events and the chairman's prompt."""
    return f"{model}#{instance}"


# ---------------------------------------------------------------------------------------------
# Entry points


def start(
    run_id: str, request: CouncilRequest, at: datetime, meta: RunMeta | None = None
) -> Transition[CouncilState]:
    """A new run: record it and ask every member instance for its answer."""
    meta = meta or RunMeta()
    sink = TextSink()
    history = stored_history(request.history, sink)
    state = CouncilState(
        run_id=run_id,
        plan=Plan(
            members=request.members,
            reviewers=request.reviewers or request.members,
            chairman=request.chairman,
            temperature=request.temperature,
            max_tokens=request.max_tokens,
        ),
        prompt=sink.text(request.prompt),
        system=sink.text(request.system) if request.system else None,
        history=sink.document(history) if history else None,
        request=sink.document(request),
        created_at=at,
        deadline=at + timedelta(seconds=request.budget.seconds),
        limits=Limits.of(request.budget),
        meta=meta,
    )
    commands: list[Command] = [RunCreated(run_id=run_id, request=state.request, at=at, meta=meta)]
    # A budget too small for the members' calls fails the run here: `run.created`, then `run.failed`.
    commands += _ask_members(state, at, sink)
    return Transition(state, commands, sink.texts)


def decide(state: CouncilState, event: Any) -> Transition[CouncilState]:
    """Fold one event into the run. Duplicates and late arrivals change nothing.

    `state` is not modified: the new state is a shallow copy in which the list holding the call
    the event answers, and that call, are new objects.
    """
    if isinstance(event, CancelRequested):
        return cancel(state, event, view)
    if isinstance(event, DeadLettered):
        return dead_lettered(state, event, view)
    if isinstance(event, DeadlinePassed):
        return _stop_at_deadline(state, event)
    if state.status != "running" or not isinstance(event, CallCompleted | CallFailed):
        return Transition(state, [])
    place = _pending_call(state, event.call_id)
    if place is None:
        return Transition(state, [])
    sink = TextSink()
    state = _record_outcome(state, place, event, sink)
    if state.step == 1:
        if any(c.status == "pending" for c in state.answers):
            return Transition(state, [], sink.texts)
        return Transition(state, _after_answers(state, event.at, sink), sink.texts)
    if state.step == 2:
        if any(r.status == "pending" for r in state.reviews):
            return Transition(state, [], sink.texts)
        return Transition(state, _after_reviews(state, event.at, sink), sink.texts)
    assert state.chairman is not None
    if state.chairman.status == "failed":
        data = {"answered": 0, "failed": 1}
        closed = StepCompleted(run_id=state.run_id, step=3, name=STEP_NAMES[3], data=data, at=event.at)
        reason = f"the chairman's call failed: {state.chairman.error}"
        return Transition(state, [closed, *_failed(state, reason, event.at, sink)], sink.texts)
    return _complete(state, event.at, sink)


def view(state: CouncilState) -> CouncilView:
    """The run as the API shows it: its texts as references (readers hydrate them)."""
    members = state.plan.member_instances()
    reviewers = state.plan.reviewer_instances()
    labels = [label(*m) for m in members]
    return CouncilView(
        id=state.run_id,
        status=state.status,
        created_at=state.created_at,
        finished_at=state.finished_at,
        reason=state.reason,
        **origin(state.meta),
        deadline=state.deadline,
        stop_reason=state.stop_reason,
        request=state.request,
        answers=[
            _call_view(state.run_id, 1, model, instance, call)
            for (model, instance), call in zip(members, state.answers, strict=True)
        ]
        if state.answers  # none before step 1 is issued (a budget too small for it)
        else [],
        reviews=[
            ReviewView(
                **_call_fields(state.run_id, 2, *reviewers[r.reviewer], r),
                label=label(*reviewers[r.reviewer]),
                letters={LETTERS[i]: labels[m] for i, m in enumerate(r.shown)},
                ranking=[labels[m] for m in r.ranking] if r.ranking is not None else None,
                problem=r.problem,
            )
            for r in state.reviews
        ],
        ranking=state.ranking,
        chairman=_call_view(state.run_id, 3, state.plan.chairman, 1, state.chairman)
        if state.chairman
        else None,
        result=state.result,
        usage=state.usage,
    )


def aggregate(state: CouncilState) -> list[RankedAnswer]:
    """The Borda ranking of the answers by the readable reviews in (see the module's docstring);
    [] when no review could be read."""
    readable = [r for r in state.reviews if r.ranking is not None]
    if not readable:
        return []
    members = state.plan.member_instances()
    answered = [m for m, call in enumerate(state.answers) if call.status == "completed"]
    points = dict.fromkeys(answered, 0)
    places: dict[int, list[int]] = {m: [] for m in answered}
    for review in readable:
        assert review.ranking is not None
        for position, m in enumerate(review.ranking, start=1):
            points[m] += len(review.shown) - position
            places[m].append(position)

    def order(m: int) -> tuple[int, int, float, int]:
        mean = sum(places[m]) / len(places[m]) if places[m] else float("inf")
        return (-points[m], -len(places[m]), mean, m)

    return [
        RankedAnswer(
            rank=rank,
            label=label(*members[m]),
            model=members[m][0],
            instance=members[m][1],
            score=float(points[m]),
            reviews=len(places[m]),
            average_position=sum(places[m]) / len(places[m]) if places[m] else None,
        )
        for rank, m in enumerate(sorted(answered, key=order), start=1)
    ]


# ---------------------------------------------------------------------------------------------
# Steps
# Each step changes `state` in place: it is the copy `start` or `decide` made.


def _ask_members(state: CouncilState, at: datetime, sink: TextSink) -> list[Command]:
    """Step 1: a job per member instance, asked the question, unless the budget cannot take them."""
    jobs = [
        _job(state, 1, model, instance, [state.prompt]) for model, instance in state.plan.member_instances()
    ]
    if why := over_budget(state.limits, state.usage, jobs):
        return _stop_for_budget(state, why, at, sink)
    state.step, state.answers = 1, [Call() for _ in jobs]
    return [_started(state, 1, jobs, at), *jobs]


def _after_answers(state: CouncilState, at: datetime, sink: TextSink) -> list[Command]:
    """Every member is in: step 1 is done, and the reviews begin; the run fails when none answered."""
    members = state.plan.member_instances()
    answered = sum(c.status == "completed" for c in state.answers)
    data = {"answered": answered, "failed": len(state.answers) - answered}
    done = StepCompleted(run_id=state.run_id, step=1, name=STEP_NAMES[1], data=data, at=at)
    if not answered:
        errors = "; ".join(f"{label(*m)}: {c.error}" for m, c in zip(members, state.answers, strict=True))
        return [done, *_failed(state, f"every member call failed: {errors}", at, sink)]
    return [done, *_ask_reviewers(state, at, sink)]


def _ask_reviewers(state: CouncilState, at: datetime, sink: TextSink) -> list[Command]:
    """Step 2: a job per reviewer instance with two answers or more to rank, unless the budget
    cannot take them; without any such reviewer, step 2 opens and closes at once."""
    members = state.plan.member_instances()
    answered = [m for m, c in enumerate(state.answers) if c.status == "completed"]
    reviews: list[Review] = []
    jobs: list[CallJob] = []
    not_asked: list[int] = []
    for r, reviewer in enumerate(state.plan.reviewer_instances()):
        visible = [m for m in answered if members[m] != reviewer]
        if len(visible) < 2:
            not_asked.append(r)
            continue
        shown = _shown(state.run_id, label(*reviewer), visible, members)
        texts = [(LETTERS[i], _text(state.answers[m])) for i, m in enumerate(shown)]
        prompt = prompts.review_prompt(state.prompt, texts, continues=state.history is not None)
        reviews.append(Review(reviewer=r, shown=shown))
        jobs.append(_job(state, 2, *reviewer, prompt))
    if why := over_budget(state.limits, state.usage, jobs):
        return _stop_for_budget(state, why, at, sink)
    state.step, state.reviews, state.not_asked = 2, reviews, not_asked
    if not jobs:
        return [_started(state, 2, [], at), *_after_reviews(state, at, sink)]
    return [_started(state, 2, jobs, at), *jobs]


def _shown(run_id: str, reviewer: str, visible: list[int], members: list[tuple[str, int]]) -> list[int]:
    """The answers `visible` to a reviewer in the order it is shown them (the module's docstring)."""

    def key(m: int) -> str:
        return hashlib.sha256(f"{run_id}\n{reviewer}\n{label(*members[m])}".encode()).hexdigest()

    return sorted(visible, key=key)


def _after_reviews(state: CouncilState, at: datetime, sink: TextSink) -> list[Command]:
    """Every reviewer is in: the aggregate ranking closes step 2, and the chairman is asked."""
    reviewers = state.plan.reviewer_instances()
    state.ranking = aggregate(state)
    data = {
        "ranking": [{"rank": r.rank, "label": r.label, "score": r.score} for r in state.ranking],
        "unreadable": [
            label(*reviewers[r.reviewer])
            for r in state.reviews
            if r.status == "completed" and r.ranking is None
        ],
        "failed": [label(*reviewers[r.reviewer]) for r in state.reviews if r.status == "failed"],
        "not_asked": [label(*reviewers[r]) for r in state.not_asked],
    }
    done = StepCompleted(run_id=state.run_id, step=2, name=STEP_NAMES[2], data=data, at=at)
    return [done, *_ask_chairman(state, at, sink)]


def _ask_chairman(state: CouncilState, at: datetime, sink: TextSink) -> list[Command]:
    """Step 3: the chairman's job, unless the budget cannot take it."""
    members = state.plan.member_instances()
    answers = [(label(*members[m]), _text(c)) for m, c in enumerate(state.answers) if c.status == "completed"]
    prompt = prompts.chairman_prompt(
        state.prompt,
        answers,
        state.ranking,
        reviews=sum(r.ranking is not None for r in state.reviews),
        no_ranking=_no_ranking(state, len(answers)),
        continues=state.history is not None,
    )
    job = _job(state, 3, state.plan.chairman, 1, prompt)
    if why := over_budget(state.limits, state.usage, [job]):
        return _stop_for_budget(state, why, at, sink)
    state.step, state.chairman = 3, Call()
    return [_started(state, 3, [job], at), job]


def _no_ranking(state: CouncilState, answers: int) -> str:
    """Why the chairman gets no ranking, in the words of its prompt."""
    if answers == 1:
        return prompts.ONE_ANSWER
    return prompts.UNREADABLE_REVIEWS if state.reviews else prompts.NOTHING_TO_COMPARE


def _complete(state: CouncilState, at: datetime, sink: TextSink) -> Transition[CouncilState]:
    assert state.chairman is not None and state.chairman.text is not None
    readable = sum(r.ranking is not None for r in state.reviews)
    answered = sum(c.status == "completed" for c in state.answers)
    state.status, state.finished_at = "completed", at
    state.result = RunResult(text=state.chairman.text, model=state.plan.chairman)
    state.reason = (
        f"the chairman answered, from {answered} {'answer' if answered == 1 else 'answers'} "
        f"and {readable} readable {'review' if readable == 1 else 'reviews'}"
    )
    done = StepCompleted(run_id=state.run_id, step=3, name=STEP_NAMES[3], data={"answered": 1}, at=at)
    end = RunCompleted(run_id=state.run_id, reason=state.reason, run=sink.document(view(state)), at=at)
    return Transition(state, [done, end], sink.texts)


# ---------------------------------------------------------------------------------------------
# Ending early


def _best(state: CouncilState) -> tuple[RunResult, str] | None:
    """What a run ended short of its chairman ends with: the answer ranked first, else the only
    answer once every member is in; None when it has neither. Uses `state.ranking`, which the
    caller sets."""
    members = state.plan.member_instances()
    answered = [m for m, c in enumerate(state.answers) if c.status == "completed"]
    if state.ranking:
        top = state.ranking[0]
        m, what = members.index((top.model, top.instance)), "the answer ranked first"
    elif state.step > 1 and len(answered) == 1:
        m, what = answered[0], "the only answer"
    else:
        return None
    return RunResult(text=_text(state.answers[m]), model=members[m][0]), f"{what} ({label(*members[m])})"


def _stop_at_deadline(state: CouncilState, event: DeadlinePassed) -> Transition[CouncilState]:
    """Time is up: the run ends with `_best`, ranked by the readable reviews in so far."""
    where = {
        0: "before the first step",
        1: "during the answers",
        2: "during the reviews",
        3: "during the chairman's answer",
    }
    due = state.status == "running" and state.deadline is not None and event.at >= state.deadline
    if due and state.step == 2:
        state = state.model_copy(update={"ranking": aggregate(state)})
    return end_at_deadline(state, event, view, where[state.step], _best(state) if due else None)


def _stop_for_budget(state: CouncilState, why: str, at: datetime, sink: TextSink) -> list[Command]:
    """The next calls could exceed the budget: the run ends before them, with `_best`."""
    return end_early(state, at, "budget", why, view, sink, _best(state))


def _failed(state: CouncilState, reason: str, at: datetime, sink: TextSink) -> list[Command]:
    state.status, state.reason, state.finished_at = "failed", reason, at
    return [RunFailed(run_id=state.run_id, reason=reason, run=sink.document(view(state)), at=at)]


def _fail(state: CouncilState, reason: str, at: datetime, sink: TextSink) -> Transition[CouncilState]:
    return Transition(state, _failed(state, reason, at, sink), sink.texts)


# ---------------------------------------------------------------------------------------------
# Helpers


def _job(state: CouncilState, step: Step, model: str, instance: int, prompt: Parts) -> CallJob:
    """A call of `step`: the system prompt, the conversation the run continues, then `prompt`."""
    messages = job_messages(state.system, state.history, prompt)
    return CallJob(
        call_id=CallJob.make_id(state.run_id, step, ROLES[step], model, instance),
        run_id=state.run_id,
        iteration=step,
        role=ROLES[step],
        model=model,
        instance=instance,
        messages=messages,
        temperature=state.plan.temperature,
        max_tokens=state.plan.max_tokens,
    )


def _started(state: CouncilState, step: Step, jobs: list[CallJob], at: datetime) -> StepStarted:
    return StepStarted(
        run_id=state.run_id, step=step, name=STEP_NAMES[step], call_ids=[j.call_id for j in jobs], at=at
    )


def _pending_call(state: CouncilState, call_id: str) -> int | None:
    """Which call of the step under way the outcome answers, if it still waits for one: its place
    among the step's calls (the answers, the reviews; 0 for the chairman)."""
    if state.step == 1:
        calls = [
            (CallJob.make_id(state.run_id, 1, "member", model, instance), c)
            for (model, instance), c in zip(state.plan.member_instances(), state.answers, strict=True)
        ]
    elif state.step == 2:
        reviewers = state.plan.reviewer_instances()
        calls = [
            (CallJob.make_id(state.run_id, 2, "reviewer", *reviewers[r.reviewer]), r) for r in state.reviews
        ]
    elif state.step == 3 and state.chairman is not None:
        calls = [(CallJob.make_id(state.run_id, 3, "chairman", state.plan.chairman, 1), state.chairman)]
    else:
        return None
    return next((i for i, (id_, c) in enumerate(calls) if id_ == call_id and c.status == "pending"), None)


def _record_outcome(
    state: CouncilState, place: int, event: CallCompleted | CallFailed, sink: TextSink
) -> CouncilState:
    """A copy of `state` with the call's outcome: only the call and the list holding it are new."""
    outcome, usage, limits = outcome_of(event, state.usage, state.limits, sink)
    update: dict[str, Any] = {"usage": usage, "limits": limits}
    if state.step == 1:
        update["answers"] = [
            c.model_copy(update=outcome) if i == place else c for i, c in enumerate(state.answers)
        ]
    elif state.step == 2:
        review = state.reviews[place]
        if isinstance(event, CallCompleted):
            outcome.update(_read_review(review, event))
        update["reviews"] = [review.model_copy(update=outcome) if r is review else r for r in state.reviews]
    else:
        assert state.chairman is not None
        update["chairman"] = state.chairman.model_copy(update=outcome)
    return state.model_copy(update=update)


def _read_review(review: Review, event: CallCompleted) -> dict[str, Any]:
    """A review's ranking (member places, best first) and what could not be read of it."""
    if not isinstance(event.text, str):
        # RunStore.apply fetches a referenced answer before deciding: the machine reads it.
        raise TypeError(f"call {event.call_id}: decide() needs the review's text, not its reference")
    read = parse_ranking(event.text, LETTERS[: len(review.shown)])
    ranking = [review.shown[LETTERS.index(letter)] for letter in read.letters]
    return {"ranking": ranking if read.readable else None, "problem": "; ".join(read.problems) or None}


def _text(call: Call) -> Text:
    assert call.text is not None, "a completed call has a text"
    return call.text


def _call_view(run_id: str, step: Step, model: str, instance: int, call: Call) -> CallView:
    return CallView(**_call_fields(run_id, step, model, instance, call))


def _call_fields(run_id: str, step: Step, model: str, instance: int, call: Call) -> dict[str, Any]:
    """What a call's view shows of it (`CallView`, and a `ReviewView` begins with the same)."""
    return {
        "call_id": CallJob.make_id(run_id, step, ROLES[step], model, instance),
        "model": model,
        "instance": instance,
        **{name: getattr(call, name) for name in Call.model_fields},
    }
