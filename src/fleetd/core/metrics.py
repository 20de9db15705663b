"""Prometheus metrics: HTTP request counters, collected gauges, text exposition format 0.0.4.

Two kinds of metric live here:

* **Request metrics**, counted by :meth:`Metrics.observe` from the ASGI middleware in http/metrics.py, a bare ASGI
  middleware on every route. It sits on the device check-in hot path, so per
  request it does one ``perf_counter`` pair, one dict increment and one
  histogram bucket increment, nothing else. The ``route`` label is the route's
  path template (``/v1/blobs/{sha256}``), never the raw URL, so the number of
  series stays bounded whatever clients send.
* **Collected metrics**, computed at scrape time. A module registers one with a
  single call::

      fleet.metrics.gauge("fleetd_webhook_deliveries", "Deliveries by state.",
                          Read(storage.deliveries_by_state, ("state",)))
      fleet.metrics.gauge("fleetd_sse_clients", "Open event streams.", lambda: len(hub.clients))

  The source is either a :class:`Read` of the store (a storage function of the
  connection; all of a scrape run in one read on a store reader thread) or a
  Python callable. A plain callable runs on that reader thread too, so it may
  stat files but must not touch the event loop; an ``async`` callable is awaited
  on the loop. A callable returns a number, ``None`` (no sample), or an iterable
  of ``(labels, value)`` pairs.

A collector that fails is left out of that scrape and logged; the rest of the
scrape still answers.
"""

from __future__ import annotations

import bisect
import inspect
import logging
import math
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, cast

from .. import __version__

log = logging.getLogger(__name__)

# Upper bounds (seconds) of the request-duration histogram; +Inf is implied.
DURATION_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

# fleetd_db_size_bytes: here from the SQLite file; on PostgreSQL the Fleet registers it (a read of the database).
DB_SIZE_HELP = "Bytes of the database: the SQLite file and its write-ahead log, or PostgreSQL's pg_database_size."
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")

Labels = Mapping[str, str]
Samples = float | int | None | Iterable[tuple[Labels, float | int]]
Kind = Literal["gauge", "counter"]
T = TypeVar("T")


class Store(Protocol):
    """What the registry needs of the store (core imports no other fleetd package): its file and a reader."""

    path: Path | None  # the SQLite file; None on PostgreSQL

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...


@dataclass(frozen=True)
class Read:
    """A metric read from the store: ``fn(conn)`` runs in the scrape's one read, on a store reader thread.

    Without ``labels`` it returns the value (a number, or None for no sample); with them, rows whose leading
    columns are the values of those labels, in order, and whose last column is the value."""

    fn: Callable[[Any], Any]
    labels: tuple[str, ...] = ()


Source = Read | Callable[[], Samples] | Callable[[], Awaitable[Samples]]


@dataclass(frozen=True)
class _Collected:
    name: str
    help: str
    kind: Kind
    source: Source
    is_async: bool


class _Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.sum = 0.0


