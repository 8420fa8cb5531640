"""The web view: one page and its modules, served from the package, and the page's settings.

`/`, `/runs`, `/new` and `/runs/{id}` are the same document (`web/index.html`); its modules read
the address and draw the page, calling the `/v1` API with the key the person signed in with
(docs/web.md). The files are read once, from the installed package: no build step, no CDN.

Model text is untrusted, so every answer here carries a Content-Security-Policy that allows
scripts, styles and connections from this origin only, no inline script or style, and Trusted
Types with no policy (the browser refuses any HTML string written into the page): the modules
only ever set text.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Annotated

from fastapi import APIRouter, Header, Response
from pydantic import BaseModel, Field

from moot_gateway.auth import PrincipalDep
from moot_gateway.deps import ClientsDep
from moot_gateway.runs_service import not_found

router = APIRouter(include_in_schema=False)

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
    # Small files that change with a release: kept, but checked against their ETag on every use.
    "Cache-Control": "no-cache",
}
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
PAGE = "index.html"


class Asset:
    """One file of the page: its bytes, media type and ETag."""

    def __init__(self, name: str, body: bytes) -> None:
        self.body = body
        self.media_type = MEDIA_TYPES[name[name.rindex(".") :]]
        self.etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'

    def response(self, if_none_match: str | None) -> Response:
        headers = {**SECURITY_HEADERS, "ETag": self.etag}
        if if_none_match == self.etag:
            return Response(status_code=304, headers=headers)
        return Response(self.body, media_type=self.media_type, headers=headers)


def load_assets() -> dict[str, Asset]:
    """Every file of `moot_gateway/web` the page may ask for, by name (no folders: no path to walk)."""
    folder = resources.files("moot_gateway") / "web"
    return {
        item.name: Asset(item.name, item.read_bytes())
        for item in folder.iterdir()
        if item.is_file() and any(item.name.endswith(suffix) for suffix in MEDIA_TYPES)
    }


ASSETS = load_assets()

IfNoneMatch = Annotated[str | None, Header()]


async def page(if_none_match: IfNoneMatch = None) -> Response:
    """The page; its modules draw what the address names."""
    return ASSETS[PAGE].response(if_none_match)


for path in ("/", "/runs", "/new", "/runs/{run_id}"):
    router.add_api_route(path, page, methods=["GET"], response_class=Response)


class WebSettings(BaseModel):
    """What the page needs to know about this deployment."""

    trace_url_template: str | None = Field(
        description="Where a run's trace is shown, `{trace_id}` standing for its id (MOOT_TRACE_URL_TEMPLATE)."
    )
    models: list[str] = Field(description="The model names a run may use here (suggested in the form).")


@router.get("/web/settings")
async def web_settings(clients: ClientsDep, _principal: PrincipalDep) -> WebSettings:
    """The page's settings; behind the key, like the model list it holds."""
    return WebSettings(
        trace_url_template=clients.gateway.trace_url_template or None,
        models=clients.models.callable_names(),
    )


@router.get("/web/{name}")
async def asset(name: str, if_none_match: IfNoneMatch = None) -> Response:
    """A file of the page (module, style sheet, icon)."""
    found = ASSETS.get(name)
    if found is None:
        raise not_found(f"file {name!r}")
    return found.response(if_none_match)
