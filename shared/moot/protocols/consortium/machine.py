"""The consortium protocol: members answer in parallel, an arbiter synthesizes, repeat until sure.

Pure: `start()` and `decide()` take state and an event and return the new state and the
commands (call jobs to run, events to publish). No I/O, no clock: times come from events.

Stages of one iteration, in order:
1. `_ask_members`    every member instance answers the iteration's prompt, in parallel;
2. `_ask_arbiter`    once all members are in (answered or failed), the arbiter synthesizes;
3. `_judge_iteration` the arbiter's verdict and the stop rule decide: stop, or ask the
                      members again with a refinement prompt (`prompts.refinement_prompt`).
A run may also begin at stage 2 (`seeded`): its first iteration's member calls were a vote's
(`moot.protocols.vote`), which goes on as a consortium.

A budget of tokens or US dollars is checked before each of those calls is issued
(`moot.protocols.base.over_budget`): when the members of an iteration, or its arbiter, could take
the run past it, the run ends instead, before them (`_stop_for_budget`, `stop_reason: budget`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
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
    IterationCompleted,
    IterationStarted,
    JobMessage,
    RunCompleted,
    RunCreated,
    RunFailed,
)
from moot.protocols import agreement
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
from moot.protocols.consortium import prompts
from moot.protocols.consortium.parsing import extract_member_confidence, parse_arbiter
from moot.requests import ConsortiumRequest, MemberSpec, RunMeta
from moot.texts import Parts, Text, TextRef, TextSink
from moot.views import (
    ArbiterVerdict,
    CallStatus,
    CallView,
    ConsortiumView,
    IterationView,
    RunStatus,
    StopReason,
    Usage,
    origin,
)


class Call(BaseModel):
    """One model call and what came of it; its answer by reference when long.

    The state holds every call of the run and is rewritten on every outcome, so a call keeps no
    more than it must: who was called comes from where it sits (an iteration's `members` follow
    `Plan.instances()`, its `arbiter` is `Plan.arbiter`), its id is derived (`CallJob.make_id`),
    empty fields are left out.
    """

    status: CallStatus = "pending"
    text: Text | None = Field(None, exclude_if=is_none)
    confidence: float | None = Field(None, exclude_if=is_none)
    error: str | None = Field(None, exclude_if=is_none)
    usage: Usage = Field(default_factory=Usage)
    latency_ms: int = 0
    attempts: int = 0
    worker: str = ""


class Iteration(BaseModel):
    """The iteration under way: what the members were asked, and every call's outcome."""

    number: int
    prompt: Parts = Field(default_factory=list)  # what every member was asked
    members: list[Call]  # one per member instance, in the order of `Plan.instances()`
    arbiter: Call | None = None
    verdict: ArbiterVerdict | None = None
    decision: Literal["stop", "iterate"] | None = None
    reason: str | None = None


class Plan(BaseModel):
    """What the run's decisions need from its request: who is asked, how, and when it stops."""

    members: list[MemberSpec]
    arbiter: str
    confidence_threshold: float
    min_iterations: int
    max_iterations: int
    temperature: float | None = None
    max_tokens: int | None = None

    def instances(self) -> list[tuple[str, int]]:
        """(model, instance) of every member instance, in the request's order."""
        return [(spec.model, i) for spec in self.members for i in range(1, spec.count + 1)]


