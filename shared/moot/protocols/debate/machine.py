"""The debate protocol: debaters state positions, then argue turn by turn until it is decided.

Pure, like `moot.protocols.consortium`: `start()` and `decide()` take state and an event and
return the new state and the commands (call jobs, run events). No I/O, no clock: times come from
events. Duplicate and late call outcomes return the same state object and no commands.

Stages, in order:
1. `_open_round`        round 1: every debater answers the question on its own, all at once;
                        rounds 2..max_rounds: `_next_turn` asks one debater at a time, in the
                        request's order, each seeing the transcript, its own earlier positions
                        and what the debaters before it said this round (`prompts.turn_prompt`);
2. `_close_round`       when every turn of the round is in;
3. `_after_round`       asks `should_stop`, the one place that says whether and why a debate
                        ends (every turn failed, the judge said STOP, one debater left, the last
                        round played); if it goes on, rounds 2..max_rounds-1 have a checkpoint
                        by `judge_mode`, after which `_after_round` asks again:
   - `external_judge`   `_ask_judge`: CONTINUE or STOP (`parsing.parse_judge_answer`);
   - `self_convergence` `_ask_convictions`: every debater still in says whether another one
                        convinced it (`parsing.parse_conviction`); `_eliminate_convinced`
                        removes those who were;
   - `display_only`     no checkpoint: every round is played;
4. `_end`               the judge's streamed verdict or the first remaining debater's streamed
                        summary (`_ask_final`), or, for `display_only`, no final answer;
5. `_finish`            `debate.completed`, then `run.completed` with the run's view.
A debate may also begin at stage 2 (`seeded`): its round 1 was a vote's (`moot.protocols.vote`),
which goes on as a debate.

Events are the reference program's: `debate.started`, `round.started`, `turn.completed`,
`round.completed`, `judge.decided`, `debater.eliminated`, `convergence.checked`, `final.started`,
(`final.chunk`, published by the worker while it streams), `final.completed`, `debate.completed`
and `error`. A debate starts with `debate.started`, which carries the request (`run.created` is
typed for consortium requests) and the line-up of debaters. It ends with `debate.completed` or `error`, always followed by `run.completed`
or `run.failed` carrying the run's view: those two stay the one end-of-run signal for every
protocol (the recorder, the gateway's `GET` and its SSE, which stops after them, rely on it), so
`moot.messages.TERMINAL_EVENT_TYPES` is exactly {run.completed, run.failed}.

Decisions where the behaviour had room:
- Debaters are the request's members expanded by `count`, numbered 1.. in order (a model listed
  twice continues its instance numbers); each is its own voice, labelled `model#instance` in
  every prompt; its own position is only its own turns.
- The judge's answer is read tolerantly: the first CONTINUE or STOP (a whole word, any case) on
  the first non-empty line, else the first anywhere. An answer with neither is recorded as
  unreadable (`readable: false`) and the debate continues: the call worked, so nothing is
  retried, and more debate is the safe side (the last round always ends it).
- A judge call that fails (the worker has already retried what can be retried) fails the run
  with that reason; it does not quietly stop the debate.
- A conviction answer counts as convinced when its first non-empty line starts with CONVINCED
  (so NOT CONVINCED is not); the name after it is matched against the other debaters' labels,
  then "debater N", then a model name that fits one debater only. A failed conviction call counts
  as not convinced, and is listed in `convergence_status.unanswered`.
- Never everyone is eliminated: when every debater still in is convinced, the one the others
  named most often stays in (ties: the earliest in order) and `convergence_status.kept` says so.
- A failed debater turn is recorded and the turn order goes on; the run fails only when every
  turn of a round failed. A failed final call fails the run.
- A budget of tokens or US dollars is checked before every call is issued (round 1's turns
  together, each later turn, the judge, a round's conviction checks together, the final verdict
  or summary; `moot.protocols.base.over_budget`). When those calls could take the run past it,
  the debate ends before them (`_within_budget`): it has no answer yet, so it fails as at its
  deadline (`error`, then `run.failed`, `stop_reason: budget`), rather than skip to a final call
  that would spend more.
- `{model_name}` in a custom template is the model's name; `{debater_number}` tells instances
  of one model apart. The system prompt, temperature and max_tokens of a debater apply to all of
  its calls; tools and attachments to its debate turns; images to its round-1 turn only.

Texts by reference (`moot.texts`): the state keeps of the request only what decisions need
(`Member` per entry, the prompt, the conversation, the custom template split into pieces), with
every long text (prompt, system prompt, attachment, data URL, tool definitions, answer, verdict)
a `TextRef`; the request itself is one stored JSON document, shown by the view. Prompts are
`Parts` quoting the turns by reference, so a job costs about a hundred bytes per quoted turn
whatever its length, and the worker resolves them. What every job quotes alike is stored once and
quoted as one reference: the conversation (a stored list of messages), each closed round's block
of the transcript (`Round.transcript`, stored when the round closes), a debater's images; the end
events carry the view as one document. Each transition returns the texts it referred to first
(`Transition.texts`) for the caller to store.

`decide()` does not copy the whole state: it copies it shallowly and replaces only what the
event touches (the current round, the final call, the debaters when some are eliminated), so its
work per event does not grow with the answers, and its input is never changed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, Field

from moot.messages import (
    CallCompleted,
    CallFailed,
    CallJob,
    CancelRequested,
    ConvergenceStatus,
    DeadLettered,
    DeadlinePassed,
    DebateComplete,
    DebateError,
    DebateStart,
    DebateTurn,
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
    over_budget,
    stored_history,
)
from moot.protocols.debate import prompts
from moot.protocols.debate.parsing import parse_conviction, parse_judge_answer, shorten
from moot.protocols.debate.prompts import Placeholder
from moot.requests import DebateFormat, DebateRequest, DebaterSpec, JudgeMode, RunMeta
from moot.texts import ImagePart, Parts, Text, TextRef, TextSink, merge
from moot.views import (
    CallStatus,
    ConvictionCallView,
    DebateCallView,
    DebateResult,
    DebaterRef,
    DebaterView,
    DebateView,
    RoundView,
    RunStatus,
    StopReason,
    Usage,
    origin,
)

CallRole = Literal["debater", "judge", "conviction", "final"]


class Debater(BaseModel):
    number: int  # 1-based place in the request's order; stays the same after eliminations
    model: str
    instance: int
    spec: int  # index of its entry in `members`
    active: bool = True
    eliminated_in: int | None = None
    convinced_by: int | None = None  # the debater number it conceded to

    @property
    def label(self) -> str:
        return f"{self.model}#{self.instance}"

    def ref(self) -> DebaterRef:
        return DebaterRef(number=self.number, model=self.model, instance=self.instance, label=self.label)


class Member(BaseModel):
    """One entry of the request's `members`, as its calls need it; long texts by reference."""

    model: str
    count: int
    temperature: float | None = None
    max_tokens: int | None = None
    system: Text | None = None
    tools: TextRef | None = None  # the tool definitions, one JSON document
    # Every attached document, as the labelled blocks that follow each of its turn prompts: one
    # text, written once at the start (32 documents cost a job one reference, not 32).
    attachments: Text | None = None
    # Its round-1 image parts (a data URL can be megabytes), stored as one document when there
    # are several (`TextSink.parts`): 16 images cost the state and the job one reference.
    images: Parts = Field(default_factory=list)

    @classmethod
    def of(cls, spec: DebaterSpec, sink: TextSink) -> Member:
        return cls(
            model=spec.model,
            count=spec.count,
            temperature=spec.temperature,
            max_tokens=spec.max_tokens,
            system=sink.text(spec.system) if spec.system else None,
            tools=sink.document(spec.tools) if spec.tools else None,
            attachments=sink.text(prompts.attachment_blocks(spec.attachments)) if spec.attachments else None,
            images=sink.parts([ImagePart(url=sink.text(url)) for url in spec.images]),
        )


