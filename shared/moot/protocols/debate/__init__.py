"""The debate: debaters state positions, then argue turn by turn until it is decided.

`machine` is the state machine (`start`, `decide`, `view`; where a debate stops is
`should_stop`), `prompts` what debaters, the judge and the final speaker are asked, `parsing`
how the judge's and the debaters' answers are read.
"""

from moot.protocols.debate.machine import (
    Debater,
    DebateState,
    State,
    decide,
    seeded,
    should_stop,
    start,
    view,
)
from moot.protocols.debate.parsing import parse_conviction, parse_judge_answer

__all__ = [
    "DebateState",
    "Debater",
    "State",
    "decide",
    "parse_conviction",
    "parse_judge_answer",
    "seeded",
    "should_stop",
    "start",
    "view",
]
