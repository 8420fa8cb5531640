"""Run protocols, by mode. Adding a protocol means adding a module here, not touching services.

Each module provides `State` (its pydantic state model), `start(run_id, request, at)`,
`decide(state, event)` and `view(state)`; see `moot.protocols.base.RunProtocol`.
"""

from __future__ import annotations

from typing import cast

from moot.protocols import consortium, council, debate, moa, vote
from moot.protocols.base import RunProtocol

# One entry per mode of `moot.requests.MODES` (tests/unit/test_registry.py).
_MODULES: dict[str, RunProtocol] = {
    "consortium": cast(RunProtocol, consortium),
    "debate": cast(RunProtocol, debate),
    "council": cast(RunProtocol, council),
    "vote": cast(RunProtocol, vote),
    "moa": cast(RunProtocol, moa),
}


def protocol_for(mode: str) -> RunProtocol:
    """The protocol implementing `mode`; KeyError for an unknown one."""
    return _MODULES[mode]
