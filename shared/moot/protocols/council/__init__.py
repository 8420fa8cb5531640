"""The council: members answer, reviewers rank the answers anonymized, a chairman answers.

`machine` is the state machine (`start`, `decide`, `view`; the aggregate ranking is
`aggregate`), `prompts` what reviewers and the chairman are asked, `parsing` how a reviewer's
ranking is read.
"""

from moot.protocols.council.machine import CouncilState, Plan, State, aggregate, decide, start, view
from moot.protocols.council.parsing import ReadRanking, parse_ranking

__all__ = [
    "CouncilState",
    "Plan",
    "ReadRanking",
    "State",
    "aggregate",
    "decide",
    "parse_ranking",
    "start",
    "view",
]
