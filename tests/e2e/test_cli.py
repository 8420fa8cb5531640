"""The `moot` CLI as a user runs it: processes talking to the e2e stack's gateway (and, for keys, to Postgres).

Progress goes to stderr and the answer to stdout; exit codes: 0 completed, 1 failed or refused,
2 usage errors (argparse's and the gateway's 422), 130 interrupted.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from moot.devstack.embedded import start_postgres
from moot.devstack.model_server import ModelServer
from moot.devstack.stack import Stack
from support import wait_for_rows

SYNTHESIS = "Synthesis by arb"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def __str__(self) -> str:  # what an assertion shows
        return f"exit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


@pytest.fixture
def env(stack: Stack, api_key: str, database_url: str, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "MOOT_URL": stack.gateway_url,
        "MOOT_API_KEY": api_key,
        "DATABASE_URL": database_url,
    }


async def moot(env: dict[str, str], *args: str, stdin: str | None = None, cwd: Path | None = None) -> Result:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "moot.cli", *args,
        env=env, cwd=cwd, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin is not None else None), 60)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


def run_id_of(result: Result) -> str:
    """The run's id, from the first progress line (`consortium <id>` / `debate <id>`)."""
    return result.err.splitlines()[0].split()[1]


async def show_json(env: dict[str, str], run_id: str) -> dict[str, Any]:
    shown = await moot(env, "show", run_id, "--json")
    assert shown.code == 0, shown
    record: dict[str, Any] = json.loads(shown.out)
    return record


async def test_run_shows_progress_and_prints_the_synthesis(
    env: dict[str, str], model_server: ModelServer, tmp_path: Path
) -> None:
    model_server.reset()  # arb: unsure in its first answer, sure in its second
    output = tmp_path / "run.json"
    result = await moot(
        env, "run", "Name a prime number.", "-m", "m1:2", "-m", "m2", "--arbiter", "arb",
        "--output", str(output), stdin="Only odd ones, please.\n",
    )  # fmt: skip
    assert result.code == 0, result
    for line in [
        "consortium: m1 x2, m2; arbiter arb",
        "iteration 1: asking 3 member instances",
        "m1#2 answered",
        "[3/3]",
        "arbiter: confidence 0.50 -> iterate",
        "iteration 2: asking 3 member instances",
        "arbiter: confidence 0.90 -> stop",
        "members' answers (iteration 2):\n  m1#1",
        "\n── synthesis ──\ncompleted: ",  # on stderr: the heading above the answer on stdout
    ]:
        assert line in result.err, result
    record = json.loads(output.read_text())
    assert record["status"] == "completed" and len(record["iterations"]) == 2
    # stdout is the answer alone; piped stdin went after the prompt, a blank line between.
    assert result.out == record["result"]["synthesis"].rstrip() + "\n"
    assert result.out.startswith(SYNTHESIS)
    assert record["request"]["prompt"] == "Name a prime number.\n\nOnly odd ones, please."

    # The run is listed (once the recorder has written it) and can be shown.
    await wait_for_rows(env["DATABASE_URL"], "SELECT 1 FROM runs WHERE id = $1", record["id"], 1)
    runs, shown = await asyncio.gather(moot(env, "runs", "--limit", "50"), moot(env, "show", record["id"]))
    assert runs.code == 0, runs
    assert runs.out.splitlines()[0].split() == ["ID", "MODE", "STATUS", "CREATED", "(UTC)", "PROMPT"]
    [row] = [line for line in runs.out.splitlines() if line.startswith(record["id"])]
    assert "consortium" in row and "Name a prime number." in row
    assert shown.code == 0, shown
    for line in [
        "completed: ",
        "iteration 1: confidence 0.50 -> iterate",
        "  m1#1: This is m1's answer",
        "synthesis:",
    ]:
        assert line in shown.out, shown


async def test_raw_and_prompt_from_stdin_alone(env: dict[str, str]) -> None:
    result = await moot(env, "run", "-m", "m3", "--arbiter", "arb", "--raw", stdin="What is 2 + 2?")
    assert result.code == 0, result
    answer, _, raw = result.out.partition("\n")
    assert answer.startswith(SYNTHESIS)
    record = json.loads(raw)
    assert record["request"]["prompt"] == "What is 2 + 2?" and record["result"]["synthesis"] == answer


