"""The web view's files as the gateway serves them: pages, modules, security headers, settings.

No server: the app is called in process (its lifespan, NATS and Postgres, does not run). What the
page does in a browser is tests/e2e/test_web.py.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from pydantic import ValidationError

from moot.records.accounts import Principal
from moot.runtime.models import ModelList
from moot_gateway.auth import current_principal
from moot_gateway.deps import get_clients
from moot_gateway.main import create_app
from moot_gateway.routes import web
from moot_gateway.settings import GatewaySettings

GATEWAY = Path(web.__file__).resolve().parents[2]
WEB = GATEWAY / "moot_gateway" / "web"
MODULES = sorted(p.name for p in WEB.glob("*.js"))


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    app = create_app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        yield client


def assert_secured(response: httpx.Response) -> None:
    csp = response.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"  # no 'unsafe-inline', no 'unsafe-eval', no host
    assert directives["style-src"] == "'self'"
    assert directives["object-src"] == "'none'" and directives["frame-ancestors"] == "'none'"
    assert directives["require-trusted-types-for"] == "'script'"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize("path", ["/", "/runs", "/new", "/runs/0123abcd"])
async def test_every_page_is_the_one_document_with_a_strict_policy(
    http: httpx.AsyncClient, path: str
) -> None:
    response = await http.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert '<script type="module" src="/web/app.js">' in response.text
    assert_secured(response)


async def test_a_file_unchanged_since_it_was_fetched_is_not_sent_again(http: httpx.AsyncClient) -> None:
    first = await http.get("/web/app.js")
    again = await http.get("/web/app.js", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert_secured(again)


@pytest.mark.parametrize("name", [*MODULES, "style.css", "icon.svg"])
async def test_each_file_is_served_with_its_type(http: httpx.AsyncClient, name: str) -> None:
    response = await http.get(f"/web/{name}")
    assert response.status_code == 200
    assert response.content == (WEB / name).read_bytes()
    expected = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}[Path(name).suffix]
    assert response.headers["content-type"].startswith(expected)
    assert_secured(response)


@pytest.mark.parametrize(
    "name", ["nothing.js", "..%2Fmain.py", "..%2F..%2Fpyproject.toml", "%2Fetc%2Fpasswd"]
)
async def test_nothing_else_is_served(http: httpx.AsyncClient, name: str) -> None:
    response = await http.get(f"/web/{name}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_the_pages_are_not_in_the_api_document() -> None:
    paths = create_app().openapi()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith(("/web", "/runs", "/new"))]


def test_every_module_and_file_the_page_names_is_shipped_and_local() -> None:
    """Imports and links point at files of the package: nothing is fetched from elsewhere (no CDN)."""
    named: set[str] = set()
    html = (WEB / "index.html").read_text()
    named |= set(re.findall(r'(?:src|href)="/web/([^"]+)"', html))
    assert not re.findall(r'(?:src|href)="(?:https?:)?//', html)
    for module in MODULES:
        source = (WEB / module).read_text()
        imports = re.findall(r'^\s*(?:import|export)[^;]*?from\s+"([^"]+)"', source, flags=re.M)
        assert all(i.startswith("./") for i in imports), (module, imports)
        named |= {i.removeprefix("./") for i in imports}
    assert named <= set(web.ASSETS), named - set(web.ASSETS)
    assert set(MODULES) <= named | {"app.js"}, "a module nobody imports"


# Ways to turn a string into markup or code: none of them may appear (model text is untrusted).
HTML_SINKS = re.compile(
    r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|setHTML|"
    r"createContextualFragment|DOMParser|\.srcdoc|setAttribute\(\s*[\"'](?:style|on)"
)


@pytest.mark.parametrize("module", MODULES)
def test_no_module_writes_markup_from_a_string(module: str) -> None:
    source = (WEB / module).read_text()
    assert not HTML_SINKS.findall(source)


def test_the_wheel_ships_every_file_of_the_page() -> None:
    config = tomllib.loads((GATEWAY / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["moot_gateway"]
    for path in WEB.iterdir():
        if path.is_file():
            assert any(fnmatch.fnmatch(f"web/{path.name}", p) for p in patterns), path.name
    assert set(web.ASSETS) == {p.name for p in WEB.iterdir() if p.is_file()}


async def test_the_settings_give_the_trace_template_and_the_models() -> None:
    app = create_app()
    gateway = GatewaySettings(trace_url_template="https://jaeger.example/trace/{trace_id}")
    models = ModelList.model_validate(
        {"model_list": [{"model_name": "fast", "litellm_params": {"model": "openai/fast"}}]}
    )

    async def clients() -> SimpleNamespace:
        return SimpleNamespace(gateway=gateway, models=models)

    async def principal() -> Principal:
        return Principal(owner="alice", key_id="k1")

    app.dependency_overrides[get_clients] = clients
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
        refused = await http.get("/web/settings")
        app.dependency_overrides[current_principal] = principal
        answer = await http.get("/web/settings")
    assert refused.status_code == 401
    assert answer.json() == {
        "trace_url_template": "https://jaeger.example/trace/{trace_id}",
        "models": ["fast"],
    }


@pytest.mark.parametrize(
    "template",
    ["jaeger/trace/{trace_id}", "javascript:alert(1)//{trace_id}", "https://jaeger.example/trace/"],
)
def test_a_trace_template_is_an_http_url_with_the_trace_id(template: str) -> None:
    with pytest.raises(ValidationError, match="MOOT_TRACE_URL_TEMPLATE"):
        GatewaySettings(trace_url_template=template)
