"""Mixture-of-Agents (Wang et al. 2024): layers of proposers, each seeing the previous layer's
answers, then an aggregator writes the answer.

`machine` is the state machine (`start`, `decide`, `view`), `prompts` what the models are asked.
There is no `parsing`: every answer, the aggregator's too, is free text taken as it is, quoted
whole in the next prompt or returned as the run's answer; nothing in it steers the run.
"""

from moot.protocols.moa.machine import MoaState, Plan, State, decide, start, view
from moot.protocols.moa.prompts import synthesis_prompt

__all__ = ["MoaState", "Plan", "State", "decide", "start", "synthesis_prompt", "view"]
