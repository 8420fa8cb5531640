"""What the CLI shows: live progress of a run from its events, a finished run, lists of runs and configurations."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from moot.cli.client import RunEventMessage
from moot.cli.common import plural, short, table

if TYPE_CHECKING:  # the views' models take a while to build: not at every start of the CLI
    from moot.requests import ConsortiumRequest, DebateRequest
    from moot.texts import Text
    from moot.views import CallView, ConsortiumView, DebateCallView, DebateView, IterationView, RunView


def _inline(text: Text | None) -> str:
    """A text of a view the gateway answered: it puts every text inline (never a reference)."""
    return text if isinstance(text, str) else ""


# --------------------------------------------------------------------------- live progress


def _who(d: dict[str, Any]) -> str:
    return f"{d['model']}#{d['instance']}"


def _members_text(members: list[dict[str, Any]]) -> str:
    return ", ".join(m["model"] + (f" x{m['count']}" if m.get("count", 1) > 1 else "") for m in members)


def _confidence(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "unreadable"


class Progress:
    """Turns a run's events into progress lines (`say`, stderr) and its streamed verdict (`write`, stdout)."""

    def __init__(self, say: Callable[[str], None], write: Callable[[str], None]) -> None:
        self.say, self.write = say, write
        self.expected = 0  # calls of the current iteration or round
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
        self.done += 1
        return f"[{self.done}/{self.expected}]"

    def _start(self, expected: int) -> None:
        self.expected, self.done = expected, 0

    # consortium

    def _on_run_created(self, d: dict[str, Any]) -> str:
        r = d["request"]
        return (
            f"consortium: {_members_text(r['members'])}; arbiter {r['arbiter']}; up to {r['max_iterations']}"
            f" iterations, stopping at confidence {r['confidence_threshold']:.2f}"
        )

    def _on_iteration_started(self, d: dict[str, Any]) -> str:
        self._start(len(d["call_ids"]))
        return f"iteration {d['iteration']}: asking {plural(self.expected, 'member instance')}"

    def _on_call_completed(self, d: dict[str, Any]) -> str | None:
        if d["role"] != "member":
            return None  # the arbiter's answer is told by iteration.completed; debates by their own events
        tokens = (d.get("usage") or {}).get("output_tokens", 0)
        return f"  {_who(d)} answered {self._tick()} ({d.get('latency_ms', 0)} ms, {tokens} tokens)"

    def _on_call_failed(self, d: dict[str, Any]) -> str | None:
        if d["role"] == "member":
            return f"  {_who(d)} failed {self._tick()}: {short(d['error'], 160)}"
        if d["role"] == "arbiter":
            return f"  arbiter {d['model']} failed: {short(d['error'], 160)}"
        return None  # a debate tells its failures by round_model_complete and error

    def _on_iteration_completed(self, d: dict[str, Any]) -> str:
        verdict = d["verdict"]
        line = f"  arbiter: confidence {_confidence(verdict.get('confidence'))} -> {d['decision']} ({d['reason']})"
        problems = verdict.get("problems") or []
        if verdict.get("synthesis_from") == "members":
            line += "\n  the arbiter's synthesis was unreadable: the members' most agreed answer stands in"
        elif verdict.get("malformed"):
            line += f"\n  the arbiter's answer was malformed: {short('; '.join(problems), 160)}"
        return line

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
            return f"  {d['label']} failed {self._tick()}: {short(d.get('error'), 160)}"
        return f"  {d['label']} answered {self._tick()}: {short(d.get('text'), 100)}"

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
    """The members' answers the run's result was drawn from (its last iteration), one line each."""
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


def answer_note(run: RunView) -> str | None:
    """One plain line to read before the answer when the arbiter did not write it, else None."""
    if run.mode != "consortium" or run.result is None or (why := run.result.fallback) is None:
        return None
    return why[0].upper() + why[1:] + "."


# --------------------------------------------------------------------------- a finished run


def transcript(run: RunView) -> str:
    """Every turn of a debate, round by round (what a display-only debate has to show)."""
    parts = []
    for rnd in run.rounds if run.mode == "debate" else []:
        parts.append(f"== round {rnd.number}")
        for turn in rnd.turns:
            said = _inline(turn.text) if turn.status == "completed" else f"(failed: {turn.error})"
            parts.append(f"-- {turn.label or _instance(turn)}\n{said.strip()}")
    return "\n\n".join(parts) + "\n" if parts else ""


def outcome_line(run: RunView) -> str:
    """`completed: <reason> (2 iterations, 1234 tokens in, 567 out)`."""
    steps = (
        plural(len(run.rounds), "round") if run.mode == "debate" else plural(len(run.iterations), "iteration")
    )
    usage = run.usage
    cost = f", ${usage.cost_usd:.4f}" if usage.cost_usd is not None else ""
    tokens = f"{usage.input_tokens} tokens in, {usage.output_tokens} out{cost}"
    return f"{run.status}: {run.reason or '-'} ({steps}, {tokens})"


def _instance(call: CallView | DebateCallView) -> str:
    return f"{call.model}#{call.instance}"


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
        return f"  {label}:\n" + "\n".join("    " + line for line in text.splitlines())
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


def _header(run: RunView) -> list[str]:
    # The gateway answers the request itself, never a reference to it.
    r = cast("ConsortiumRequest | DebateRequest", run.request)
    created = run.created_at.isoformat() if run.created_at else None
    lines = [f"run {run.id} ({run.mode}), created {_when(created)}", outcome_line(run)]
    if run.config:
        lines.append(f"saved configuration: {run.config.name} v{run.config.version}")
    if run.continued_from:
        lines.append(f"continues: {run.continued_from}")
    members = _members_text([m.model_dump() for m in r.members])
    if r.mode == "debate":
        judge = f" by {r.judge}" if r.judge else ""
        lines.append(f"debaters: {members}; {r.format}; {r.judge_mode}{judge}")
    else:
        lines.append(f"members: {members}; arbiter {r.arbiter}")
    lines.append(f"prompt: {short(r.prompt, 200)}")
    return lines


def answer_title(run: RunView) -> str:
    """What the run's answer is: the synthesis (the arbiter's or the members'), a verdict, a summary."""
    if run.mode == "consortium":
        return (
            "answer (the members')" if run.result and run.result.synthesis_from == "members" else "synthesis"
        )
    result = run.result
    if result is not None and result.by == "judge":
        return f"verdict by the judge {result.model}"
    return f"summary by {(run.final.label if run.final else None) or (result.model if result else None)}"


def run_summary(run: RunView, full: bool = False) -> str:
    """`moot show`: status, what was asked, every iteration or round, then the answer."""
    steps = _debate_steps(run, full) if run.mode == "debate" else _consortium_steps(run, full)
    lines = [*_header(run), "", *steps]
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


def _decider(config: dict[str, Any]) -> str:
    if config.get("mode") == "debate":
        return f"judge {config['judge']}" if config.get("judge") else str(config.get("judge_mode"))
    return f"arbiter {config.get('arbiter')}"


def configs_table(configs: list[dict[str, Any]]) -> str:
    rows = [
        [
            c["name"],
            str(c["version"]),
            c["config"].get("mode", "consortium"),
            _members_text(c["config"].get("members") or []),
            _decider(c["config"]),
        ]
        for c in configs
    ]
    return table(["NAME", "VERSION", "MODE", "MEMBERS", "ARBITER/JUDGE"], rows)