class Metrics:
    """The fleet's metrics registry; ``render()`` produces the /metrics body."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._started = time.monotonic()
        self._collected: dict[str, _Collected] = {}
        self._requests: dict[tuple[str, str, int], int] = {}
        self._durations: dict[str, _Histogram] = {}
        self._register_platform()

    # --- registration -------------------------------------------------------

    def gauge(self, name: str, help: str, source: Source) -> None:
        """Register a gauge computed at scrape time from a store read or a callable (see the module doc)."""
        self._register(name, help, "gauge", source)

    def counter(self, name: str, help: str, source: Source) -> None:
        """Like :meth:`gauge`, for a value that only goes up (name it ``..._total``)."""
        self._register(name, help, "counter", source)

    def _register(self, name: str, help: str, kind: Kind, source: Source) -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"invalid metric name {name!r}")
        if name in self._collected or name in ("fleetd_http_requests_total", "fleetd_http_request_duration_seconds"):
            raise ValueError(f"metric {name} is registered twice")
        if not isinstance(source, Read) and not callable(source):
            raise TypeError(f"metric {name}: source must be a Read of the store or a callable")
        self._collected[name] = _Collected(name, help, kind, source, inspect.iscoroutinefunction(source))

    def _register_platform(self) -> None:
        db = self.store.path
        self.gauge("fleetd_build_info", "fleetd build; the value is always 1.", lambda: [({"version": __version__}, 1)])
        self.gauge("fleetd_uptime_seconds", "Seconds since this server started.",
                   lambda: time.monotonic() - self._started)
        if db is not None:
            self.gauge("fleetd_db_size_bytes", DB_SIZE_HELP,
                       lambda: sum(_file_size(db.with_name(db.name + suffix)) for suffix in ("", "-wal")))

    # --- request metrics (hot path) -----------------------------------------

    def observe(self, route: str, method: str, code: int, seconds: float) -> None:
        key = (route, method, code)
        requests = self._requests
        requests[key] = requests.get(key, 0) + 1
        hist = self._durations.get(route)
        if hist is None:
            hist = self._durations[route] = _Histogram()
        hist.counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        hist.sum += seconds

    # --- exposition ---------------------------------------------------------

    async def render(self) -> str:
        """The whole scrape in the Prometheus text format 0.0.4."""
        threaded = [m for m in self._collected.values() if not m.is_async]
        values: dict[str, Samples | BaseException] = await self.store.read(
            lambda conn: {m.name: _collect_sync(conn, m.source) for m in threaded})
        for m in self._collected.values():
            if m.is_async:
                fn = cast(Callable[[], Awaitable[Samples]], m.source)
                try:
                    values[m.name] = await fn()
                except Exception as e:  # a broken collector must not take the scrape down
                    values[m.name] = e
        out: list[str] = []
        self._render_http(out)
        for m in self._collected.values():
            value = values[m.name]
            if isinstance(value, BaseException):
                log.warning("metric %s left out of this scrape: %s: %s", m.name, type(value).__name__, value)
                continue
            try:
                samples = _samples(value)
            except (TypeError, ValueError) as e:
                log.warning("metric %s left out of this scrape: %s", m.name, e)
                continue
            _family(out, m.name, m.help, m.kind)
            for labels, v in samples:
                out.append(f"{m.name}{_labels(labels)} {_number(v)}")
        out.append("")
        return "\n".join(out)

    def _render_http(self, out: list[str]) -> None:
        # No lock: the middleware and this run on the event loop, and nothing here awaits.
        requests = sorted(self._requests.items())
        durations = sorted(self._durations.items())
        name = "fleetd_http_requests_total"
        _family(out, name, "HTTP requests by route template, method and status code.", "counter")
        for (route, method, code), n in requests:
            out.append(f"{name}{_labels({'route': route, 'method': method, 'code': str(code)})} {n}")
        name = "fleetd_http_request_duration_seconds"
        _family(out, name, "HTTP request duration by route template, including the streamed body.", "histogram")
        for route, hist in durations:
            cumulative = 0
            for bound, count in zip((*DURATION_BUCKETS, math.inf), hist.counts, strict=True):
                cumulative += count
                out.append(f"{name}_bucket{_labels({'route': route, 'le': _number(bound)})} {cumulative}")
            out.append(f"{name}_sum{_labels({'route': route})} {_number(hist.sum)}")
            out.append(f"{name}_count{_labels({'route': route})} {cumulative}")


# --- helpers -----------------------------------------------------------------

def _file_size(path: Any) -> int:
    try:
        return int(path.stat().st_size)
    except FileNotFoundError:
        return 0


def _collect_sync(conn: sqlite3.Connection, source: Source) -> Samples | BaseException:
    """Runs on a reader thread: one store read or one plain callable."""
    try:
        if isinstance(source, Read):
            found = source.fn(conn)
            if not source.labels:
                if isinstance(found, list):
                    raise ValueError(f"the read returned {len(found)} rows but names no labels")
                return found
            return [({k: "" if v is None else str(v) for k, v in zip(source.labels, row[:-1], strict=True)},
                     row[-1]) for row in found]
        return source()  # type: ignore[return-value]
    except Exception as e:
        return e


def _samples(value: Samples) -> list[tuple[Labels, float | int]]:
    if value is None:
        return []
    if isinstance(value, bool | int | float):
        return [({}, value)]
    if isinstance(value, str | bytes):
        raise TypeError(f"value {value!r} is not a number")
    out = []
    for labels, v in value:
        for key in labels:
            if not _LABEL.fullmatch(key) or key.startswith("__"):
                raise ValueError(f"invalid label name {key!r}")
        if not isinstance(v, bool | int | float):
            raise TypeError(f"value {v!r} is not a number")
        out.append((labels, v))
    return out


def _family(out: list[str], name: str, help: str, kind: str) -> None:
    out.append(f"# HELP {name} {help.replace(chr(92), chr(92) * 2).replace(chr(10), chr(92) + 'n')}")
    out.append(f"# TYPE {name} {kind}")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _number(v: float | int) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


__all__ = ["DURATION_BUCKETS", "Metrics", "Read"]