class ConsortiumState(BaseModel):
    """A run: its plan, the request's texts by reference, and every iteration so far.

    One KV value, rewritten on every call outcome: it holds references, never long texts, so
    its size grows with the number of calls only (tests/unit/test_sizes_consortium.py).
    """

    run_id: str
    plan: Plan
    prompt: Text
    system: Text | None = None
    # The conversation the run continues, stored once at the start: for the members, one document
    # of messages (one reference in each of their jobs, `CallJob.messages`); for the arbiter, the
    # same turns as text (`prompts.ARBITER_CONVERSATION`), stored parts quoted as one part.
    history: TextRef | None = None
    conversation: Parts = Field(default_factory=list)
    request: TextRef  # the whole request (a JSON document), for the view
    status: RunStatus = "running"
    created_at: datetime
    finished_at: datetime | None = None
    deadline: datetime | None = None  # created_at + the budget's seconds (None: a state from before budgets)
    limits: Limits | None = Field(None, exclude_if=is_none)  # the budget's tokens and USD, when it sets any
    stop_reason: StopReason | None = Field(None, exclude_if=is_none)
    # The iteration under way, in full. A finished one moves to `done` (`_archive`): the state,
    # read and rewritten on every outcome, holds one iteration's calls whatever the run's length.
    iterations: list[Iteration] = Field(default_factory=list)
    done: list[TextRef] = Field(default_factory=list)  # finished iterations, each a stored IterationView
    # Per member instance (in `Plan.instances()` order), its own earlier turns: a stored list of
    # messages that refers to the one before, so each iteration adds a document, not a copy.
    heads: list[TextRef | None] = Field(default_factory=list)
    past: Parts = Field(default_factory=list)  # the arbiter's earlier syntheses, as its prompt quotes them
    usage: Usage = Field(default_factory=Usage)
    result: ArbiterVerdict | None = None
    # The verdict of the last finished iteration: what a run stopped at its deadline or by its
    # budget ends with.
    last_verdict: ArbiterVerdict | None = Field(None, exclude_if=is_none)
    reason: str | None = None
    meta: RunMeta = Field(default_factory=RunMeta)

    @property
    def current(self) -> Iteration:
        return self.iterations[-1]


State = ConsortiumState


# ---------------------------------------------------------------------------------------------
# Entry points


def start(
    run_id: str, request: ConsortiumRequest, at: datetime, meta: RunMeta | None = None
) -> Transition[ConsortiumState]:
    """A new run: record it and ask every member instance for a first answer."""
    meta = meta or RunMeta()
    sink = TextSink()
    history = stored_history(request.history, sink)
    state = ConsortiumState(
        run_id=run_id,
        plan=Plan.model_validate(request.model_dump(include=set(Plan.model_fields))),
        prompt=sink.text(request.prompt),
        system=sink.text(request.system) if request.system else None,
        history=sink.document(history) if history else None,
        conversation=sink.parts(conversation_parts(history)),
        request=sink.document(request),
        created_at=at,
        deadline=at + timedelta(seconds=request.budget.seconds),
        limits=Limits.of(request.budget),
        meta=meta,
    )
    state.heads = [None] * len(state.plan.instances())
    commands: list[Command] = [RunCreated(run_id=run_id, request=state.request, at=at, meta=meta)]
    # A budget too small for the first calls fails the run here: `run.created`, then `run.failed`.
    commands += _ask_members(state, prompts.member_prompt(state.prompt), at, sink)
    return Transition(state, commands, sink.texts)


def decide(state: ConsortiumState, event: Any) -> Transition[ConsortiumState]:
    """Fold one call outcome into the run. Duplicates and late arrivals change nothing.

    `state` is not modified: the new state is a shallow copy in which only the current
    iteration and the call the event answers are new objects, so the work per event does not
    grow with the run's texts (they are references) nor with its earlier iterations.
    """
    if isinstance(event, CancelRequested):
        return cancel(state, event, view)
    if isinstance(event, DeadLettered):
        return dead_lettered(state, event, view)
    if isinstance(event, DeadlinePassed):
        return _stop_at_deadline(state, event)
    if state.status != "running" or not isinstance(event, CallCompleted | CallFailed):
        return Transition(state, [])
    call = _pending_call(state, event.call_id)
    if call is None:
        return Transition(state, [])
    answers_arbiter = call is state.current.arbiter
    sink = TextSink()
    state = _record_outcome(state, call, event, sink)

    it = state.current
    if not answers_arbiter:
        if any(m.status == "pending" for m in it.members):
            return Transition(state, [], sink.texts)
        return _members_in(state, event.at, sink)

    if isinstance(event, CallFailed):
        return _fail(state, f"arbiter call failed in iteration {it.number}: {event.error}", event.at, sink)
    return _judge_iteration(state, answer_of(event), event.at, sink)


