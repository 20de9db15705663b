"""Prometheus /metrics: the exposition format, request counters, collected gauges, auth."""

from __future__ import annotations

import asyncio
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from fleetd import __version__
from fleetd.accounts import users as auth
from fleetd.accounts.audit import SYSTEM
from fleetd.app import create_app
from fleetd.core.metrics import DURATION_BUCKETS, Metrics, Read
from fleetd.fleet import Fleet
from tests.conftest import make_key

# --- a small parser for text format 0.0.4 that fails on anything off-grammar ---

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})? ([^ ]+)(?: (-?\d+))?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}

Series = tuple[str, frozenset[tuple[str, str]]]


@dataclass
class Scrape:
    types: dict[str, str] = field(default_factory=dict)
    helps: dict[str, str] = field(default_factory=dict)
    samples: dict[Series, float] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def series(self, name: str) -> list[tuple[dict[str, str], float]]:
        return [(dict(lbls), v) for (n, lbls), v in self.samples.items() if n == name]


def _unescape(s: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), s)


def _parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = _LABEL.match(text, pos)
        assert m, f"bad label syntax at {text[pos:]!r}"
        assert m.group(1) not in labels, f"label {m.group(1)} repeated"
        labels[m.group(1)] = _unescape(m.group(2))
        pos = m.end()
    return labels


def _family_of(name: str, types: dict[str, str]) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and types.get(base) == "histogram":
            return base
    return name


def parse(text: str) -> Scrape:
    assert text.endswith("\n"), "the exposition must end with a newline"
    out = Scrape()
    finished: set[str] = set()  # families whose lines are over: each family must be one contiguous block
    current: str | None = None
    for line in text[:-1].split("\n"):
        assert line, "no blank lines"
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if parts[1] in ("HELP", "TYPE"):
                assert len(parts) == 4 and re.fullmatch(_NAME, parts[2]), line
                name = parts[2]
                if name != current:
                    assert name not in finished, f"family {name} is split"
                    if current:
                        finished.add(current)
                    current = name
                book = out.helps if parts[1] == "HELP" else out.types
                assert name not in book, f"second {parts[1]} for {name}"
                if parts[1] == "TYPE":
                    assert parts[3] in _TYPES, line
                    assert not any(_family_of(n, {name: parts[3]}) == name for n, _ in out.samples), \
                        f"TYPE for {name} after its samples"
                book[name] = parts[3]
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a sample line: {line!r}"
        name, labels_text, value = m.group(1), m.group(2) or "", m.group(3)
        family = _family_of(name, out.types)
        if family != current:  # an untyped family, or a family already over
            assert family not in finished, f"{name} outside its family block"
            if current:
                finished.add(current)
            current = family
        number = float(value)  # accepts +Inf, -Inf, NaN too
        assert value in ("+Inf", "-Inf", "NaN") or math.isfinite(number), line
        key = (name, frozenset(_parse_labels(labels_text).items()))
        assert key not in out.samples, f"duplicate series {line!r}"
        out.samples[key] = number
    for name, kind in out.types.items():
        if kind == "histogram":
            _check_histogram(out, name)
    return out


def _check_histogram(scrape: Scrape, name: str) -> None:
    groups: dict[frozenset[tuple[str, str]], list[tuple[float, float]]] = {}
    for labels, v in scrape.series(f"{name}_bucket"):
        le = labels.pop("le")
        groups.setdefault(frozenset(labels.items()), []).append((float(le), v))
    for labels, buckets in groups.items():
        buckets.sort()
        counts = [c for _, c in buckets]
        assert counts == sorted(counts), f"{name}{dict(labels)} buckets are not cumulative"
        assert buckets[-1][0] == math.inf, f"{name}{dict(labels)} has no +Inf bucket"
        assert scrape.samples[(f"{name}_count", labels)] == counts[-1]
        assert (f"{name}_sum", labels) in scrape.samples


def scrape(fleet: Fleet) -> Scrape:
    return parse(asyncio.run(fleet.metrics.render()))


