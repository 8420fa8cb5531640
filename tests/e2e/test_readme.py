"""README.md's commands, run as written, from outside the repository (issue 13).

The README is parsed here, at test time: every fenced ```sh and ```python block, in order, so this
test follows the README and holds no copy of its commands. What a test must change, it changes
and says why (`rewrite`, `SKIPPED`); everything else runs as a user would type it:

- `moot up --test-models` is started from the README's line, in the background, on a free
  `--port`, with its home (`MOOT_DATA_DIR`) in a temporary directory (never the user's data
  dir), on the test session's NATS and Postgres (no embedded servers) under a namespace of its
  own (the NATS server is shared with other tests). It is stopped with SIGINT, as Ctrl-C would.
- Every other ```sh block runs in one bash process of its own, fed one command at a time, as
  typed into a fresh terminal: exports and aliases hold within the block, and each command's
  output and exit status are its own, so later placeholders (`<id>`, `RUN_ID`, `KEY_ID`) get
  the ids earlier commands printed. The shell starts in a temporary directory outside the
  repository with a fresh environment: no `MOOT_URL`, `MOOT_API_KEY`, `NATS_URL` or
  `DATABASE_URL` (the commands find the stack in its home), a `HOME` of its own, and a `PATH`
  without the venv (the README activates it or names `.venv/bin/` itself).
- A ```python block runs with the venv's python in the shell of the block before it, whose
  exports it uses (`MOOT_API_KEY`).

Every command must exit 0, and where the README's comment says what it gives, `CHECKS` checks it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from moot.devstack.home import STACK_FILE
from moot.devstack.stack import free_ports
from moot.messages import TERMINAL_EVENT_TYPES

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
# The README is written for the repository's root: its `.venv/bin/...` is this venv.
VENV_BIN = REPO / ".venv" / "bin"

# Commands this test does not run, and why; each must still be in the README.
SKIPPED: dict[str, str] = {
    r"\bmoot demo\b": "the set-up command runs `moot demo` on the embedded local model (a llama.cpp "
    "build on a fresh machine): tests/slow/test_local_model.py covers it",
    r"^scripts/test\b": "runs the whole test suite, this test included",
    r"\bmoot up\b": "`moot up` runs until stopped: the `--test-models` line is started in the "
    "background by the `moot_up` fixture; the plain one would run the local model (tests/slow)",
}
# The `moot up` line this test starts.
UP_COMMAND = re.compile(r"\bmoot up --test-models\b")
# Bounds for processes that hang, not measurements: a command of the README takes a few seconds here.
COMMAND_TIMEOUT = 90.0
UP_TIMEOUT = 150.0
STOP_TIMEOUT = 60.0
# The gateway caches keys this long (moot_gateway.auth.CACHE_SECONDS): the README's "refused by
# the gateway within 30 s", with a margin.
REVOCATION_SECONDS = 35.0
# curl reads ~/.curlrc by default: in the shells' fresh HOME it makes curl print each answer's
# HTTP status after it, so the test sees the README's "202" without changing the command.
HTTP_STATUS = "@@http-status"
CURLRC = f'write-out = "\\n{HTTP_STATUS} %{{http_code}}\\n"\n'
RUN_ID = r"[0-9a-f]{32}"
# The change `git diff` shows in the shells' directory (the README pipes "this change" to a run).
CHANGED_LINE = "indent with spaces"
PLACEHOLDER = r"<[a-z_]+>"


# --------------------------------------------------------------------------- the README


@dataclass(frozen=True)
class Block:
    """One fenced block: its language, its text and where it starts (for messages)."""

    lang: str
    text: str
    line: int


def readme_blocks(text: str) -> list[Block]:
    fence = re.compile(r"^```(sh|python)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
    return [Block(m[1], m[2], text.count("\n", 0, m.start()) + 1) for m in fence.finditer(text)]


def shell_commands(block: str) -> list[str]:
    """The block's commands: its lines, joined while bash says the command is not complete yet
    (a JSON body in quotes spans lines). A placeholder such as `<id>` reads as a redirection to
    bash: it is checked as a word."""
    commands: list[str] = []
    pending: list[str] = []
    for line in block.splitlines():
        if not pending and not line.strip():
            continue
        pending.append(line)
        text = "\n".join(pending)
        words = re.sub(PLACEHOLDER, "placeholder", text)
        if subprocess.run(["bash", "-n", "-c", words], capture_output=True).returncode == 0:
            commands.append(text)
            pending = []
    assert not pending, f"an incomplete command at the end of a block: {pending}"
    return commands


def skipped_by(command: str) -> list[str]:
    """The `SKIPPED` patterns the command matches (none: it runs)."""
    return [pattern for pattern in SKIPPED if re.search(pattern, command, re.M)]


def rewrite(command: str, port: int, ids: Ids) -> str:
    """The command with only what this test must change: the venv's absolute path (the README is
    written for the repository's root, the shells run outside it), the stack's free port, and the
    placeholders, by the ids that earlier commands printed."""
    command = re.sub(r"(?<![\w/.])\.venv/bin/", f"{VENV_BIN}/", command)
    command = command.replace("localhost:8000", f"localhost:{port}")
    if "<id>" in command or "RUN_ID" in command:
        assert ids.run, f"no run id printed before {command!r}"
        command = command.replace("<id>", ids.run)
        command = re.sub(r"\bRUN_ID\b", ids.run, command)
    if "KEY_ID" in command:
        assert ids.key, f"no key id printed before {command!r}"
        command = re.sub(r"\bKEY_ID\b", ids.key, command)
    unknown = re.findall(PLACEHOLDER, command.split("#")[0])
    assert not unknown, f"a placeholder this test cannot fill: {unknown} in {command!r}"
    return command


# --------------------------------------------------------------------------- running commands


@dataclass
class Result:
    """One command's run: what the README says, what ran, its exit status and its output."""

    readme: str
    ran: str
    code: int
    out: str
    err: str

    @property
    def http(self) -> tuple[int, str]:
        """curl's answer: (HTTP status, body), from the status `CURLRC` has it print last."""
        body, sep, status = self.out.rpartition(f"\n{HTTP_STATUS} ")
        assert sep, f"not an HTTP answer:\n{self}"
        return int(status.strip()), body

    def json(self) -> Any:
        status, body = self.http
        try:
            return json.loads(body)
        except ValueError:
            raise AssertionError(f"HTTP {status}, not JSON:\n{self}") from None

    def __str__(self) -> str:  # what an assertion shows
        return f"$ {self.ran}\nexit {self.code}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


