"""The debate protocol: debaters state positions, then argue turn by turn until it is decided.

Pure, like `moot.protocols.consortium`: `start()` and `decide()` take state and an event and
return the new state and the commands (call jobs, run events). No I/O, no clock: times come from
events. Duplicate and late call outcomes return the same state object and no commands.

Stages, in order:
1. `_open_round`        round 1: every debater answers the question on its own, all at once;
                        rounds 2..max_rounds: `_next_turn` asks one debater at a time, in the
                        request's order, each seeing the transcript, its own earlier positions
                        and what the debaters before it said this round (`_turn_prompt`);
2. `_close_round`       when every turn of the round is in; if every turn failed, the run fails;
3. `_after_round`       the last round ends the debate (with a final answer unless the mode is
                        `display_only`); after rounds 2..max_rounds-1, by `judge_mode`:
   - `external_judge`   `_ask_judge`: CONTINUE or STOP (`parse_judge_answer`); STOP, or the last
                        round, leads to the judge's streamed verdict (`_ask_final`);
   - `self_convergence` `_ask_convictions`: every debater still in says whether another one
                        convinced it (`parse_conviction`); `_eliminate_convinced` removes those
                        who were; when one is left, or after the last round, the first debater
                        still in writes the streamed final summary (`_ask_final`);
   - `display_only`     every round is played; no judge, no final answer;
4. `_finish`            `debate_complete`, then `run.completed` with the run's view.

Events are the reference program's: `debate_start`, `round_start`, `round_model_complete`,
`round_complete`, `judge_decision`, `model_eliminated`, `convergence_status`, `final_start`,
(`final_chunk`, published by the worker while it streams), `final_complete`, `debate_complete`
and `error`. A debate starts with `debate_start`, which carries the request (`run.created` is
typed for consortium requests) and the line-up of debaters. It ends with `debate_complete` or `error`, always followed by `run.completed`
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
- `{model_name}` in a custom template is the model's name; `{debater_number}` tells instances
  of one model apart. The system prompt, temperature and max_tokens of a debater apply to all of
  its calls; tools and attachments to its debate turns; images to its round-1 turn only.
"""

from __future__ import annotations

import re
import string
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from moot.messages import (
    CallCompleted,
    CallFailed,
    CallJob,
    CancelRequested,
    ChatMessage,
    ConvergenceStatus,
    DebateComplete,
    DebateError,
    DebateRequest,
    DebaterRef,
    DebaterSpec,
    DebateStart,
    DebateTurn,
    FinalComplete,
    FinalStart,
    JudgeDecision,
    ModelEliminated,
    RoundComplete,
    RoundModelComplete,
    RoundStart,
    RunCompleted,
    RunFailed,
    RunMeta,
    Usage,
)
from moot.protocols.base import Command, Transition, cancel, meta_view

CallStatus = Literal["pending", "completed", "failed"]
RunStatus = Literal["running", "completed", "failed", "cancelled"]
CallRole = Literal["debater", "judge", "conviction", "final"]


class Debater(BaseModel):
    number: int  # 1-based place in the request's order; stays the same after eliminations
    model: str
    instance: int
    spec: int  # index of its entry in `request.members`
    active: bool = True
    eliminated_in: int | None = None
    convinced_by: int | None = None  # the debater number it conceded to

    @property
    def label(self) -> str:
        return f"{self.model}#{self.instance}"

    def ref(self) -> DebaterRef:
        return DebaterRef(number=self.number, model=self.model, instance=self.instance, label=self.label)


class Call(BaseModel):
    """One model call of the debate and what came of it."""

    call_id: str
    role: CallRole
    model: str
    instance: int
    debater_number: int | None = None  # None for the judge
    status: CallStatus = "pending"
    text: str | None = None
    error: str | None = None
    usage: Usage = Field(default_factory=Usage)
    latency_ms: int = 0
    attempts: int = 0
    worker: str = ""
    # conviction calls only: what the answer says (a failed call is not convinced)
    convinced: bool | None = None
    convinced_by: int | None = None