async def test_debate_streams_the_verdict_to_stdout(env: dict[str, str]) -> None:
    result = await moot(
        env, "debate", "Is a hot dog a sandwich?", "-m", "d1", "-m", "d2", "--judge", "judge_stop",
        "--max-rounds", "3",
    )  # fmt: skip
    assert result.code == 0, result
    for line in [
        "debate: d1#1, d2#1; free_discussion; external_judge by judge_stop; up to 3 rounds",
        "round 1: d1#1, d2#1",
        "d2#1 answered",
        "round 2: d1#1, d2#1",
        "judge judge_stop: stop",
        "\n── verdict by the judge judge_stop ──\n",
        "completed: ",
    ]:
        assert line in result.err, result
    record = await show_json(env, run_id_of(result))
    assert record["result"]["by"] == "judge"
    assert result.out == record["result"]["text"].rstrip() + "\n"


async def test_a_failed_run_exits_1_with_its_reason(env: dict[str, str]) -> None:
    result = await moot(env, "run", "p", "-m", "broken:2", "--arbiter", "arb", "--no-stdin")
    assert result.code == 1, result
    assert "broken#1 failed" in result.err
    assert "every member call failed in iteration 1" in result.err.splitlines()[-1]
    assert result.out == ""


async def test_a_run_out_of_time_exits_1_naming_its_deadline(env: dict[str, str]) -> None:
    result = await moot(
        env, "run", "p", "-m", "slowpoke:2", "--arbiter", "arb", "--budget-seconds", "1", "--no-stdin"
    )
    assert result.code == 1, result
    assert "deadline of 1 s passed" in result.err.splitlines()[-1]
    record = await show_json(env, run_id_of(result))
    assert record["stop_reason"] == "deadline" and record["request"]["budget"] == {"seconds": 1}


async def test_ctrl_c_cancels_the_run(env: dict[str, str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "moot.cli", "run", "slow", "-m", "slowpoke:2", "--arbiter", "arb",
        env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    seen = []
    while not any("iteration 1: asking" in line for line in seen):
        seen.append((await asyncio.wait_for(proc.stderr.readline(), 20)).decode())
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    result = Result(proc.returncode or 0, out.decode(), "".join(seen) + err.decode())
    assert result.code == 130, result
    run_id = result.err.splitlines()[0].split()[1]
    assert f"interrupted: cancelling run {run_id}" in result.err and f"run {run_id} cancelled" in result.err
    assert (await show_json(env, run_id))["status"] == "cancelled"


async def test_refusals_are_explained(env: dict[str, str], tmp_path: Path) -> None:
    bad_key, no_key, unreachable, missing_run = await asyncio.gather(
        moot({**env, "MOOT_API_KEY": "moot_not-a-key"}, "runs"),
        moot({k: v for k, v in env.items() if k != "MOOT_API_KEY"}, "list", cwd=tmp_path),
        moot({**env, "MOOT_URL": "http://127.0.0.1:9"}, "runs"),
        moot(env, "show", "0" * 32),
    )
    for result in (bad_key, no_key):
        assert result.code == 1, result
        assert "moot: the API key was refused: set MOOT_API_KEY" in result.err, result
    assert "Invalid API key" in bad_key.err and "Missing API key" in no_key.err
    assert unreachable.code == 1, unreachable
    assert "cannot reach the gateway at http://127.0.0.1:9: is `moot up` running?" in unreachable.err
    assert missing_run.code == 1 and f"no run {'0' * 32}" in missing_run.err, missing_run


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "p", "-m", "x:0", "--arbiter", "arb"], "'x:0': the count must be at least 1"),
        (["run", "p", "--arbiter", "arb"], "give the models with -m"),
        (["run", "p", "-m", "m1"], "give the arbiter with --arbiter"),
        (["run", "-m", "m1", "--arbiter", "arb"], "no prompt: give PROMPT or pipe it on stdin"),
        (
            ["run", "p", "-m", "m1", "--arbiter", "arb", "--confidence-threshold", "2"],
            "must be between 0 and 1",
        ),
        (["debate", "p", "-m", "d1:2", "--judge-mode", "nobody"], "invalid choice: 'nobody'"),
        (
            ["save", "x", "-m", "m1", "--arbiter", "arb", "--judge", "j"],
            "--judge: not options of a consortium",
        ),
    ],
)
async def test_usage_errors_exit_2(env: dict[str, str], args: list[str], message: str) -> None:
    result = await moot(env, *args)
    assert result.code == 2, result
    assert message in result.err, result


