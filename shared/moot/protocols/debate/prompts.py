"""What debaters, the judge and the final speaker are asked, built from the debate's state.

Templates first (one per format for round 1 and later rounds; the judge's, the conviction and
the summary prompts), then the functions that fill them in. A custom template names only the
placeholders of `moot.requests.DEBATE_PLACEHOLDERS` (validated at submission); it is split once
at the start (`parse_template`) and filled by `render_template`.
"""

from __future__ import annotations

import string
from typing import TYPE_CHECKING

from pydantic import BaseModel

from moot.texts import Parts, Text, TextSink, compose, join, merge

if TYPE_CHECKING:
    from moot.protocols.debate.machine import Call, Debater, DebateState, Round
    from moot.requests import Attachment


class Placeholder(BaseModel):
    """A placeholder of a parsed custom template (`parse_template`)."""

    placeholder: str


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
FAILED_TURN = "(no answer: the call failed)"

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
# Filled in from the state. Every function returns `Parts` (`moot.texts`): the templates' literal
# text inline, the question and the turns by reference when long, so a prompt
# costs a few hundred bytes per turn it quotes whatever the turns' length.


def turn_prompt(state: DebateState, debater: Debater) -> Parts:
    """What the debater is asked this round: its format's prompt, or the custom template filled in."""
    rnd = state.current
    if state.format == "custom":
        assert state.template is not None
        return render_template(state.template, _placeholders(state, debater))
    earlier = state.rounds[:-1]
    if rnd.number == 1:
        return compose(
            FIRST_ROUND[state.format], question=state.prompt, label=debater.label, number=debater.number
        )
    context = compose(
        LATER_ROUNDS_CONTEXT,
        label=debater.label,
        number=debater.number,
        question=state.prompt,
        own_position=own_position(state, debater) or NO_POSITION,
        history=transcript(state, earlier),
        current_round=_so_far(state) or FIRST_TO_SPEAK,
        round=rnd.number,
    )
    return merge([*context, *compose(LATER_ROUNDS[state.format], round=rnd.number)])


def _placeholders(state: DebateState, debater: Debater) -> dict[str, Parts]:
    rnd = state.current
    earlier = state.rounds[:-1]
    current: Parts = [ROUND_ONE_ALONE] if rnd.number == 1 else (_so_far(state) or [FIRST_TO_SPEAK])
    return {
        "question": [state.prompt],
        "history": transcript(state, earlier) if earlier else [NO_HISTORY],
        "own_position": own_position(state, debater) or [NO_POSITION],
        "current_round": current,
        "round": [str(rnd.number)],
        "model_name": [debater.model],
        "debater_number": [str(debater.number)],
    }


def parse_template(template: str, sink: TextSink) -> list[Text | Placeholder]:
    """A validated custom template split once, at the start: its literal text (`{{`/`}}` already
    braces, long stretches by reference) and its placeholders, so no turn needs the template."""
    pieces: list[Text | Placeholder] = []
    for literal, name, _spec, _conversion in string.Formatter().parse(template):
        if literal:
            pieces.append(sink.text(literal))
        if name is not None:
            pieces.append(Placeholder(placeholder=name))
    return pieces


def render_template(pieces: list[Text | Placeholder], values: dict[str, Parts]) -> Parts:
    """Fill a parsed custom template: each placeholder replaced by its value's parts."""
    parts: Parts = []
    for piece in pieces:
        if isinstance(piece, Placeholder):
            parts.extend(values[piece.placeholder])
        else:
            parts.append(piece)
    return merge(parts)


def transcript(state: DebateState, rounds: list[Round]) -> Parts:
    """The rounds' blocks one after the other; a closed round's is the one stored when it closed
    (`Round.transcript`, one part), so a prompt quoting 20 rounds holds 20 references."""
    return join((r.transcript if r.transcript is not None else round_block(state, r) for r in rounds), "\n\n")


def round_block(state: DebateState, rnd: Round) -> Parts:
    """One round of the transcript: its heading, then every turn, labelled."""
    return compose("=== Round {number} ===\n\n{turns}", number=rnd.number, turns=_turns(state, rnd.turns))


def _so_far(state: DebateState) -> Parts:
    """This round's earlier turns (the current speaker's own call is the last, still pending)."""
    return _turns(state, [t for t in state.current.turns if t.status != "pending"])


def _turns(state: DebateState, turns: list[Call]) -> Parts:
    blocks: list[Parts] = []
    for t in turns:
        assert t.debater_number is not None
        said: Text = (t.text or "") if t.status == "completed" else FAILED_TURN
        blocks.append(compose("[{label}]\n{said}", label=state.debater(t.debater_number).label, said=said))
    return join(blocks, "\n\n")


def own_position(state: DebateState, debater: Debater) -> Parts:
    """The debater's own earlier turns, and nobody else's (not even another instance's)."""
    return join(
        (
            compose("Round {number}:\n{said}", number=r.number, said=t.text or "")
            for r in state.rounds
            for t in r.turns
            if t.debater_number == debater.number and t.status == "completed"
        ),
        "\n\n",
    )


def attachment_blocks(attachments: list[Attachment]) -> str:
    """A debater's attached documents, each a labelled block after its prompt (built once)."""
    return "".join(
        f"\n\n----- attached document: {a.name} -----\n{a.content}\n----- end of {a.name} -----"
        for a in attachments
    )


def judge_decision_prompt(state: DebateState) -> Parts:
    """Asks the judge, after the current round, whether the debate should go on."""
    return compose(
        JUDGE_DECISION_PROMPT,
        question=state.prompt,
        last_round=state.current.number,
        transcript=transcript(state, state.rounds),
    )


def conviction_prompt(state: DebateState, debater: Debater) -> Parts:
    """Asks a debater still in whether another one convinced it."""
    others = [d.label for d in state.active() if d.number != debater.number]
    return compose(
        CONVICTION_PROMPT,
        label=debater.label,
        number=debater.number,
        question=state.prompt,
        own_position=own_position(state, debater),
        transcript=transcript(state, state.rounds),
        others=", ".join(others),
        others_example=others[0],
    )


def verdict_prompt(state: DebateState) -> Parts:
    """Asks the external judge for the verdict, over the whole transcript."""
    return compose(JUDGE_VERDICT_PROMPT, question=state.prompt, transcript=transcript(state, state.rounds))


def summary_prompt(state: DebateState, winner: Debater) -> Parts:
    """Asks the first debater still in for the final answer (self-convergence)."""
    sole = len(state.active()) == 1
    return compose(
        SUMMARY_PROMPT,
        label=winner.label,
        question=state.prompt,
        transcript=transcript(state, state.rounds),
        standing=SUMMARY_SOLE if sole else SUMMARY_FIRST.format(rounds=state.current.number),
    )
