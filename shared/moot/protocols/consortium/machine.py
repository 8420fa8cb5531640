"""The consortium protocol: members answer in parallel, an arbiter synthesizes, repeat until sure.

Pure: `start()` and `decide()` take state and an event and return the new state and the
commands (call jobs to run, events to publish). No I/O, no clock: times come from events.

Stages of one iteration, in order:
1. `_ask_members`    every member instance answers the iteration's prompt, in parallel;
2. `_ask_arbiter`    once all members are in (answered or failed), the arbiter synthesizes;
3. `_judge_iteration` the arbiter's verdict and the stop rule decide: stop, or ask the
                      members again with a refinement prompt (`_refinement_prompt`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from moot.messages import (
    CallCompleted,
    CallFailed,
    CallJob,
    CancelRequested,
    IterationCompleted,
    IterationStarted,
    RunCompleted,
    RunCreated,
    RunFailed,
)
from moot.protocols.base import Command, Transition, cancel
from moot.protocols.consortium import prompts
from moot.protocols.consortium.parsing import extract_member_confidence, parse_arbiter
from moot.requests import ChatMessage, ConsortiumRequest, RunMeta
from moot.views import (
    ArbiterVerdict,
    CallStatus,
    CallView,
    ConsortiumView,
    IterationView,
    RunStatus,
    Usage,
    origin,
)


class Call(BaseModel):
    """One model call of the run and what came of it."""

    call_id: str
    role: Literal["member", "arbiter"]
    model: str
    instance: int
    status: CallStatus = "pending"
    text: str | None = None
    confidence: float | None = None
    error: str | None = None
    usage: Usage = Field(default_factory=Usage)
    latency_ms: int = 0
    attempts: int = 0
    worker: str = ""


class Iteration(BaseModel):
    number: int
    prompt: str
    members: list[Call]
    arbiter: Call | None = None
    verdict: ArbiterVerdict | None = None
    decision: Literal["stop", "iterate"] | None = None
    reason: str | None = None


class ConsortiumState(BaseModel):
    run_id: str
    request: ConsortiumRequest
    status: RunStatus = "running"
    created_at: datetime
    finished_at: datetime | None = None
    iterations: list[Iteration] = Field(default_factory=list)
    usage: Usage = Field(default_factory=Usage)
    result: ArbiterVerdict | None = None
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
    state = ConsortiumState(run_id=run_id, request=request, created_at=at, meta=meta)
    commands: list[Command] = [RunCreated(run_id=run_id, request=request, at=at, meta=meta)]
    commands += _ask_members(state, request.prompt + prompts.MEMBER_CONFIDENCE_HINT, at)
    return Transition(state, commands)


def decide(state: ConsortiumState, event: Any) -> Transition[ConsortiumState]:
    """Fold one call outcome into the run. Duplicates and late arrivals change nothing."""
    if isinstance(event, CancelRequested):
        return cancel(state, event, view)
    if state.status != "running" or not isinstance(event, CallCompleted | CallFailed):
        return Transition(state, [])
    call = _find_pending_call(state, event.call_id)
    if call is None:
        return Transition(state, [])
    state = state.model_copy(deep=True)
    call = _find_pending_call(state, event.call_id)
    assert call is not None
    _record_outcome(state, call, event)

    if call.role == "member":
        if any(m.status == "pending" for m in state.current.members):
            return Transition(state, [])
        if all(m.status == "failed" for m in state.current.members):
            errors = "; ".join(f"{m.model}#{m.instance}: {m.error}" for m in state.current.members)
            return _fail(
                state, f"every member call failed in iteration {state.current.number}: {errors}", event.at
            )
        return Transition(state, _ask_arbiter(state))

    if isinstance(event, CallFailed):
        return _fail(
            state, f"arbiter call failed in iteration {state.current.number}: {event.error}", event.at
        )
    return _judge_iteration(state, event.text, event.at)


def view(state: ConsortiumState) -> ConsortiumView:
    """The run as the API shows it."""
    return ConsortiumView(
        id=state.run_id,
        status=state.status,
        created_at=state.created_at,
        finished_at=state.finished_at,
        reason=state.reason,
        **origin(state.meta),
        request=state.request,
        result=state.result,
        iterations=[
            IterationView(
                number=it.number,
                members=[_call_view(c) for c in it.members],
                arbiter=_call_view(it.arbiter) if it.arbiter else None,
                verdict=it.verdict,
                decision=it.decision,
                reason=it.reason,
            )
            for it in state.iterations
        ],
        usage=state.usage,
    )


# ---------------------------------------------------------------------------------------------
# Stages


def _ask_members(state: ConsortiumState, prompt: str, at: datetime) -> list[Command]:
    number = len(state.iterations) + 1
    req = state.request
    members: list[Call] = []
    jobs: list[Command] = []
    for spec in req.members:
        for instance in range(1, spec.count + 1):
            call_id = CallJob.make_id(state.run_id, number, "member", spec.model, instance)
            members.append(Call(call_id=call_id, role="member", model=spec.model, instance=instance))
            jobs.append(
                CallJob(
                    call_id=call_id,
                    run_id=state.run_id,
                    iteration=number,
                    role="member",
                    model=spec.model,
                    instance=instance,
                    messages=_conversation(state, spec.model, instance, prompt),
                    temperature=req.temperature,
                    max_tokens=req.max_tokens,
                )
            )
    state.iterations.append(Iteration(number=number, prompt=prompt, members=members))
    started = IterationStarted(
        run_id=state.run_id, iteration=number, call_ids=[m.call_id for m in members], at=at
    )
    return [started, *jobs]


def _conversation(state: ConsortiumState, model: str, instance: int, prompt: str) -> list[ChatMessage]:
    """What this instance has seen so far (its own earlier turns only), then the new prompt."""
    messages: list[ChatMessage] = []
    if state.request.system:
        messages.append(ChatMessage(role="system", content=state.request.system))
    messages.extend(state.request.history)
    for it in state.iterations:
        for call in it.members:
            if call.model == model and call.instance == instance and call.status == "completed":
                messages.append(ChatMessage(role="user", content=it.prompt))
                messages.append(ChatMessage(role="assistant", content=call.text or ""))
    messages.append(ChatMessage(role="user", content=prompt))
    return messages


def _ask_arbiter(state: ConsortiumState) -> list[Command]:
    it = state.current
    req = state.request
    call_id = CallJob.make_id(state.run_id, it.number, "arbiter", req.arbiter, 1)
    it.arbiter = Call(call_id=call_id, role="arbiter", model=req.arbiter, instance=1)
    return [
        CallJob(
            call_id=call_id,
            run_id=state.run_id,
            iteration=it.number,
            role="arbiter",
            model=req.arbiter,
            instance=1,
            messages=[ChatMessage(role="user", content=prompts.arbiter_prompt(state))],
            max_tokens=req.max_tokens,
        )
    ]


def _judge_iteration(state: ConsortiumState, arbiter_text: str, at: datetime) -> Transition[ConsortiumState]:
    it = state.current
    req = state.request
    verdict = parse_arbiter(arbiter_text)
    it.verdict = verdict
    decision, reason = should_stop(it.number, verdict, req)
    it.decision, it.reason = decision, reason
    done = IterationCompleted(
        run_id=state.run_id, iteration=it.number, verdict=verdict, decision=decision, reason=reason, at=at
    )
    if decision == "stop":
        state.status, state.result, state.reason, state.finished_at = "completed", verdict, reason, at
        return Transition(
            state, [done, RunCompleted(run_id=state.run_id, reason=reason, run=view(state), at=at)]
        )
    return Transition(state, [done, *_ask_members(state, prompts.refinement_prompt(req, verdict), at)])


def should_stop(
    iteration: int, verdict: ArbiterVerdict, req: ConsortiumRequest
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


def _find_pending_call(state: ConsortiumState, call_id: str) -> Call | None:
    if not state.iterations:
        return None
    it = state.current
    for call in [*it.members, *([it.arbiter] if it.arbiter else [])]:
        if call.call_id == call_id and call.status == "pending":
            return call
    return None


def _record_outcome(state: ConsortiumState, call: Call, event: CallCompleted | CallFailed) -> None:
    call.attempts, call.latency_ms, call.worker = event.attempts, event.latency_ms, event.worker
    if isinstance(event, CallCompleted):
        call.status, call.text, call.usage = "completed", event.text, event.usage
        if call.role == "member":
            call.confidence = extract_member_confidence(event.text)
        state.usage = state.usage.plus(event.usage)
    else:
        call.status, call.error = "failed", event.error


def _fail(state: ConsortiumState, reason: str, at: datetime) -> Transition[ConsortiumState]:
    state.status, state.reason, state.finished_at = "failed", reason, at
    return Transition(state, [RunFailed(run_id=state.run_id, reason=reason, run=view(state), at=at)])


def _call_view(c: Call) -> CallView:
    return CallView.model_validate(c.model_dump(exclude={"role"}))