def seeded(
    state: ConsortiumState, prompt: Parts, members: Sequence[CallView], at: datetime
) -> Transition[ConsortiumState]:
    """A run whose first iteration's member calls were made before it (a vote's, escalated):
    the arbiter is asked, as when the last member answers (or the run ends, as then).

    `state` is as `start` builds it, without iterations (`usage`: what the run has spent, those
    calls included); `prompt` is what the members were asked; `members` are their calls, ended,
    in `Plan.instances()` order, with the ids of iteration 1's (`CallJob.make_id(run, 1,
    "member", model, instance)`): every later event names them as this run's own.
    """
    instances = state.plan.instances()
    if state.iterations or state.done:
        raise ValueError("a seeded run has no iteration yet")
    if [(m.call_id, m.status == "pending") for m in members] != [
        (CallJob.make_id(state.run_id, 1, "member", model, instance), False) for model, instance in instances
    ]:
        raise ValueError("the seeded calls must be iteration 1's member calls, in order, every one ended")
    calls = [
        Call(
            status=m.status,
            text=m.text,
            confidence=m.confidence,
            error=m.error,
            usage=m.usage,
            latency_ms=m.latency_ms,
            attempts=m.attempts,
            worker=m.worker,
        )
        for m in members
    ]
    state = state.model_copy(
        update={
            "iterations": [Iteration(number=1, prompt=prompt, members=calls)],
            "heads": [None] * len(calls),
        }
    )
    return _members_in(state, at, TextSink())


def view(state: ConsortiumState) -> ConsortiumView:
    """The run as the API shows it: its texts as references (readers hydrate them)."""
    instances = state.plan.instances()
    return ConsortiumView(
        id=state.run_id,
        status=state.status,
        created_at=state.created_at,
        finished_at=state.finished_at,
        reason=state.reason,
        **origin(state.meta),
        deadline=state.deadline,
        stop_reason=state.stop_reason,
        request=state.request,
        result=state.result,
        iterations=[*state.done, *(_iteration_view(state, it, instances) for it in state.iterations)],
        usage=state.usage,
    )


def _iteration_view(state: ConsortiumState, it: Iteration, instances: list[tuple[str, int]]) -> IterationView:
    return IterationView(
        number=it.number,
        members=[
            _call_view(state, it, "member", model, instance, c)
            for (model, instance), c in zip(instances, it.members, strict=True)
        ],
        arbiter=_call_view(state, it, "arbiter", state.plan.arbiter, 1, it.arbiter) if it.arbiter else None,
        verdict=it.verdict,
        decision=it.decision,
        reason=it.reason,
    )


# ---------------------------------------------------------------------------------------------
# Stages
# Each stage changes `state` in place: it is the copy `start` or `decide` made, and what it
# changes (the iteration list, the current iteration, the run's status) is that copy's own.


def _ask_members(state: ConsortiumState, prompt: Parts, at: datetime, sink: TextSink) -> list[Command]:
    """Open the next iteration: a job per member instance, unless the budget cannot take them."""
    number = len(state.done) + 1
    plan = state.plan
    jobs = [
        CallJob(
            call_id=CallJob.make_id(state.run_id, number, "member", model, instance),
            run_id=state.run_id,
            iteration=number,
            role="member",
            model=model,
            instance=instance,
            messages=_conversation(state, index, prompt),
            temperature=plan.temperature,
            max_tokens=plan.max_tokens,
        )
        for index, (model, instance) in enumerate(plan.instances())
    ]
    if why := over_budget(state.limits, state.usage, jobs):
        return _stop_for_budget(state, why, at, sink)
    members = [Call() for _ in jobs]
    state.iterations = [Iteration(number=number, prompt=prompt, members=members)]
    started = IterationStarted(
        run_id=state.run_id, iteration=number, call_ids=[j.call_id for j in jobs], at=at
    )
    return [started, *jobs]


def _conversation(state: ConsortiumState, index: int, prompt: Parts) -> list[JobMessage | TextRef]:
    """What member instance `index` has seen so far (its own earlier turns only), then the new prompt.

    The conversation the run continues and the instance's earlier turns are one reference each
    (stored lists of messages).
    """
    messages = job_messages(state.system, state.history, prompt)
    head = state.heads[index]
    if head is not None:
        messages.insert(-1, head)
    return messages