class Call(BaseModel):
    """One model call of the debate and what came of it.

    A debate holds hundreds of these, so the state keeps each small: no call id (it follows from
    the run, the round and the call, `_call_id`) and no empty fields.
    """

    role: CallRole
    model: str
    instance: int
    debater_number: int | None = Field(None, exclude_if=is_none)  # None for the judge
    status: CallStatus = "pending"
    text: Text | None = Field(None, exclude_if=is_none)
    error: str | None = Field(None, exclude_if=is_none)
    usage: Usage = Field(default_factory=Usage)
    latency_ms: int = 0
    attempts: int = 0
    worker: str = ""
    # conviction calls only: what the answer says (a failed call is not convinced)
    convinced: bool | None = Field(None, exclude_if=is_none)
    convinced_by: int | None = Field(None, exclude_if=is_none)


class Round(BaseModel):
    number: int
    speakers: list[int]  # debater numbers, in speaking order
    turns: list[Call] = Field(default_factory=list)
    judge: Call | None = None
    decision: Literal["continue", "stop"] | None = None
    decision_reason: str | None = None  # bounded (`parsing.shorten`): the run's reason quotes it
    decision_readable: bool | None = None
    convictions: list[Call] = Field(default_factory=list)
    eliminated: list[int] = Field(default_factory=list)
    kept: int | None = None  # convinced, but kept in because everyone was
    # The round's block of the transcript (`prompts.round_block`), stored when the round closes:
    # later prompts quote each closed round as one part, not one per turn (`prompts.transcript`).
    transcript: Parts | None = Field(None, exclude_if=is_none)


