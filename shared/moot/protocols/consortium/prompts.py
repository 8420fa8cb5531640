"""Prompt text sent to models. Written for small models too: short, explicit, with an example.

Small models (the local SmolLM2-135M) follow what comes last in a prompt and copy examples: so
the format comes last, as a template to fill in, and the reply's first tag is named once more.
How often they comply, before and after: docs/benchmarks.md, "Local model".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moot.protocols.base import conversation_text

if TYPE_CHECKING:
    from moot.protocols.consortium.machine import ConsortiumState
    from moot.requests import ConsortiumRequest
    from moot.views import ArbiterVerdict

ARBITER_PROMPT = """\
You are the arbiter of a panel of AI models. Several models answered the question below.
{instructions}
Question: {prompt}

Answers from the models (iteration {iteration}):
{responses}
{history}
Your task: combine these answers into the single best answer to the question, complete and \
self-contained, and say how sure you are that it is right, as a number from 0 (not at all) to 1 \
(certain).

Reply with exactly these six tags, in this order, and nothing else:
<synthesis>your combined best answer</synthesis>
<confidence>a number from 0 to 1, e.g. 0.7</confidence>
<analysis>where the answers agree and where they differ, briefly</analysis>
<dissent>a view that disagrees with your answer, or none</dissent>
<needs_iteration>false, or true if another round would clearly help</needs_iteration>
<refinement_areas><area>one thing to improve</area><area>another thing</area></refinement_areas>
Start your reply with <synthesis>.
"""

ARBITER_INSTRUCTIONS = "\nThe user gave these instructions, follow them:\n{system}\n"

ARBITER_RESPONSE = """\
<answer model="{model}" instance="{instance}" stated_confidence="{confidence}">
{text}
</answer>"""

ARBITER_HISTORY = """
EARLIER ITERATIONS (your previous syntheses):
{iterations}
"""

ARBITER_HISTORY_ITEM = """\
<iteration number="{number}" confidence="{confidence}">
{synthesis}
Areas to refine: {areas}
</iteration>"""

REFINEMENT_PROMPT = """\
Here is the question again:
{prompt}

The panel's current best answer (confidence {confidence}):
{synthesis}

Areas to improve:
{areas}

Write an improved answer to the question. Keep what is right, fix what is weak, and cover the
areas above. End with a last line giving your confidence in it, a number between 0 and 1, \
like "Confidence: 0.6"."""

MEMBER_CONFIDENCE_HINT = '\n\nEnd your answer with a last line giving your confidence in it, a number between 0 and 1, like "Confidence: 0.6".'

ARBITER_CONVERSATION = "\nThe question continues this earlier conversation:\n{conversation}\n"


# ---------------------------------------------------------------------------------------------
# Built from the run's state


def arbiter_prompt(state: ConsortiumState) -> str:
    it = state.current
    responses = "\n".join(
        ARBITER_RESPONSE.format(
            model=c.model,
            instance=c.instance,
            confidence=c.confidence if c.confidence is not None else "not stated",
            text=c.text if c.status == "completed" else f"(no answer: the call failed: {c.error})",
        )
        for c in it.members
    )
    history = ""
    if len(state.iterations) > 1:
        history = ARBITER_HISTORY.format(
            iterations="\n".join(
                ARBITER_HISTORY_ITEM.format(
                    number=prev.number,
                    confidence=fmt_confidence(prev.verdict.confidence if prev.verdict else None),
                    synthesis=prev.verdict.synthesis if prev.verdict else "",
                    areas="; ".join(prev.verdict.refinement_areas) if prev.verdict else "",
                )
                for prev in state.iterations[:-1]
            )
        )
    instructions = ARBITER_INSTRUCTIONS.format(system=state.request.system) if state.request.system else ""
    if state.request.history:
        instructions += ARBITER_CONVERSATION.format(conversation=conversation_text(state.request.history))
    return ARBITER_PROMPT.format(
        instructions=instructions,
        prompt=state.request.prompt,
        iteration=it.number,
        responses=responses,
        history=history,
    )


def refinement_prompt(req: ConsortiumRequest, verdict: ArbiterVerdict) -> str:
    areas = "\n".join(f"- {a}" for a in verdict.refinement_areas) or "- (the arbiter named none)"
    return REFINEMENT_PROMPT.format(
        prompt=req.prompt,
        confidence=fmt_confidence(verdict.confidence),
        synthesis=verdict.synthesis,
        areas=areas,
    )


def fmt_confidence(conf: float | None) -> str:
    return f"{conf:.2f}" if conf is not None else "unknown"
