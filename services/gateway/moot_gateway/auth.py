"""Bearer-key authentication for every /v1 endpoint, with a cache in front of Postgres.

The cache (`KeyCache`) answers a key it checked less than `CACHE_SECONDS` ago without a query,
and keeps answering a valid one for `STALE_SECONDS` while Postgres cannot be reached, so clients
that were working keep working through a database outage; a key it has not seen then gets 503
(we cannot tell it is wrong), never 401 or 500. Valid keys and unknown ones are kept apart: a
flood of random keys churns only the small unknown-key cache and never evicts a valid key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPBearer

from moot.records.accounts import KEY_PREFIX, Principal, RevokedKey, authenticate, hash_key
from moot_gateway.deps import Clients, ClientsDep
from moot_gateway.errors import EveryMinute, dependency_of, unauthorized, unavailable

log = logging.getLogger(__name__)

# A revoked key stops working within this many seconds; every request still costs no query.
CACHE_SECONDS = 30.0
# A valid key checked this recently keeps working while Postgres is unreachable (stale-while-error).
STALE_SECONDS = 600.0
# Bounds on memory: valid keys are evicted least recently used first, and only when this many
# other valid keys are in use; unknown keys have their own, smaller, cache.
MAX_VALID_KEYS = 10_000
MAX_UNKNOWN_KEYS = 1_000
# An authentication query that takes longer than this counts as Postgres being unreachable.
QUERY_TIMEOUT_SECONDS = 5.0


class KeyCache:
    """What Postgres said about key digests lately: valid ones (an LRU) and unknown ones, apart."""

    def __init__(
        self,
        *,
        fresh_seconds: float = CACHE_SECONDS,
        stale_seconds: float = STALE_SECONDS,
        max_valid: int = MAX_VALID_KEYS,
        max_unknown: int = MAX_UNKNOWN_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fresh_seconds, self.stale_seconds = fresh_seconds, stale_seconds
        self.max_valid, self.max_unknown = max_valid, max_unknown
        self.clock = clock
        self._valid: OrderedDict[str, tuple[Principal, float]] = OrderedDict()  # digest -> (who, checked at)
        self._unknown: OrderedDict[str, float] = OrderedDict()  # digest -> checked at
        # Why a known-bad key is refused, when there is more to say than "invalid" (revoked).
        self._reasons: dict[str, str] = {}

    def fresh(self, digest: str) -> tuple[bool, Principal | None]:
        """(True, the principal or None for an unknown key) if checked within `fresh_seconds`."""
        now = self.clock()
        valid = self._valid.get(digest)
        if valid is not None and now - valid[1] < self.fresh_seconds:
            self._valid.move_to_end(digest)
            return True, valid[0]
        checked = self._unknown.get(digest)
        if checked is not None and now - checked < self.fresh_seconds:
            return True, None
        return False, None

    def stale(self, digest: str) -> Principal | None:
        """The principal of a key found valid within `stale_seconds`: served while Postgres is down."""
        valid = self._valid.get(digest)
        if valid is None or self.clock() - valid[1] >= self.stale_seconds:
            return None
        self._valid.move_to_end(digest)
        return valid[0]

    def reason(self, digest: str) -> str | None:
        return self._reasons.get(digest)

    def remember(self, digest: str, principal: Principal | None, reason: str | None = None) -> None:
        """Record what Postgres answered for a key (None: unknown or revoked, `reason` says which)."""
        now = self.clock()
        if principal is None:
            self._valid.pop(digest, None)  # revoked: not even served stale
            self._unknown[digest] = now
            self._unknown.move_to_end(digest)
            if reason is not None:
                self._reasons[digest] = reason
            while len(self._unknown) > self.max_unknown:
                gone, _ = self._unknown.popitem(last=False)
                self._reasons.pop(gone, None)
            return
        self._unknown.pop(digest, None)
        self._reasons.pop(digest, None)
        self._valid[digest] = (principal, now)
        self._valid.move_to_end(digest)
        while len(self._valid) > self.max_valid:
            self._valid.popitem(last=False)


_cache = KeyCache()
# Declares the scheme in /openapi.json (generated clients send the key); the header is checked
# below, so that every refusal has the same OpenAI-style body.
_bearer = HTTPBearer(auto_error=False, description="An API key: `moot keys create`.")


async def principal_for(clients: Clients, authorization: str | None) -> Principal:
    """Who the `Authorization` header's key belongs to; 401 (or 503 when it cannot be told) otherwise."""
    if not authorization:
        raise unauthorized(
            "Missing API key: send 'Authorization: Bearer <key>' (create one with `moot keys create`)."
        )
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise unauthorized("Malformed Authorization header: expected 'Bearer <key>'.")
    if not key.startswith(KEY_PREFIX):
        raise unauthorized("Invalid API key.")  # no key of ours looks like this: no query, no cache
    digest = hash_key(key)
    known, principal = _cache.fresh(digest)
    if not known:
        try:
            async with asyncio.timeout(QUERY_TIMEOUT_SECONDS):  # a new connection's too
                found = await authenticate(clients.pool, key)
        except Exception as exc:
            if dependency_of(exc) is None:
                raise
            principal = _cache.stale(digest)
            if principal is None:
                # Not a key we saw working lately: it may be valid, so not 401; retry later.
                log.warning("cannot check an API key: Postgres unavailable (%r)", exc)
                raise unavailable("postgres") from exc
            _stale_warning.warn(
                "Postgres unavailable (%r): API keys seen lately are served from the cache", exc
            )
            return principal
        if isinstance(found, RevokedKey):
            when = found.revoked_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
            principal = None
            _cache.remember(
                digest, None, f"This API key ({found.key_id}) was revoked on {when}: use another one."
            )
        else:
            principal = found
            _cache.remember(digest, principal)
    if principal is None:
        raise unauthorized(_cache.reason(digest) or "Invalid API key.")
    return principal


# Where the body guard (`moot_gateway.limits`) leaves the principal it authenticated before it
# read a request's body, so that the route's dependency does not look the key up again.
PRINCIPAL_STATE = "moot_principal"


async def current_principal(
    request: Request,
    clients: ClientsDep,
    _declared: Annotated[object, Security(_bearer)] = None,
) -> Principal:
    """The caller. The header is read from the request, not declared as a parameter: the
    document shows the key as the bearer security scheme it is, not as an optional header."""
    known = request.scope.get("state", {}).get(PRINCIPAL_STATE)
    if isinstance(known, Principal):
        return known
    return await principal_for(clients, request.headers.get("authorization"))


# Once a minute, not once a request, while keys are served from the cache.
_stale_warning = EveryMinute(log)


PrincipalDep = Annotated[Principal, Depends(current_principal)]