class Shell:
    """One bash process of a README block, fed one command at a time, like a terminal.

    The commands come on a pipe of their own (`bash /dev/fd/N`), not on stdin: a command that reads
    piped stdin (`moot run` does) must not read the next commands; stdin is /dev/null, as an idle
    terminal gives nothing. Aliases are expanded as in an interactive shell. After each command
    the shell prints a marker with its exit status, on stderr (a file) then on stdout (a pipe).
    """

    def __init__(self, cwd: Path, env: dict[str, str], stderr_path: Path) -> None:
        read_end, self._script = os.pipe()
        self._stderr_path = stderr_path
        self._stderr_file = stderr_path.open("wb")
        self._stderr_offset = 0
        self.process = subprocess.Popen(
            ["bash", "-O", "expand_aliases", f"/dev/fd/{read_end}"],
            pass_fds=(read_end,),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr_file,
            start_new_session=True,
        )
        os.close(read_end)
        self._pending = b""

    def run(self, readme: str, command: str) -> Result:
        marker = f"@@readme-command-done-{secrets.token_hex(6)}"
        os.write(
            self._script,
            f"{command}\nprintf '\\n{marker} %s\\n' $? >&2; printf '\\n{marker}\\n'\n".encode(),
        )
        out = self._read_stdout_until(f"\n{marker}\n".encode(), command)
        err = self._stderr_path.read_bytes()[self._stderr_offset :]
        err_text, sep, rest = err.partition(f"\n{marker} ".encode())
        assert sep, f"the shell's status marker is missing after {command!r}"
        code_text, _, _ = rest.partition(b"\n")
        self._stderr_offset += len(err_text) + len(sep) + len(code_text) + 1
        return Result(readme, command, int(code_text), out.decode(), err_text.decode())

    def _read_stdout_until(self, token: bytes, command: str) -> bytes:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while token not in self._pending:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(left, 0))
            if not ready:
                raise AssertionError(f"still running after {COMMAND_TIMEOUT:.0f} s: {command!r}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"the shell exited during {command!r}")
            self._pending += chunk
        out, _, self._pending = self._pending.partition(token)
        return out

    def close(self) -> None:
        """End of input: the shell exits; one that does not is killed with what it started."""
        os.close(self._script)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        finally:
            self._stderr_file.close()
            if self.process.stdout is not None:
                self.process.stdout.close()


def fresh_env(home: Path, data_dir: Path) -> dict[str, str]:
    """What a new terminal has: a PATH (without the venv), a HOME, a locale; and the stack's home,
    which is the user data dir for a user and a temporary one here."""
    path = [p for p in os.environ.get("PATH", os.defpath).split(os.pathsep) if p and Path(p) != VENV_BIN]
    return {
        "PATH": os.pathsep.join(path),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "MOOT_DATA_DIR": str(data_dir),
    }


# --------------------------------------------------------------------------- the stack


@dataclass
class UpStack:
    port: int
    data_dir: Path
    home: Path
    gateway_url: str


@pytest.fixture
def moot_up(tmp_path: Path, nats_url: str, database_url: str, namespace: str) -> Iterator[UpStack]:
    """`moot up --test-models` from the README's line, in the background, until SIGINT."""
    commands = [
        c for b in readme_blocks(README.read_text()) if b.lang == "sh" for c in shell_commands(b.text)
    ]
    lines = [c for c in commands if UP_COMMAND.search(c)]
    assert len(lines) == 1, f"the README should have one `moot up --test-models` line, not {lines}"
    (port,) = free_ports(1)
    home, data_dir, cwd = tmp_path / "home", tmp_path / "moot-data", tmp_path / "up"
    for d in (home, data_dir, cwd):
        d.mkdir()
    command = rewrite(lines[0].split("#")[0].strip(), port, Ids()) + f" --port {port}"
    env = {
        **fresh_env(home, data_dir),
        # The session's servers, so that it starts no embedded ones; a namespace of its own on them.
        "NATS_URL": nats_url,
        "DATABASE_URL": database_url,
        "MOOT_NAMESPACE": namespace,
    }
    log = tmp_path / "moot-up.stderr"
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        printed = _read_line_starting(process, "export MOOT_URL=", log)
        gateway = f"http://127.0.0.1:{port}"
        # "moot up prints its local [key]", and every service the README's comments name is up.
        assert re.fullmatch(rf"export MOOT_URL={gateway} MOOT_API_KEY=moot_\S+", printed), printed
        started = log.read_text()
        assert f"moot: up: {gateway} " in started, started
        for service in (
            "gateway",
            "member-worker-1",
            "member-worker-2",
            "arbiter",
            "recorder",
            "model-server",
        ):
            assert f"ready: {service}" in started, started
        assert (data_dir / STACK_FILE).exists()
        yield UpStack(port, data_dir, home, gateway)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=STOP_TIMEOUT) == 0, log.read_text()
        assert log.read_text().rstrip().endswith("moot: stopped"), log.read_text()
        assert not (data_dir / STACK_FILE).exists()
        with pytest.raises(httpx.ConnectError):  # its services stopped with it
            httpx.get(f"{gateway}/healthz")
    finally:
        _stop(process)


