"""Run budgets of tokens and US dollars in the protocols: a run ends before the calls that could
exceed its budget, never after them, with its best result so far or failed (`stop_reason: budget`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from moot.messages import (
    CallJob,
    DebateError,
    IterationCompleted,
    JobMessage,
    RunCompleted,
    RunFailed,
)
from moot.protocols import consortium, debate
from moot.protocols.base import Limits, Transition, over_budget, prompt_tokens
from moot.requests import Budget, ConsortiumRequest, DebateRequest
from moot.texts import ImagePart, TextRef, TextSink
from moot.views import ConsortiumView, DebateView, Usage, run_view_adapter

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
TEXTS: dict[str, str] = {}
# What every call reports: far more than a call reserves (its prompt and max_tokens of 10), so
# that what a run has spent plus what its next calls reserve only grows along a run.
SPENT_PER_CALL = Usage(input_tokens=200, output_tokens=50)

Reply = Callable[[CallJob], tuple[str, Usage]]


def kept(t: Transition[Any]) -> Transition[Any]:
    TEXTS.update(t.texts)
    return t


def jobs(commands: list[Any]) -> list[CallJob]:
    return [c for c in commands if isinstance(c, CallJob)]


def kinds(commands: list[Any]) -> list[str]:
    return [type(c).__name__ for c in commands]


def end_view(event: Any) -> ConsortiumView | DebateView:
    assert isinstance(event, RunCompleted | RunFailed) and isinstance(event.run, TextRef)
    return run_view_adapter.validate_json(TEXTS[event.run.sha])


def arbiter_xml(confidence: float, needs: bool, synthesis: str) -> str:
    return (
        f"<synthesis>{synthesis}</synthesis><confidence>{confidence}</confidence>"
        f"<needs_iteration>{str(needs).lower()}</needs_iteration>"
    )


def replies(job: CallJob) -> tuple[str, Usage]:
    """Every role's answer: an arbiter that always asks for more, a judge that lets it go on,
    debaters nobody convinces."""
    text = {
        "member": "4",
        "arbiter": arbiter_xml(0.5, True, f"synthesis {job.iteration}"),
        "debater": f"{job.model} argues",
        "judge": "CONTINUE",
        "conviction": "NOT CONVINCED",
        "final": "the verdict",
    }[job.role]
    return text, SPENT_PER_CALL


def consortium_request(**budget: Any) -> ConsortiumRequest:
    return ConsortiumRequest.model_validate(
        {
            "prompt": "What is 2+2? Show your reasoning.",
            "members": [{"model": "a", "count": 2}],
            "arbiter": "judge",
            "max_iterations": 3,
            "max_tokens": 10,
            "budget": budget,
        }
    )


def debate_request(judge_mode: str = "external_judge", **budget: Any) -> DebateRequest:
    return DebateRequest.model_validate(
        {
            "prompt": "Is a hot dog a sandwich?",
            "members": [{"model": "a", "max_tokens": 10}, {"model": "b", "max_tokens": 10}],
            "judge_mode": judge_mode,
            "judge": "j" if judge_mode == "external_judge" else None,
            "max_rounds": 3,
            "budget": budget,
        }
    )


def drive(protocol: Any, request: Any, reply: Reply = replies) -> list[Transition[Any]]:
    """The run from start to end, answering its jobs in the order they were issued; no decision
    changes the state it is given (a budget stop included)."""
    t = kept(protocol.start("r1", request, T0))
    steps, queue = [t], jobs(t.commands)
    while queue and t.state.status == "running":
        job = queue.pop(0)
        text, usage = reply(job)
        before = t.state.model_dump_json()
        given = t.state
        t = kept(protocol.decide(given, job.completed(text, usage=usage, at=T0)))
        assert given.model_dump_json() == before
        steps.append(t)
        queue += jobs(t.commands)
    return steps


def tokens(usage: Usage) -> int:
    return usage.input_tokens + usage.output_tokens


def reserved(batch: list[CallJob]) -> int:
    return sum(prompt_tokens(job) + (job.max_tokens or 0) for job in batch)


def issuing_steps(steps: list[Transition[Any]]) -> list[tuple[int, int, int, int]]:
    """(step, spent before its calls, what they reserve, how many) of every step issuing calls."""
    return [
        (i, tokens(t.state.usage), reserved(jobs(t.commands)), len(jobs(t.commands)))
        for i, t in enumerate(steps)
        if jobs(t.commands)
    ]


# ---------------------------------------------------------------------------------------------
# The request and the estimate


def test_budget_limits_are_optional_bounded_and_left_out_of_the_stored_request() -> None:
    assert Budget().tokens is None and Budget().usd is None
    budget = Budget.model_validate({"tokens": 500, "usd": 0.25})
    assert (budget.seconds, budget.tokens, budget.usd) == (900, 500, 0.25)
    for bad in ({"tokens": 0}, {"tokens": 1.5}, {"usd": 0}, {"usd": -1}, {"usd": "inf"}, {"cents": 5}):
        with pytest.raises(ValidationError):
            Budget.model_validate(bad)
    # Without limits the request reads as before budgets had them, and so does the state.
    assert consortium_request(seconds=60).model_dump(mode="json")["budget"] == {"seconds": 60}
    state = consortium.start("r1", consortium_request(), T0).state
    assert state.limits is None and "limits" not in state.model_dump(mode="json")
    assert Limits.of(Budget(tokens=5)) == Limits(tokens=5)


def test_a_calls_prompt_is_estimated_at_a_quarter_token_per_character() -> None:
    sink = TextSink()
    conversation = sink.document([{"role": "user", "content": "earlier"}])  # a stored list of messages
    long = sink.ref("x" * 1000)
    job = CallJob(
        call_id="r:1:member:a:1",
        run_id="r",
        iteration=1,
        role="member",
        model="a",
        instance=1,
        messages=[
            JobMessage(role="system", content=["be brief"]),  # 8
            conversation,  # its JSON's characters
            JobMessage(role="user", content=["Q: ", long, ImagePart(url="data:image/png;base64,AAAA")]),
        ],
        max_tokens=50,
    )
    assert prompt_tokens(job) == math.ceil((8 + conversation.chars + 3 + 1000) / 4)
    # A job reserves its prompt and its max_tokens; without max_tokens, its prompt only.
    limits = Limits(tokens=10_000)
    spent = Usage(input_tokens=9_000, output_tokens=1_000 - prompt_tokens(job) - 50)
    assert over_budget(limits, spent, [job]) is None
    spent = spent.plus(Usage(output_tokens=1))
    assert over_budget(limits, spent, [job]) == (
        f"token budget of 10000 would be exceeded: {tokens(spent)} spent, "
        f"the next call may take up to {prompt_tokens(job) + 50}"
    )
    assert over_budget(limits, spent, [job.model_copy(update={"max_tokens": None})]) is None
    assert over_budget(None, Usage(input_tokens=10**9), [job]) is None
    assert over_budget(limits, Usage(input_tokens=10**9), []) is None  # no calls, nothing to stop


# ---------------------------------------------------------------------------------------------
# Consortium


def test_consortium_without_a_budget_runs_to_max_iterations() -> None:
    steps = drive(consortium, consortium_request())
    assert steps[-1].state.status == "completed" and steps[-1].state.stop_reason is None
    assert steps[-1].state.reason.startswith("reached max_iterations (3)")


def test_consortium_stops_before_whichever_calls_would_exceed_the_budget() -> None:
    """At every point where the run issues calls: with a budget one token short of what it has
    spent plus what they may take, it ends there without them; with exactly that, it issues them."""
    unlimited = drive(consortium, consortium_request())
    issuing = issuing_steps(unlimited)
    assert len(issuing) == 6  # three iterations: members, then the arbiter
    for k, (step, spent, reserve, count) in enumerate(issuing):
        # Earlier calls stay within the smaller budget, so the run gets this far.
        assert all(s + r < spent + reserve for _, s, r, _ in issuing[:k])
        limit = spent + reserve

        enough = drive(consortium, consortium_request(tokens=limit))
        assert jobs(enough[step].commands) == jobs(unlimited[step].commands)

        short = drive(consortium, consortium_request(tokens=limit - 1))
        assert len(short) == step + 1  # it ended there
        ended = short[step]
        assert jobs(ended.commands) == []
        assert ended.state.stop_reason == "budget"
        calls = "the next call" if count == 1 else f"the next {count} calls"
        why = (
            f"token budget of {limit - 1} would be exceeded: {spent} spent, {calls} may take up to {reserve}"
        )
        end = ended.commands[-1]
        view = end_view(end)
        assert isinstance(view, ConsortiumView) and view.stop_reason == "budget"
        assert view.usage == ended.state.usage
        finished = ended.state.done
        if step == 0:  # the very first calls: created, then failed, no iteration
            assert kinds(ended.commands) == ["RunCreated", "RunFailed"]
            assert ended.state.reason == f"{why}, before any result" and view.iterations == []
        elif len(finished) == 0:  # the first arbiter: no synthesis yet
            assert isinstance(end, RunFailed) and ended.state.reason == f"{why}, before any result"
            assert view.result is None
            [it] = view.iterations
            assert not isinstance(it, TextRef) and it.arbiter is None  # never asked
            assert [m.status for m in it.members] == ["completed", "completed"]
        else:  # completed with the synthesis of the last finished iteration
            assert isinstance(end, RunCompleted) and ended.state.status == "completed"
            what = f"the synthesis of iteration {len(finished)}"
            assert ended.state.reason == f"{why}; the run ends with {what}"
            assert view.result is not None and view.result.synthesis == f"synthesis {len(finished)}"
            if any(isinstance(c, IterationCompleted) for c in ended.commands):
                # Stopped before a refinement: the finished iteration is shown once, none opened.
                assert kinds(ended.commands) == ["IterationCompleted", "RunCompleted"]
                assert len(view.iterations) == len(finished)
            else:  # stopped before an arbiter: the iteration under way is shown without it
                assert len(view.iterations) == len(finished) + 1
        assert ended.state.finished_at == T0 and ended.state.status in ("completed", "failed")


def test_a_budget_stop_leaves_the_state_it_was_given_as_it_was() -> None:
    unlimited = drive(consortium, consortium_request())
    step, spent, reserve, _ = issuing_steps(unlimited)[2]  # iteration 2's members
    request = consortium_request(tokens=spent + reserve - 1)
    steps = drive(consortium, request)
    before = steps[step - 1].state.model_dump_json()
    arbiter = jobs(steps[step - 1].commands)[0]
    text, usage = replies(arbiter)
    again = consortium.decide(steps[step - 1].state, arbiter.completed(text, usage=usage, at=T0))
    assert steps[step - 1].state.model_dump_json() == before
    assert again.state.stop_reason == "budget" and jobs(again.commands) == []
    # Ended: later outcomes and a deadline change nothing.
    late = consortium.decide(again.state, arbiter.completed(text, usage=usage, at=T0))
    assert late.state is again.state and late.commands == []


def test_consortium_usd_budget_reserves_each_call_at_the_costliest_so_far() -> None:
    costs = {("member", 1): 0.01, ("member", 2): 0.02, ("arbiter", 1): 0.005}

    def priced(job: CallJob) -> tuple[str, Usage]:
        text, usage = replies(job)
        return text, usage.model_copy(update={"cost_usd": costs[(job.role, job.instance)]})

    # The first calls go ahead whatever the budget: no cost is known yet.
    first = drive(consortium, consortium_request(usd=0.001), priced)
    assert len(jobs(first[0].commands)) == 2
    # 0.03 spent, the arbiter reserved at 0.02 (the costliest call): 0.05 fits, 0.04 does not.
    tight = drive(consortium, consortium_request(usd=0.04), priced)
    ended = tight[-1]
    assert isinstance(ended.commands[-1], RunFailed) and ended.state.stop_reason == "budget"
    assert ended.state.limits.costliest_usd == 0.02
    assert ended.state.reason == (
        "USD budget of $0.04 would be exceeded: $0.03 spent, the next call may cost up to $0.02, "
        "before any result"
    )
    # With 0.05 the arbiter is asked (0.01 + 0.02 + 0.02 is 0.05, rounding aside); then 0.035 is
    # spent and iteration 2's two members would reserve 0.04: the run ends with iteration 1's synthesis.
    enough = drive(consortium, consortium_request(usd=0.05), priced)
    ended = enough[-1]
    assert [j.role for j in jobs(enough[-2].commands)] == ["arbiter"]
    assert isinstance(ended.commands[-1], RunCompleted) and ended.state.stop_reason == "budget"
    assert ended.state.reason == (
        "USD budget of $0.05 would be exceeded: $0.035 spent, the next 2 calls may cost up to $0.04; "
        "the run ends with the synthesis of iteration 1"
    )
    assert end_view(ended.commands[-1]).usage.cost_usd == pytest.approx(0.035)


def test_a_call_of_unknown_cost_counts_as_free() -> None:
    steps = drive(consortium, consortium_request(usd=0.001))  # no call reports a cost
    assert steps[-1].state.status == "completed" and steps[-1].state.stop_reason is None


# ---------------------------------------------------------------------------------------------
# Debate


@pytest.mark.parametrize("judge_mode", ["external_judge", "self_convergence"])
def test_debate_stops_before_whichever_calls_would_exceed_the_budget(judge_mode: str) -> None:
    """Every turn, the judge, the conviction checks and the final call alike: one token short, the
    debate fails there (`error`, then `run.failed`) and the view shows no call never issued."""
    unlimited = drive(debate, debate_request(judge_mode))
    issuing = issuing_steps(unlimited)
    roles = [jobs(unlimited[step].commands)[0].role for step, *_ in issuing]
    middle = "judge" if judge_mode == "external_judge" else "conviction"
    assert roles == ["debater", "debater", "debater", middle, "debater", "debater", "final"]
    for k, (step, spent, reserve, count) in enumerate(issuing):
        assert all(s + r < spent + reserve for _, s, r, _ in issuing[:k])
        limit = spent + reserve
        enough = drive(debate, debate_request(judge_mode, tokens=limit))
        assert jobs(enough[step].commands) == jobs(unlimited[step].commands)

        short = drive(debate, debate_request(judge_mode, tokens=limit - 1))
        assert len(short) == step + 1
        ended = short[step]
        assert jobs(ended.commands) == []
        calls = "the next call" if count == 1 else f"the next {count} calls"
        why = (
            f"token budget of {limit - 1} would be exceeded: {spent} spent, {calls} may take up to {reserve}"
        )
        assert ended.state.status == "failed" and ended.state.stop_reason == "budget"
        assert ended.state.reason == f"{why}, before any result"
        *events, error, end = ended.commands
        assert isinstance(error, DebateError) and error.message == ended.state.reason
        assert isinstance(end, RunFailed) and end.reason == ended.state.reason
        view = end_view(end)
        assert isinstance(view, DebateView) and view.stop_reason == "budget" and view.result is None
        assert view.usage == ended.state.usage
        # Nothing the budget stopped is in the view: every call shown was issued and answered.
        shown = [c for r in view.rounds for c in [*r.turns, *r.convictions, *([r.judge] if r.judge else [])]]
        assert all(c.status == "completed" for c in shown) and view.final is None
        assert len(shown) == sum(n for _, _, _, n in issuing[:k])
        if step == 0:  # round 1 could not be afforded: the debate never began
            assert kinds(ended.commands) == ["DebateStart", "DebateError", "RunFailed"]
            assert error.round is None and view.rounds == []
        else:
            assert error.round == len(view.rounds)
            assert not {"RoundStart", "FinalStart"} & set(kinds(events))


def test_debate_usd_budget() -> None:
    def priced(job: CallJob) -> tuple[str, Usage]:
        text, usage = replies(job)
        return text, usage.model_copy(update={"cost_usd": 0.01})

    # Round 1 costs 0.02; each later call is reserved at 0.01: round 2's two turns fit in 0.04,
    # the judge after them would take the run to 0.05.
    steps = drive(debate, debate_request(usd=0.04), priced)
    ended = steps[-1]
    assert ended.state.stop_reason == "budget" and isinstance(ended.commands[-1], RunFailed)
    assert ended.state.reason == (
        "USD budget of $0.04 would be exceeded: $0.04 spent, the next call may cost up to $0.01, "
        "before any result"
    )
    assert [r.judge for r in ended.state.rounds] == [None, None]
    assert len(ended.state.rounds[1].turns) == 2