class DebateState(BaseModel):
    run_id: str
    request: TextRef  # the request as submitted (a JSON document), for the view
    # What decisions need from the request, its long texts by reference:
    prompt: Text
    format: DebateFormat
    judge_mode: JudgeMode
    judge: str | None = None
    max_rounds: int
    members: list[Member]
    # The conversation the debate continues: one stored document of messages, stored once at the
    # start, that every job quotes with one reference (`CallJob.messages`).
    history: TextRef | None = None
    template: list[Text | Placeholder] | None = None  # the custom template, split (`prompts.parse_template`)
    status: RunStatus = "running"
    created_at: datetime
    finished_at: datetime | None = None
    deadline: datetime | None = None  # created_at + the budget's seconds (None: a state from before budgets)
    limits: Limits | None = Field(None, exclude_if=is_none)  # the budget's tokens and USD, when it sets any
    stop_reason: StopReason | None = Field(None, exclude_if=is_none)
    debaters: list[Debater]
    rounds: list[Round] = Field(default_factory=list)
    final: Call | None = None
    result: Text | None = None  # the final verdict or summary
    reason: str | None = None  # why the debate ended (set when its end is decided)
    usage: Usage = Field(default_factory=Usage)
    meta: RunMeta = Field(default_factory=RunMeta)

    @property
    def current(self) -> Round:
        return self.rounds[-1]

    def debater(self, number: int) -> Debater:
        return self.debaters[number - 1]

    def active(self) -> list[Debater]:
        return [d for d in self.debaters if d.active]


State = DebateState


# ---------------------------------------------------------------------------------------------
# Entry points


def start(
    run_id: str, request: DebateRequest, at: datetime, meta: RunMeta | None = None
) -> Transition[DebateState]:
    """A new debate: announce it and open round 1."""
    meta = meta or RunMeta()
    sink = TextSink()
    document = sink.document(request)
    history = stored_history(request.history, sink)
    state = DebateState(
        run_id=run_id,
        request=document,
        prompt=sink.text(request.prompt),
        format=request.format,
        judge_mode=request.judge_mode,
        judge=request.judge,
        max_rounds=request.max_rounds,
        members=[Member.of(spec, sink) for spec in request.members],
        history=sink.document(history) if history else None,
        template=prompts.parse_template(request.custom_prompt, sink) if request.custom_prompt else None,
        created_at=at,
        deadline=at + timedelta(seconds=request.budget.seconds),
        limits=Limits.of(request.budget),
        debaters=_line_up(request),
        meta=meta,
    )
    announce = DebateStart(
        run_id=run_id,
        request=document,
        max_rounds=request.max_rounds,
        format=request.format,
        judge_mode=request.judge_mode,
        judge=request.judge,
        debaters=[d.ref() for d in state.debaters],
        meta=meta,
        at=at,
    )
    # A budget too small for round 1 fails the debate here: `debate.started`, `error`, `run.failed`.
    return Transition(state, [announce, *_open_round(state, at, sink)], sink.texts)


def decide(state: DebateState, event: Any) -> Transition[DebateState]:
    """Fold one call outcome into the debate. Duplicates and late arrivals change nothing."""
    if isinstance(event, CancelRequested):
        return cancel(state, event, view)
    if isinstance(event, DeadLettered):
        return dead_lettered(state, event, view, _announce_error(event.at))
    if isinstance(event, DeadlinePassed):
        # A debate has no answer before its final call's, which ends it at once: one still running
        # at its deadline has none, and fails (after an `error`, like any failed debate).
        where = f"during round {len(state.rounds)}"
        return end_at_deadline(state, event, view, where, announce=_announce_error(event.at))
    if state.status != "running" or not isinstance(event, CallCompleted | CallFailed):
        return Transition(state, [])
    if _pending_call(state, event.call_id) is None:
        return Transition(state, [])
    state = _touchable(state)
    call = _pending_call(state, event.call_id)
    assert call is not None
    sink = TextSink()
    _record_outcome(state, call, event, sink)

    if call.role == "debater":
        commands = _turn_taken(state, call, event.at, sink)
    elif call.role == "judge":
        commands = _judge_answered(state, call, event, sink)
    elif call.role == "conviction":
        commands = _conviction_answered(state, event.at, sink)
    else:
        commands = _final_answered(state, call, event.at, sink)
    return Transition(state, commands, sink.texts)


