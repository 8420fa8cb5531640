"""The gate in front of every request body: the key first, then the size, then the body.

An ASGI middleware rather than a dependency: FastAPI reads and parses a JSON body before any
dependency runs, and turns an error raised while reading it into a 400. So here, for a request
that carries a body, the API key is checked before a byte of the body is read (401 without one:
nobody without a key makes the gateway read, let alone parse, anything); the principal is left in
the request's state for the route (`moot_gateway.auth.current_principal`). Then a body announced
larger than the cap (Content-Length) is refused with 413 without reading it; one without a length,
or lying about it, is read up to the cap and refused as soon as it passes it.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from moot_gateway.auth import PRINCIPAL_STATE, principal_for
from moot_gateway.errors import ApiError

# Methods whose requests carry a body here; the others (GET, SSE) pass through untouched.
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _WITH_BODY:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        clients = getattr(scope["app"].state, "clients", None) if "app" in scope else None
        if clients is not None:  # None before the lifespan opened them: the routes answer 503
            authorization = headers.get(b"authorization")
            try:
                principal = await principal_for(
                    clients, authorization.decode("latin-1") if authorization else None
                )
            except ApiError as error:
                await self._answer(error, scope, receive, send)
                return
            scope.setdefault("state", {})[PRINCIPAL_STATE] = principal
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        # Read the body first (the route would read it whole anyway), counting as it comes.
        chunks: list[bytes] = []
        size = 0
        first: Message | None = None
        while True:
            message = await receive()
            if message["type"] != "http.request":
                first = message  # the client left: the app sees it as usual
                break
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        pending: list[Message] = [
            first or {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        ]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = ApiError(
            413,
            f"request body larger than {self.max_bytes} bytes (MOOT_MAX_BODY_BYTES)",
            code="request_too_large",
        )
        await self._answer(error, scope, receive, send)

    @staticmethod
    async def _answer(error: ApiError, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(error.body(), status_code=error.status, headers=error.headers)
        await response(scope, receive, send)