async def test_the_gateways_validation_errors_name_the_field(env: dict[str, str]) -> None:
    one_debater, bounds, bad_name, no_config = await asyncio.gather(
        moot(env, "debate", "p", "-m", "d1"),
        moot(
            env, "run", "p", "-m", "m1", "--arbiter", "arb", "--min-iterations", "3", "--max-iterations", "2"
        ),
        moot(env, "run", "p", "-m", "no spaces", "--arbiter", "arb"),
        moot(env, "run", "--config", "no-such-config", "p"),
    )
    for result, message in [
        (one_debater, "members: a debate needs at least two debaters"),
        (bounds, "body: min_iterations must not exceed max_iterations"),
        (bad_name, "members.0.model: model name may contain"),
        (no_config, "config: no saved configuration 'no-such-config'"),
    ]:
        assert result.code == 2, result
        assert "moot: the gateway refused the request:" in result.err and message in result.err, result


async def test_saved_configurations(env: dict[str, str], model_server: ModelServer) -> None:
    saved = await asyncio.gather(
        moot(env, "save", "cli-panel", "-m", "m1:2", "--arbiter", "arb", "--max-iterations", "1"),
        moot(env, "save", "cli-debate", "--debate", "-m", "d1", "-m", "d2", "--judge", "judge_stop"),
    )
    assert [s.out for s in saved] == [
        "saved cli-panel version 1 (consortium)\n",
        "saved cli-debate version 1 (debate)\n",
    ], saved
    listed = await moot(env, "list")
    assert listed.code == 0, listed
    rows = {line.split()[0]: line.split() for line in listed.out.splitlines()[1:]}
    assert rows["cli-panel"] == ["cli-panel", "1", "consortium", "m1", "x2", "arbiter", "arb"]
    assert rows["cli-debate"] == ["cli-debate", "1", "debate", "d1,", "d2", "judge", "judge_stop"]

    model_server.reset()  # arb asks for a second iteration, which the override allows
    panel, debate = await asyncio.gather(
        moot(env, "run", "--config", "cli-panel", "--max-iterations", "2", "Say hi."),
        moot(env, "debate", "--config", "cli-debate", "Is water wet?"),
    )
    assert panel.code == 0 and "iteration 2: asking 2 member instances" in panel.err, panel
    assert panel.out.startswith(SYNTHESIS)
    record = await show_json(env, run_id_of(panel))
    assert record["config"] == {"name": "cli-panel", "version": 1}
    assert debate.code == 0 and debate.err.startswith("debate "), debate
    assert "\n── verdict by the judge judge_stop ──\n" in debate.err and debate.out.strip(), debate
    # The command's mode and the configuration's must agree: never a consortium run as asked-for debate.
    wrong = await moot(env, "debate", "--config", "cli-panel", "Is water wet?")
    assert wrong.code == 2, wrong
    assert "saved configuration 'cli-panel' is a consortium, not a debate" in wrong.err, wrong

    # `--continue` alone: the continued run's models and settings, the new prompt.
    more = await moot(env, "run", "--continue", run_id_of(panel), "--max-iterations", "1", "And why?")
    assert more.code == 0 and more.out.startswith(SYNTHESIS), more
    continued = await show_json(env, run_id_of(more))
    assert continued["continued_from"] == run_id_of(panel)
    assert continued["request"]["members"] == [{"model": "m1", "count": 2}]
    assert continued["request"]["arbiter"] == "arb" and continued["request"]["max_iterations"] == 1
    assert continued["request"]["history"][0]["content"] == "Say hi."

    removed = await moot(env, "remove", "cli-panel")
    assert removed.code == 0 and removed.out == "removed cli-panel\n", removed
    again = await moot(env, "remove", "cli-panel")
    assert again.code == 1 and "no saved configuration 'cli-panel'" in again.err, again
    assert "cli-panel" not in (await moot(env, "list")).out