def seeded(state: DebateState, turns: Sequence[DebateCallView], at: datetime) -> Transition[DebateState]:
    """A debate whose round 1 was played before it (a vote's, escalated): the round is closed
    (`round.completed`) and the debate goes on as after any round 1.

    `state` is as `start` builds it, without rounds (`usage`: what the run has spent, those
    calls included); `turns` are round 1's calls, ended, in the debaters' order, with round 1's
    ids (`CallJob.make_id(run, 1, "debater", model, instance)`): every later event names them
    as this debate's own. No `debate.started` nor `round.started` is published for it.
    """
    if state.rounds:
        raise ValueError("a seeded debate has no round yet")
    if [(t.call_id, t.status == "pending") for t in turns] != [
        (CallJob.make_id(state.run_id, 1, "debater", d.model, d.instance), False) for d in state.debaters
    ]:
        raise ValueError("the seeded calls must be round 1's debater calls, in order, every one ended")
    calls = [
        Call(
            role="debater",
            model=d.model,
            instance=d.instance,
            debater_number=d.number,
            status=t.status,
            text=t.text,
            error=t.error,
            usage=t.usage,
            latency_ms=t.latency_ms,
            attempts=t.attempts,
            worker=t.worker,
        )
        for d, t in zip(state.debaters, turns, strict=True)
    ]
    state = state.model_copy(
        update={"rounds": [Round(number=1, speakers=[d.number for d in state.debaters], turns=calls)]}
    )
    sink = TextSink()
    return Transition(state, _close_round(state, at, sink), sink.texts)


def view(state: DebateState) -> DebateView:
    """The debate as the API shows it; its long texts stay references (readers hydrate them)."""
    final = state.final
    return DebateView(
        id=state.run_id,
        status=state.status,
        created_at=state.created_at,
        finished_at=state.finished_at,
        reason=state.reason,
        **origin(state.meta),
        deadline=state.deadline,
        stop_reason=state.stop_reason,
        request=state.request,
        debaters=[
            DebaterView(
                **d.ref().model_dump(),
                active=d.active,
                eliminated_in=d.eliminated_in,
                convinced_by=state.debater(d.convinced_by).label if d.convinced_by else None,
            )
            for d in state.debaters
        ],
        rounds=[
            RoundView(
                number=r.number,
                speakers=[state.debater(n).label for n in r.speakers],
                turns=[_call_view(state, c, r.number) for c in r.turns],
                judge=_call_view(state, r.judge, r.number) if r.judge else None,
                decision=r.decision,
                decision_reason=r.decision_reason,
                decision_readable=r.decision_readable,
                convictions=[_conviction_view(state, c, r.number) for c in r.convictions],
                eliminated=[state.debater(n).label for n in r.eliminated],
                kept=state.debater(r.kept).label if r.kept else None,
            )
            for r in state.rounds
        ],
        final=_call_view(state, final, state.rounds[-1].number) if final else None,
        result=(
            DebateResult(text=state.result, model=final.model, by=_final_by(final))
            if final and state.result is not None
            else None
        ),
        usage=state.usage,
    )


def _touchable(state: DebateState) -> DebateState:
    """A copy of `state` whose current round and final call may be changed (and rounds added).

    Earlier rounds, the debaters (see `_eliminate_convinced`), the request's texts and the
    conversation are shared with the input, which no stage changes.
    """
    copy = state.model_copy()
    copy.rounds = [*state.rounds[:-1], state.current.model_copy(deep=True)]
    if state.final is not None:
        copy.final = state.final.model_copy()
    return copy


# ---------------------------------------------------------------------------------------------
# Stages


