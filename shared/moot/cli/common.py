"""What the CLI's gateway commands share: where the gateway is, which key to send, readable errors."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence

import httpx

from moot.cli.client import GatewayError, MootClient
from moot.devstack import home

DEFAULT_URL = "http://127.0.0.1:8000"

# Exit codes: a run that failed or was cancelled, or a refusal; a usage error; an interrupt.
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class CliError(Exception):
    """A failure told in one message (printed as `moot: <message>`), with its exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.message, self.code = message, code


def gateway_url() -> str:
    """`MOOT_URL`, else the gateway of the running local stack (`moot.devstack.home`), else the default."""
    url = os.environ.get("MOOT_URL", "").strip()
    if not url:
        stack = home.running_stack(home.data_dir())
        url = stack.gateway_url if stack else DEFAULT_URL
    return url.rstrip("/")


def api_key() -> str | None:
    """`MOOT_API_KEY`, else the local stack's ready-made key (in its data dir), if there is one."""
    key = os.environ.get("MOOT_API_KEY", "").strip()
    return key or home.local_key(home.data_dir())


def connect() -> MootClient:
    return MootClient(gateway_url(), api_key=api_key())


def explain(exc: GatewayError | httpx.HTTPError, url: str) -> CliError:
    """The message a person needs for a refused request or an unreachable gateway."""
    if isinstance(exc, httpx.ConnectError):
        return CliError(
            f"cannot reach the gateway at {url}: is `moot up` running? (MOOT_URL sets the address)"
        )
    if isinstance(exc, httpx.TimeoutException):
        return CliError(f"the gateway at {url} did not answer in time")
    if isinstance(exc, httpx.HTTPError):
        return CliError(f"lost the connection to the gateway at {url}: {exc or type(exc).__name__}")
    if exc.status == 401:
        return CliError(
            "the API key was refused: set MOOT_API_KEY to a key from `moot keys create --name NAME`"
            f" (the gateway said: {exc.message})"
        )
    if exc.status == 422 and exc.field_errors:
        lines = "\n".join(f"  {field}: {msg}{_count_hint(field, msg)}" for field, msg in exc.field_errors)
        return CliError(f"the gateway refused the request:\n{lines}", EXIT_USAGE)
    if exc.status == 429:
        return CliError(f"refused for now: {exc.message}")
    return CliError(f"{exc.message} (HTTP {exc.status})")


_NOT_OFFERED = re.compile(r"model '(?P<name>[^']*):(?P<tail>[^':]*)' is not offered")


def _count_hint(field: str, message: str) -> str:
    """`-m fast:abc` reads as a model named `fast:abc` (names may hold colons: `llama3:8b`); when
    the gateway has no such model, say how a count is written."""
    found = _NOT_OFFERED.search(message) if field.startswith("members.") else None
    if found is None or found["tail"].isdigit():
        return ""
    return f" (if {found['tail']!r} was meant as a count: -m {found['name']}:2)"


def err(line: str) -> None:
    """A progress or status line, on stderr, so stdout carries only the answer."""
    print(line, file=sys.stderr, flush=True)


def out(text: str) -> None:
    """Answer text on stdout, flushed at once (a verdict streams in piece by piece)."""
    sys.stdout.write(text)
    sys.stdout.flush()


def plural(n: int, word: str) -> str:
    """`1 iteration`, `2 iterations`."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def short(text: str | None, limit: int = 80) -> str:
    """One line of at most `limit` characters."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, two spaces apart; the last column is not padded."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for r in [headers, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(r[:-1], widths[:-1], strict=True)] + [str(r[-1])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"
