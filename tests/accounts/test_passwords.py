"""The password hashing budget: every hash the server makes runs on its pool, and a full pool answers 429."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from fleetd.accounts import users as auth
from fleetd.accounts.audit import SYSTEM
from fleetd.accounts.passwords import THREAD_PREFIX, PasswordHasher, default_workers
from fleetd.app import create_app
from fleetd.core.config import Settings
from fleetd.core.errors import InvalidArgument, ResourceExhausted
from fleetd.fleet import Fleet
from tests.conftest import make_key, rpc


def test_every_hash_the_server_makes_runs_on_the_password_pool(client, fleet, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    fleet.store.write_sync(lambda c: auth.create_user(c, SYSTEM, "boss", "a-long-password", "admin"))
    admin = make_key(fleet, "admin")
    threads: list[str] = []
    scrypt = auth._scrypt

    def recording(*args: Any) -> bytes:
        threads.append(threading.current_thread().name)
        return scrypt(*args)

    monkeypatch.setattr(auth, "_scrypt", recording)
    assert rpc(client, "UserService", "Login", {"username": "boss", "password": "wrong-password"}).status_code == 401
    assert rpc(client, "UserService", "Login", {"username": "nobody", "password": "wrong-password"}).status_code == 401
    r = rpc(client, "UserService", "CreateUser", {"username": "pat", "role": "viewer"}, key=admin)
    assert r.status_code == 200
    r = rpc(client, "UserService", "CreateUser",
            {"username": "quin", "role": "viewer", "password": "a-chosen-password"}, key=admin)
    assert r.status_code == 200
    assert rpc(client, "UserService", "SetPassword", {"username": "pat", "password": "set-by-the-admin"},
               key=admin).status_code == 200
    r = rpc(client, "UserService", "Login", {"username": "pat", "password": "set-by-the-admin"})
    csrf = {"X-CSRF-Token": r.json()["csrf_token"]}
    r = rpc(client, "UserService", "ChangePassword",
            {"old_password": "set-by-the-admin", "new_password": "my-very-own-one"}, headers=csrf)
    assert r.status_code == 200, r.text
    # 2 failed logins, 2 creations, a set, a login, a change (old + new): never the writer, never the loop.
    assert len(threads) >= 8
    assert all(name.startswith(THREAD_PREFIX) for name in threads), threads


@pytest.fixture
def small_pool(tmp_path) -> Iterator[tuple[Fleet, TestClient[Any]]]:  # type: ignore[no-untyped-def]
    settings = Settings(data_dir=str(tmp_path / "data"), tls=False, mdns=False, host="127.0.0.1",
                        password_hash_workers=1, password_hash_queue=1)
    fleet = Fleet(settings)
    try:
        with TestClient(app=create_app(fleet)) as c:
            yield fleet, c
    finally:
        fleet.close()


def test_a_full_pool_answers_resource_exhausted_with_retry_after(small_pool) -> None:  # type: ignore[no-untyped-def]
    fleet, client = small_pool
    fleet.store.write_sync(lambda c: auth.create_user(c, SYSTEM, "rae", "a-long-password", "viewer"))
    release = threading.Event()
    # One job hashing (blocked), one waiting: the pool's capacity (1 worker + 1 queued) is used up.
    jobs = [fleet.passwords.submit(release.wait) for _ in range(2)]
    try:
        r = rpc(client, "UserService", "Login", {"username": "rae", "password": "a-long-password"})
        assert r.status_code == 429, r.text
        assert r.json()["code"] == "resource_exhausted" and "busy checking passwords" in r.json()["message"]
        assert int(r.headers["retry-after"]) >= 1
    finally:
        release.set()
    for job in jobs:
        job.result()
    assert fleet.passwords.pending == 0
    metrics = client.get("/metrics", headers={"Authorization": f"Bearer {make_key(fleet, 'viewer')}"}).text
    assert "fleetd_password_checks_refused_total 1" in metrics and "fleetd_password_checks_pending 0" in metrics
    r = rpc(client, "UserService", "Login", {"username": "rae", "password": "a-long-password"})
    assert r.status_code == 200, r.text


def test_the_cap_counts_jobs_until_they_finish() -> None:
    hasher = PasswordHasher(workers=1, queue=0)
    release = threading.Event()
    try:
        job = hasher.submit(release.wait)
        with pytest.raises(ResourceExhausted) as e:
            hasher.submit(release.wait)
        assert e.value.retry_after
        release.set()
        job.result()
        assert hasher.pending == 0
        assert hasher.submit(lambda: 42).result() == 42
    finally:
        release.set()
        hasher.close()


@pytest.mark.skipif(sys.platform != "linux", reason="thread scheduling policies are Linux's")
def test_hashing_threads_run_only_on_cores_nothing_else_wants() -> None:
    # SCHED_IDLE: a device request that wakes up preempts a hash at once (nice 10 left check-in's p99 at 3x).
    pool = PasswordHasher(1, 0)
    try:
        assert pool.submit(os.sched_getscheduler, 0).result() == os.SCHED_IDLE
    finally:
        pool.close()
    assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the caller's own thread is left alone


@pytest.mark.parametrize(("cores", "workers"), [(None, 1), (1, 1), (2, 1), (3, 1), (4, 2), (64, 2)])
def test_the_default_pool_has_one_worker_per_two_cores(monkeypatch, cores, workers) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert default_workers() == workers
    fleet_settings = Settings(password_hash_workers=0)
    assert fleet_settings.password_hash_workers == 0  # 0 means "the default for this machine"
    with pytest.raises(InvalidArgument, match="password_hash_workers"):
        Settings(password_hash_workers=-1)