class Round(BaseModel):
    number: int
    speakers: list[int]  # debater numbers, in speaking order
    turns: list[Call] = Field(default_factory=list)
    judge: Call | None = None
    decision: Literal["continue", "stop"] | None = None
    decision_reason: str | None = None
    decision_readable: bool | None = None
    convictions: list[Call] = Field(default_factory=list)
    eliminated: list[int] = Field(default_factory=list)
    kept: int | None = None  # convinced, but kept in because everyone was


class DebateState(BaseModel):
    run_id: str
    request: DebateRequest
    status: RunStatus = "running"
    created_at: datetime
    finished_at: datetime | None = None
    debaters: list[Debater]
    rounds: list[Round] = Field(default_factory=list)
    final: Call | None = None
    result: str | None = None  # the final verdict or summary
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
    state = DebateState(run_id=run_id, request=request, created_at=at, debaters=_line_up(request), meta=meta)
    announce = DebateStart(
        run_id=run_id,
        request=request,
        max_rounds=request.max_rounds,
        format=request.format,
        judge_mode=request.judge_mode,
        judge=request.judge,
        debaters=[d.ref() for d in state.debaters],
        meta=meta,
        at=at,
    )
    return Transition(state, [announce, *_open_round(state, at)])


def decide(state: DebateState, event: Any) -> Transition[DebateState]:
    """Fold one call outcome into the debate. Duplicates and late arrivals change nothing."""
    if isinstance(event, CancelRequested):
        return cancel(state, event, view)
    if state.status != "running" or not isinstance(event, CallCompleted | CallFailed):
        return Transition(state, [])
    if _pending_call(state, event.call_id) is None:
        return Transition(state, [])
    state = state.model_copy(deep=True)
    call = _pending_call(state, event.call_id)
    assert call is not None
    _record_outcome(state, call, event)

    if call.role == "debater":
        commands = _turn_taken(state, call, event.at)
    elif call.role == "judge":
        commands = _judge_answered(state, call, event.at)
    elif call.role == "conviction":
        commands = _conviction_answered(state, event.at)
    else:
        commands = _final_answered(state, call, event.at)
    return Transition(state, commands)


def view(state: DebateState) -> dict[str, Any]:
    """The debate as the API shows it."""
    final = state.final
    return {
        "id": state.run_id,
        "mode": "debate",
        "status": state.status,
        "created_at": state.created_at.isoformat(),
        "finished_at": state.finished_at.isoformat() if state.finished_at else None,
        "reason": state.reason,
        **meta_view(state.meta),
        "request": state.request.model_dump(mode="json"),
        "debaters": [
            {
                **d.ref().model_dump(mode="json"),
                "active": d.active,
                "eliminated_in": d.eliminated_in,
                "convinced_by": state.debater(d.convinced_by).label if d.convinced_by else None,
            }
            for d in state.debaters
        ],
        "rounds": [
            {
                "number": r.number,
                "speakers": [state.debater(n).label for n in r.speakers],
                "turns": [_call_view(state, c) for c in r.turns],
                "judge": _call_view(state, r.judge) if r.judge else None,
                "decision": r.decision,
                "decision_reason": r.decision_reason,
                "decision_readable": r.decision_readable,
                "convictions": [_call_view(state, c) for c in r.convictions],
                "eliminated": [state.debater(n).label for n in r.eliminated],
                "kept": state.debater(r.kept).label if r.kept else None,
            }
            for r in state.rounds
        ],
        "final": _call_view(state, final) if final else None,
        "result": (
            {"text": state.result, "model": final.model, "by": _final_by(final)}
            if final and state.result is not None
            else None
        ),
        "usage": state.usage.model_dump(mode="json"),
    }


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


