"""The consortium: members answer in parallel, an arbiter synthesizes, repeat until it is sure.

`machine` is the state machine (`start`, `decide`, `view`; the stop rule is `should_stop`),
`prompts` what the models are asked, `parsing` how their answers are read.
"""

from moot.protocols.consortium.machine import (
    ConsortiumState,
    Plan,
    State,
    decide,
    seeded,
    should_stop,
    start,
    view,
)
from moot.protocols.consortium.prompts import arbiter_prompt

__all__ = [
    "ConsortiumState",
    "Plan",
    "State",
    "arbiter_prompt",
    "decide",
    "seeded",
    "should_stop",
    "start",
    "view",
]
