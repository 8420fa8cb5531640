"""The vote protocol (self-consistency): every member instance answers once; the most common
answer wins, and only a vote that disagrees goes on as a consortium or a debate.

Pure, like `moot.protocols.consortium`: `start()` and `decide()` take state and an event and
return the new state and the commands (call jobs, run events). No I/O, no clock: times come from
events. Duplicate and late call outcomes return the same state object and no commands.

Stages, in order:
1. `_ask_voters`  step 1, `votes`: every member instance answers the vote's prompt
                  (`prompts.vote_prompt`) once, all at once;
2. `_count`       once every vote is in, each is read in the vote's format (`parsing.read_vote`)
                  and tallied (`_tally`); `_verdict` says what comes of it: the majority's
                  answer is the run's, or the run fails, or
3. `_escalate`    below the agreement threshold, with `escalate`, the run goes on as that
                  consortium or debate, its first iteration or round being the votes
                  (`consortium.seeded`, `debate.seeded`): no call is made twice. From then on
                  every event goes to that machine (`_escalated`), whose state the vote's holds;
                  its events pass through as they are, but its end event (carrying its own view)
                  becomes the vote's own, carrying the vote's view (`_as_vote_end`).

Events: `run.created`; `step.started` (step 1, `votes`, the votes' call ids) with the jobs;
`step.completed` (step 1, `votes`, `data`: `tally` [{answer, count, voters}] most votes first,
`agreement`, `majority`, `counted`, `unreadable` and `failed` (voters' labels), `decision`
(`answer`, `escalate` or `fail`) and `reason`); then `run.completed` / `run.failed`, or the
escalation's events (a consortium's `iteration.completed`, `iteration.started`, ...; a debate's
`round.completed` for the votes' round, then `round.started`, `turn.completed`, `judge.decided`,
`final.*`, `debate.completed`, ...) ending with the vote's `run.completed` / `run.failed` /
`run.cancelled`.

Decisions where the behaviour had room:
- A vote's call is the call the escalation's first iteration or round would make, so that
  seeding re-issues nothing: role `member` (a consortium's iteration 1) when the vote may go on as
  a consortium or not at all, `debater` (a debate's round 1) when as a debate; its id is
  `CallJob.make_id(run, 1, role, model, instance)`, its prompt the same for every voter.
- Answers are counted by their normalised form (`moot.protocols.agreement`); failed calls and
  answers that cannot be read in the format are not counted. Answers given equally often rank by
  their first voter's place in the request. Agreement is the majority's count over the counted
  votes, and meets the threshold when equal to it (so a 2-2 tie has agreement 0.5, and the answer
  of the earlier voter wins a threshold of 0.5).
- The run's answer (`VoteResult.text`): the normalised answer for `number` ("8"), `choice` ("B")
  and `yes_no` ("yes"): clean, whatever the voters wrote around it; for `free`, the answer of the
  majority's first voter as written (the line it was read from, without "Answer:").
- No vote counted: without `escalate` the run fails; with it, the run escalates when at least one
  call answered (the arbiter, or the debaters, read what the count could not). Every call failed:
  the run fails, escalation or not: there is nothing to seed it with.
- After an escalation the run's answer is the consortium's synthesis or the debate's verdict or
  summary (`by`: its mode), with the vote's agreement; a display-only debate has none, so the vote
  completes without a result, as such a debate does.
- Its deadline during the votes fails the run: a count of some of the votes is not the vote's
  answer. After the escalation, the deadline, a dead letter, a cancel and the budget are the
  escalation's to handle (a consortium ends with its latest synthesis), as its own run would.
- A budget of tokens or US dollars is checked before the votes are issued (all of them at once);
  too small for them, the run fails then (`run.created`, `run.failed`, `stop_reason: budget`).

The state keeps what its decisions and the escalation's need, long texts by reference; its votes
stay in it after an escalation (the view lists them), a few hundred bytes each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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
    RunCancelled,
    RunCompleted,
    RunCreated,
    RunFailed,
    StepCompleted,
    StepStarted,
)
from moot.protocols import consortium, debate
from moot.protocols.base import (
    Command,
    Limits,
    Transition,
    answer_of,
    cancel,
    conversation_parts,
    dead_lettered,
    end_at_deadline,
    end_early,
    is_none,
    job_messages,
    outcome_of,
    over_budget,
    stored_history,
)
from moot.protocols.consortium import ConsortiumState, Plan
from moot.protocols.consortium.parsing import extract_member_confidence
from moot.protocols.debate import Debater, DebateState
from moot.protocols.debate.machine import Member
from moot.protocols.vote import prompts
from moot.protocols.vote.parsing import key_text, read_vote
from moot.requests import (
    AnswerFormat,
    ConsortiumEscalation,
    ConsortiumRequest,
    DebateRequest,
    DebaterSpec,
    Escalation,
    MemberSpec,
    RunMeta,
    VoteRequest,
)
from moot.texts import Parts, Text, TextRef, TextSink
from moot.views import (
    CallStatus,
    ConsortiumView,
    DebateCallView,
    DebateView,
    RunStatus,
    StopReason,
    TallyEntry,
    Usage,
    VoteCallView,
    VoteResult,
    VoteView,
    origin,
)

STEP = "votes"
Decision = Literal["answer", "escalate", "fail"]
# How `_verdict` names what a format's answers are.
_FORMAT_WORDS: dict[AnswerFormat, str] = {
    "free": "an answer",
    "number": "a number",
    "choice": "an option's letter",
    "yes_no": "yes or no",
}
_ENDS = (RunCompleted, RunFailed, RunCancelled)


class Vote(BaseModel):
    """One voter's call and what came of it, its texts by reference when long.

    Who voted follows from its place (`VoteState.voters()`), its id is derived (`_call_id`),
    empty fields are left out.
    """

    status: CallStatus = "pending"
    text: Text | None = Field(None, exclude_if=is_none)
    # What it counts as (`parsing.key_text`); None: not counted (pending, failed or unreadable).
    key: Text | None = Field(None, exclude_if=is_none)
    # `free` votes only: the answer as written (`parsing.Reading.answer`), the run's answer when
    # it is the majority's first.
    answer: Text | None = Field(None, exclude_if=is_none)
    confidence: float | None = Field(None, exclude_if=is_none)
    error: str | None = Field(None, exclude_if=is_none)
    usage: Usage = Field(default_factory=Usage)
    latency_ms: int = 0
    attempts: int = 0
    worker: str = ""


class VoteState(BaseModel):
    """A vote: what its decisions need from the request (long texts by reference), its votes, and
    once it escalated, the consortium's or debate's state it goes on as."""

    run_id: str
    request: TextRef  # the whole request (a JSON document), for the view
    prompt: Text
    asked: Parts  # what every voter was asked (`prompts.vote_prompt`): the question and a stored document
    system: Text | None = Field(None, exclude_if=is_none)
    # The conversation the run continues: one stored document of messages (`CallJob.messages`);
    # for a consortium escalation also the same turns as its arbiter reads them.
    history: TextRef | None = Field(None, exclude_if=is_none)
    conversation: Parts = Field(default_factory=list)
    members: list[MemberSpec]
    answer_format: AnswerFormat
    choices: list[Text] = Field(default_factory=list)
    agreement_threshold: float
    temperature: float | None = Field(None, exclude_if=is_none)
    max_tokens: int | None = Field(None, exclude_if=is_none)
    escalate: Escalation | None = Field(None, exclude_if=is_none)
    # The consortium or debate request the vote goes on as (a JSON document): its view's `request`.
    escalate_request: TextRef | None = Field(None, exclude_if=is_none)
    status: RunStatus = "running"
    created_at: datetime
    finished_at: datetime | None = None
    deadline: datetime
    limits: Limits | None = Field(None, exclude_if=is_none)
    stop_reason: StopReason | None = Field(None, exclude_if=is_none)
    votes: list[Vote] = Field(default_factory=list)  # one per voter, in `voters()` order, once asked
    escalation: ConsortiumState | DebateState | None = Field(None, exclude_if=is_none)
    # After an escalation: the escalation's, which counts the votes too.
    usage: Usage = Field(default_factory=Usage)
    result: VoteResult | None = None
    reason: str | None = None
    meta: RunMeta = Field(default_factory=RunMeta)

    def voters(self) -> list[tuple[str, int]]:
        """(model, instance) of every member instance, in the request's order."""
        return [(spec.model, i) for spec in self.members for i in range(1, spec.count + 1)]