def _open_round(state: DebateState, at: datetime) -> list[Command]:
    number = len(state.rounds) + 1
    speakers = state.active()
    state.rounds.append(Round(number=number, speakers=[d.number for d in speakers]))
    opened = RoundStart(run_id=state.run_id, round=number, debaters=[d.ref() for d in speakers], at=at)
    if number == 1:
        # Independent first positions: nobody sees anybody, so everyone is asked at once.
        return [opened, *(_ask_debater(state, d) for d in speakers)]
    return [opened, *_next_turn(state)]


def _next_turn(state: DebateState) -> list[Command]:
    rnd = state.current
    speaker = state.debater(rnd.speakers[len(rnd.turns)])
    return [_ask_debater(state, speaker)]


def _ask_debater(state: DebateState, debater: Debater) -> CallJob:
    rnd = state.current
    spec = state.request.members[debater.spec]
    prompt = _turn_prompt(state, debater) + _attachment_blocks(spec)
    content: str | list[dict[str, Any]] = prompt
    if rnd.number == 1 and spec.images:
        content = [{"type": "text", "text": prompt}] + [
            {"type": "image_url", "image_url": {"url": url}} for url in spec.images
        ]
    call = _new_call(state, "debater", debater.model, debater.instance, debater.number)
    rnd.turns.append(call)
    return _job(state, call, spec, [ChatMessage(role="user", content=content)], tools=spec.tools)


def _turn_taken(state: DebateState, call: Call, at: datetime) -> list[Command]:
    rnd = state.current
    done: list[Command] = [
        RoundModelComplete(run_id=state.run_id, round=rnd.number, at=at, **_turn(state, call))
    ]
    if any(t.status == "pending" for t in rnd.turns):
        return done  # round 1: others still answering
    if len(rnd.turns) < len(rnd.speakers):
        return [*done, *_next_turn(state)]
    return [*done, *_close_round(state, at)]


def _close_round(state: DebateState, at: datetime) -> list[Command]:
    rnd = state.current
    closed = RoundComplete(
        run_id=state.run_id,
        round=rnd.number,
        responses=[DebateTurn(**_turn(state, t)) for t in rnd.turns],
        at=at,
    )
    if all(t.status == "failed" for t in rnd.turns):
        errors = "; ".join(f"{t.model}#{t.instance}: {t.error}" for t in rnd.turns)
        return [closed, *_fail(state, f"every debater failed in round {rnd.number}: {errors}", at)]
    return [closed, *_after_round(state, at)]


def _after_round(state: DebateState, at: datetime) -> list[Command]:
    """Rounds 2..max_rounds-1 are checkpoints (judge or convictions); the last round ends it."""
    req = state.request
    number = state.current.number
    last = number >= req.max_rounds
    checkpoint = number >= 2 and not last
    if last:
        state.reason = f"reached max_rounds ({req.max_rounds})"
        if req.judge_mode == "display_only":
            return _finish(state, state.reason, at)
        return _ask_final(state, at)
    if checkpoint and req.judge_mode == "external_judge":
        return [_ask_judge(state)]
    if checkpoint and req.judge_mode == "self_convergence":
        return _ask_convictions(state)
    return _open_round(state, at)


# External judge ------------------------------------------------------------------------------


def _ask_judge(state: DebateState) -> CallJob:
    rnd = state.current
    judge = state.request.judge
    assert judge is not None
    rnd.judge = _new_call(state, "judge", judge, 1, None)
    prompt = JUDGE_DECISION_PROMPT.format(
        question=state.request.prompt, last_round=rnd.number, transcript=_transcript(state, state.rounds)
    )
    return _job(state, rnd.judge, None, [ChatMessage(role="user", content=prompt)])