def _read_line_starting(process: subprocess.Popen[bytes], prefix: str, log: Path) -> str:
    """The first line of the process's stdout that starts with `prefix`."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + UP_TIMEOUT
    buffer = b""
    while True:
        for line in buffer.decode(errors="replace").splitlines(keepends=True):
            if line.startswith(prefix) and line.endswith("\n"):
                return line.strip()
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        chunk = os.read(fd, 65536) if ready else b""
        if not chunk:
            raise AssertionError(f"`moot up` did not say it is up:\n{log.read_text()}")
        buffer += chunk


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Whatever happened: SIGINT, then a second one (`moot up` then kills its children), then SIGKILL."""
    for sig, wait in ((signal.SIGINT, STOP_TIMEOUT), (signal.SIGINT, 15.0), (signal.SIGKILL, 15.0)):
        if process.poll() is not None:
            break
        process.send_signal(sig)
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    if process.stdout is not None:
        process.stdout.close()


# --------------------------------------------------------------------------- what each command gives


@dataclass
class Ids:
    """What earlier commands printed that later ones use."""

    run: str | None = None
    key: str | None = None
    key_secret: str | None = None
    saved: set[str] = field(default_factory=set)
    key_rpm: str = "rpm"  # how `moot keys list` shows the key's rpm once `moot keys limits` changed it

    def learn(self, result: Result) -> None:
        """The newest run a command started (a 202's id, or the CLI's `consortium <id>` line)."""
        started = re.findall(rf'^\{{"id":"({RUN_ID})"', result.out, re.M)
        started += re.findall(rf"^(?:consortium|debate|council|vote|moa) ({RUN_ID})$", result.err, re.M)
        if started:
            self.run = started[-1]