def _line_up(request: DebateRequest) -> list[Debater]:
    """Every member instance is a debater of its own, in the request's order."""
    debaters: list[Debater] = []
    seen: dict[str, int] = {}
    for spec_index, spec in enumerate(request.members):
        for _ in range(spec.count):
            seen[spec.model] = seen.get(spec.model, 0) + 1
            debaters.append(
                Debater(
                    number=len(debaters) + 1, model=spec.model, instance=seen[spec.model], spec=spec_index
                )
            )
    return debaters


def _open_round(state: DebateState, at: datetime, sink: TextSink) -> list[Command]:
    number = len(state.rounds) + 1
    speakers = state.active()
    state.rounds.append(Round(number=number, speakers=[d.number for d in speakers]))
    opened = RoundStart(run_id=state.run_id, round=number, debaters=[d.ref() for d in speakers], at=at)
    # Round 1: independent first positions, nobody sees anybody, so everyone is asked at once.
    # Later rounds: the first speaker (`_next_turn` asks the others).
    jobs = [_ask_debater(state, d) for d in (speakers if number == 1 else speakers[:1])]
    # A round the budget cannot open is taken back: the view shows no round that never began.
    return _within_budget(state, jobs, at, sink, take_back=state.rounds.pop, before=[opened])


def _next_turn(state: DebateState, at: datetime, sink: TextSink) -> list[Command]:
    rnd = state.current
    speaker = state.debater(rnd.speakers[len(rnd.turns)])
    return _within_budget(state, [_ask_debater(state, speaker)], at, sink, take_back=rnd.turns.pop)


def _ask_debater(state: DebateState, debater: Debater) -> CallJob:
    rnd = state.current
    member = state.members[debater.spec]
    content: Parts = prompts.turn_prompt(state, debater)
    if member.attachments:
        content = merge([*content, member.attachments])
    if rnd.number == 1:
        content += member.images
    call = _new_call(state, "debater", debater.model, debater.instance, debater.number)
    rnd.turns.append(call)
    return _job(state, call, member, content, tools=member.tools)


def _turn_taken(state: DebateState, call: Call, at: datetime, sink: TextSink) -> list[Command]:
    rnd = state.current
    done: list[Command] = [
        RoundModelComplete(run_id=state.run_id, round=rnd.number, at=at, **_turn(state, call))
    ]
    if any(t.status == "pending" for t in rnd.turns):
        return done  # round 1: others still answering
    if len(rnd.turns) < len(rnd.speakers):
        return [*done, *_next_turn(state, at, sink)]
    return [*done, *_close_round(state, at, sink)]


def _close_round(state: DebateState, at: datetime, sink: TextSink) -> list[Command]:
    """Every turn is in. The round's block of the transcript is stored now, once: every later
    prompt that quotes the transcript quotes it as one part (`prompts.transcript`)."""
    rnd = state.current
    rnd.transcript = sink.parts(prompts.round_block(state, rnd))
    closed = RoundComplete(
        run_id=state.run_id,
        round=rnd.number,
        responses=[DebateTurn(**_turn(state, t)) for t in rnd.turns],
        at=at,
    )
    return [closed, *_after_round(state, at, sink)]


def should_stop(state: DebateState) -> tuple[Literal["stop", "fail", "go_on"], str]:
    """Where a debate stops, and why: asked after each round and after each checkpoint.

    In this order: every turn of the round failed (the run fails); the judge said STOP; only one
    debater is left (the others were convinced); the round was the last one (`max_rounds`).
    Anything else goes on, to the round's checkpoint (judge or convictions) or the next round.
    """
    rnd = state.current
    if rnd.turns and all(t.status == "failed" for t in rnd.turns):
        errors = "; ".join(f"{t.model}#{t.instance}: {t.error}" for t in rnd.turns)
        return "fail", f"every debater failed in round {rnd.number}: {errors}"
    if rnd.decision == "stop":
        return "stop", f"the judge stopped the debate after round {rnd.number}: {rnd.decision_reason}"
    remaining = state.active()
    if len(remaining) == 1:
        return "stop", f"only {remaining[0].label} remains after round {rnd.number}"
    if rnd.number >= state.max_rounds:
        return "stop", f"reached max_rounds ({state.max_rounds})"
    return "go_on", ""