def _judge_answered(state: DebateState, call: Call, at: datetime) -> list[Command]:
    rnd = state.current
    if call.status == "failed":
        return _fail(state, f"the judge's call after round {rnd.number} failed: {call.error}", at)
    text = call.text or ""
    word, reason = parse_judge_answer(text)
    go_on = word != "STOP"
    rnd.decision = "continue" if go_on else "stop"
    rnd.decision_readable = word is not None
    rnd.decision_reason = (
        reason if word else "the judge's answer named neither CONTINUE nor STOP; the debate continues"
    )
    decided = JudgeDecision.model_validate(
        {
            "run_id": state.run_id,
            "round": rnd.number,
            "model": call.model,
            "continue": go_on,
            "readable": word is not None,
            "reason": rnd.decision_reason,
            "raw": text,
            "at": at,
        }
    )
    if go_on:
        return [decided, *_open_round(state, at)]
    state.reason = f"the judge stopped the debate after round {rnd.number}: {reason}"
    return [decided, *_ask_final(state, at)]


_DECISION_WORD = re.compile(r"\b(CONTINUE|STOP)\b", re.IGNORECASE)
# What small models write instead of the word: "The debate continues.", "Stopping here.", "The
# debate is over.", "The debate has concluded." (SmolLM2-135M, tests/unit/test_local_model_parsing.py).
_DECISION_FORM = re.compile(
    r"\b(?:(?P<go>continu(?:es|ed|ing))|(?P<stop>stop(?:s|ped|ping)|(?:is|are|be)\s+over|"
    r"(?:has|have|is|be)\s+(?:now\s+)?(?:ended|concluded|finished)|conclude[sd]?|halt(?:s|ed)?))\b",
    re.IGNORECASE,
)
# A negation just before the word turns it around: "should not continue" is a STOP.
_NEGATED = re.compile(r"(?:\b(?:not|no|never|cannot)|n't)\W+(?:\w+\W+){0,2}$", re.IGNORECASE)


def _decision(text: str, pattern: re.Pattern[str]) -> tuple[Literal["CONTINUE", "STOP"], int | None] | None:
    """The decision `pattern` finds in `text`, and where its reason starts (None: the whole text is it)."""
    m = pattern.search(text)
    if m is None:
        return None
    stop = (m.group(1) or "").upper() == "STOP" if pattern is _DECISION_WORD else m.group("stop") is not None
    if _NEGATED.search(text[: m.start()][-40:]):
        return ("CONTINUE" if stop else "STOP"), None
    return ("STOP" if stop else "CONTINUE"), m.end() if pattern is _DECISION_WORD else None


def parse_judge_answer(text: str) -> tuple[Literal["CONTINUE", "STOP"] | None, str]:
    """The judge's decision word and its reason; (None, text) when it wrote none.

    In this order: CONTINUE or STOP (a whole word, any case) on the first non-empty line; one of
    their forms there ("The debate continues.", "is over", "concluded"); the word anywhere (a
    form further down is too weak a sign: rambling small models say "continue" in passing). A
    negation just before it turns it around ("should not continue": STOP).
    """
    stripped = (text or "").strip()
    first_line, _, more = stripped.partition("\n")
    for where, pattern in (
        (first_line, _DECISION_WORD),
        (first_line, _DECISION_FORM),
        (stripped, _DECISION_WORD),
    ):
        found = _decision(where, pattern)
        if found is None:
            continue
        word, end = found
        if end is None:  # a sentence, not the word alone: all of it is the reason
            return word, stripped
        rest = where[end:] + ("\n" + more if where is first_line else "")
        reason = rest.strip().lstrip("*-\u2013\u2014:.) ").strip()
        return word, reason or stripped
    return None, stripped


# Self-convergence ----------------------------------------------------------------------------


