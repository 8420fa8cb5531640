"""Run protocols, by mode. Adding a protocol means adding a module here, not touching services.

Each module provides `State` (its pydantic state model), `start(run_id, request, at)`,
`decide(state, event)` and `view(state)`; see `moot.protocols.base.RunProtocol`.
"""

from __future__ import annotations

from typing import cast

from moot.protocols import consortium, debate
from moot.protocols.base import RunProtocol

_MODULES: dict[str, RunProtocol] = {
    "consortium": cast(RunProtocol, consortium),
    "debate": cast(RunProtocol, debate),
}


def protocol_for(mode: str) -> RunProtocol:
    """The protocol implementing `mode`; KeyError for an unknown one."""
    return _MODULES[mode]