State = VoteState


# ---------------------------------------------------------------------------------------------
# Entry points


def start(
    run_id: str, request: VoteRequest, at: datetime, meta: RunMeta | None = None
) -> Transition[VoteState]:
    """A new vote: record it and ask every member instance for its vote."""
    meta = meta or RunMeta()
    sink = TextSink()
    history = stored_history(request.history, sink)
    prompt = sink.text(request.prompt)
    choices = [sink.text(c) for c in request.choices or []]
    escalate = request.escalate
    consortium_escalation = isinstance(escalate, ConsortiumEscalation)
    state = VoteState(
        run_id=run_id,
        request=sink.document(request),
        prompt=prompt,
        asked=prompts.vote_prompt(
            prompt, [sink.document(prompts.how_to_answer(request.answer_format, choices))]
        ),
        system=sink.text(request.system) if request.system else None,
        history=sink.document(history) if history else None,
        conversation=sink.parts(conversation_parts(history)) if consortium_escalation else [],
        members=list(request.members),
        answer_format=request.answer_format,
        choices=choices,
        agreement_threshold=request.agreement_threshold,
        temperature=request.temperature,
        max_tokens=request.max_tokens,
        escalate=escalate,
        escalate_request=sink.document(_escalation_request(request)) if escalate else None,
        created_at=at,
        deadline=at + timedelta(seconds=request.budget.seconds),
        limits=Limits.of(request.budget),
        meta=meta,
    )
    commands: list[Command] = [RunCreated(run_id=run_id, request=state.request, at=at, meta=meta)]
    # A budget too small for the votes fails the run here: `run.created`, then `run.failed`.
    commands += _ask_voters(state, at, sink)
    return Transition(state, commands, sink.texts)


