"""The vote: every member instance answers once and the most common answer wins; below the
agreement threshold the run can go on as a consortium or a debate seeded with the votes.

`machine` is the state machine (`start`, `decide`, `view`; what a count decides is `_verdict`),
`prompts` what the voters are asked, `parsing` how their answers are read (normalised by
`moot.protocols.agreement`).
"""

from moot.protocols.vote.machine import State, Tally, Vote, VoteState, decide, start, view
from moot.protocols.vote.parsing import Reading, key_text, read_vote

__all__ = [
    "Reading",
    "State",
    "Tally",
    "Vote",
    "VoteState",
    "decide",
    "key_text",
    "read_vote",
    "start",
    "view",
]
