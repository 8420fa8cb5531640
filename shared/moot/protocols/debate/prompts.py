"""What debaters, the judge and the final speaker are asked, built from the debate's state.

Templates first (one per format for round 1 and later rounds; the judge's, the conviction and
the summary prompts), then the functions that fill them in. A custom template names only the
placeholders of `moot.requests.DEBATE_PLACEHOLDERS` (validated at submission) and is filled by
`render_template`.
"""

from __future__ import annotations

import string
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moot.protocols.debate.machine import Call, Debater, DebateState, Round
    from moot.requests import DebaterSpec


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
# Filled in from the state


def turn_prompt(state: DebateState, debater: Debater) -> str:
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
        own_position=own_position(state, debater) or NO_POSITION,
        history=transcript(state, earlier),
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
        "history": transcript(state, earlier) if earlier else NO_HISTORY,
        "own_position": own_position(state, debater) or NO_POSITION,
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


def transcript(state: DebateState, rounds: list[Round]) -> str:
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


def own_position(state: DebateState, debater: Debater) -> str:
    """The debater's own earlier turns, and nobody else's (not even another instance's)."""
    return "\n\n".join(
        f"Round {r.number}:\n{t.text}"
        for r in state.rounds
        for t in r.turns
        if t.debater_number == debater.number and t.status == "completed"
    )


def attachment_blocks(spec: DebaterSpec) -> str:
    return "".join(
        f"\n\n----- attached document: {a.name} -----\n{a.content}\n----- end of {a.name} -----"
        for a in spec.attachments
    )


def judge_decision_prompt(state: DebateState) -> str:
    """Asks the judge, after the current round, whether the debate should go on."""
    return JUDGE_DECISION_PROMPT.format(
        question=state.request.prompt,
        last_round=state.current.number,
        transcript=transcript(state, state.rounds),
    )


def conviction_prompt(state: DebateState, debater: Debater) -> str:
    """Asks a debater still in whether another one convinced it."""
    others = [d.label for d in state.active() if d.number != debater.number]
    return CONVICTION_PROMPT.format(
        label=debater.label,
        number=debater.number,
        question=state.request.prompt,
        own_position=own_position(state, debater),
        transcript=transcript(state, state.rounds),
        others=", ".join(others),
        others_example=others[0],
    )


def verdict_prompt(state: DebateState) -> str:
    """Asks the external judge for the verdict, over the whole transcript."""
    return JUDGE_VERDICT_PROMPT.format(
        question=state.request.prompt, transcript=transcript(state, state.rounds)
    )


def summary_prompt(state: DebateState, winner: Debater) -> str:
    """Asks the first debater still in for the final answer (self-convergence)."""
    sole = len(state.active()) == 1
    return SUMMARY_PROMPT.format(
        label=winner.label,
        question=state.request.prompt,
        transcript=transcript(state, state.rounds),
        standing=SUMMARY_SOLE if sole else SUMMARY_FIRST.format(rounds=state.current.number),
    )