def _archive(state: ConsortiumState, sink: TextSink) -> None:
    """Move the finished iteration out of the state: into `done` (its view, stored), each member
    instance's answer into its `heads` document, the verdict into the arbiter's `past`. No
    iteration is under way until `_ask_members` opens the next one (if the budget allows)."""
    it = state.current
    heads = list(state.heads)
    for index, call in enumerate(it.members):
        if call.status == "completed":
            turns: list[JobMessage | TextRef] = [h for h in (heads[index],) if h is not None]
            turns += [
                JobMessage(role="user", content=it.prompt),
                JobMessage(role="assistant", content=[call.text] if call.text else []),
            ]
            heads[index] = sink.document(turns)
    state.heads = heads
    item = prompts.history_item(it.number, it.verdict)
    state.past = sink.parts([*state.past, "\n", *item] if state.past else item)
    state.done = [*state.done, sink.document(_iteration_view(state, it, state.plan.instances()))]
    state.iterations = []


def _members_in(state: ConsortiumState, at: datetime, sink: TextSink) -> Transition[ConsortiumState]:
    """Every member of the iteration is in: the arbiter is asked, unless every one of them failed."""
    it = state.current
    if all(m.status == "failed" for m in it.members):
        errors = "; ".join(
            f"{model}#{instance}: {m.error}"
            for (model, instance), m in zip(state.plan.instances(), it.members, strict=True)
        )
        return _fail(state, f"every member call failed in iteration {it.number}: {errors}", at, sink)
    return Transition(state, _ask_arbiter(state, at, sink), sink.texts)


def _ask_arbiter(state: ConsortiumState, at: datetime, sink: TextSink) -> list[Command]:
    """Every member is in: the arbiter's job, unless the budget cannot take it."""
    it = state.current
    plan = state.plan
    job = CallJob(
        call_id=CallJob.make_id(state.run_id, it.number, "arbiter", plan.arbiter, 1),
        run_id=state.run_id,
        iteration=it.number,
        role="arbiter",
        model=plan.arbiter,
        instance=1,
        messages=[JobMessage(role="user", content=prompts.arbiter_prompt(state))],
        temperature=plan.temperature,  # the request's, for every answer: the synthesis too
        max_tokens=plan.max_tokens,
    )
    if why := over_budget(state.limits, state.usage, [job]):
        return _stop_for_budget(state, why, at, sink)
    it.arbiter = Call()
    return [job]


def _judge_iteration(
    state: ConsortiumState, arbiter_text: str, at: datetime, sink: TextSink
) -> Transition[ConsortiumState]:
    it = state.current
    verdict = _stored_verdict(_readable_verdict(state, parse_arbiter(arbiter_text)), sink)
    it.verdict = verdict
    decision, reason = should_stop(it.number, verdict, state.plan)
    it.decision, it.reason = decision, reason
    done = IterationCompleted(
        run_id=state.run_id, iteration=it.number, verdict=verdict, decision=decision, reason=reason, at=at
    )
    if decision == "stop":
        state.status, state.result, state.reason, state.finished_at = "completed", verdict, reason, at
        end = RunCompleted(run_id=state.run_id, reason=reason, run=sink.document(view(state)), at=at)
        return Transition(state, [done, end], sink.texts)
    state.last_verdict = verdict
    _archive(state, sink)
    asked = prompts.refinement_prompt(state.prompt, verdict)
    return Transition(state, [done, *_ask_members(state, asked, at, sink)], sink.texts)


def _readable_verdict(state: ConsortiumState, verdict: ArbiterVerdict) -> ArbiterVerdict:
    """The verdict, its synthesis the members' most agreed answer when the arbiter's cannot be read.

    An unreadable synthesis (`_unreadable`) is no answer to show, nor to refine in the next
    iteration; the members' answers are there, and the one most of them gave is the panel's
    best guess (`moot.protocols.agreement`). The arbiter's confidence goes with its synthesis:
    it was about a text that says nothing, so it cannot end the run. The arbiter's raw answer
    stays in its call.
    """
    why = _unreadable(verdict.synthesis)
    if why is None:
        return verdict
    instances = state.plan.instances()
    answered = [
        (f"{model}#{instance}", call)
        for (model, instance), call in zip(instances, state.current.members, strict=True)
        if call.status == "completed"
    ]
    agreed = agreement.most_agreed([c.text for _, c in answered], [c.confidence for _, c in answered])
    unreadable = f"{ArbiterVerdict.UNREADABLE} ({why})"
    if agreed is None:
        problems = [*verdict.problems, f"{unreadable}; no member answer could be read either"]
        return verdict.model_copy(update={"malformed": True, "problems": problems})
    note = _agreement_note(agreed, [who for who, _ in answered], [c.confidence for _, c in answered])
    problems = [*verdict.problems, f"{unreadable}; {note}"]
    if verdict.confidence is not None:
        problems.append("the arbiter's confidence is not used: it was about that unreadable synthesis")
    return verdict.model_copy(
        update={
            "synthesis": agreed.text,
            "synthesis_from": "members",
            "confidence": None,
            "malformed": True,
            "problems": problems,
        }
    )