def _ask_convictions(state: DebateState) -> list[Command]:
    rnd = state.current
    active = state.active()
    jobs: list[Command] = []
    for debater in active:
        others = [d.label for d in active if d is not debater]
        prompt = CONVICTION_PROMPT.format(
            label=debater.label,
            number=debater.number,
            question=state.request.prompt,
            own_position=_own_position(state, debater),
            transcript=_transcript(state, state.rounds),
            others=", ".join(others),
            others_example=others[0],
        )
        call = _new_call(state, "conviction", debater.model, debater.instance, debater.number)
        rnd.convictions.append(call)
        spec = state.request.members[debater.spec]
        jobs.append(_job(state, call, spec, [ChatMessage(role="user", content=prompt)]))
    return jobs


def _conviction_answered(state: DebateState, at: datetime) -> list[Command]:
    if any(c.status == "pending" for c in state.current.convictions):
        return []
    return _eliminate_convinced(state, at)


def _eliminate_convinced(state: DebateState, at: datetime) -> list[Command]:
    rnd = state.current
    active = state.active()
    convinced = [c for c in rnd.convictions if c.convinced]
    if convinced and len(convinced) == len(active):
        rnd.kept = _most_persuasive(convinced, active)
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
    if len(remaining) == 1:
        state.reason = f"only {remaining[0].label} remains after round {rnd.number}"
        return [*commands, *_ask_final(state, at)]
    return [*commands, *_open_round(state, at)]


def _most_persuasive(convinced: list[Call], active: list[Debater]) -> int:
    """Who stays when everyone is convinced: the one named most often; ties go to the earliest."""
    votes = {d.number: 0 for d in active}
    for c in convinced:
        if c.convinced_by in votes:
            votes[c.convinced_by] += 1
    return max(votes, key=lambda number: (votes[number], -number))


_CONVINCED_BY = re.compile(r"debater\s*#?\s*(\d+)", re.IGNORECASE)


def parse_conviction(text: str, others: list[Debater]) -> tuple[bool, int | None]:
    """Whether the answer concedes (first line starts with CONVINCED) and to whom, if it says."""
    first_line = next((line for line in (text or "").splitlines() if line.strip()), "")
    line = first_line.strip().lstrip("*_#>` ").strip()
    if not line.upper().startswith("CONVINCED"):
        return False, None  # NOT CONVINCED, or anything else
    named = line[len("CONVINCED") :].lstrip(" *_:-\u2013\u2014").lower()
    if not named:
        return True, None
    by_label = [d for d in others if d.label.lower() in named]
    if by_label:
        return True, max(by_label, key=lambda d: len(d.label)).number
    if (m := _CONVINCED_BY.search(named)) and int(m.group(1)) in {d.number for d in others}:
        return True, int(m.group(1))
    by_model = [d for d in others if d.model.lower() in named]
    if len({d.model for d in by_model}) == 1 and len(by_model) == 1:
        return True, by_model[0].number
    return True, None


# The end ---------------------------------------------------------------------------------------


def _ask_final(state: DebateState, at: datetime) -> list[Command]:
    """The judge's verdict (external judge) or the first remaining debater's summary, streamed."""
    req = state.request
    last = state.current.number
    transcript = _transcript(state, state.rounds)
    if req.judge_mode == "external_judge":
        assert req.judge is not None
        call = _new_call(state, "final", req.judge, 1, None)
        prompt = JUDGE_VERDICT_PROMPT.format(question=req.prompt, transcript=transcript)
        spec = None
    else:
        winner = state.active()[0]
        call = _new_call(state, "final", winner.model, winner.instance, winner.number)
        sole = len(state.active()) == 1
        prompt = SUMMARY_PROMPT.format(
            label=winner.label,
            question=req.prompt,
            transcript=transcript,
            standing=SUMMARY_SOLE if sole else SUMMARY_FIRST.format(rounds=last),
        )
        spec = req.members[winner.spec]
    state.final = call
    started = FinalStart(run_id=state.run_id, call_id=call.call_id, at=at, **_final_who(state, call))
    job = _job(state, call, spec, [ChatMessage(role="user", content=prompt)], stream=True)
    return [started, job]