@dataclass
class Context:
    """What the checks look at: the stack, the shells' directory, what earlier commands printed."""

    stack: UpStack
    work: Path
    ids: Ids


def _answered(result: Result, ctx: Context) -> None:
    """`moot run`: iterations and who answered (stderr), the synthesis alone on stdout."""
    assert re.search(r"^iteration 1: asking \d+ member instances", result.err, re.M), str(result)
    assert re.search(r"^  \S+#\d+ answered", result.err, re.M), str(result)
    assert result.out.strip() and "iteration" not in result.out, str(result)


def _review(result: Result, ctx: Context) -> None:
    """`git diff | moot run ... --output run.json`: the diff is part of the prompt; the record is saved."""
    _answered(result, ctx)
    path = re.search(r"--output (\S+)", result.ran)
    assert path, str(result)
    record = json.loads((ctx.work / path[1]).read_text())
    assert record["status"] == "completed", record
    # stdout is the answer alone: `moot run ... > answer.txt` keeps just the answer.
    assert result.out.strip() == record["result"]["synthesis"].strip(), str(result)
    prompt = record["request"]["prompt"]
    assert prompt.startswith("Review this change.\n\n") and f"+{CHANGED_LINE}" in prompt, prompt


def _debated(result: Result, ctx: Context) -> None:
    """`moot debate`: rounds on stderr, the verdict on stdout."""
    assert re.search(r"^round 1: ", result.err, re.M) and result.out.strip(), str(result)


def _councilled(result: Result, ctx: Context) -> None:
    """`moot council`: answers and reviews on stderr, the chairman's answer on stdout."""
    assert re.search(r"^answers: asking 3 members", result.err, re.M), str(result)
    assert re.search(r"^reviews: asking 3 reviewers", result.err, re.M) and result.out.strip(), str(result)


def _voted(result: Result, ctx: Context) -> None:
    """`moot vote`: the votes and what came of them on stderr, the answer on stdout."""
    assert re.search(r"^votes: asking 5 members", result.err, re.M), str(result)
    assert re.search(r"counted, agreement|-> escalating", result.err) and result.out.strip(), str(result)


def _mixed(result: Result, ctx: Context) -> None:
    """`moot moa`: each layer and the aggregator on stderr, the answer on stdout."""
    assert re.search(r"^layer 1: asking 3 proposers", result.err, re.M), str(result)
    assert re.search(r"^layer 2: asking 1 proposer", result.err, re.M), str(result)
    assert re.search(r"^aggregate: arbiter writes the answer", result.err, re.M) and result.out.strip(), str(
        result
    )