async def test_keys_create_list_revoke(env: dict[str, str]) -> None:
    created = await moot(env, "keys", "create", "--name", "cli-tester", "--owner", "carol")
    assert created.code == 0, created
    key = created.out.strip()
    assert key.startswith("moot_") and created.out.count("\n") == 1
    assert "cannot be shown again" in created.err and key not in created.err

    listed = await moot(env, "keys", "list")
    assert listed.code == 0 and key not in listed.out, listed
    [row] = [line.split() for line in listed.out.splitlines() if " cli-tester " in line]
    assert row[0].startswith("key_") and row[1:3] == ["carol", "cli-tester"] and row[5] == "-"
    assert " ".join(row[6:]) == "rpm default, concurrent runs default, per day default"

    # The new key works; a never-used key (not in the gateway's cache) is refused once revoked.
    works = await moot({**env, "MOOT_API_KEY": key}, "list")
    assert works.code == 0, works
    unused = (await moot(env, "keys", "create", "--name", "cli-revoked")).out.strip()
    unused_id = next(
        line.split()[0]
        for line in (await moot(env, "keys", "list")).out.splitlines()
        if " cli-revoked " in line
    )
    revoked = await moot(env, "keys", "revoke", unused_id)
    assert revoked.code == 0 and f"revoked {unused_id}" in revoked.out, revoked
    refused = await moot({**env, "MOOT_API_KEY": unused}, "runs")
    assert refused.code == 1 and "the API key was refused" in refused.err, refused
    assert f"This API key ({unused_id}) was revoked on " in refused.err, refused
    twice = await moot(env, "keys", "revoke", unused_id)
    assert twice.code == 1 and f"no active key '{unused_id}'" in twice.err, twice
    bad_owner = await moot(env, "keys", "create", "--name", "x", "--owner", "no spaces")
    assert bad_owner.code == 2 and "owner/name 'no spaces'" in bad_owner.err, bad_owner


async def test_keys_on_the_embedded_postgres(env: dict[str, str], server_tmp_path: Path) -> None:
    """Without DATABASE_URL: the data dir's Postgres, stopped after the command only if it started
    it; a data dir with no stack and no database is an error saying where it looked (issue 13: no
    new database that no gateway reads)."""
    local = {k: v for k, v in env.items() if k not in ("DATABASE_URL", "MOOT_DATA_DIR")}
    data_dir = server_tmp_path / "moot"
    pid_file = data_dir / "postgres" / "postmaster.pid"
    nothing = await moot(local, "keys", "list", "--data-dir", str(data_dir))
    assert nothing.code == 1 and f"no moot stack found: none is running from {data_dir}" in nothing.err, (
        nothing
    )
    assert not (data_dir / "postgres").exists()

    server = await asyncio.to_thread(start_postgres, data_dir)  # as `moot up` would
    try:
        created = await moot({**local, "MOOT_DATA_DIR": str(data_dir)}, "keys", "create", "--name", "dev")
        assert created.code == 0 and created.out.startswith("moot_"), created
        assert pid_file.exists(), "a server the command did not start keeps running"
    finally:
        await server.stop()
    listed = await moot(local, "keys", "list", "--data-dir", str(data_dir))
    assert listed.code == 0 and " dev " in listed.out, listed
    assert not pid_file.exists(), "the command started the server, so it stops it"


async def test_models_are_checked_at_submission_and_counts_parsed_strictly(env: dict[str, str]) -> None:
    """Issue 13: a name the deployment lacks is refused before anything runs, not after retries."""
    unknown = await moot(env, "run", "Hi?", "-m", "nosuchmodel:2", "--arbiter", "arb")
    assert unknown.code == 2, unknown
    assert "members.0.model: model 'nosuchmodel' is not offered here; the models are:" in unknown.err
    assert "m1" in unknown.err and not unknown.out
    typo = await moot(env, "run", "Hi?", "-m", "m1:abc", "--arbiter", "arb")
    assert typo.code == 2, typo
    assert "(if 'abc' was meant as a count: -m m1:2)" in typo.err, typo
    zero = await moot(env, "run", "Hi?", "-m", "m1:0", "--arbiter", "arb")
    assert zero.code == 2 and "the count must be at least 1" in zero.err, zero