def _final_answered(state: DebateState, call: Call, at: datetime) -> list[Command]:
    what = "verdict" if call.debater_number is None else "summary"
    if call.status == "failed":
        return _fail(state, f"the final {what} call ({call.model}) failed: {call.error}", at)
    state.result = call.text or ""
    complete = FinalComplete(
        run_id=state.run_id, call_id=call.call_id, text=state.result, at=at, **_final_who(state, call)
    )
    return [complete, *_finish(state, state.reason or "the debate is over", at)]


def _finish(state: DebateState, reason: str, at: datetime) -> list[Command]:
    state.status, state.reason, state.finished_at = "completed", reason, at
    return [
        DebateComplete(run_id=state.run_id, rounds=len(state.rounds), reason=reason, at=at),
        RunCompleted(run_id=state.run_id, reason=reason, run=view(state), at=at),
    ]


def _fail(state: DebateState, reason: str, at: datetime) -> list[Command]:
    state.status, state.reason, state.finished_at = "failed", reason, at
    return [
        DebateError(run_id=state.run_id, message=reason, round=state.current.number, at=at),
        RunFailed(run_id=state.run_id, reason=reason, run=view(state), at=at),
    ]


# ---------------------------------------------------------------------------------------------
# Prompts


def _turn_prompt(state: DebateState, debater: Debater) -> str:
    """What the debater is asked this round: its format's prompt, or the custom template filled in."""
    req = state.request
    rnd = state.current
    if req.format == "custom":
        assert req.custom_prompt is not None
        return render_template(req.custom_prompt, _placeholders(state, debater))
    earlier = state.rounds[:-1]
    if rnd.number == 1:
        return FIRST_ROUND[req.format].format(question=req.prompt, label=debater.label, number=debater.number)
    return LATER_ROUNDS_CONTEXT.format(
        label=debater.label,
        number=debater.number,
        question=req.prompt,
        own_position=_own_position(state, debater) or NO_POSITION,
        history=_transcript(state, earlier),
        current_round=_so_far(state) or FIRST_TO_SPEAK,
        round=rnd.number,
    ) + LATER_ROUNDS[req.format].format(round=rnd.number)


def _placeholders(state: DebateState, debater: Debater) -> dict[str, str]:
    rnd = state.current
    earlier = state.rounds[:-1]
    if rnd.number == 1:
        current = ROUND_ONE_ALONE
    else:
        current = _so_far(state) or FIRST_TO_SPEAK
    return {
        "question": state.request.prompt,
        "history": _transcript(state, earlier) if earlier else NO_HISTORY,
        "own_position": _own_position(state, debater) or NO_POSITION,
        "current_round": current,
        "round": str(rnd.number),
        "model_name": debater.model,
        "debater_number": str(debater.number),
    }


def render_template(template: str, values: dict[str, str]) -> str:
    """Fill a validated custom template: placeholders replaced, `{{`/`}}` become braces."""
    parts: list[str] = []
    for literal, name, _spec, _conversion in string.Formatter().parse(template):
        parts.append(literal)
        if name is not None:
            parts.append(values[name])
    return "".join(parts)


def _transcript(state: DebateState, rounds: list[Round]) -> str:
    return "\n\n".join(f"=== Round {r.number} ===\n\n{_turns_text(state, r.turns)}" for r in rounds)


def _so_far(state: DebateState) -> str:
    """This round's earlier turns (the current speaker's own call is the last, still pending)."""
    spoken = [t for t in state.current.turns if t.status != "pending"]
    return _turns_text(state, spoken)


def _turns_text(state: DebateState, turns: list[Call]) -> str:
    blocks = []
    for t in turns:
        assert t.debater_number is not None
        said = t.text if t.status == "completed" else "(no answer: the call failed)"
        blocks.append(f"[{state.debater(t.debater_number).label}]\n{said}")
    return "\n\n".join(blocks)