def _saved(result: Result, ctx: Context) -> None:
    name = result.ran.split()[2]
    saved = re.fullmatch(
        rf"saved {re.escape(name)} version \d+ \((consortium|debate|council|vote|moa)\)\n", result.out
    )
    assert saved, str(result)
    ctx.ids.saved.add(name)


def _listed(result: Result, ctx: Context) -> None:
    """`moot list`: name, version, mode, members, arbiter/judge of every saved configuration."""
    header, *rows = result.out.splitlines()
    assert header.split() == ["NAME", "VERSION", "MODE", "MEMBERS", "ARBITER/JUDGE"], str(result)
    assert {row.split()[0] for row in rows} == ctx.ids.saved, str(result)


def _removed(result: Result, ctx: Context) -> None:
    name = result.ran.split()[2]
    assert result.out == f"removed {name}\n", str(result)
    ctx.ids.saved.discard(name)


def _runs(result: Result, ctx: Context) -> None:
    """`moot runs --limit N`: id, mode, status, created, prompt; the newest first."""
    header, *rows = result.out.splitlines()
    assert header.split()[:4] == ["ID", "MODE", "STATUS", "CREATED"] and "PROMPT" in header, str(result)
    limit = re.search(r"--limit (\d+)", result.ran)
    assert rows and (limit is None or len(rows) <= int(limit[1])), str(result)
    assert rows[0].split()[0] == ctx.ids.run, str(result)


def _shown(result: Result, ctx: Context) -> None:
    """`moot show RUN_ID`: status, every iteration's answers, the answer."""
    assert result.out.startswith(f"run {ctx.ids.run} "), str(result)
    assert "completed" in result.out and re.search(r"^iteration 1", result.out, re.M), str(result)


def _key_created(result: Result, ctx: Context) -> None:
    """`moot keys create`: the key alone on stdout, its id on stderr."""
    assert re.fullmatch(r"moot_\S+\n", result.out), str(result)
    created = re.search(r"created (key_\w+) for owner ", result.err)
    assert created, str(result)
    ctx.ids.key, ctx.ids.key_secret = created[1], result.out.strip()


def _limits_changed(result: Result, ctx: Context) -> None:
    rpm = re.search(r"--rpm (\d+)", result.ran)
    if rpm:
        ctx.ids.key_rpm = "rpm unlimited" if rpm[1] == "0" else f"rpm {rpm[1]}"


def _keys_listed(result: Result, ctx: Context) -> None:
    """`moot keys list`: id, owner, name, created, revoked, limits; never a key."""
    assert result.out.split()[:6] == ["ID", "OWNER", "NAME", "CREATED", "(UTC)", "REVOKED"], str(result)
    assert ctx.ids.key and ctx.ids.key_secret and ctx.ids.key_secret not in result.out, str(result)
    row = next((line for line in result.out.splitlines() if line.startswith(f"{ctx.ids.key} ")), None)
    assert row is not None, str(result)
    assert ctx.ids.key_rpm in row, str(result)


def _revoked(result: Result, ctx: Context) -> None:
    """`moot keys revoke KEY_ID`: the gateway refuses the key (within its cache's 30 s)."""
    assert ctx.ids.key_secret, str(result)
    deadline = time.monotonic() + REVOCATION_SECONDS
    headers = {"Authorization": f"Bearer {ctx.ids.key_secret}"}
    while (status := httpx.get(f"{ctx.stack.gateway_url}/v1/runs", headers=headers).status_code) != 401:
        assert status == 200 and time.monotonic() < deadline, f"the revoked key still gets {status}"
        time.sleep(0.5)


def _key_exported(result: Result, ctx: Context) -> None:
    """`export MOOT_API_KEY=$(moot keys create ...)`: the key went into the variable, not the screen
    (the commands after it prove the variable holds it)."""
    assert result.out == "" and re.search(r"created key_\w+ for owner ", result.err), str(result)