def decide(state: VoteState, event: Any) -> Transition[VoteState]:
    """Fold one event into the vote, or, once it escalated, into its escalation.

    `state` is not modified: the new state is a shallow copy in which only the votes (or the
    escalation's state) are new.
    """
    if state.escalation is not None:
        return _escalated(state, event)
    if isinstance(event, CancelRequested):
        return cancel(state, event, view)
    if isinstance(event, DeadLettered):
        return dead_lettered(state, event, view)
    if isinstance(event, DeadlinePassed):
        return end_at_deadline(state, event, view, "during the vote")
    if state.status != "running" or not isinstance(event, CallCompleted | CallFailed):
        return Transition(state, [])
    index = _pending_vote(state, event.call_id)
    if index is None:
        return Transition(state, [])
    sink = TextSink()
    state = _record_outcome(state, index, event, sink)
    if any(v.status == "pending" for v in state.votes):
        return Transition(state, [], sink.texts)
    return Transition(state, _count(state, event.at, sink), sink.texts)


def view(state: VoteState) -> VoteView:
    """The vote as the API shows it: its texts as references (readers hydrate them). The tally
    counts the votes in so far; the agreement and the majority are there once all are in."""
    tally = _tally(state)
    counted = bool(state.votes) and all(v.status != "pending" for v in state.votes)
    return VoteView(
        id=state.run_id,
        status=state.status,
        created_at=state.created_at,
        finished_at=state.finished_at,
        reason=state.reason,
        **origin(state.meta),
        deadline=state.deadline,
        stop_reason=state.stop_reason,
        request=state.request,
        votes=_vote_views(state),
        tally=tally.entries,
        agreement=tally.agreement if counted else None,
        majority=tally.entries[0].answer if counted and tally.entries else None,
        escalated=state.escalation is not None,
        escalation=_escalation_view(state.escalation),
        result=state.result,
        usage=state.usage,
    )


# ---------------------------------------------------------------------------------------------
# Stages
# Each stage changes `state` in place: it is the copy `start` or `decide` made.


def _ask_voters(state: VoteState, at: datetime, sink: TextSink) -> list[Command]:
    """Step 1: a job per member instance, all alike, unless the budget cannot take them."""
    messages = job_messages(state.system, state.history, state.asked)
    jobs = [
        CallJob(
            call_id=_call_id(state, model, instance),
            run_id=state.run_id,
            iteration=1,
            role=_role(state),
            model=model,
            instance=instance,
            messages=messages,
            temperature=state.temperature,
            max_tokens=state.max_tokens,
        )
        for model, instance in state.voters()
    ]
    if why := over_budget(state.limits, state.usage, jobs):
        return end_early(state, at, "budget", why, view, sink)
    state.votes = [Vote() for _ in jobs]
    started = StepStarted(run_id=state.run_id, step=1, name=STEP, call_ids=[j.call_id for j in jobs], at=at)
    return [started, *jobs]