def _own_position(state: DebateState, debater: Debater) -> str:
    """The debater's own earlier turns, and nobody else's (not even another instance's)."""
    return "\n\n".join(
        f"Round {r.number}:\n{t.text}"
        for r in state.rounds
        for t in r.turns
        if t.debater_number == debater.number and t.status == "completed"
    )


def _attachment_blocks(spec: DebaterSpec) -> str:
    return "".join(
        f"\n\n----- attached document: {a.name} -----\n{a.content}\n----- end of {a.name} -----"
        for a in spec.attachments
    )


FIRST_ROUND = {
    "free_discussion": (
        "You are {label}, one of several AI models about to debate a question. Before the debate "
        "starts, answer it on your own: your answer becomes your position.\n\n"
        "Question:\n{question}\n\n"
        "Give a complete, well-reasoned answer."
    ),
    "structured_opposition": (
        "You are Debater {number} ({label}) in a structured debate between AI models. Answer the "
        "question below on your own and take a clear, distinct stance: it is the position you will "
        "have to defend against the others.\n\n"
        "Question:\n{question}\n\n"
        "Give a complete, well-reasoned answer with a definite position."
    ),
    "iterative_improvement": (
        "You are {label}, one of several AI models improving their answers to a question over "
        "several rounds. Start with your own best answer.\n\n"
        "Question:\n{question}\n\n"
        "Give a complete, well-reasoned answer."
    ),
}

LATER_ROUNDS_CONTEXT = (
    "You are {label} (debater {number}) in a debate between AI models. Each participant is shown "
    "in the transcript as [model#instance].\n\n"
    "Question:\n{question}\n\n"
    "Your position so far:\n{own_position}\n\n"
    "Earlier rounds:\n{history}\n\n"
    "Round {round} so far:\n{current_round}\n\n"
)

LATER_ROUNDS = {
    "free_discussion": (
        "Round {round}: it is your turn. Read what the others argued, including anyone who already "
        "spoke this round. Defend your position where you think you are right, grant the good "
        "points others made, and strengthen your case with further reasoning or evidence. Refine "
        "your position if you must, but do not drop it without a strong reason."
    ),
    "structured_opposition": (
        "Round {round}: it is your turn.\n"
        "1. Defend your position with concrete arguments and evidence.\n"
        "2. Take on each other debater's position by name: show its flaws, gaps or weaker reasoning.\n"
        "3. Say why your answer is the better one.\n"
        "Be specific and refer to what the others actually claimed."
    ),
    "iterative_improvement": (
        "Round {round}: it is your turn. Study every other participant's answer, including those "
        "given earlier this round. Pick out their best ideas and what you missed, and note their "
        "mistakes. Then write an improved version of your own answer that takes in the best of "
        "everyone's and fixes the weaknesses."
    ),
}

NO_POSITION = "(you have not stated a position yet)"
NO_HISTORY = "(no earlier rounds)"
FIRST_TO_SPEAK = "(nobody has spoken yet this round: you are first)"
ROUND_ONE_ALONE = "(round 1: every debater answers on its own, without seeing the others)"

# The judge, conviction and verdict prompts end with the task and a filled-in example: small
# models (the local SmolLM2-135M) follow what comes last, and copy an example better than they
# follow a description. docs/benchmarks.md, "Local model", has how often they comply.
JUDGE_DECISION_PROMPT = """\
Question:
{question}

Debate between AI models so far, rounds 1 to {last_round}:
{transcript}

You are the judge of this debate. Should the debaters argue for another round?
Reply with one word on the first line, CONTINUE or STOP: CONTINUE if another round would bring \
out something new (new arguments of substance, real disagreements that more debate could \
settle), STOP if the positions are clear, one has clearly come out strongest, or the last round \
only repeated earlier points. Then give your reason in one sentence. Example reply:
STOP
The positions are clear and the last round repeated them."""

