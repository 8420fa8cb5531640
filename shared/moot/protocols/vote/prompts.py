"""What every voter is asked: the question, how to answer it in the vote's format, and where.

The answer goes alone on the reply's last line, after "Answer:", where `parsing.read_vote` looks
first. The line is shown with a placeholder, not an example value: small models copy examples,
and a copied "42" would count as a vote; a copied "<the number>" or "<yes or no>" counts as none.
Voters may reason before it: self-consistency samples independent lines of reasoning and counts
only where they end.

Built as `Parts` (`moot.texts.compose`): the question and the options by reference when long,
and what follows the question (`how_to_answer`) stored once as one document, so a vote's job and
state quote it with one reference while a budget still counts the question whole.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

from moot.protocols.agreement import Format
from moot.texts import Parts, Text, compose, join

VOTE_PROMPT = "{prompt}\n{how}"

HOW_TO_ANSWER = """\
{options}
{instructions} You may think it through first. End your reply with a last line that holds \
only your answer, in this form:
Answer: {placeholder}"""

OPTIONS = "\nOptions:\n{options}\n"

INSTRUCTIONS: dict[Format, str] = {
    "free": "Give a short, direct answer.",
    "number": "The answer is a number: give it in digits, without units.",
    "choice": "Choose one option and answer with its letter.",
    "yes_no": "Answer yes or no.",
}

PLACEHOLDERS: dict[Format, str] = {
    "free": "<your short answer>",
    "number": "<the number>",
    "choice": "<the letter>",
    "yes_no": "<yes or no>",
}


def how_to_answer(fmt: Format, choices: Sequence[Text] = ()) -> Parts:
    """What follows the question: its options listed "A. ..." when there are some, and how to
    give the answer. The same for every vote of a format and options: a run stores it once."""
    options = join(
        (
            compose("{letter}. {text}", letter=letter, text=text)
            for letter, text in zip(string.ascii_uppercase, choices, strict=False)
        ),
        "\n",
    )
    return compose(
        HOW_TO_ANSWER,
        options=compose(OPTIONS, options=options) if choices else [],
        instructions=INSTRUCTIONS[fmt],
        placeholder=PLACEHOLDERS[fmt],
    )


def vote_prompt(prompt: Text, how: Parts) -> Parts:
    """The prompt of every voter: the question, then how to answer it (`how_to_answer`)."""
    return compose(VOTE_PROMPT, prompt=prompt, how=how)