def get_metrics(client: Any, key: str) -> Scrape:
    r = client.get("/metrics", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return parse(r.text)


# --- the endpoint ------------------------------------------------------------

def test_parser_rejects_what_prometheus_would() -> None:
    for bad in ('a{b="c} 1\n', "a 1\na 2\n", "a one\n", "a 1", '# TYPE a gauge\na 1\nb 1\n# HELP a x\n'):
        with pytest.raises((AssertionError, ValueError)):
            parse(bad)
    assert parse('x{a="q\\"\\\\\\n"} 2 1700000000\n').value("x", a='q"\\\n') == 2


def test_metrics_needs_a_key_and_a_viewer_key_is_enough(client: Any, viewer_key: str, admin_key: str) -> None:
    r = client.get("/metrics")
    assert r.status_code == 401
    assert r.json()["code"] == "unauthenticated"
    assert client.get("/metrics", headers={"Authorization": "Bearer fk_not-a-key"}).status_code == 401
    for key in (viewer_key, admin_key):
        r = client.get("/metrics", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200
        assert r.headers["content-type"].replace(" ", "").startswith("text/plain;version=0.0.4")
    parsed = parse(r.text)
    assert parsed.types["fleetd_http_requests_total"] == "counter"
    assert parsed.types["fleetd_http_request_duration_seconds"] == "histogram"
    assert parsed.value("fleetd_build_info", version=__version__) == 1


def test_request_counters_go_up_by_route_template(client: Any, fleet: Fleet, viewer_key: str) -> None:
    before = get_metrics(client, viewer_key)
    for _ in range(3):
        assert client.get("/healthz").status_code == 200
    client.get("/no/such/page-3f9a1c")
    client.get("/another-missing-page-77e2")
    client.get("/metrics")  # 401
    r = client.get("/metrics", headers={"Authorization": f"Bearer {viewer_key}"})
    after = parse(r.text)

    def delta(**labels: str) -> float:
        name = "fleetd_http_requests_total"
        return after.value(name, **labels) - before.value(name, **labels)

    assert delta(route="/healthz", method="GET", code="200") == 3
    assert delta(route="/metrics", method="GET", code="401") == 1
    # /metrics counted the scrape `before` (the current one finishes after rendering)
    assert delta(route="/metrics", method="GET", code="200") == 1
    # unknown paths fall to the web UI's catch-all route and are counted under its template
    assert delta(route="/{file_path}", method="GET", code="404") == 2
    assert "3f9a1c" not in r.text and "77e2" not in r.text

    registered = {re.sub(r":[a-z]+\}", "}", p) for route in create_app(fleet).routes for p in [route.path]}
    routes = {labels["route"] for labels, _ in after.series("fleetd_http_requests_total")}
    assert routes <= registered, f"route labels that are not route templates: {routes - registered}"

    hist = "fleetd_http_request_duration_seconds"
    count = after.value(f"{hist}_count", route="/healthz") - before.value(f"{hist}_count", route="/healthz")
    assert count == 3
    assert after.value(f"{hist}_sum", route="/healthz") > before.value(f"{hist}_sum", route="/healthz")


# --- the registry --------------------------------------------------------------

def test_histogram_buckets_are_cumulative_with_le_bounds(fleet: Fleet) -> None:
    m = fleet.metrics
    for seconds in (0.003, 0.005, 0.02, 0.3, 20.0):
        m.observe("/x/{id}", "POST", 200, seconds)
    s = scrape(fleet)

    def bucket(le: str) -> float:
        return s.value("fleetd_http_request_duration_seconds_bucket", route="/x/{id}", le=le)

    assert DURATION_BUCKETS[0] == 0.005
    assert bucket("0.005") == 2  # le is inclusive
    assert bucket("0.025") == 3
    assert bucket("0.5") == 4
    assert bucket("10") == 4
    assert bucket("+Inf") == 5
    assert s.value("fleetd_http_request_duration_seconds_sum", route="/x/{id}") == pytest.approx(20.328)
    assert s.value("fleetd_http_requests_total", route="/x/{id}", method="POST", code="200") == 5


@pytest.mark.both_backends
def test_platform_gauges_follow_the_store(fleet: Fleet) -> None:
    s0 = scrape(fleet)
    assert s0.value("fleetd_users") == 0
    assert s0.value("fleetd_api_keys_active") == 0
    assert s0.value("fleetd_blobs_bytes") == 0
    db = fleet.store.path
    if db is not None:
        assert s0.value("fleetd_db_size_bytes") >= db.stat().st_size > 0
    else:  # PostgreSQL: the database's own size, several MiB once migrated
        size = fleet.store.read_sync(lambda c: c.execute("SELECT pg_database_size(current_database())").fetchone()[0])
        assert s0.value("fleetd_db_size_bytes") == pytest.approx(size, rel=0.1) and size > 1 << 20

    def setup(conn: Any) -> None:
        auth.create_user(conn, SYSTEM, "ann", "a long enough password", "operator")
        auth.create_user(conn, SYSTEM, "bob", "a long enough password", "viewer")
        auth.create_api_key(conn, SYSTEM, "old", "viewer", expires_at=time.time() - 1)
        conn.execute("INSERT INTO blobs (sha256, size, md5, sha1, created_at) VALUES "
                     "('a', 100, '', '', 0), ('b', 23, '', '', 0)")
    fleet.store.write_sync(setup)
    make_key(fleet, "viewer", "k1")
    make_key(fleet, "admin", "k2")
    fleet.store.write_sync(lambda c: auth.revoke_api_key(c, SYSTEM, "k1"))
    fleet.store.write_sync(lambda c: c.execute("UPDATE users SET disabled = 1 WHERE username = 'bob'"))

    s1 = scrape(fleet)
    assert s1.value("fleetd_users") == 1  # bob is disabled
    assert s1.value("fleetd_api_keys_active") == 1  # k2; k1 revoked, "old" expired
    assert s1.value("fleetd_blobs_bytes") == 123
    # user.create x2, key.create x3, key.revoke
    assert s1.value("fleetd_audit_entries_total") - s0.value("fleetd_audit_entries_total") == 6
    assert s1.value("fleetd_uptime_seconds") >= s0.value("fleetd_uptime_seconds") >= 0
    assert s1.types["fleetd_audit_entries_total"] == "counter"

    # pruning old audit entries must not make the counter go back
    fleet.store.write_sync(lambda c: c.execute("DELETE FROM audit_log"))
    assert scrape(fleet).value("fleetd_audit_entries_total") == s1.value("fleetd_audit_entries_total")


def test_one_call_registers_sql_sync_and_async_gauges(fleet: Fleet) -> None:
    m = fleet.metrics
    make_key(fleet, "viewer", "v1")
    make_key(fleet, "viewer", "v2")
    make_key(fleet, "admin", "a1")
    m.gauge("fleetd_test_keys", "Keys by role.",
            Read(lambda c: c.execute("SELECT role, COUNT(*) AS n FROM api_keys GROUP BY role").fetchall(), ("role",)))
    m.gauge("fleetd_test_odd", "Odd label values.", lambda: [({"v": 'q"uo\\te\nnl'}, 1.5), ({"v": "plain"}, 2)])

    async def queue_depth() -> int:
        await asyncio.sleep(0)
        return 7

    m.gauge("fleetd_test_queue", "An async callable.", queue_depth)
    m.counter("fleetd_test_things_total", "A counter from Python.", lambda: 42)
    m.gauge("fleetd_test_nothing", "No sample this time.", lambda: None)
    s = scrape(fleet)
    assert s.value("fleetd_test_keys", role="viewer") == 2
    assert s.value("fleetd_test_keys", role="admin") == 1
    assert s.value("fleetd_test_odd", v='q"uo\\te\nnl') == 1.5
    assert s.value("fleetd_test_queue") == 7
    assert s.types["fleetd_test_things_total"] == "counter" and s.value("fleetd_test_things_total") == 42
    assert s.types["fleetd_test_nothing"] == "gauge" and not s.series("fleetd_test_nothing")


def test_a_broken_collector_is_left_out_and_the_rest_still_answers(fleet: Fleet,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    m = fleet.metrics

    def boom() -> float:
        raise RuntimeError("sensor gone")

    async def aboom() -> float:
        raise RuntimeError("async sensor gone")

    m.gauge("fleetd_test_bad_sql", "x", Read(lambda c: c.execute("SELECT nope FROM no_such_table").fetchone()[0]))
    m.gauge("fleetd_test_ambiguous", "x",
            Read(lambda c: c.execute("SELECT size FROM (SELECT 1 AS size UNION ALL SELECT 2)").fetchall()))
    m.gauge("fleetd_test_boom", "x", boom)
    m.gauge("fleetd_test_aboom", "x", aboom)
    m.gauge("fleetd_test_text", "x", lambda: "12")
    m.gauge("fleetd_test_ok", "x", lambda: 1)
    s = scrape(fleet)
    for name in ("bad_sql", "ambiguous", "boom", "aboom", "text"):
        assert f"fleetd_test_{name}" not in s.types
        assert f"fleetd_test_{name}" in caplog.text
    assert s.value("fleetd_test_ok") == 1
    assert s.value("fleetd_users") == 0 and "fleetd_users" in s.types


def test_registration_refuses_bad_names_and_duplicates(fleet: Fleet) -> None:
    m: Metrics = fleet.metrics
    with pytest.raises(ValueError, match="invalid metric name"):
        m.gauge("fleetd-devices", "x", lambda: 1)
    with pytest.raises(ValueError, match="twice"):
        m.gauge("fleetd_users", "x", lambda: 1)
    with pytest.raises(ValueError, match="twice"):
        m.counter("fleetd_http_requests_total", "x", lambda: 1)
    with pytest.raises(TypeError):
        m.gauge("fleetd_x", "x", 3)  # type: ignore[arg-type]
