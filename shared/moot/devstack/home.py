"""The local stack's one home, which every `moot` command finds from any directory.

`moot up` keeps its embedded servers' data, its logs and its ready-made API key in the data
directory: `--data-dir`, else `$MOOT_DATA_DIR`, else the platform's user data directory
(`~/.local/share/moot` on Linux, `~/Library/Application Support/moot` on macOS). While it runs it
also keeps `stack.json` there: where its gateway, Postgres and NATS are, and its process id. The
client commands (`moot run`, `moot keys`, ...) read that file, so they talk to the running stack
without `MOOT_URL`, `DATABASE_URL` or `MOOT_API_KEY`, wherever they are started.

Light on purpose: the CLI imports it for every command.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import platformdirs

DATA_DIR_ENV = "MOOT_DATA_DIR"
STACK_FILE = "stack.json"
KEY_FILE = "local-api-key"


def default_data_dir() -> Path:
    """`$MOOT_DATA_DIR`, else the platform's user data directory for moot."""
    chosen = os.environ.get(DATA_DIR_ENV, "").strip()
    return Path(chosen).expanduser() if chosen else Path(platformdirs.user_data_dir("moot", appauthor=False))


def data_dir(given: Path | str | None = None) -> Path:
    """The data directory a command uses: the one it was given, else the default; absolute."""
    return (Path(given).expanduser() if given else default_data_dir()).absolute()


@dataclass(frozen=True)
class StackInfo:
    """What a running `moot up` tells the other commands (`stack.json`)."""

    pid: int
    gateway_url: str
    database_url: str
    nats_url: str
    namespace: str


def write_stack_info(directory: Path, info: StackInfo) -> None:
    """Readable by its owner only: the database URL may carry a password."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STACK_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(info), f)


def remove_stack_info(directory: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (directory / STACK_FILE).unlink()


def running_stack(directory: Path) -> StackInfo | None:
    """The stack of `directory` if one is running: its file is there and its process alive."""
    try:
        info = StackInfo(**json.loads((directory / STACK_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return info if _alive(info.pid) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def local_key(directory: Path) -> str | None:
    """The ready-made key `moot up` keeps for its user, if there is one."""
    try:
        return (directory / KEY_FILE).read_text().strip() or None
    except OSError:
        return None


def has_embedded_postgres(directory: Path) -> bool:
    """Whether an earlier `moot up` left an embedded Postgres there (started again on demand)."""
    return (directory / "postgres" / "PG_VERSION").exists()