# Words in a row that, found in both a synthesis and the arbiter's prompt template, are its
# instructions repeated: long enough that an answer does not write them by chance ("the single
# best answer to the question is ..." has 7). SmolLM2 starts with the prompt's first sentence
# word for word, then paraphrases the rest (fixtures/smollm2/arbiter-instructions-paraphrased.txt).
_ECHO_RUN = 8


def _arbiter_templates() -> tuple[str, ...]:
    """The texts the arbiter's prompt is built from (read each time: a measurement may swap them)."""
    return (
        prompts.ARBITER_PROMPT,
        prompts.ARBITER_INSTRUCTIONS,
        prompts.ARBITER_RESPONSE,
        prompts.ARBITER_HISTORY,
        prompts.ARBITER_HISTORY_ITEM,
        prompts.ARBITER_CONVERSATION,
    )


@functools.cache
def _template_runs(templates: tuple[str, ...]) -> frozenset[tuple[str, ...]]:
    """Every `_ECHO_RUN` words in a row of the templates' own text (not the texts they quote)."""
    runs: set[tuple[str, ...]] = set()
    for template in templates:
        for literal in re.split(r"\{\w+\}", template):
            words = _words(literal)
            runs.update(tuple(words[i : i + _ECHO_RUN]) for i in range(len(words) - _ECHO_RUN + 1))
    return frozenset(runs)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _unreadable(synthesis: Text) -> str | None:
    """Why the arbiter's synthesis is no answer: empty, or mostly the prompt's instructions repeated.

    An echo holds `_ECHO_RUN` words in a row of the templates' own text; a synthesis that
    repeats the question or a member's answer (texts the prompt quotes) is not one.
    """
    if not isinstance(synthesis, str):  # parsed just now: plain text, never a reference
        return None
    words = _words(synthesis)
    if not words:
        return "it was empty"
    runs = _template_runs(_arbiter_templates())
    if any(tuple(words[i : i + _ECHO_RUN]) in runs for i in range(len(words) - _ECHO_RUN + 1)):
        return "it repeated its instructions"
    return None


def _agreement_note(agreed: agreement.Agreement, who: list[str], confidences: list[float | None]) -> str:
    """How the members' answer was chosen, in words: who agrees, or why this one without agreement."""
    if agreed.counted == 1:
        return f"the answer is {who[agreed.index]}'s, the only member answer"
    if agreed.count > 1:
        return f"the answer is the one {agreed.count} of {agreed.counted} members agree on"
    if confidences[agreed.index] is not None:
        return f"no two members agree: the answer is {who[agreed.index]}'s, the highest stated confidence"
    return f"no two members agree: the answer is {who[agreed.index]}'s, the first"


def _stop_at_deadline(state: ConsortiumState, event: DeadlinePassed) -> Transition[ConsortiumState]:
    """Time is up: the run completes with its latest synthesis if it has one, else it fails."""
    if not state.iterations:
        return end_at_deadline(state, event, view, "before the first iteration")
    it = state.current
    best: tuple[ArbiterVerdict, str] | None = None
    if it.verdict is not None:
        best = it.verdict, f"the synthesis of iteration {it.number}"
    elif state.last_verdict is not None:
        best = state.last_verdict, f"the synthesis of iteration {len(state.done)}"
    return end_at_deadline(state, event, view, f"during iteration {it.number}", best)


def _stop_for_budget(state: ConsortiumState, why: str, at: datetime, sink: TextSink) -> list[Command]:
    """The next calls could exceed the budget: the run ends before them, `completed` with the
    synthesis of its last finished iteration if it has one (as at its deadline), else `failed`."""
    best: tuple[ArbiterVerdict, str] | None = None
    if state.last_verdict is not None:
        best = state.last_verdict, f"the synthesis of iteration {len(state.done)}"
    return end_early(state, at, "budget", why, view, sink, best)


