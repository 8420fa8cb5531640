"""Every mode is one protocol module, one request model and one view model, and no service names one.

The registry (`moot.protocols.protocol_for`), the request union (`moot.requests.AnyRunRequest`)
and the view union (`moot.views.AnyRunView`) must agree mode by mode; the services are written
against them, so a protocol added to the three is served, run and recorded without a change to
a service. The source scan below is what keeps it so.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

import pytest

from moot.protocols import protocol_for
from moot.requests import MODES, AnyRunRequest, models_named, request_class, run_request_adapter
from moot.views import AnyRunView

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted((ROOT / "services").glob("*/moot_*"))
REQUESTS = {cls.model_fields["mode"].default: cls for cls in get_args(AnyRunRequest)}
VIEWS = {cls.model_fields["mode"].default: cls for cls in get_args(AnyRunView)}
# What names a protocol: its module, and its request and view classes.
MODE_NAMES = frozenset(MODES)
MODE_CLASSES = frozenset(cls.__name__ for cls in (*REQUESTS.values(), *VIEWS.values()))


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_has_a_protocol_a_request_and_a_view(mode: str) -> None:
    protocol = protocol_for(mode)
    assert REQUESTS[mode] is request_class(mode)
    assert VIEWS[mode].model_fields["request"].annotation is not None
    assert REQUESTS[mode] in get_args(VIEWS[mode].model_fields["request"].annotation)
    assert protocol.State.__name__.endswith("State")
    for name in ("start", "decide", "view"):
        assert callable(getattr(protocol, name))


def test_the_unions_and_the_registry_list_the_same_modes() -> None:
    assert set(REQUESTS) == set(VIEWS) == set(MODES)
    with pytest.raises(KeyError):
        protocol_for("jury")


def _service_files() -> list[Path]:
    files = [p for service in SERVICES for p in service.rglob("*.py")]
    assert len(files) > 20  # the scan sees the services
    return files


@pytest.mark.parametrize("path", _service_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_service_names_a_protocol(path: Path) -> None:
    """No service imports a protocol's package or its request or view class, nor compares a mode
    with a literal: it goes through the registry and the unions."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[:2] == ["moot", "protocols"] and len(parts) > 2 and parts[2] in MODE_NAMES:
                found.append(f"imports {node.module}")
            found += [f"imports {a.name}" for a in node.names if a.name in MODE_CLASSES]
        elif isinstance(node, ast.Compare):
            literals = [c for c in (node.left, *node.comparators) if isinstance(c, ast.Constant)]
            found += [f"compares with {c.value!r}" for c in literals if c.value in MODE_NAMES]
    assert not found, f"{path.relative_to(ROOT)}: " + "; ".join(found)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (
            {"mode": "consortium", "prompt": "p", "members": [{"model": "a", "count": 2}], "arbiter": "z"},
            {("members", 0, "model"): "a", ("arbiter",): "z"},
        ),
        (
            {"mode": "debate", "prompt": "p", "members": [{"model": "a"}, {"model": "b"}], "judge": "z"},
            {("members", 0, "model"): "a", ("members", 1, "model"): "b", ("judge",): "z"},
        ),
        (
            {"mode": "council", "prompt": "p", "members": [{"model": "a", "count": 2}], "chairman": "z",
             "reviewers": [{"model": "r"}]},
            {("members", 0, "model"): "a", ("chairman",): "z", ("reviewers", 0, "model"): "r"},
        ),
        (
            {"mode": "vote", "prompt": "p", "members": [{"model": "a"}, {"model": "b"}],
             "escalate": {"mode": "debate", "judge": "z"}},
            {("members", 0, "model"): "a", ("members", 1, "model"): "b", ("escalate", "judge"): "z"},
        ),
        (
            {"mode": "vote", "prompt": "p", "members": [{"model": "a"}], "escalate": {"mode": "consortium", "arbiter": "z"}},
            {("members", 0, "model"): "a", ("escalate", "arbiter"): "z"},
        ),
        (
            {"mode": "moa", "prompt": "p", "layers": [[{"model": "a"}], [{"model": "b"}, {"model": "c"}]],
             "aggregator": "z"},
            {("layers", 0, 0, "model"): "a", ("layers", 1, 0, "model"): "b", ("layers", 1, 1, "model"): "c",
             ("aggregator",): "z"},
        ),
    ],
)  # fmt: skip
def test_every_model_a_request_names_is_found_whatever_its_mode(
    body: dict[str, object], named: dict[tuple[str | int, ...], str]
) -> None:
    """What the model allow-list checks (`moot_gateway.runs_service.require_callable_models`)."""
    assert dict(models_named(run_request_adapter.validate_python(body))) == named
