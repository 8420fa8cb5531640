"""A finished (or running) run as a Markdown transcript: the MCP server's `moot://runs/{id}` resource.

Every step of the run in order, each model's answer in full, then the run's answer. What the
models wrote is untrusted text: it is quoted (every line behind `> `), so a heading or a list in
an answer stays inside its quote and cannot pass for the transcript's own structure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from moot.cli.render import answer_note, answer_title, describe, outcome_line

if TYPE_CHECKING:
    from moot.requests import AnyRunRequest
    from moot.texts import Text
    from moot.views import (
        CallView,
        ConsortiumView,
        CouncilView,
        DebateCallView,
        DebateView,
        MoaView,
        RunView,
        VoteView,
    )


def quoted(text: str) -> str:
    """`text` as a Markdown block quote, every line of it (an empty text: an empty quote)."""
    return "\n".join(f"> {line}".rstrip() for line in (text.strip() or "(empty)").splitlines())


def _text(text: Text | None) -> str:
    """A text of a view the gateway served: inline, never a reference."""
    return text if isinstance(text, str) else ""


def _call(heading: str, call: CallView | DebateCallView | None, text: str | None = None) -> list[str]:
    """A call under its heading: its answer quoted, or what became of it."""
    if call is None:
        return [heading, "", "(not asked)", ""]
    if call.status == "failed":
        return [f"{heading}: failed", "", quoted(call.error or "no error given"), ""]
    if call.status != "completed":
        return [f"{heading}: {call.status}", ""]
    return [heading, "", quoted(text if text is not None else _text(call.text)), ""]


def _label(call: CallView | DebateCallView) -> str:
    return f"{call.model}#{call.instance}"


def _consortium(run: ConsortiumView, level: int) -> list[str]:
    h = "#" * level
    lines: list[str] = []
    for it in run.iteration_views:
        verdict = it.verdict
        confidence = (
            f"{verdict.confidence:.2f}" if verdict and verdict.confidence is not None else "unreadable"
        )
        decided = f", {it.decision} ({it.reason})" if it.decision else ""
        lines += [f"{h} Iteration {it.number}: confidence {confidence}{decided}", ""]
        for m in it.members:
            stated = f" (confidence {m.confidence:.2f})" if m.confidence is not None else ""
            lines += _call(f"{h}# {_label(m)}{stated}", m)
        # The synthesis, when the arbiter's was read; else the arbiter's own words.
        synthesis = _text(verdict.synthesis) if verdict and verdict.synthesis_from == "arbiter" else None
        arbiter = f"arbiter {it.arbiter.model}" if it.arbiter else "arbiter"
        lines += _call(f"{h}# {arbiter}", it.arbiter, synthesis or None)
        if verdict and verdict.malformed:
            lines += [f"Could not read all of the arbiter's answer: {'; '.join(verdict.problems)}.", ""]
    return lines


def _debate(run: DebateView, level: int) -> list[str]:
    h = "#" * level
    lines: list[str] = []
    for rnd in run.rounds:
        lines += [f"{h} Round {rnd.number}: {', '.join(rnd.speakers)}", ""]
        for turn in rnd.turns:
            lines += _call(f"{h}# {turn.label or _label(turn)}", turn)
        if rnd.decision:
            lines += [f"The judge: {rnd.decision}.", "", quoted(_text(rnd.decision_reason)), ""]
        if rnd.eliminated:
            lines += [f"Out after this round: {', '.join(rnd.eliminated)}.", ""]
    if run.final is not None:
        by = (
            f"Verdict by the judge {run.final.model}"
            if run.result is None or run.result.by == "judge"
            else f"Summary by {run.final.label or _label(run.final)}"
        )
        lines += _call(f"{h} {by}", run.final)
    return lines


def _council(run: CouncilView, level: int) -> list[str]:
    h = "#" * level
    lines = [f"{h} Answers", ""]
    for a in run.answers:
        lines += _call(f"{h}# {_label(a)}", a)
    if run.reviews:
        lines += [f"{h} Reviews", ""]
        for r in run.reviews:
            if r.status == "completed":
                ranked = (
                    ", ".join(f"{place}. {label}" for place, label in enumerate(r.ranking, start=1))
                    if r.ranking is not None
                    else f"unreadable ({r.problem or 'no ranking found'})"
                )
                lines += _call(f"{h}# {r.label}: {ranked}", r)
            else:
                lines += _call(f"{h}# {r.label}", r)
    if run.ranking:
        lines += [f"{h} Ranking", ""]
        lines += [f"{a.rank}. {a.label}: {a.score:g} points, {a.reviews} reviews" for a in run.ranking]
        lines.append("")
    if run.chairman is not None:
        lines += _call(f"{h} Chairman {run.chairman.model}", run.chairman)
    return lines


def _vote(run: VoteView, level: int) -> list[str]:
    h = "#" * level
    agreement = f"agreement {run.agreement:.2f}" if run.agreement is not None else "no agreement measured"
    lines = [f"{h} Votes ({agreement})", ""]
    for v in run.votes:
        counts_as = ""
        if v.status == "completed":
            counts_as = (
                f": counted as {_text(v.normalized)!r}" if v.normalized is not None else ": unreadable"
            )
        lines += _call(f"{h}# {v.label}{counts_as}", v)
    if run.tally:
        lines += [f"{h} Tally", ""]
        lines += [f"- {_text(t.answer)!r}: {t.count} ({', '.join(t.voters)})" for t in run.tally]
        lines.append("")
    if run.escalation is not None:
        lines += [f"{h} Escalated to a {run.escalation.mode}", ""]
        lines += _STEPS[run.escalation.mode](run.escalation, level + 1)
    return lines


def _moa(run: MoaView, level: int) -> list[str]:
    h = "#" * level
    lines: list[str] = []
    for layer in run.layers:
        lines += [f"{h} Layer {layer.number}", ""]
        for c in layer.calls:
            lines += _call(f"{h}# {_label(c)}", c)
    if run.aggregator is not None:
        lines += _call(f"{h} Aggregator {run.aggregator.model}", run.aggregator)
    return lines


# Every step of a run, in order, its sections at the given heading level.
_STEPS: dict[str, Callable[[Any, int], list[str]]] = {
    "consortium": _consortium,
    "debate": _debate,
    "council": _council,
    "vote": _vote,
    "moa": _moa,
}


def transcript(run: RunView, uri: str) -> str:
    """The run in Markdown: what was asked, every step with every answer in full, the answer."""
    request = cast("AnyRunRequest", run.request)  # the gateway serves the request itself
    lines = [
        f"# Run {run.id}",
        "",
        f"- {outcome_line(run)}",
        f"- asks: {describe(request.model_dump(mode='json'))}",
    ]
    if run.created_at:
        finished = f", finished {run.finished_at.isoformat()}" if run.finished_at else ""
        lines.append(f"- created {run.created_at.isoformat()}{finished}")
    if run.config:
        lines.append(f"- saved configuration: {run.config.name} version {run.config.version}")
    if run.continued_from:
        lines.append(f"- continues the conversation of run {run.continued_from}")
    lines += [f"- this transcript: {uri}", "", "## Prompt", "", quoted(request.prompt), ""]
    lines += _STEPS[run.mode](run, 2)
    if run.answer is not None:
        note = answer_note(run)
        lines += [f"## Answer: {answer_title(run)}", "", *([note, ""] if note else []), quoted(run.answer)]
    elif run.status == "running":
        lines.append("(the run is still going)")
    return "\n".join(lines).rstrip("\n") + "\n"