def _accepted(result: Result, ctx: Context) -> None:
    """`mcurl .../v1/runs -d ...`: 202 {"id": ..., "links": {...}}."""
    status, _ = result.http
    answer = result.json()
    assert status == 202 and re.fullmatch(RUN_ID, answer["id"]), str(result)
    assert answer["links"]["self"] == f"/v1/runs/{answer['id']}", str(result)


def _run_view(result: Result, ctx: Context) -> None:
    """`mcurl .../v1/runs/<id>`: status, result, iterations/rounds with every answer, usage."""
    status, _ = result.http
    run = result.json()
    assert status == 200 and run["id"] == ctx.ids.run, str(result)
    assert {"status", "result", "usage"} <= set(run) and ("iterations" in run or "rounds" in run), str(result)


def _events(result: Result, ctx: Context) -> None:
    """`mcurl -N .../events`: server-sent events, with ids to resume from, until the run's end."""
    status, body = result.http
    types = re.findall(r"^event: (\S+)$", body, re.M)
    assert status == 200 and types, str(result)
    assert types[-1] in TERMINAL_EVENT_TYPES, str(result)
    assert re.search(r"^id: \d+$", body, re.M), str(result)


def _cancel(result: Result, ctx: Context) -> None:
    """`mcurl -X POST .../cancel`: the events stream before it ends only with the run, so this run
    is over: "a finished one: 409 run_finished", in the one error shape."""
    status, _ = result.http
    error = result.json()["error"]
    assert status == 409 and error["code"] == "run_finished", str(result)
    assert set(error) >= {"message", "type", "param", "code"}, str(result)


def _config_saved(result: Result, ctx: Context) -> None:
    """`mcurl -X PUT .../consortiums/NAME`: the saved configuration and its version."""
    status, _ = result.http
    saved = result.json()
    assert status in (200, 201) and saved["name"] == result.ran.split("/v1/consortiums/")[1].split()[0]
    assert isinstance(saved["version"], int), str(result)


def _chat_completion(result: Result, ctx: Context) -> None:
    """The OpenAI client: a chat completion of the saved configuration, with the synthesis."""
    model = re.search(r'model="([^"]+)"', result.readme)
    assert model and result.out.startswith("ChatCompletion("), str(result)
    assert f"model='{model[1]}'" in result.out, str(result)
    assert re.search(r"content='[^']+'", result.out) and "'status': 'completed'" in result.out, str(result)


def _dataset_written(result: Result, ctx: Context) -> None:
    """`moot dataset arithmetic -n N > FILE`: N questions, each with its computed answer."""
    n = int(re.search(r"-n (\d+)", result.ran)[1])  # type: ignore[index]
    target = re.search(r"> (\S+)", result.ran)
    assert target, str(result)
    lines = (ctx.work / target[1]).read_text().splitlines()
    assert len(lines) == n and all(json.loads(line)["answer"] for line in lines), str(result)


def _evaluated(result: Result, ctx: Context) -> None:
    """`moot eval FILE -s single=... -s vote5=...`: the table, a row per strategy with its interval;
    on the test models, `fast` is right on 70 % of its calls, so neither row is empty."""
    for name in re.findall(r"-s (\w+)=", result.ran):
        row = next((line for line in result.out.splitlines() if line.startswith(f"| {name} |")), None)
        assert row is not None and re.search(r"\d\.\d\d \(\d\.\d\d", row), str(result)
    assert re.search(r"written .*report\.md", result.err), str(result)