def should_stop(
    iteration: int, verdict: ArbiterVerdict, req: Plan | ConsortiumRequest
) -> tuple[Literal["stop", "iterate"], str]:
    """Stop when the minimum is done, the arbiter is confident enough and wants no more, or at the maximum.

    A missing `needs_iteration` counts as not asking for more (the confidence still has to be
    there and high enough); a missing confidence can never meet the threshold.
    """
    conf = verdict.confidence
    reasons: list[str] = []
    if iteration < req.min_iterations:
        reasons.append(f"minimum of {req.min_iterations} iterations not reached")
    if conf is None:
        reasons.append("the arbiter gave no readable confidence")
    elif conf < req.confidence_threshold:
        reasons.append(f"confidence {conf:.2f} below threshold {req.confidence_threshold:.2f}")
    if verdict.needs_iteration is True:
        reasons.append("the arbiter asked for another iteration")
    if not reasons:
        assert conf is not None
        return (
            "stop",
            f"confidence {conf:.2f} meets threshold {req.confidence_threshold:.2f} at iteration {iteration}",
        )
    if iteration >= req.max_iterations:
        return "stop", f"reached max_iterations ({req.max_iterations}); " + "; ".join(reasons)
    return "iterate", "; ".join(reasons)


# ---------------------------------------------------------------------------------------------
# Helpers


def _pending_call(state: ConsortiumState, event_call_id: str) -> Call | None:
    """The call of the current iteration the outcome answers, if it still waits for one."""
    if not state.iterations:
        return None
    it = state.current
    if it.arbiter is not None:  # the members are all in
        arbiter_id = CallJob.make_id(state.run_id, it.number, "arbiter", state.plan.arbiter, 1)
        return it.arbiter if it.arbiter.status == "pending" and arbiter_id == event_call_id else None
    for (model, instance), call in zip(state.plan.instances(), it.members, strict=True):
        if (
            call.status == "pending"
            and CallJob.make_id(state.run_id, it.number, "member", model, instance) == event_call_id
        ):
            return call
    return None


def _record_outcome(
    state: ConsortiumState, call: Call, event: CallCompleted | CallFailed, sink: TextSink
) -> ConsortiumState:
    """A copy of `state` with the call's outcome: only the current iteration and the call are new."""
    outcome, usage, limits = outcome_of(event, state.usage, state.limits, sink)
    it = state.current
    if isinstance(event, CallCompleted) and call is not it.arbiter:
        outcome["confidence"] = extract_member_confidence(answer_of(event))

    if call is it.arbiter:
        it = it.model_copy(update={"arbiter": call.model_copy(update=outcome)})
    else:
        members = [m.model_copy(update=outcome) if m is call else m for m in it.members]
        it = it.model_copy(update={"members": members})
    update = {"iterations": [*state.iterations[:-1], it], "usage": usage, "limits": limits}
    return state.model_copy(update=update)


def _stored_verdict(verdict: ArbiterVerdict, sink: TextSink) -> ArbiterVerdict:
    """The parsed verdict (plain strings) with its long texts by reference."""

    def kept(text: Text) -> Text:
        return sink.text(text) if isinstance(text, str) else text

    return verdict.model_copy(
        update={
            "synthesis": kept(verdict.synthesis),
            "analysis": kept(verdict.analysis),
            "dissent": kept(verdict.dissent),
            "refinement_areas": [kept(a) for a in verdict.refinement_areas],
        }
    )


def _fail(state: ConsortiumState, reason: str, at: datetime, sink: TextSink) -> Transition[ConsortiumState]:
    state.status, state.reason, state.finished_at = "failed", reason, at
    return Transition(
        state,
        [RunFailed(run_id=state.run_id, reason=reason, run=sink.document(view(state)), at=at)],
        sink.texts,
    )


def _call_view(
    state: ConsortiumState, it: Iteration, role: str, model: str, instance: int, c: Call
) -> CallView:
    return CallView(
        call_id=CallJob.make_id(state.run_id, it.number, role, model, instance),
        model=model,
        instance=instance,
        status=c.status,
        text=c.text,
        confidence=c.confidence,
        error=c.error,
        usage=c.usage,
        latency_ms=c.latency_ms,
        attempts=c.attempts,
        worker=c.worker,
    )