JUDGE_VERDICT_PROMPT = """\
Question:
{question}

Full transcript of a debate between AI models (each first answered the question on its own, \
then they argued for their positions):
{transcript}

You are the judge, and the debate is over: give your verdict. Write:
1. each participant's core position and how it changed during the debate;
2. the strengths and weaknesses of each, saying which arguments were refuted and which held up;
3. your verdict: the best answer to the question, built from the strongest arguments and \
evidence of all participants, saying which positions and points you drew on and why."""

CONVICTION_PROMPT = """\
Question:
{question}

Full transcript of the debate:
{transcript}

You are {label} (debater {number}) in this debate between AI models. Your position across the \
rounds:
{own_position}

Be honest: has another participant argued so well that you now think their answer is better \
than yours? The other participants are: {others}.
Reply with exactly one of these as the first line, then one sentence saying why:
NOT CONVINCED
CONVINCED: {others_example}
(name the participant who convinced you, e.g. {others_example})"""

SUMMARY_PROMPT = """\
You are {label}. You took part in a debate between AI models, {standing}

Question:
{question}

Full transcript:
{transcript}

Now write the final answer to the question. Keep the core of your position and bring in the \
best insights and valid points the other participants raised. Write a polished, complete answer, \
not another debate turn."""

SUMMARY_SOLE = "and the others conceded: your position is the one left standing."
SUMMARY_FIRST = "which ended after {rounds} rounds; you write the final answer for the panel."


# ---------------------------------------------------------------------------------------------
# Helpers


def _new_call(
    state: DebateState, role: CallRole, model: str, instance: int, debater_number: int | None
) -> Call:
    number = state.current.number
    call_id = CallJob.make_id(state.run_id, number, role, model, instance)
    return Call(call_id=call_id, role=role, model=model, instance=instance, debater_number=debater_number)


def _job(
    state: DebateState,
    call: Call,
    spec: DebaterSpec | None,
    messages: list[ChatMessage],
    *,
    tools: list[dict[str, Any]] | None = None,
    stream: bool = False,
) -> CallJob:
    """The call job; a debater's system prompt, temperature and max_tokens go with all its calls.

    The conversation the debate continues (`history`) comes before every prompt of the run.
    """
    messages = [*state.request.history, *messages]
    if spec is not None and spec.system:
        messages = [ChatMessage(role="system", content=spec.system), *messages]
    return CallJob(
        call_id=call.call_id,
        run_id=state.run_id,
        iteration=state.current.number,
        role=call.role,
        model=call.model,
        instance=call.instance,
        messages=messages,
        temperature=spec.temperature if spec else None,
        max_tokens=spec.max_tokens if spec else None,
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
        if call.call_id == call_id and call.status == "pending":
            return call
    return None


def _record_outcome(state: DebateState, call: Call, event: CallCompleted | CallFailed) -> None:
    call.attempts, call.latency_ms, call.worker = event.attempts, event.latency_ms, event.worker
    if isinstance(event, CallCompleted):
        call.status, call.text, call.usage = "completed", event.text, event.usage
        state.usage = state.usage.plus(event.usage)
    else:
        call.status, call.error = "failed", event.error
    if call.role == "conviction":
        others = [d for d in state.active() if d.number != call.debater_number]
        call.convinced, call.convinced_by = (
            parse_conviction(call.text or "", others) if call.status == "completed" else (False, None)
        )


def _turn(state: DebateState, call: Call) -> dict[str, Any]:
    assert call.debater_number is not None
    return {
        "call_id": call.call_id,
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


def _call_view(state: DebateState, c: Call) -> dict[str, Any]:
    data = c.model_dump(mode="json", exclude={"role", "convinced", "convinced_by"})
    if c.debater_number is not None:
        data["label"] = state.debater(c.debater_number).label
    if c.role == "conviction":
        data["convinced"] = c.convinced
        data["convinced_by"] = state.debater(c.convinced_by).label if c.convinced_by else None
    return data
