"""The Mixture-of-Agents protocol (Wang et al. 2024): layers of proposers, then an aggregator.

Pure: `start()` and `decide()` take state and an event and return the new state and the
commands (call jobs to run, events to publish). No I/O, no clock: times come from events.

Stages, in order:
1. `_ask_layer`      a layer's proposers answer in parallel: layer 1 the question itself
                     (`prompts.question_prompt`), every later layer the question with the previous
                     layer's answers (`prompts.synthesis_prompt`);
2. `_close_layer`    once every proposer of the layer is in (answered or failed), the next
                     layer's prompt quotes the answers (a failed proposer is left out); a layer
                     without any answer fails the run;
3. `_ask_aggregator` after the last layer, the aggregator, with the same kind of prompt quoting
                     that layer's answers, writes the run's answer (`RunResult`).

Layer n is step n (`StepStarted`/`StepCompleted` named "layer", and `CallJob.iteration`); the
aggregator is step `len(layers) + 1` ("aggregate"): every step that starts is completed, the
last one just before the run's end event.

A run that ends early, before the calls that could exceed its budget or at its deadline
(`stop_reason`), completes with the first answer, in the request's order, of the last layer
whose proposers are all in: each layer's answers refine those of the layer before, so that is
among the most refined answers the run has; a layer still under way is not picked from (which of its
answers came first is chance). Before any layer is in, the run fails.

The state keeps every layer in full, its texts by reference: a request has at most 64 proposer
instances over all its layers, so the state stays small (about 21 KB at that largest request,
tests/unit/test_moa.py) and storing finished layers apart, as the consortium does with its
iterations, would not pay for the documents it writes.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field

from moot.messages import (
    CallCompleted,
    CallFailed,
    CallJob,
    CancelRequested,
    DeadLettered,
    DeadlinePassed,
    Role,
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
from moot.protocols.moa import prompts
from moot.requests import MemberSpec, MoaRequest, RunMeta
from moot.texts import Parts, Text, TextRef, TextSink
from moot.views import (
    CallStatus,
    CallView,
    LayerView,
    MoaView,
    RunResult,
    RunStatus,
    StopReason,
    Usage,
    origin,
)


class Call(BaseModel):
    """One model call and what came of it; its answer by reference when long.

    Who was called comes from where it sits (a layer's `calls` follow `Plan.instances()`, the
    aggregator is `Plan.aggregator`), its id is derived (`CallJob.make_id`).
    """

    status: CallStatus = "pending"
    text: Text | None = Field(None, exclude_if=is_none)
    error: str | None = Field(None, exclude_if=is_none)
    usage: Usage = Field(default_factory=Usage)
    latency_ms: int = 0
    attempts: int = 0
    worker: str = ""


class Layer(BaseModel):
    """A layer asked: one call per proposer instance, in the order of `Plan.instances(number)`."""

    number: int
    calls: list[Call]

    @property
    def all_in(self) -> bool:
        """Every proposer has answered or failed."""
        return all(c.status != "pending" for c in self.calls)


class Plan(BaseModel):
    """What the run's decisions need from its request: who is asked, and how."""

    layers: list[list[MemberSpec]]
    aggregator: str
    temperature: float | None = None
    max_tokens: int | None = None

    def instances(self, layer: int) -> list[tuple[str, int]]:
        """(model, instance) of every proposer instance of `layer` (1-based), in the request's order."""
        return [(spec.model, i) for spec in self.layers[layer - 1] for i in range(1, spec.count + 1)]

    @property
    def aggregate_step(self) -> int:
        return len(self.layers) + 1


class MoaState(BaseModel):
    """A run: its plan, the request's texts by reference, the layers asked so far, the aggregator."""

    run_id: str
    plan: Plan
    prompt: Text
    system: Text | None = None
    history: TextRef | None = None  # the conversation the run continues: one reference in every job
    request: TextRef  # the whole request (a JSON document), for the view
    status: RunStatus = "running"
    created_at: datetime
    finished_at: datetime | None = None
    deadline: datetime
    limits: Limits | None = Field(None, exclude_if=is_none)  # the budget's tokens and USD, when it sets any
    stop_reason: StopReason | None = Field(None, exclude_if=is_none)
    layers: list[Layer] = Field(default_factory=list)  # asked so far; only the last may be under way
    aggregator: Call | None = None
    usage: Usage = Field(default_factory=Usage)
    result: RunResult | None = None
    reason: str | None = None
    meta: RunMeta = Field(default_factory=RunMeta)


State = MoaState


# ---------------------------------------------------------------------------------------------
# Entry points


