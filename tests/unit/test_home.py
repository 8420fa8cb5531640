"""The local stack's home (`moot.devstack.home`) and `moot up`'s checks before it starts anything."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from moot.devstack import home
from moot.devstack.stack import Stack, StackError


def test_the_data_dir_is_the_given_one_else_the_environments_else_the_users(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MOOT_DATA_DIR", str(tmp_path / "from-env"))
    assert home.data_dir() == tmp_path / "from-env"
    assert home.data_dir(tmp_path / "given") == tmp_path / "given"
    monkeypatch.delenv("MOOT_DATA_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    found = home.data_dir()
    assert found.is_absolute() and found.name == "moot"
    assert "." + "moot" not in found.parts, "never the current directory's .moot"


def test_a_running_stack_is_found_and_a_dead_ones_file_is_not(tmp_path: Path) -> None:
    info = home.StackInfo(
        pid=os.getpid(), gateway_url="http://127.0.0.1:8123", database_url="postgresql://x", nats_url="nats://y",
        namespace="moot",
    )  # fmt: skip
    assert home.running_stack(tmp_path) is None
    home.write_stack_info(tmp_path, info)
    assert home.running_stack(tmp_path) == info
    assert (tmp_path / home.STACK_FILE).stat().st_mode & 0o777 == 0o600  # the URL may hold a password
    home.write_stack_info(tmp_path, home.StackInfo(**{**info.__dict__, "pid": 2**22 + 12345}))
    assert home.running_stack(tmp_path) is None  # that process is gone
    home.remove_stack_info(tmp_path)
    assert not (tmp_path / home.STACK_FILE).exists()


async def test_moot_up_names_a_busy_port_and_how_to_choose_another(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stack = Stack(tmp_path, port=port, progress=None)
        with pytest.raises(StackError) as refused:
            await stack.start()
    message = str(refused.value)
    assert f"port {port} on 127.0.0.1 (gateway) is already in use" in message
    assert "--port N" in message
    assert not (tmp_path / "logs").exists(), "nothing was started"