def _count(state: VoteState, at: datetime, sink: TextSink) -> list[Command]:
    """Every vote is in: the tally, then the run's answer, its failure, or its escalation."""
    tally = _tally(state)
    decision, reason = _verdict(state, tally)
    counted = StepCompleted(
        run_id=state.run_id, step=1, name=STEP, data=_step_data(tally, decision, reason), at=at
    )
    if decision == "escalate":
        return [counted, *_escalate(state, at, sink)]
    state.reason, state.finished_at = reason, at
    if decision == "answer":
        state.status = "completed"
        state.result = VoteResult(text=_majority_answer(state, tally), by="vote", agreement=tally.agreement)
        return [
            counted,
            RunCompleted(run_id=state.run_id, reason=reason, run=sink.document(view(state)), at=at),
        ]
    state.status = "failed"
    return [counted, RunFailed(run_id=state.run_id, reason=reason, run=sink.document(view(state)), at=at)]


def _verdict(state: VoteState, tally: Tally) -> tuple[Decision, str]:
    """What the count decides, and why: the one place that says whether a vote answers,
    escalates or fails."""
    if all(v.status == "failed" for v in state.votes):
        errors = "; ".join(
            f"{label}: {v.error}" for label, v in zip(_labels(state), state.votes, strict=True)
        )
        return "fail", f"every vote call failed: {errors}"
    goes_on = f": the vote goes on as a {state.escalate.mode}" if state.escalate else ""
    if tally.agreement is None:
        unread = f"no vote could be read as {_FORMAT_WORDS[state.answer_format]}"
        return ("escalate", unread + goes_on) if state.escalate else ("fail", unread)
    share = f"agreement {tally.agreement:.4g} ({tally.entries[0].count} of {tally.counted} counted votes)"
    threshold = f"threshold {state.agreement_threshold:.4g}"
    if _meets(tally.agreement, state.agreement_threshold):
        return "answer", f"{share} meets {threshold}"
    if state.escalate is None:
        return "answer", f"{share} is below {threshold}; without an escalation the majority's answer stands"
    return "escalate", f"{share} is below {threshold}{goes_on}"


def _meets(agreement: float, threshold: float) -> bool:
    # 3/5 and a threshold of 0.6 are the same number, whatever the rounding of either.
    return agreement >= threshold or math.isclose(agreement, threshold, rel_tol=1e-9)


def _escalate(state: VoteState, at: datetime, sink: TextSink) -> list[Command]:
    """The run goes on as its escalation, whose first iteration or round is the votes."""
    escalate, request = state.escalate, state.escalate_request
    assert escalate is not None and request is not None
    seeded: Transition[ConsortiumState] | Transition[DebateState]
    if isinstance(escalate, ConsortiumEscalation):
        plan = Plan(
            members=state.members,
            arbiter=escalate.arbiter,
            confidence_threshold=escalate.confidence_threshold,
            min_iterations=escalate.min_iterations,
            max_iterations=escalate.max_iterations,
            temperature=state.temperature,
            max_tokens=state.max_tokens,
        )
        run = ConsortiumState(
            run_id=state.run_id,
            plan=plan,
            prompt=state.prompt,
            system=state.system,
            history=state.history,
            conversation=state.conversation,
            request=request,
            created_at=state.created_at,
            deadline=state.deadline,
            limits=state.limits,
            usage=state.usage,
            meta=state.meta,
        )
        seeded = consortium.seeded(run, state.asked, _vote_views(state), at)
    else:
        places = [(spec, m.model, i) for spec, m in enumerate(state.members) for i in range(1, m.count + 1)]
        debate_state = DebateState(
            run_id=state.run_id,
            request=request,
            prompt=state.prompt,
            format=escalate.format,
            judge_mode=escalate.judge_mode,
            judge=escalate.judge,
            max_rounds=escalate.max_rounds,
            members=[
                Member(
                    model=m.model,
                    count=m.count,
                    temperature=state.temperature,
                    max_tokens=state.max_tokens,
                    system=state.system,
                )
                for m in state.members
            ],
            history=state.history,
            created_at=state.created_at,
            deadline=state.deadline,
            limits=state.limits,
            debaters=[
                Debater(number=n, model=model, instance=instance, spec=spec)
                for n, (spec, model, instance) in enumerate(places, 1)
            ],
            usage=state.usage,
            meta=state.meta,
        )
        seeded = debate.seeded(debate_state, _turn_views(state), at)
    return _take(state, seeded, sink)


