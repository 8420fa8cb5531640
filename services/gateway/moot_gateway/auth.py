"""Bearer-key authentication for every /v1 endpoint, with a short cache in front of Postgres."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Header, Security
from fastapi.security import HTTPBearer

from moot.records.accounts import Principal, authenticate, hash_key
from moot_gateway.deps import ClientsDep
from moot_gateway.errors import unauthorized

# A revoked key stops working within this many seconds; every request still costs no query.
CACHE_SECONDS = 30.0
_cache: dict[str, tuple[Principal | None, float]] = {}
# Declares the scheme in /openapi.json (generated clients send the key); the header is checked
# below, so that every refusal has the same OpenAI-style body.
_bearer = HTTPBearer(auto_error=False, description="An API key: `moot keys create`.")


async def current_principal(
    clients: ClientsDep,
    authorization: Annotated[str | None, Header()] = None,
    _declared: Annotated[object, Security(_bearer)] = None,
) -> Principal:
    if not authorization:
        raise unauthorized(
            "Missing API key: send 'Authorization: Bearer <key>' (create one with `moot keys create`)."
        )
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise unauthorized("Malformed Authorization header: expected 'Bearer <key>'.")
    digest = hash_key(key.strip())
    cached = _cache.get(digest)
    now = time.monotonic()
    if cached is not None and cached[1] > now:
        principal = cached[0]
    else:
        principal = await authenticate(clients.pool, key.strip())
        if len(_cache) > 10_000:
            _cache.clear()
        _cache[digest] = (principal, now + CACHE_SECONDS)
    if principal is None:
        raise unauthorized("Invalid API key.")
    return principal


PrincipalDep = Annotated[Principal, Depends(current_principal)]
