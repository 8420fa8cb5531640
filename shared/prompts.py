"""Prompt text sent to models. Written for small models too: short, explicit, with an example."""

from __future__ import annotations

ARBITER_PROMPT = """\
You are the arbiter of a panel of AI models. Several models answered the question below.
Combine their answers into one best answer and judge how sure the panel is.
{instructions}
QUESTION:
{prompt}

ANSWERS FROM THE MODELS (iteration {iteration}):
{responses}
{history}
Reply ONLY with these six tags, in this order, and nothing else:
<synthesis>the single best answer to the question, complete and self-contained</synthesis>
<confidence>a number between 0 and 1, for example 0.85</confidence>
<analysis>where the models agree and where they differ, briefly</analysis>
<dissent>any view that disagrees with the synthesis, or "none"</dissent>
<needs_iteration>true if another round of answers would clearly improve the synthesis, else false</needs_iteration>
<refinement_areas><area>one thing to improve</area><area>another thing</area></refinement_areas>
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
areas above. End with a line "Confidence: X" where X is between 0 and 1."""

MEMBER_CONFIDENCE_HINT = '\n\nEnd your answer with a line "Confidence: X" where X is between 0 and 1.'

ARBITER_CONVERSATION = "\nThe question continues this earlier conversation:\n{conversation}\n"