def _escalated(state: VoteState, event: Any) -> Transition[VoteState]:
    """An event of a vote that escalated: decided by its escalation's machine."""
    inner = state.escalation
    assert inner is not None
    t = consortium.decide(inner, event) if isinstance(inner, ConsortiumState) else debate.decide(inner, event)
    if t.state is inner and not t.commands:
        return Transition(state, [])
    state = state.model_copy()
    sink = TextSink()
    commands = _take(state, t, sink)
    return Transition(state, commands, sink.texts)


def _take(state: VoteState, t: Transition[Any], sink: TextSink) -> list[Command]:
    """The escalation's transition as the vote's: its state kept in the vote's, its jobs and
    events passed on, its end event made the vote's own (and the view it carried not stored)."""
    inner = t.state
    state.escalation, state.usage, state.limits = inner, inner.usage, inner.limits
    inner_views = {c.run.sha for c in t.commands if isinstance(c, _ENDS) and isinstance(c.run, TextRef)}
    sink.texts.update({sha: text for sha, text in t.texts.items() if sha not in inner_views})
    return [_as_vote_end(state, c, sink) if isinstance(c, _ENDS) else c for c in t.commands]


def _as_vote_end(state: VoteState, end: RunCompleted | RunFailed | RunCancelled, sink: TextSink) -> Command:
    """The escalation's end event, as the vote's: the same type, reason and time, the vote's view."""
    inner = state.escalation
    assert inner is not None
    state.status, state.reason, state.finished_at = inner.status, end.reason, end.at
    state.stop_reason = inner.stop_reason
    by: Literal["consortium", "debate"]
    if isinstance(inner, ConsortiumState):
        answer, by = (inner.result.synthesis if inner.result else None), "consortium"
    else:
        answer, by = inner.result, "debate"
    if inner.status == "completed" and answer is not None:
        state.result = VoteResult(text=answer, by=by, agreement=_tally(state).agreement)
    return end.model_copy(update={"run": sink.document(view(state))})


# ---------------------------------------------------------------------------------------------
# The count


@dataclass(frozen=True)
class Tally:
    """The votes counted: each distinct answer with its voters, most votes first (ties: the
    earliest first voter), the index of each one's first voter, and who was not counted."""

    entries: list[TallyEntry]
    firsts: list[int]
    counted: int
    unreadable: list[str]
    failed: list[str]

    @property
    def agreement(self) -> float | None:
        """The majority's share of the counted votes; None when none was counted."""
        return self.entries[0].count / self.counted if self.entries else None


def _tally(state: VoteState) -> Tally:
    labels = _labels(state)
    groups: dict[Text, list[int]] = {}
    unreadable: list[str] = []
    failed: list[str] = []
    for index, vote in enumerate(state.votes):
        if vote.status == "failed":
            failed.append(labels[index])
        elif vote.status == "completed" and vote.key is None:
            unreadable.append(labels[index])
        elif vote.key is not None:
            groups.setdefault(vote.key, []).append(index)
    ranked = sorted(groups.items(), key=lambda group: (-len(group[1]), group[1][0]))
    return Tally(
        entries=[TallyEntry(answer=key, count=len(ix), voters=[labels[i] for i in ix]) for key, ix in ranked],
        firsts=[ix[0] for _, ix in ranked],
        counted=sum(len(ix) for ix in groups.values()),
        unreadable=unreadable,
        failed=failed,
    )


def _majority_answer(state: VoteState, tally: Tally) -> Text:
    """The run's answer: the majority's normalised answer, or in free text its first voter's words."""
    first = state.votes[tally.firsts[0]]
    if state.answer_format == "free" and first.answer is not None:
        return first.answer
    return tally.entries[0].answer


def _step_data(tally: Tally, decision: Decision, reason: str) -> dict[str, Any]:
    """`step.completed`'s data: the count, as JSON (a long free answer by reference)."""
    entries = [e.model_dump(mode="json") for e in tally.entries]
    return {
        "tally": entries,
        "agreement": tally.agreement,
        "majority": entries[0]["answer"] if entries else None,
        "counted": tally.counted,
        "unreadable": tally.unreadable,
        "failed": tally.failed,
        "decision": decision,
        "reason": reason,
    }