# README command (its first line) -> what it must give. Each must match a command of the README.
CHECKS: list[tuple[str, Callable[[Result, Context], None]]] = [
    (r"^export MOOT_API_KEY=\$\(.*moot keys create", _key_exported),
    (r"^mcurl \S+/v1/runs -d", _accepted),
    (r"^mcurl \S+/v1/runs/<id>\s", _run_view),
    (r"^mcurl -N \S+/v1/runs/<id>/events", _events),
    (r"^mcurl -X POST \S+/v1/runs/<id>/cancel", _cancel),
    (r"^mcurl -X PUT \S+/v1/consortiums/", _config_saved),
    (r"^from openai import OpenAI", _chat_completion),
    (r"^git diff \| moot run ", _review),
    (r"^moot run ", _answered),
    (r"^moot debate ", _debated),
    (r"^moot council ", _councilled),
    (r"^moot vote ", _voted),
    (r"^moot moa ", _mixed),
    (r"^moot save ", _saved),
    (r"^moot list\b", _listed),
    (r"^moot remove ", _removed),
    (r"^moot runs\b", _runs),
    (r"^moot show ", _shown),
    (r"^moot dataset ", _dataset_written),
    (r"^moot eval ", _evaluated),
    (r"^moot keys create ", _key_created),
    (r"^moot keys limits ", _limits_changed),
    (r"^moot keys list\b", _keys_listed),
    (r"^moot keys revoke ", _revoked),
]


def check_for(command: str) -> tuple[str, Callable[[Result, Context], None]] | None:
    return next(((p, check) for p, check in CHECKS if re.search(p, command, re.M)), None)


def _git_work_tree_with_a_change(work: Path, env: dict[str, str]) -> None:
    """`git diff | moot run "Review this change."` is run where there is a change to review."""
    subprocess.run(["git", "init", "-q"], cwd=work, env=env, check=True)
    (work / "style.txt").write_text("indent with tabs\n")
    subprocess.run(["git", "add", "style.txt"], cwd=work, env=env, check=True)
    (work / "style.txt").write_text(f"{CHANGED_LINE}\n")


# --------------------------------------------------------------------------- the test


def test_every_readme_command_works_as_written(moot_up: UpStack, tmp_path: Path) -> None:
    blocks = readme_blocks(README.read_text())
    work = tmp_path / "work"
    work.mkdir()
    assert REPO not in work.resolve().parents
    env = fresh_env(moot_up.home, moot_up.data_dir)
    (moot_up.home / ".curlrc").write_text(CURLRC)
    _git_work_tree_with_a_change(work, env)
    ctx = Context(moot_up, work, Ids())
    skipped: set[str] = set()
    checked: set[str] = set()
    shell: Shell | None = None
    try:
        for number, block in enumerate(blocks):
            if block.lang == "python":
                assert shell is not None, f"README.md:{block.line}: a Python block needs the shell before it"
                script = work / f"readme_block_{number}.py"
                script.write_text(rewrite(block.text, moot_up.port, ctx.ids))
                # (the README's text, what runs: given here, else the text rewritten when its turn comes)
                commands: list[tuple[str, str | None]] = [(block.text, f"{VENV_BIN}/python {script.name}")]
            else:
                if shell is not None:
                    shell.close()
                    shell = None
                commands = []
                for command in shell_commands(block.text):
                    if patterns := skipped_by(command):
                        skipped.update(patterns)
                    else:
                        commands.append((command, None))
                if commands:
                    shell = Shell(work, env, tmp_path / f"block-{number}.stderr")
            for readme, given in commands:
                assert shell is not None
                command = given or rewrite(readme, moot_up.port, ctx.ids)
                result = shell.run(readme, command)
                print(f"README.md:{block.line}: $ {command.splitlines()[0]} -> exit {result.code}")
                assert result.code == 0, f"README.md:{block.line}: exit {result.code}\n{result}"
                found = check_for(readme)
                if found is not None:
                    checked.add(found[0])
                    found[1](result, ctx)
                ctx.ids.learn(result)
    finally:
        if shell is not None:
            shell.close()
    # The README still has what is skipped, and every check met its command: none went stale.
    assert skipped == set(SKIPPED), set(SKIPPED) - skipped
    assert checked == {p for p, _ in CHECKS}, {p for p, _ in CHECKS} - checked
