"""`moot council`, `moot vote` and `moot moa` as a user runs them, against the e2e stack's gateway.

The models' behaviours are conftest.py's: `ranker` answers with a readable review, `chair` is a
chairman, `eight` and `nine` disagree on a number. Progress goes to stderr, the answer to stdout.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from test_cli import moot, run_id_of, show_json

from moot.devstack.stack import Stack

CANBERRA = "The capital of Australia is Canberra."


@pytest.fixture
def env(stack: Stack, api_key: str, database_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "MOOT_URL": stack.gateway_url,
        "MOOT_API_KEY": api_key,
        "DATABASE_URL": database_url,
    }


async def test_council_shows_answers_reviews_ranking_and_the_chairmans_answer(env: dict[str, str]) -> None:
    result = await moot(
        env, "council", "What is the capital of Australia?", "-m", "ranker:3", "--chairman", "chair"
    )
    assert result.code == 0, result
    for line in [
        "council: ranker x3; the members rank each other's answers; chairman chair",
        "answers: asking 3 members",
        "  ranker#2 answered",
        "reviews: asking 3 reviewers to rank the answers, anonymized",
        "  ranker#3 reviewed",
        "  ranking: 1. ranker#",
        "chairman: chair writes the answer",
        "  chairman chair answered",
        "\n── answer by the chairman chair ──\ncompleted: the chairman answered",
    ]:
        assert line in result.err, result
    assert result.out == CANBERRA + "\n"

    shown = await moot(env, "show", run_id_of(result))
    assert shown.code == 0, shown
    for line in [
        "answers:\n  ranker#1: ",
        "reviews:\n  ranker#1: 1. ranker#",
        "ranking: 1. ranker#",
        "chairman:\n  chair#1: ",
    ]:
        assert line in shown.out, shown
    assert shown.out.endswith(f"answer by the chairman chair:\n{CANBERRA}\n")


async def test_a_unanimous_vote_answers_with_the_majoritys_answer(env: dict[str, str]) -> None:
    result = await moot(env, "vote", "What is two times four?", "-m", "eight:3", "--format", "number")
    assert result.code == 0, result
    assert "votes: asking 3 members" in result.err and "  eight#3 answered" in result.err, result
    assert "  3 counted, agreement 1.00: 8 (3) -> answer" in result.err, result
    assert "\n── answer by vote (agreement 1.00) ──\n" in result.err, result
    assert result.out == "8\n"


async def test_a_split_vote_escalates_to_a_consortium(env: dict[str, str]) -> None:
    result = await moot(
        env, "vote", "What is two times four?", "-m", "eight:2", "-m", "nine:2", "--format", "number",
        "--threshold", "0.6", "--escalate-arbiter", "m1",
    )  # fmt: skip
    assert result.code == 0, result
    for line in [
        "vote: eight x2, nine x2; number answers; agreement threshold 0.60, below it escalates to a consortium by arbiter m1",
        "  4 counted, agreement 0.50: 8 (2), 9 (2) -> escalating to a consortium: arbiter m1 synthesizes the votes",
        "  arbiter: confidence ",
        "completed: ",
    ]:
        assert line in result.err, result
    record = await show_json(env, run_id_of(result))
    assert record["escalated"] and record["result"]["by"] == "consortium"
    assert result.out == record["result"]["text"].rstrip() + "\n"
    shown = await moot(env, "show", record["id"])
    assert (
        "tally: 8 (2: eight#1, eight#2), 9 (2: nine#1, nine#2)\nescalated to a consortium:\niteration 1:"
        in shown.out
    )


async def test_moa_runs_its_layers_then_the_aggregator(env: dict[str, str]) -> None:
    result = await moot(env, "moa", "Q?", "--layer", "m1,m2:2", "--layer", "m3", "--aggregator", "chair")
    assert result.code == 0, result
    for line in [
        "mixture of agents: layer 1: m1, m2 x2; layer 2: m3; aggregator chair",
        "layer 1: asking 3 proposers",
        "  m2#2 answered",
        "layer 2: asking 1 proposer",
        "aggregate: chair writes the answer",
        "\n── answer by the aggregator chair ──\ncompleted: the aggregator answered after 2 layers",
    ]:
        assert line in result.err, result
    assert result.out == CANBERRA + "\n"


async def test_saved_configurations_of_the_new_modes(env: dict[str, str]) -> None:
    saved = await asyncio.gather(
        moot(env, "save", "cli-council", "--mode", "council", "-m", "ranker:3", "--chairman", "chair"),
        moot(env, "save", "cli-vote", "--mode", "vote", "-m", "eight:3", "--answer-format", "number"),
        moot(env, "save", "cli-moa", "--mode", "moa", "--layer", "m1,m2", "--aggregator", "chair"),
    )
    assert [s.out for s in saved] == [
        "saved cli-council version 1 (council)\n",
        "saved cli-vote version 1 (vote)\n",
        "saved cli-moa version 1 (moa)\n",
    ], saved
    listed = await moot(env, "list")
    rows = {line.split()[0]: line.split() for line in listed.out.splitlines()[1:]}
    assert rows["cli-council"] == ["cli-council", "1", "council", "ranker", "x3", "chairman", "chair"]
    assert rows["cli-vote"] == ["cli-vote", "1", "vote", "eight", "x3", "majority"]
    assert rows["cli-moa"] == ["cli-moa", "1", "moa", "m1,", "m2", "aggregator", "chair"]

    council, vote, moa = await asyncio.gather(
        moot(env, "council", "--config", "cli-council", "What is the capital of Australia?"),
        moot(env, "vote", "--config", "cli-vote", "What is two times four?"),
        moot(env, "moa", "--config", "cli-moa", "Q?"),
    )
    assert council.code == 0 and council.out == CANBERRA + "\n", council
    assert vote.code == 0 and vote.out == "8\n", vote
    assert moa.code == 0 and moa.out == CANBERRA + "\n", moa
    wrong = await moot(env, "vote", "--config", "cli-council", "Q?")
    assert wrong.code == 2 and "saved configuration 'cli-council' is a council, not a vote" in wrong.err, (
        wrong
    )
    for name in ("cli-council", "cli-vote", "cli-moa"):
        assert (await moot(env, "remove", name)).code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["council", "p", "-m", "ranker:3"], "give the chairman with --chairman MODEL"),
        (["moa", "p", "--aggregator", "chair"], "give the layers with --layer MODEL[:COUNT],..."),
        (
            ["vote", "p", "-m", "eight:3", "--escalate-max-rounds", "2", "--escalate-arbiter", "m1"],
            "not both",
        ),
    ],
)
async def test_usage_errors_exit_2(env: dict[str, str], args: list[str], message: str) -> None:
    result = await moot(env, *args)
    assert result.code == 2 and message in result.err, result


async def test_the_gateways_refusals_name_the_field(env: dict[str, str]) -> None:
    one = await moot(env, "council", "p", "-m", "ranker", "--chairman", "chair")
    assert one.code == 2, one
    assert "members: a council needs at least two answers to rank" in one.err, one