def _after_round(state: DebateState, at: datetime, sink: TextSink) -> list[Command]:
    """The round is over: stop, ask the round's checkpoint, or open the next round.

    Rounds 2..max_rounds-1 have a checkpoint: the judge (`external_judge`) or every debater's
    conviction (`self_convergence`); `display_only` has none.
    """
    verdict, reason = should_stop(state)
    if verdict == "fail":
        return _fail(state, reason, at, sink)
    if verdict == "stop":
        return _end(state, reason, at, sink)
    checkpoint = state.current.number >= 2 and state.current.judge is None and not state.current.convictions
    if checkpoint and state.judge_mode == "external_judge":
        return _ask_judge(state, at, sink)
    if checkpoint and state.judge_mode == "self_convergence":
        return _ask_convictions(state, at, sink)
    return _open_round(state, at, sink)


def _end(state: DebateState, reason: str, at: datetime, sink: TextSink) -> list[Command]:
    """The debate is decided: the final answer is asked for, or (display only) the run ends."""
    state.reason = reason
    if state.judge_mode == "display_only":
        return _finish(state, reason, at, sink)
    return _ask_final(state, at, sink)


# External judge ------------------------------------------------------------------------------


def _ask_judge(state: DebateState, at: datetime, sink: TextSink) -> list[Command]:
    rnd = state.current
    assert state.judge is not None
    rnd.judge = _new_call(state, "judge", state.judge, 1, None)
    job = _job(state, rnd.judge, None, prompts.judge_decision_prompt(state))
    return _within_budget(state, [job], at, sink, take_back=lambda: setattr(rnd, "judge", None))


def _judge_answered(
    state: DebateState, call: Call, event: CallCompleted | CallFailed, sink: TextSink
) -> list[Command]:
    rnd = state.current
    if isinstance(event, CallFailed):
        return _fail(state, f"the judge's call after round {rnd.number} failed: {call.error}", event.at, sink)
    text = _answer(event)
    word, reason = parse_judge_answer(text)
    go_on = word != "STOP"
    rnd.decision = "continue" if go_on else "stop"
    rnd.decision_readable = word is not None
    # Quoted in the run's `reason` (by `should_stop`): bounded; the whole answer is `raw`.
    rnd.decision_reason = (
        shorten(reason)
        if word
        else "the judge's answer named neither CONTINUE nor STOP; the debate continues"
    )
    decided = JudgeDecision.model_validate(
        {
            "run_id": state.run_id,
            "round": rnd.number,
            "model": call.model,
            "continue": go_on,
            "readable": word is not None,
            "reason": rnd.decision_reason,
            "raw": sink.text(text),
            "at": event.at,
        }
    )
    return [decided, *_after_round(state, event.at, sink)]


# Self-convergence ----------------------------------------------------------------------------


def _ask_convictions(state: DebateState, at: datetime, sink: TextSink) -> list[Command]:
    rnd = state.current
    jobs: list[CallJob] = []
    for debater in state.active():
        prompt = prompts.conviction_prompt(state, debater)
        call = _new_call(state, "conviction", debater.model, debater.instance, debater.number)
        rnd.convictions.append(call)
        jobs.append(_job(state, call, state.members[debater.spec], prompt))
    return _within_budget(state, jobs, at, sink, take_back=rnd.convictions.clear)


def _conviction_answered(state: DebateState, at: datetime, sink: TextSink) -> list[Command]:
    if any(c.status == "pending" for c in state.current.convictions):
        return []
    return _eliminate_convinced(state, at, sink)


def _eliminate_convinced(state: DebateState, at: datetime, sink: TextSink) -> list[Command]:
    rnd = state.current
    active = state.active()
    convinced = [c for c in rnd.convictions if c.convinced]
    if convinced and len(convinced) == len(active):
        rnd.kept = _most_persuasive(convinced, active)
    # The debaters are shared with the state decide() was given: changed on copies only.
    state.debaters = [d.model_copy() for d in state.debaters]
    commands: list[Command] = []
    for c in convinced:
        assert c.debater_number is not None
        debater = state.debater(c.debater_number)
        if debater.number == rnd.kept:
            continue
        debater.active, debater.eliminated_in, debater.convinced_by = False, rnd.number, c.convinced_by
        rnd.eliminated.append(debater.number)
        commands.append(
            ModelEliminated(
                run_id=state.run_id,
                round=rnd.number,
                model=debater.model,
                instance=debater.instance,
                debater_number=debater.number,
                label=debater.label,
                convinced_by=state.debater(c.convinced_by).label if c.convinced_by else None,
                reasoning=c.text or "",
                at=at,
            )
        )
    remaining = state.active()
    commands.append(
        ConvergenceStatus(
            run_id=state.run_id,
            round=rnd.number,
            eliminated=[state.debater(n).label for n in rnd.eliminated],
            remaining=[d.label for d in remaining],
            kept=state.debater(rnd.kept).label if rnd.kept else None,
            unanswered=[f"{c.model}#{c.instance}" for c in rnd.convictions if c.status == "failed"],
            at=at,
        )
    )
    return [*commands, *_after_round(state, at, sink)]