# ---------------------------------------------------------------------------------------------
# Helpers


def _role(state: VoteState) -> Literal["member", "debater"]:
    """A vote's role: that of the calls of the first round of the debate it may go on as, else
    of a consortium's first iteration."""
    return (
        "member" if state.escalate is None or isinstance(state.escalate, ConsortiumEscalation) else "debater"
    )


def _call_id(state: VoteState, model: str, instance: int) -> str:
    return CallJob.make_id(state.run_id, 1, _role(state), model, instance)


def _labels(state: VoteState) -> list[str]:
    return [f"{model}#{instance}" for model, instance in state.voters()]


def _pending_vote(state: VoteState, call_id: str) -> int | None:
    """The place of the vote the outcome answers, if it still waits for one."""
    for index, ((model, instance), vote) in enumerate(zip(state.voters(), state.votes, strict=False)):
        if vote.status == "pending" and _call_id(state, model, instance) == call_id:
            return index
    return None


def _record_outcome(
    state: VoteState, index: int, event: CallCompleted | CallFailed, sink: TextSink
) -> VoteState:
    """A copy of `state` with the vote's outcome, read: only the votes and that vote are new."""
    outcome, usage, limits = outcome_of(event, state.usage, state.limits, sink)
    if isinstance(event, CallCompleted):
        text = answer_of(event)
        reading = read_vote(text, state.answer_format, state.choices)
        outcome["confidence"] = extract_member_confidence(text)
        if reading.key is not None:
            outcome["key"] = sink.text(key_text(reading.key))
            if state.answer_format == "free":
                outcome["answer"] = sink.text(reading.answer)
    votes = [v.model_copy(update=outcome) if i == index else v for i, v in enumerate(state.votes)]
    return state.model_copy(update={"votes": votes, "usage": usage, "limits": limits})


def _vote_views(state: VoteState) -> list[VoteCallView]:
    return [
        VoteCallView(
            call_id=_call_id(state, model, instance),
            model=model,
            instance=instance,
            status=v.status,
            text=v.text,
            confidence=v.confidence,
            error=v.error,
            usage=v.usage,
            latency_ms=v.latency_ms,
            attempts=v.attempts,
            worker=v.worker,
            label=f"{model}#{instance}",
            normalized=v.key,
        )
        # No votes before they are asked (a budget too small for them).
        for (model, instance), v in zip(state.voters(), state.votes, strict=False)
    ]


def _turn_views(state: VoteState) -> list[DebateCallView]:
    """The votes as a debate's round 1: debaters numbered in the request's order."""
    return [
        DebateCallView(
            call_id=v.call_id,
            model=v.model,
            instance=v.instance,
            debater_number=number,
            status=v.status,
            text=v.text,
            error=v.error,
            usage=v.usage,
            latency_ms=v.latency_ms,
            attempts=v.attempts,
            worker=v.worker,
            label=v.label,
        )
        for number, v in enumerate(_vote_views(state), 1)
    ]


def _escalation_view(inner: ConsortiumState | DebateState | None) -> ConsortiumView | DebateView | None:
    if isinstance(inner, ConsortiumState):
        return consortium.view(inner)
    return debate.view(inner) if inner is not None else None


def _escalation_request(request: VoteRequest) -> ConsortiumRequest | DebateRequest:
    """The consortium or debate request a vote goes on as: the same question, voters, calls and budget."""
    escalate = request.escalate
    shared = request.model_dump(include={"prompt", "history", "budget"})
    if isinstance(escalate, ConsortiumEscalation):
        return ConsortiumRequest.model_validate(
            {
                **shared,
                **request.model_dump(include={"members", "system", "temperature", "max_tokens"}),
                **escalate.model_dump(exclude={"mode"}),
            }
        )
    assert escalate is not None
    debaters = [
        DebaterSpec(
            model=m.model,
            count=m.count,
            system=request.system,
            temperature=request.temperature,
            max_tokens=request.max_tokens,
        )
        for m in request.members
    ]
    return DebateRequest.model_validate(
        {**shared, "members": debaters, **escalate.model_dump(exclude={"mode"})}
    )
