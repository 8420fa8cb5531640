"""The gateway's key cache: valid keys survive floods and Postgres outages, unknown keys get 503 then."""

from __future__ import annotations

import secrets
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest

from moot.records.accounts import KEY_PREFIX, Principal, hash_key
from moot_gateway import auth
from moot_gateway.auth import KeyCache
from moot_gateway.errors import ApiError

ALICE = Principal(owner="alice", key_id="key_alice")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_of_random_keys_does_not_evict_a_valid_key() -> None:
    cache = KeyCache()
    cache.remember(hash_key("moot_valid"), ALICE)
    for _ in range(20_000):
        cache.remember(hash_key(KEY_PREFIX + secrets.token_urlsafe(32)), None)
    assert cache.fresh(hash_key("moot_valid")) == (True, ALICE)
    assert len(cache._unknown) == auth.MAX_UNKNOWN_KEYS  # bounded, and apart from the valid keys


def test_valid_keys_are_evicted_least_recently_used_first() -> None:
    cache = KeyCache(max_valid=2)
    for name in ("a", "b"):
        cache.remember(name, Principal(owner=name, key_id=name))
    assert cache.fresh("a")[1] is not None  # used: b is now the least recently used
    cache.remember("c", Principal(owner="c", key_id="c"))
    assert cache.fresh("b") == (False, None)
    assert cache.fresh("a")[0] and cache.fresh("c")[0]


def test_fresh_then_stale_then_gone() -> None:
    clock = Clock()
    cache = KeyCache(clock=clock)
    cache.remember("d", ALICE)
    clock.now += auth.CACHE_SECONDS + 1
    assert cache.fresh("d") == (False, None)  # asks Postgres again
    assert cache.stale("d") == ALICE  # what is served if Postgres does not answer
    clock.now += auth.STALE_SECONDS
    assert cache.stale("d") is None


def test_a_revoked_key_is_not_served_stale() -> None:
    cache = KeyCache()
    cache.remember("d", ALICE)
    cache.remember("d", None)
    assert cache.fresh("d") == (True, None)
    assert cache.stale("d") is None


class Pool:
    """Enough of an asyncpg pool for `authenticate`: answers from `keys`, or raises `down`."""

    def __init__(self, keys: dict[str, Principal]) -> None:
        self.keys = keys
        self.down: Exception | None = None
        self.queries = 0

    async def fetchrow(self, _query: str, digest: str) -> dict[str, Any] | None:
        self.queries += 1
        if self.down is not None:
            raise self.down
        p = self.keys.get(digest)
        if p is None:
            return None
        limits = p.limits
        return {
            "id": p.key_id,
            "owner": p.owner,
            "rpm": limits.rpm,
            "max_concurrent_runs": limits.max_concurrent_runs,
            "usd_per_day": limits.usd_per_day,
            "revoked_at": None,
        }


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(auth, "_cache", KeyCache(clock=clock))
    return clock


async def _principal(pool: Pool, key: str) -> Principal:
    clients: Any = SimpleNamespace(pool=pool)
    return await auth.principal_for(clients, f"Bearer {key}")


@pytest.mark.parametrize(
    "down",
    [
        OSError("connection refused"),
        TimeoutError(),
        asyncpg.exceptions.ObjectNotInPrerequisiteStateError('database "x" is not accepting connections'),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
    ],
)
async def test_postgres_down_a_seen_key_works_an_unknown_one_gets_503(clock: Clock, down: Exception) -> None:
    key = KEY_PREFIX + "alice"
    pool = Pool({hash_key(key): ALICE})
    assert await _principal(pool, key) == ALICE
    clock.now += auth.CACHE_SECONDS + 1  # no longer fresh: Postgres is asked, and fails
    pool.down = down
    assert await _principal(pool, key) == ALICE
    with pytest.raises(ApiError) as refused:
        await _principal(pool, KEY_PREFIX + "never-seen")
    assert refused.value.status == 503
    assert refused.value.headers == {"Retry-After": "5"}
    assert refused.value.body()["error"]["code"] == "dependency_unavailable"
    clock.now += auth.STALE_SECONDS
    with pytest.raises(ApiError, match="postgres"):
        await _principal(pool, key)  # seen too long ago to vouch for


async def test_unknown_keys_are_401_and_junk_costs_no_query(clock: Clock) -> None:
    pool = Pool({})
    for key in (KEY_PREFIX + "nobody", "not-a-moot-key"):
        with pytest.raises(ApiError) as refused:
            await _principal(pool, key)
        assert refused.value.status == 401
    assert pool.queries == 1


async def test_a_query_bug_is_not_hidden_as_an_outage(clock: Clock) -> None:
    pool = Pool({})
    pool.down = asyncpg.exceptions.UndefinedTableError('relation "api_keys" does not exist')
    with pytest.raises(asyncpg.exceptions.UndefinedTableError):
        await _principal(pool, KEY_PREFIX + "x")