def _most_persuasive(convinced: list[Call], active: list[Debater]) -> int:
    """Who stays when everyone is convinced: the one named most often; ties go to the earliest."""
    votes = {d.number: 0 for d in active}
    for c in convinced:
        if c.convinced_by in votes:
            votes[c.convinced_by] += 1
    return max(votes, key=lambda number: (votes[number], -number))


# The end ---------------------------------------------------------------------------------------


def _ask_final(state: DebateState, at: datetime, sink: TextSink) -> list[Command]:
    """The judge's verdict (external judge) or the first remaining debater's summary, streamed."""
    member: Member | None
    if state.judge_mode == "external_judge":
        assert state.judge is not None
        call = _new_call(state, "final", state.judge, 1, None)
        prompt = prompts.verdict_prompt(state)
        member = None
    else:
        winner = state.active()[0]
        call = _new_call(state, "final", winner.model, winner.instance, winner.number)
        prompt = prompts.summary_prompt(state, winner)
        member = state.members[winner.spec]
    state.final = call
    started = FinalStart(run_id=state.run_id, call_id=_call_id(state, call), at=at, **_final_who(state, call))
    job = _job(state, call, member, prompt, stream=True)
    return _within_budget(
        state, [job], at, sink, take_back=lambda: setattr(state, "final", None), before=[started]
    )


def _final_answered(state: DebateState, call: Call, at: datetime, sink: TextSink) -> list[Command]:
    what = "verdict" if call.debater_number is None else "summary"
    if call.status == "failed":
        return _fail(state, f"the final {what} call ({call.model}) failed: {call.error}", at, sink)
    state.result = call.text or ""
    complete = FinalComplete(
        run_id=state.run_id,
        call_id=_call_id(state, call),
        text=state.result,
        at=at,
        **_final_who(state, call),
    )
    return [complete, *_finish(state, state.reason or "the debate is over", at, sink)]


def _finish(state: DebateState, reason: str, at: datetime, sink: TextSink) -> list[Command]:
    """The debate is over: `debate.completed`, then `run.completed` with the view (a document)."""
    state.status, state.reason, state.finished_at = "completed", reason, at
    return [
        DebateComplete(run_id=state.run_id, rounds=len(state.rounds), reason=reason, at=at),
        RunCompleted(run_id=state.run_id, reason=reason, run=sink.document(view(state)), at=at),
    ]


def _announce_error(at: datetime) -> Callable[[DebateState, str], list[Command]]:
    """A debate's `error` event, which precedes its `run.failed` (see `_fail`); with no round when
    the debate ends before round 1 (a budget too small for its first calls)."""
    return lambda state, reason: [
        DebateError(run_id=state.run_id, message=reason, round=len(state.rounds) or None, at=at)
    ]


def _within_budget(
    state: DebateState,
    jobs: list[CallJob],
    at: datetime,
    sink: TextSink,
    *,
    take_back: Callable[[], object],
    before: list[Command] | None = None,
) -> list[Command]:
    """`before` (the events announcing the calls) and the jobs, when the budget can take them
    (`moot.protocols.base.over_budget`). Otherwise the debate ends before them: `take_back` first
    removes the calls (or the round) just added to the state, so that the view shows no call that
    was never issued, then it fails like at its deadline (a debate has no answer before its final
    call's): `error`, then `run.failed`, `stop_reason: budget`.
    """
    why = over_budget(state.limits, state.usage, jobs)
    if why is None:
        return [*(before or []), *jobs]
    take_back()
    return end_early(state, at, "budget", why, view, sink, announce=_announce_error(at))


def _fail(state: DebateState, reason: str, at: datetime, sink: TextSink) -> list[Command]:
    state.status, state.reason, state.finished_at = "failed", reason, at
    return [
        DebateError(run_id=state.run_id, message=reason, round=state.current.number, at=at),
        RunFailed(run_id=state.run_id, reason=reason, run=sink.document(view(state)), at=at),
    ]


# ---------------------------------------------------------------------------------------------
# Helpers


