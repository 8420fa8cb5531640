"""What the CLI shows: live progress of a run from its events, a finished run, lists of runs and configurations.

The CLI knows every mode: what is told of a run differs per mode (a consortium's iterations, a
debate's rounds, a council's answers, reviews and chairman, a vote's votes and tally, a
Mixture-of-Agents' layers), so each is told by its own functions, chosen by the run's mode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from moot.cli.client import RunEventMessage
from moot.cli.common import plural, short, table

if TYPE_CHECKING:  # the views' models take a while to build: not at every start of the CLI
    from moot.requests import AnyRunRequest
    from moot.texts import Text
    from moot.views import (
        CallView,
        ConsortiumView,
        CouncilView,
        DebateCallView,
        DebateView,
        IterationView,
        MoaView,
        ReviewView,
        RunView,
        VoteView,
    )


def _inline(text: Text | None) -> str:
    """A text of a view the gateway answered: it puts every text inline (never a reference)."""
    return text if isinstance(text, str) else ""


# --------------------------------------------------------------------------- what a run asks for


def _members_text(members: list[dict[str, Any]]) -> str:
    return ", ".join(m["model"] + (f" x{m['count']}" if m.get("count", 1) > 1 else "") for m in members)


def _consortium_asks(r: dict[str, Any]) -> str:
    return (
        f"consortium: {_members_text(r['members'])}; arbiter {r['arbiter']}; up to {r['max_iterations']}"
        f" iterations, stopping at confidence {r['confidence_threshold']:.2f}"
    )


def _debate_asks(r: dict[str, Any]) -> str:
    judge = f" by {r['judge']}" if r.get("judge") else ""
    return f"debate: {_members_text(r['members'])}; {r['format']}; {r['judge_mode']}{judge}; up to {r['max_rounds']} rounds"


def _council_asks(r: dict[str, Any]) -> str:
    reviewers = (
        f"{_members_text(r['reviewers'])} rank the answers"
        if r.get("reviewers")
        else "the members rank each other's answers"
    )
    return f"council: {_members_text(r['members'])}; {reviewers}; chairman {r['chairman']}"


def _escalation_text(e: dict[str, Any] | None) -> str:
    """Where a vote below its threshold goes on."""
    if e is None:
        return "no escalation"
    if e["mode"] == "consortium":
        return f"escalates to a consortium by arbiter {e['arbiter']} (up to {e['max_iterations']} iterations)"
    judge = f" by {e['judge']}" if e.get("judge") else ""
    return f"escalates to a debate, {e['judge_mode']}{judge} (up to {e['max_rounds']} rounds)"


def _vote_asks(r: dict[str, Any]) -> str:
    choices = r.get("choices") or []
    options = " (" + ", ".join(f"{chr(65 + i)}. {short(c, 30)}" for i, c in enumerate(choices)) + ")"
    return (
        f"vote: {_members_text(r['members'])}; {r['answer_format']} answers{options if choices else ''};"
        f" agreement threshold {r['agreement_threshold']:.2f}, below it {_escalation_text(r.get('escalate'))}"
    )


def _moa_asks(r: dict[str, Any]) -> str:
    layers = "; ".join(f"layer {n}: {_members_text(layer)}" for n, layer in enumerate(r["layers"], start=1))
    return f"mixture of agents: {layers}; aggregator {r['aggregator']}"


# A run's request (as JSON), in one line: the first progress line of a run, and in `moot show`.
_ASKS: dict[str, Callable[[dict[str, Any]], str]] = {
    "consortium": _consortium_asks,
    "debate": _debate_asks,
    "council": _council_asks,
    "vote": _vote_asks,
    "moa": _moa_asks,
}


def describe(request: dict[str, Any]) -> str:
    """What a run asks for, in one line: its mode, its models and how it decides."""
    return _ASKS[request.get("mode", "consortium")](request)


# --------------------------------------------------------------------------- live progress


def _who(d: dict[str, Any]) -> str:
    return f"{d['model']}#{d['instance']}"


def _confidence(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "unreadable"


def _points(score: float) -> str:
    return plural(int(score), "point") if score == int(score) else f"{score:g} points"


# Calls told by their role and model rather than their instance: the one call of their step.
_DECIDING_ROLES = ("arbiter", "chairman", "aggregator")


class Progress:
    """Turns a run's events into progress lines (`say`, stderr) and its streamed verdict (`write`, stdout).

    A call of the current step (an iteration's members, a council's answers or reviews, a vote's
    votes, a layer's proposers, a chairman or an aggregator) gets a line when it is in; the
    arbiter's answer is told by `iteration.completed`, a debate's turns by `turn.completed`.
    """

    def __init__(self, say: Callable[[str], None], write: Callable[[str], None]) -> None:
        self.say, self.write = say, write
        self.request: dict[str, Any] = {}  # the run's, from run.created
        self.calls: frozenset[str] = frozenset()  # the current step's call ids
        self.expected = 0  # calls of the current step, iteration or round
        self.done = 0  # of which have an outcome
        self.streamed = False  # some of the final answer was written
        self._line_open = False  # the streamed text does not end with a newline yet

    def show(self, event: RunEventMessage) -> None:
        if event.type == "final.chunk":
            self._chunk(event.data.get("delta", ""))
            return
        handler = getattr(self, "_on_" + event.type.replace(".", "_"), None)
        line = handler(event.data) if handler else None
        if line:
            self.say(line)

    def _chunk(self, delta: str) -> None:
        if delta:
            self.write(delta)
            self.streamed = True
            self._line_open = not delta.endswith("\n")

    def _tick(self) -> str:
        """` [done/expected]` after one more outcome; nothing when the step has a single call."""
        self.done += 1
        return f" [{self.done}/{self.expected}]" if self.expected > 1 else ""

    def _start(self, expected: int, call_ids: list[str] | None = None) -> None:
        self.expected, self.done = expected, 0
        self.calls = frozenset(call_ids or ())

    def _on_run_created(self, d: dict[str, Any]) -> str:
        self.request = d["request"]
        return describe(self.request)

    # calls

    def _caller(self, d: dict[str, Any]) -> str:
        return f"{d['role']} {d['model']}" if d["role"] in _DECIDING_ROLES else _who(d)

    def _on_call_completed(self, d: dict[str, Any]) -> str | None:
        if d["call_id"] not in self.calls:
            return None
        tokens = (d.get("usage") or {}).get("output_tokens", 0)
        verb = "reviewed" if d["role"] == "reviewer" else "answered"
        return f"  {self._caller(d)} {verb}{self._tick()} ({d.get('latency_ms', 0)} ms, {tokens} tokens)"

    def _on_call_failed(self, d: dict[str, Any]) -> str | None:
        if d["call_id"] in self.calls:
            return f"  {self._caller(d)} failed{self._tick()}: {short(d['error'], 160)}"
        if d["role"] == "arbiter":
            return f"  arbiter {d['model']} failed: {short(d['error'], 160)}"
        return None  # a debate tells its failures by turn.completed and debate.failed

    # consortium

    def _on_iteration_started(self, d: dict[str, Any]) -> str:
        self._start(len(d["call_ids"]), d["call_ids"])
        return f"iteration {d['iteration']}: asking {plural(self.expected, 'member instance')}"

    def _on_iteration_completed(self, d: dict[str, Any]) -> str:
        verdict = d["verdict"]
        line = f"  arbiter: confidence {_confidence(verdict.get('confidence'))} -> {d['decision']} ({d['reason']})"
        problems = verdict.get("problems") or []
        if verdict.get("synthesis_from") == "members":
            line += "\n  the arbiter's synthesis was unreadable: the members' most agreed answer stands in"
        elif verdict.get("malformed"):
            line += f"\n  the arbiter's answer was malformed: {short('; '.join(problems), 160)}"
        return line

    # steps: a council's, a vote's, a Mixture-of-Agents'

    def _on_step_started(self, d: dict[str, Any]) -> str:
        self._start(len(d["call_ids"]), d["call_ids"])
        started = getattr(self, f"_{d['name']}_started", None)
        return started(d) if started else f"{d['name']}: asking {plural(self.expected, 'model')}"

    def _on_step_completed(self, d: dict[str, Any]) -> str | None:
        completed = getattr(self, f"_{d['name']}_completed", None)
        return completed(d["data"]) if completed else None

    def _answers_started(self, d: dict[str, Any]) -> str:
        return f"answers: asking {plural(self.expected, 'member')}"

    def _reviews_started(self, d: dict[str, Any]) -> str:
        if not self.expected:
            return "reviews: no reviewer has two answers to rank"
        return f"reviews: asking {plural(self.expected, 'reviewer')} to rank the answers, anonymized"

    def _reviews_completed(self, data: dict[str, Any]) -> str:
        ranking = data.get("ranking") or []
        lines = [
            "  ranking: " + ", ".join(f"{r['rank']}. {r['label']} ({_points(r['score'])})" for r in ranking)
            if ranking
            else "  no ranking: no review could be read"
        ]
        if unreadable := data.get("unreadable"):
            lines.append(f"  unreadable reviews, left out: {', '.join(unreadable)}")
        return "\n".join(lines)

    def _chairman_started(self, d: dict[str, Any]) -> str:
        return f"chairman: {self.request.get('chairman', 'the chairman')} writes the answer"

    def _votes_started(self, d: dict[str, Any]) -> str:
        return f"votes: asking {plural(self.expected, 'member')}"

    def _votes_completed(self, data: dict[str, Any]) -> str:
        unreadable = data.get("unreadable") or []
        unread = f" ({len(unreadable)} unreadable: {', '.join(unreadable)})" if unreadable else ""
        agreement = data.get("agreement")
        tally = ", ".join(f"{short(t['answer'], 40)} ({t['count']})" for t in data.get("tally") or [])
        return (
            f"  {data.get('counted', 0)} counted{unread}, agreement"
            f" {f'{agreement:.2f}' if agreement is not None else '-'}: {tally or 'no answer'}"
            f" -> {self._decision(data.get('decision'))}"
        )

    def _decision(self, decision: str | None) -> str:
        if decision != "escalate":
            return str(decision)
        escalate = self.request.get("escalate") or {}
        if escalate.get("mode") == "debate":
            return "escalating to a debate, the votes its round 1"
        return f"escalating to a consortium: arbiter {escalate.get('arbiter')} synthesizes the votes"

    def _layer_started(self, d: dict[str, Any]) -> str:
        return f"layer {d['step']}: asking {plural(self.expected, 'proposer')}"

    def _aggregate_started(self, d: dict[str, Any]) -> str:
        return f"aggregate: {self.request.get('aggregator', 'the aggregator')} writes the answer"

    # debate

    def _on_debate_started(self, d: dict[str, Any]) -> str:
        judge = f" by {d['judge']}" if d.get("judge") else ""
        labels = ", ".join(x["label"] for x in d["debaters"])
        return f"debate: {labels}; {d['format']}; {d['judge_mode']}{judge}; up to {d['max_rounds']} rounds"

    def _on_round_started(self, d: dict[str, Any]) -> str:
        self._start(len(d["debaters"]))
        return f"round {d['round']}: " + ", ".join(x["label"] for x in d["debaters"])

    def _on_turn_completed(self, d: dict[str, Any]) -> str:
        if d.get("failed"):
            return f"  {d['label']} failed{self._tick()}: {short(d.get('error'), 160)}"
        return f"  {d['label']} answered{self._tick()}: {short(d.get('text'), 100)}"

    def _on_judge_decided(self, d: dict[str, Any]) -> str:
        word = "continue" if d["continue"] else "stop"
        unreadable = "" if d.get("readable", True) else " (unreadable answer: the debate goes on)"
        return f"  judge {d['model']}: {word}{unreadable}: {short(d.get('reason'), 120)}"

    def _on_debater_eliminated(self, d: dict[str, Any]) -> str:
        by = f" (convinced by {d['convinced_by']})" if d.get("convinced_by") else ""
        return f"  {d['label']} is out{by}: {short(d.get('reasoning'), 100)}"

    def _on_convergence_checked(self, d: dict[str, Any]) -> str:
        kept = f" ({d['kept']} kept: everyone was convinced)" if d.get("kept") else ""
        return f"  still in: {', '.join(d['remaining']) or 'nobody'}{kept}"

    def _on_final_started(self, d: dict[str, Any]) -> str:
        # The verdict streams to stdout next: set apart from the progress above it.
        return heading(
            f"verdict by the judge {d['model']}" if d.get("by") == "judge" else f"summary by {d['label']}"
        )

    def _on_final_completed(self, d: dict[str, Any]) -> None:
        if self._line_open:
            self.write("\n")
            self._line_open = False

    def _on_debate_completed(self, d: dict[str, Any]) -> str:
        after = "\n" if self.streamed else ""  # a blank line under the verdict that streamed above
        return f"{after}debate over after {plural(d['rounds'], 'round')}: {d['reason']}"

    def _on_debate_failed(self, d: dict[str, Any]) -> str:
        return f"  error: {d.get('message') or d.get('reason') or d}"


# --------------------------------------------------------------------------- a finished run's answer


def heading(title: str) -> str:
    """What sets an answer apart from the progress lines before it on a terminal: a blank line, a title."""
    return f"\n── {title} ──"


def members_answers(run: RunView) -> str:
    """The members' answers a consortium's result was drawn from (its last iteration), one line each."""
    if run.mode != "consortium" or not run.iterations:
        return ""
    from moot.protocols.agreement import answer_text  # late, like the views

    last = run.iteration_views[-1]
    lines = [f"members' answers (iteration {last.number}):"]
    for m in last.members:
        if m.status == "completed":
            # The stated confidence in parentheses, not again at the end of the answer.
            stated = f" (confidence {m.confidence:.2f})" if m.confidence is not None else ""
            lines.append(f"  {_instance(m)}{stated}: {short(answer_text(_inline(m.text)), 160)}")
        else:
            lines.append(f"  {_instance(m)}: {m.status}{': ' + short(m.error, 120) if m.error else ''}")
    return "\n".join(lines) + "\n"


def _consortium_of(run: RunView) -> ConsortiumView | None:
    """The consortium that gave the run its answer: the run, or the one a vote escalated to."""
    if run.mode == "consortium":
        return run
    if run.mode == "vote" and run.escalation is not None and run.escalation.mode == "consortium":
        return run.escalation
    return None


def _debate_of(run: RunView) -> DebateView | None:
    """The debate the run is, or the one a vote escalated to."""
    if run.mode == "debate":
        return run
    if run.mode == "vote" and run.escalation is not None and run.escalation.mode == "debate":
        return run.escalation
    return None


def answer_note(run: RunView) -> str | None:
    """One plain line to read before the answer when the arbiter did not write it, else None."""
    consortium = _consortium_of(run)
    if consortium is None or consortium.result is None or (why := consortium.result.fallback) is None:
        return None
    return why[0].upper() + why[1:] + "."


# --------------------------------------------------------------------------- a finished run


def transcript(run: RunView) -> str:
    """Every turn of a debate, round by round (what a display-only debate has to show)."""
    debate = _debate_of(run)
    parts = []
    for rnd in debate.rounds if debate else []:
        parts.append(f"== round {rnd.number}")
        for turn in rnd.turns:
            said = _inline(turn.text) if turn.status == "completed" else f"(failed: {turn.error})"
            parts.append(f"-- {turn.label or _instance(turn)}\n{said.strip()}")
    return "\n\n".join(parts) + "\n" if parts else ""


def _instance(call: CallView | DebateCallView) -> str:
    return f"{call.model}#{call.instance}"


def _indented(text: str) -> str:
    return "\n".join("    " + line for line in text.strip().splitlines())


def _call_line(
    label: str, call: CallView | DebateCallView | None, full: bool, text: str | None = None
) -> str:
    if call is None:
        return f"  {label}: (not asked)"
    if call.status == "failed":
        return f"  {label}: failed: {short(call.error, 200)}"
    if call.status != "completed":
        return f"  {label}: ({call.status})"
    text = (text or _inline(call.text)).strip()
    if full:
        return f"  {label}:\n" + _indented(text)
    return f"  {label}: {short(text, 100)}"


def _arbiter_line(iteration: IterationView, full: bool) -> str:
    """The arbiter's call, showing its synthesis rather than its tagged answer when it was readable."""
    call, verdict = iteration.arbiter, iteration.verdict
    label = f"arbiter {call.model}" if call else "arbiter"
    # A synthesis the members' answer stands in for is not the arbiter's: then its own text.
    synthesis = _inline(verdict.synthesis) if verdict and verdict.synthesis_from == "arbiter" else None
    return _call_line(label, call, full, text=synthesis)


def _consortium_steps(run: ConsortiumView, full: bool) -> list[str]:
    lines = []
    for it in run.iteration_views:
        confidence = it.verdict.confidence if it.verdict else None
        decided = f" -> {it.decision} ({it.reason})" if it.decision else ""
        lines.append(f"iteration {it.number}: confidence {_confidence(confidence)}{decided}")
        lines += [_call_line(_instance(m), m, full) for m in it.members]
        lines.append(_arbiter_line(it, full))
    return lines


def _debate_steps(run: DebateView, full: bool) -> list[str]:
    lines = []
    for rnd in run.rounds:
        lines.append(f"round {rnd.number}: {', '.join(rnd.speakers)}")
        lines += [_call_line(t.label or _instance(t), t, full) for t in rnd.turns]
        if rnd.decision:
            lines.append(f"  judge: {rnd.decision}: {short(_inline(rnd.decision_reason), 120)}")
        if rnd.eliminated:
            lines.append(f"  out: {', '.join(rnd.eliminated)}")
    return lines


def _review_line(review: ReviewView, full: bool) -> str:
    """A reviewer's ranking, best first, by the members' labels (it saw letters); or why there is none."""
    if review.status != "completed":
        return _call_line(review.label, review, full)
    if review.ranking is None:
        ranked = f"unreadable ({review.problem})" if review.problem else "unreadable"
    else:
        ranked = ", ".join(f"{place}. {label}" for place, label in enumerate(review.ranking, start=1))
    return f"  {review.label}: {ranked}" + ("\n" + _indented(_inline(review.text)) if full else "")


def _council_steps(run: CouncilView, full: bool) -> list[str]:
    lines = ["answers:", *(_call_line(_instance(a), a, full) for a in run.answers)]
    if run.reviews:
        lines += ["reviews:", *(_review_line(r, full) for r in run.reviews)]
    if run.ranking:
        places = (
            f"{r.rank}. {r.label} ({_points(r.score)}, {plural(r.reviews, 'review')})" for r in run.ranking
        )
        lines.append("ranking: " + ", ".join(places))
    elif run.answers and run.reviews:
        lines.append("ranking: none (no review could be read)")
    if run.chairman is not None:
        lines += ["chairman:", _call_line(_instance(run.chairman), run.chairman, full)]
    return lines


def _vote_steps(run: VoteView, full: bool) -> list[str]:
    counted = sum(t.count for t in run.tally)
    agreement = f"{run.agreement:.2f}" if run.agreement is not None else "-"
    lines = [f"votes: {counted} counted, agreement {agreement}"]
    for v in run.votes:
        counts_as = f" -> {short(_inline(v.normalized), 40) if v.normalized is not None else 'unreadable'}"
        lines.append(_call_line(v.label + (counts_as if v.status == "completed" else ""), v, full))
    if run.tally:
        entries = (f"{short(_inline(t.answer), 40)} ({t.count}: {', '.join(t.voters)})" for t in run.tally)
        lines.append("tally: " + ", ".join(entries))
    escalation = run.escalation
    if escalation is not None:
        lines.append(f"escalated to a {escalation.mode}:")
        if escalation.mode == "consortium":
            lines += _consortium_steps(escalation, full)
        else:
            lines += _debate_steps(escalation, full)
    return lines


def _moa_steps(run: MoaView, full: bool) -> list[str]:
    lines = []
    for layer in run.layers:
        lines += [f"layer {layer.number}:", *(_call_line(_instance(c), c, full) for c in layer.calls)]
    if run.aggregator is not None:
        lines += ["aggregator:", _call_line(_instance(run.aggregator), run.aggregator, full)]
    return lines


def _vote_counts(run: VoteView) -> str:
    votes = plural(len(run.votes), "vote")
    return f"{votes}, then {_COUNTS[run.escalation.mode](run.escalation)}" if run.escalation else votes


# How far a run went, in its own steps: `outcome_line`'s parenthesis.
_COUNTS: dict[str, Callable[[Any], str]] = {
    "consortium": lambda run: plural(len(run.iterations), "iteration"),
    "debate": lambda run: plural(len(run.rounds), "round"),
    "council": lambda run: f"{plural(len(run.answers), 'answer')}, {plural(len(run.reviews), 'review')}",
    "vote": _vote_counts,
    "moa": lambda run: plural(len(run.layers), "layer"),
}
# Every step of a finished run, in order, for `moot show`.
_STEPS: dict[str, Callable[[Any, bool], list[str]]] = {
    "consortium": _consortium_steps,
    "debate": _debate_steps,
    "council": _council_steps,
    "vote": _vote_steps,
    "moa": _moa_steps,
}


def outcome_line(run: RunView) -> str:
    """`completed: <reason> (2 iterations, 1234 tokens in, 567 out)`."""
    usage = run.usage
    cost = f", ${usage.cost_usd:.4f}" if usage.cost_usd is not None else ""
    tokens = f"{usage.input_tokens} tokens in, {usage.output_tokens} out{cost}"
    return f"{run.status}: {run.reason or '-'} ({_COUNTS[run.mode](run)}, {tokens})"


def _header(run: RunView) -> list[str]:
    # The gateway answers the request itself, never a reference to it.
    r = cast("AnyRunRequest", run.request)
    created = run.created_at.isoformat() if run.created_at else None
    lines = [f"run {run.id} ({run.mode}), created {_when(created)}", outcome_line(run)]
    if run.config:
        lines.append(f"saved configuration: {run.config.name} v{run.config.version}")
    if run.continued_from:
        lines.append(f"continues: {run.continued_from}")
    lines += [describe(r.model_dump(mode="json")), f"prompt: {short(r.prompt, 200)}"]
    return lines


def _consortium_title(run: ConsortiumView) -> str:
    return "answer (the members')" if run.result and run.result.synthesis_from == "members" else "synthesis"


def _debate_title(run: DebateView) -> str:
    result = run.result
    if result is not None and result.by == "judge":
        return f"verdict by the judge {result.model}"
    return f"summary by {(run.final.label if run.final else None) or (result.model if result else None)}"


def _decided_title(role: str, call: CallView | None, model: str | None) -> str:
    """Whose answer a council's or a Mixture-of-Agents' is: the chairman's or aggregator's, or, when
    the run ended before that call answered, the answer it ended with."""
    if call is not None and call.status == "completed":
        return f"answer by the {role} {call.model}"
    return f"answer by {model} (the run ended before the {role} answered)"


def _vote_title(run: VoteView) -> str:
    if run.escalation is not None and run.result is not None and run.result.by != "vote":
        return _TITLES[run.escalation.mode](run.escalation)
    agreement = f"agreement {run.agreement:.2f}" if run.agreement is not None else "no agreement measured"
    return f"answer by vote ({agreement})"


# What the run's answer is, in its heading.
_TITLES: dict[str, Callable[[Any], str]] = {
    "consortium": _consortium_title,
    "debate": _debate_title,
    "council": lambda run: _decided_title("chairman", run.chairman, run.result and run.result.model),
    "vote": _vote_title,
    "moa": lambda run: _decided_title("aggregator", run.aggregator, run.result and run.result.model),
}


def answer_title(run: RunView) -> str:
    """What the run's answer is: a synthesis, a verdict or summary, the chairman's, the vote's, the aggregator's."""
    return _TITLES[run.mode](run)


def run_summary(run: RunView, full: bool = False) -> str:
    """`moot show`: status, what was asked, every step of the run, then the answer."""
    lines = [*_header(run), "", *_STEPS[run.mode](run, full)]
    if run.answer is not None:
        note = answer_note(run)
        lines += ["", f"{answer_title(run)}:", *([note] if note else []), run.answer.strip()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- lists


def _when(iso: str | None) -> str:
    """`2026-11-22T01:14:42.123+00:00` -> `2026-11-22 01:14:42` (the gateway's times are UTC)."""
    return iso[:19].replace("T", " ") if iso else "-"


def runs_table(runs: list[dict[str, Any]]) -> str:
    rows = [
        [r["id"], r["mode"], r["status"], _when(r.get("created_at")), short(r.get("prompt"), 50)]
        for r in runs
    ]
    return table(["ID", "MODE", "STATUS", "CREATED (UTC)", "PROMPT"], rows)


def _vote_decider(config: dict[str, Any]) -> str:
    escalate = config.get("escalate")
    if not escalate:
        return "majority"
    if escalate["mode"] == "consortium":
        return f"majority, else arbiter {escalate['arbiter']}"
    return f"majority, else judge {escalate['judge']}" if escalate.get("judge") else "majority, else debate"


# Who decides a saved configuration's runs, in a table's cell.
_DECIDERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "consortium": lambda c: f"arbiter {c.get('arbiter')}",
    "debate": lambda c: f"judge {c['judge']}" if c.get("judge") else str(c.get("judge_mode")),
    "council": lambda c: f"chairman {c.get('chairman')}",
    "vote": _vote_decider,
    "moa": lambda c: f"aggregator {c.get('aggregator')}",
}


def _models(config: dict[str, Any]) -> str:
    """A configuration's members, or a Mixture-of-Agents' layers (`m1, m2 x2 | m3`)."""
    if config.get("mode") == "moa":
        return " | ".join(_members_text(layer) for layer in config.get("layers") or [])
    return _members_text(config.get("members") or [])


def configs_table(configs: list[dict[str, Any]]) -> str:
    rows = []
    for c in configs:
        mode = c["config"].get("mode", "consortium")
        rows.append([c["name"], str(c["version"]), mode, _models(c["config"]), _DECIDERS[mode](c["config"])])
    # The headers predate the modes whose decider is a chairman, an aggregator or a majority.
    return table(["NAME", "VERSION", "MODE", "MEMBERS", "ARBITER/JUDGE"], rows)