def start(
    run_id: str, request: MoaRequest, at: datetime, meta: RunMeta | None = None
) -> Transition[MoaState]:
    """A new run: record it and ask layer 1's proposers the question."""
    meta = meta or RunMeta()
    sink = TextSink()
    history = stored_history(request.history, sink)
    state = MoaState(
        run_id=run_id,
        plan=Plan.model_validate(request.model_dump(include=set(Plan.model_fields))),
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
    # A budget too small for layer 1 fails the run here: `run.created`, then `run.failed`.
    commands += _ask_layer(state, prompts.question_prompt(state.prompt), at, sink)
    return Transition(state, commands, sink.texts)


def decide(state: MoaState, event: Any) -> Transition[MoaState]:
    """Fold one event into the run. Duplicates and late arrivals change nothing.

    `state` is not modified: the new state is a shallow copy in which only the layer under way
    (or the aggregator) and the call the event answers are new objects.
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
    answers_aggregator = call is state.aggregator
    sink = TextSink()
    state = _record_outcome(state, call, event, sink)
    if answers_aggregator:
        if isinstance(event, CallFailed):
            data = {"answered": 0, "failed": 1}
            step = state.plan.aggregate_step
            closed = StepCompleted(run_id=state.run_id, step=step, name="aggregate", data=data, at=event.at)
            commands = [closed, *_fail(state, f"aggregator call failed: {event.error}", event.at, sink)]
        else:
            commands = _finish(state, event.at, sink)
        return Transition(state, commands, sink.texts)
    if not state.layers[-1].all_in:
        return Transition(state, [], sink.texts)
    return Transition(state, _close_layer(state, event.at, sink), sink.texts)


def view(state: MoaState) -> MoaView:
    """The run as the API shows it: its texts as references (readers hydrate them)."""
    plan = state.plan
    aggregator = None
    if state.aggregator is not None:
        aggregator = _call_view(
            state, plan.aggregate_step, "aggregator", plan.aggregator, 1, state.aggregator
        )
    return MoaView(
        id=state.run_id,
        status=state.status,
        created_at=state.created_at,
        finished_at=state.finished_at,
        reason=state.reason,
        **origin(state.meta),
        deadline=state.deadline,
        stop_reason=state.stop_reason,
        request=state.request,
        layers=[
            LayerView(
                number=layer.number,
                calls=[
                    _call_view(state, layer.number, "proposer", model, instance, c)
                    for (model, instance), c in zip(plan.instances(layer.number), layer.calls, strict=True)
                ],
            )
            for layer in state.layers
        ],
        aggregator=aggregator,
        result=state.result,
        usage=state.usage,
    )


# ---------------------------------------------------------------------------------------------
# Stages
# Each stage changes `state` in place: it is the copy `start` or `decide` made, and what it
# changes it assigns anew (the list of layers, the aggregator, the run's status), never sharing
# a change with the state `decide` was given.


def _ask_layer(state: MoaState, prompt: Parts, at: datetime, sink: TextSink) -> list[Command]:
    """Open the next layer: a job per proposer instance, unless the budget cannot take them."""
    number = len(state.layers) + 1
    jobs = [
        _job(state, number, "proposer", model, instance, prompt)
        for model, instance in state.plan.instances(number)
    ]
    if why := over_budget(state.limits, state.usage, jobs):
        return _stop_for_budget(state, why, at, sink)
    state.layers = [*state.layers, Layer(number=number, calls=[Call() for _ in jobs])]
    started = StepStarted(
        run_id=state.run_id, step=number, name="layer", call_ids=[j.call_id for j in jobs], at=at
    )
    return [started, *jobs]


def _close_layer(state: MoaState, at: datetime, sink: TextSink) -> list[Command]:
    """Every proposer of the layer is in: the next layer or the aggregator, on its answers."""
    layer = state.layers[-1]
    answered = _answers(state, layer)
    data = {"layer": layer.number, "answered": len(answered), "failed": len(layer.calls) - len(answered)}
    completed = StepCompleted(run_id=state.run_id, step=layer.number, name="layer", data=data, at=at)
    if not answered:
        errors = "; ".join(f"{model}#{instance}: {c.error}" for model, instance, c in _calls(state, layer))
        return [
            completed,
            *_fail(state, f"every proposer failed in layer {layer.number}: {errors}", at, sink),
        ]
    prompt = prompts.synthesis_prompt(state.prompt, [text for _, _, text in answered])
    if layer.number < len(state.plan.layers):
        return [completed, *_ask_layer(state, prompt, at, sink)]
    return [completed, *_ask_aggregator(state, prompt, at, sink)]


def _ask_aggregator(state: MoaState, prompt: Parts, at: datetime, sink: TextSink) -> list[Command]:
    """The last layer is in: the aggregator's job, unless the budget cannot take it."""
    plan = state.plan
    job = _job(state, plan.aggregate_step, "aggregator", plan.aggregator, 1, prompt)
    if why := over_budget(state.limits, state.usage, [job]):
        return _stop_for_budget(state, why, at, sink)
    state.aggregator = Call()
    started = StepStarted(
        run_id=state.run_id, step=plan.aggregate_step, name="aggregate", call_ids=[job.call_id], at=at
    )
    return [started, job]


def _finish(state: MoaState, at: datetime, sink: TextSink) -> list[Command]:
    """The aggregator answered: its answer is the run's."""
    assert state.aggregator is not None and state.aggregator.text is not None
    layers = len(state.plan.layers)
    state.result = RunResult(text=state.aggregator.text, model=state.plan.aggregator)
    state.status, state.finished_at = "completed", at
    state.reason = f"the aggregator answered after {layers} layer{'s' if layers > 1 else ''}"
    step = state.plan.aggregate_step
    return [
        StepCompleted(run_id=state.run_id, step=step, name="aggregate", data={"answered": 1}, at=at),
        RunCompleted(run_id=state.run_id, reason=state.reason, run=sink.document(view(state)), at=at),
    ]


def _job(state: MoaState, step: int, role: Role, model: str, instance: int, prompt: Parts) -> CallJob:
    """A call: the request's system message, the conversation it continues (one reference), the prompt."""
    messages = job_messages(state.system, state.history, prompt)
    return CallJob(
        call_id=CallJob.make_id(state.run_id, step, role, model, instance),
        run_id=state.run_id,
        iteration=step,
        role=role,
        model=model,
        instance=instance,
        messages=messages,
        temperature=state.plan.temperature,
        max_tokens=state.plan.max_tokens,
    )


# ---------------------------------------------------------------------------------------------
# Ending early


def _last_answer(state: MoaState) -> tuple[RunResult, str] | None:
    """What a run ended early ends with: the first answer of the last layer that is all in."""
    finished = [layer for layer in state.layers if layer.all_in]
    if not finished:
        return None
    layer = finished[-1]
    model, instance, text = _answers(state, layer)[0]  # a layer without one failed the run
    return RunResult(text=text, model=model), f"the answer of {model}#{instance} in layer {layer.number}"


def _stop_at_deadline(state: MoaState, event: DeadlinePassed) -> Transition[MoaState]:
    # A running state has a layer: a budget too small for layer 1 fails the run at its start.
    where = "while the aggregator answered" if state.aggregator else f"during layer {len(state.layers)}"
    return end_at_deadline(state, event, view, where, _last_answer(state))


def _stop_for_budget(state: MoaState, why: str, at: datetime, sink: TextSink) -> list[Command]:
    return end_early(state, at, "budget", why, view, sink, _last_answer(state))


def _fail(state: MoaState, reason: str, at: datetime, sink: TextSink) -> list[Command]:
    state.status, state.reason, state.finished_at = "failed", reason, at
    return [RunFailed(run_id=state.run_id, reason=reason, run=sink.document(view(state)), at=at)]


# ---------------------------------------------------------------------------------------------
# Helpers


def _calls(state: MoaState, layer: Layer) -> list[tuple[str, int, Call]]:
    """(model, instance, call) of every proposer of `layer`."""
    return [
        (model, instance, c)
        for (model, instance), c in zip(state.plan.instances(layer.number), layer.calls, strict=True)
    ]


def _answers(state: MoaState, layer: Layer) -> list[tuple[str, int, Text]]:
    """(model, instance, answer) of every proposer of `layer` that answered, in the request's order."""
    return [(model, instance, c.text) for model, instance, c in _calls(state, layer) if c.text is not None]


def _pending_call(state: MoaState, event_call_id: str) -> Call | None:
    """The call the outcome answers, if it still waits for one: the aggregator's, or the layer's under way."""
    plan = state.plan
    if state.aggregator is not None:
        aggregator_id = CallJob.make_id(state.run_id, plan.aggregate_step, "aggregator", plan.aggregator, 1)
        return (
            state.aggregator
            if state.aggregator.status == "pending" and aggregator_id == event_call_id
            else None
        )
    layer = state.layers[-1]
    for model, instance, call in _calls(state, layer):
        if (
            call.status == "pending"
            and CallJob.make_id(state.run_id, layer.number, "proposer", model, instance) == event_call_id
        ):
            return call
    return None


def _record_outcome(
    state: MoaState, call: Call, event: CallCompleted | CallFailed, sink: TextSink
) -> MoaState:
    """A copy of `state` with the call's outcome: only the call, and the layer that holds it, are new."""
    outcome, usage, limits = outcome_of(event, state.usage, state.limits, sink)
    update: dict[str, Any] = {"usage": usage, "limits": limits}
    if call is state.aggregator:
        update["aggregator"] = call.model_copy(update=outcome)
    else:
        layer = state.layers[-1]
        calls = [c.model_copy(update=outcome) if c is call else c for c in layer.calls]
        update["layers"] = [*state.layers[:-1], layer.model_copy(update={"calls": calls})]
    return state.model_copy(update=update)


def _call_view(state: MoaState, step: int, role: str, model: str, instance: int, c: Call) -> CallView:
    return CallView(
        call_id=CallJob.make_id(state.run_id, step, role, model, instance),
        model=model,
        instance=instance,
        status=c.status,
        text=c.text,
        error=c.error,
        usage=c.usage,
        latency_ms=c.latency_ms,
        attempts=c.attempts,
        worker=c.worker,
    )