def _new_call(
    state: DebateState, role: CallRole, model: str, instance: int, debater_number: int | None
) -> Call:
    return Call(role=role, model=model, instance=instance, debater_number=debater_number)


def _call_id(state: DebateState, call: Call, round_number: int | None = None) -> str:
    """The call's deterministic id; its round is the current one unless said (the final call's
    is the last round, after which no round opens)."""
    number = state.current.number if round_number is None else round_number
    return CallJob.make_id(state.run_id, number, call.role, call.model, call.instance)


def _job(
    state: DebateState,
    call: Call,
    member: Member | None,
    prompt: Parts,
    *,
    tools: TextRef | None = None,
    stream: bool = False,
) -> CallJob:
    """The call job; a debater's system prompt, temperature and max_tokens go with all its calls.

    The conversation the debate continues (`history`) comes before every prompt of the run.
    """
    messages: list[JobMessage | TextRef] = [JobMessage(role="user", content=prompt)]
    if state.history is not None:
        messages = [state.history, *messages]
    if member is not None and member.system:
        messages = [JobMessage(role="system", content=[member.system]), *messages]
    return CallJob(
        call_id=_call_id(state, call),
        run_id=state.run_id,
        iteration=state.current.number,
        role=call.role,
        model=call.model,
        instance=call.instance,
        messages=messages,
        temperature=member.temperature if member else None,
        max_tokens=member.max_tokens if member else None,
        tools=tools,
        stream=stream,
    )


def _pending_call(state: DebateState, call_id: str) -> Call | None:
    if not state.rounds:
        return None
    rnd = state.current
    candidates = [*rnd.turns, *rnd.convictions, *([rnd.judge] if rnd.judge else [])]
    if state.final:
        candidates.append(state.final)
    for call in candidates:
        if call.status == "pending" and _call_id(state, call) == call_id:
            return call
    return None


def _answer(event: CallCompleted) -> str:
    """A call's answer: `RunStore` resolves a reference before `decide()` sees the event."""
    assert isinstance(event.text, str), "decide() needs the answer itself, not a reference"
    return event.text


def _record_outcome(
    state: DebateState, call: Call, event: CallCompleted | CallFailed, sink: TextSink
) -> None:
    call.attempts, call.latency_ms, call.worker = event.attempts, event.latency_ms, event.worker
    if isinstance(event, CallCompleted):
        text = _answer(event)
        call.status, call.text, call.usage = "completed", sink.text(text), event.usage
        state.usage = state.usage.plus(event.usage)
        if state.limits is not None:
            state.limits = state.limits.after(event.usage)
        if call.role == "conviction":
            others = [d for d in state.active() if d.number != call.debater_number]
            call.convinced, call.convinced_by = parse_conviction(text, others)
    else:
        call.status, call.error = "failed", event.error
        if call.role == "conviction":
            call.convinced, call.convinced_by = False, None


def _turn(state: DebateState, call: Call) -> dict[str, Any]:
    assert call.debater_number is not None
    return {
        "call_id": _call_id(state, call),
        "model": call.model,
        "instance": call.instance,
        "debater_number": call.debater_number,
        "label": state.debater(call.debater_number).label,
        "failed": call.status == "failed",
        "text": call.text,
        "error": call.error,
    }


def _final_by(call: Call) -> Literal["judge", "debater"]:
    return "judge" if call.debater_number is None else "debater"


def _final_who(state: DebateState, call: Call) -> dict[str, Any]:
    number = call.debater_number
    return {
        "model": call.model,
        "by": _final_by(call),
        "debater_number": number,
        "label": state.debater(number).label if number else None,
    }


def _call_view(state: DebateState, c: Call, round_number: int) -> DebateCallView:
    label = state.debater(c.debater_number).label if c.debater_number is not None else None
    return DebateCallView(
        call_id=_call_id(state, c, round_number),
        model=c.model,
        instance=c.instance,
        debater_number=c.debater_number,
        status=c.status,
        text=c.text,
        error=c.error,
        usage=c.usage,
        latency_ms=c.latency_ms,
        attempts=c.attempts,
        worker=c.worker,
        label=label,
    )


def _conviction_view(state: DebateState, c: Call, round_number: int) -> ConvictionCallView:
    convinced_by = state.debater(c.convinced_by).label if c.convinced_by else None
    return ConvictionCallView(
        **dict(_call_view(state, c, round_number)), convinced=c.convinced, convinced_by=convinced_by
    )
