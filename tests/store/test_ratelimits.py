"""Rate limits counted in the database (store/ratelimits.py): one limit for every replica on one database."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from fleetd.core.errors import ResourceExhausted
from fleetd.core.ratelimit import RateLimiter
from fleetd.store.database import Store
from fleetd.store.ratelimits import SharedRateLimiter, limiter_for

WINDOW = 60.0
T0 = 1_800_000_000.0  # the start of a slot (a multiple of WINDOW)


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def _outcomes(limiter: Any, key: str, n: int) -> list[bool]:
    out = []
    for _ in range(n):
        try:
            await limiter.hit(key)
            out.append(True)
        except ResourceExhausted:
            out.append(False)
    return out


def _rows(store: Store) -> list[tuple[str, str, int, int]]:
    return [tuple(r) for r in store.read_sync(lambda c: c.execute(
        "SELECT scope, key, slot, hits FROM rate_limits ORDER BY scope, key, slot").fetchall())]


def test_the_limiter_is_chosen_by_the_store(store_backend: Store) -> None:
    limiter = limiter_for(store_backend, 5, WINDOW, "login")
    expected = RateLimiter if store_backend.dsn is None else SharedRateLimiter
    assert type(limiter) is expected


def test_a_hit_over_the_limit_is_refused_and_not_counted(store_backend: Store) -> None:
    clock = Clock(T0 + 10)
    limiter = SharedRateLimiter(store_backend, 3, WINDOW, "login", clock)
    assert asyncio.run(_outcomes(limiter, "10.0.0.1", 5)) == [True, True, True, False, False]
    with pytest.raises(ResourceExhausted) as e:
        asyncio.run(limiter.hit("10.0.0.1"))
    # The current slot alone is full: one more fits a third into the next
    # slot (3 hits weighted 2/3 + 1 = 3).
    assert e.value.retry_after == pytest.approx(50 + 20)
    assert "too many login attempts" in e.value.message
    # Other addresses and other scopes count apart.
    assert asyncio.run(_outcomes(limiter, "10.0.0.2", 1)) == [True]
    other = SharedRateLimiter(store_backend, 3, WINDOW, "enrollment", clock)
    assert asyncio.run(_outcomes(other, "10.0.0.1", 1)) == [True]
    slot = int(T0 // WINDOW)
    assert _rows(store_backend) == [("enrollment", "10.0.0.1", slot, 1), ("login", "10.0.0.1", slot, 3),
                                    ("login", "10.0.0.2", slot, 1)]


def test_the_window_slides_over_the_previous_slot(store_backend: Store) -> None:
    clock = Clock(T0 + 30)
    limiter = SharedRateLimiter(store_backend, 4, WINDOW, "login", clock)
    assert asyncio.run(_outcomes(limiter, "a", 5)) == [True] * 4 + [False]
    # Half-way into the next slot the previous one weighs 2 of its 4 hits: 2 more fit, not 4 (fixed windows
    # would let 8 through within 60 s).
    clock.t = T0 + WINDOW + 30
    assert asyncio.run(_outcomes(limiter, "a", 3)) == [True, True, False]
    # A slot later the first slot's hits no longer count and its rows are gone.
    clock.t = T0 + 2 * WINDOW + 59
    assert asyncio.run(_outcomes(limiter, "a", 1)) == [True]
    assert [r[2] - int(T0 // WINDOW) for r in _rows(store_backend)] == [1, 2]


@pytest.fixture
def two_stores(postgres_server: Any, pg_schema: str) -> Iterator[tuple[Store, Store]]:
    name = postgres_server.create_database(template=pg_schema)
    a, b = Store(postgres_server.dsn(name)), Store(postgres_server.dsn(name))
    yield a, b
    a.close()
    b.close()
    postgres_server.drop_database(name)


def test_replicas_hammering_at_once_share_one_limit(two_stores: tuple[Store, Store]) -> None:
    a, b = (SharedRateLimiter(s, 10, WINDOW, "login") for s in two_stores)

    async def hammer() -> list[bool]:
        async def one(limiter: SharedRateLimiter) -> bool:
            try:
                await limiter.hit("198.51.100.7")
                return True
            except ResourceExhausted:
                return False
        return list(await asyncio.gather(*(one(a if i % 2 else b) for i in range(30))))

    assert sum(asyncio.run(hammer())) == 10
    assert sum(r[3] for r in _rows(two_stores[0])) == 10
