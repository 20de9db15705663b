"""Alert rules, their evaluation, and incidents.

A rule watches one metric on the active devices it targets (tags ANDed, and
optionally one device type):

* ``threshold``: the metric's avg, min or max over the window, compared with a
  threshold (``cpu_temp avg over 5m > 80``);
* ``no_data``: no point of the metric within the window.

Windows are counted in whole minutes, the current one included: the data is
the minute rollups plus the raw points not yet rolled up (see telemetry/rollups.py).

For each (rule, device) an incident **fires** when the condition starts to
hold and **resolves** when it stops (a threshold rule needs data to decide: a
device that goes quiet keeps its incident until it reports a good value, and a
``no_data`` rule is how silence is caught). At most one incident per rule and
device is open; a unique index makes that the database's rule, not only this
module's. Rules are evaluated every ``every`` seconds and, for devices that
just sent a watched metric, shortly after their points are committed. A fired
or resolved incident is published on the event bus and queued for every
webhook in the same transaction that records it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import operator
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import msgspec

from ..accounts import audit
from ..accounts.audit import Actor
from ..core.clock import new_id, to_dt
from ..core.effects import Effect, Publish
from ..core.errors import InvalidArgument, NotFound
from ..core.lifecycle import Scope
from ..core.metrics import Read
from ..core.names import METRIC_NAME
from ..core.tasks import cancel_and_wait
from ..devices.tags import check_tags
from ..store.database import Store, effect
from ..telemetry import rollups
from . import storage, webhooks
from .webhooks import Deliverer

if TYPE_CHECKING:
    from ..core.metrics import Metrics
    from ..telemetry.intake import Point

log = logging.getLogger(__name__)

KINDS = ("threshold", "no_data")
AGGREGATES = ("avg", "min", "max")
COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, "<": operator.lt, ">=": operator.ge, "<=": operator.le}
MIN_WINDOW = 60
MAX_WINDOW = 86400
KEEP_RESOLVED_DAYS = 180


class AlertRule(msgspec.Struct, kw_only=True):
    id: str
    name: str
    # threshold or no_data.
    kind: str
    metric: str
    # avg, min or max of the metric over the window (threshold rules).
    aggregate: str
    # >, <, >= or <= (threshold rules).
    comparison: str
    threshold: float
    # Seconds, counted in whole minutes.
    window_seconds: int
    # Devices with all of these tags (none: every active device).
    tags: dict[str, str] = {}
    # Only devices of this type (empty: any).
    device_type: str = ""
    enabled: bool = True
    created_by: str | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None


class Incident(msgspec.Struct, kw_only=True):
    id: str
    rule_id: str
    rule_name: str
    metric: str
    device_id: str
    device_name: str = ""
    # firing or resolved.
    state: str
    # The value that fired it (unset for no_data).
    value: float | None = None
    # The value when it resolved, if it resolved on data.
    last_value: float | None = None
    message: str = ""
    started_at: dt.datetime | None = None
    resolved_at: dt.datetime | None = None
    # recovered, data again, rule deleted, rule disabled, device no longer targeted.
    resolution: str = ""


def fmt_window(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def describe(rule: AlertRule) -> str:
    """The rule's condition in one line: ``cpu_temp avg over 5m > 80`` or ``no cpu_temp for 10m``."""
    if rule.kind == "no_data":
        return f"no {rule.metric} for {fmt_window(rule.window_seconds)}"
    return f"{rule.metric} {rule.aggregate} over {fmt_window(rule.window_seconds)} {rule.comparison} {rule.threshold:g}"


# --- rules in the store ---------------------------------------------------------

def _rule(r: sqlite3.Row) -> AlertRule:
    return AlertRule(id=r["id"], name=r["name"], kind=r["kind"], metric=r["metric"], aggregate=r["aggregate"],
                     comparison=r["comparison"], threshold=r["threshold"], window_seconds=r["window_seconds"],
                     tags=json.loads(r["tags"]), device_type=r["device_type"], enabled=bool(r["enabled"]),
                     created_by=r["created_by"], created_at=to_dt(r["created_at"]),
                     updated_at=to_dt(r["updated_at"]))


def check_rule(rule: AlertRule) -> AlertRule:
    """Validate every field, saying what is wrong and what would do."""
    if rule.kind not in KINDS:
        raise InvalidArgument(f"kind must be threshold or no_data, got {rule.kind!r}")
    METRIC_NAME.check(rule.metric, "metric")
    if rule.aggregate not in AGGREGATES:
        raise InvalidArgument(f"aggregate must be one of {', '.join(AGGREGATES)}, got {rule.aggregate!r}")
    if rule.comparison not in COMPARISONS:
        raise InvalidArgument(f"comparison must be one of {' '.join(COMPARISONS)}, got {rule.comparison!r}")
    if rule.threshold != rule.threshold or rule.threshold in (float("inf"), float("-inf")):
        raise InvalidArgument("threshold must be a finite number")
    if not MIN_WINDOW <= rule.window_seconds <= MAX_WINDOW:
        raise InvalidArgument(f"window must be between 1m and 24h (window_seconds {MIN_WINDOW}..{MAX_WINDOW}), "
                              f"got {rule.window_seconds}")
    if not 1 <= len(rule.name) <= 100:
        raise InvalidArgument("name must be 1-100 characters")
    check_tags(rule.tags)
    return rule


def create_rule(conn: sqlite3.Connection, actor: Actor, rule: AlertRule, now: float) -> AlertRule:
    rule.name = rule.name.strip() or describe(rule)
    check_rule(rule)
    rule.id = new_id("rule")
    storage.insert_rule(conn, rule_id=rule.id, name=rule.name, kind=rule.kind, metric=rule.metric,
                        aggregate=rule.aggregate, comparison=rule.comparison, threshold=rule.threshold,
                        window_seconds=rule.window_seconds, tags=json.dumps(rule.tags), device_type=rule.device_type,
                        enabled=rule.enabled, created_by=actor.name or actor.id, now=now)
    audit.record(conn, actor, "alert_rule.create", rule.id, condition=describe(rule), tags=rule.tags,
                 device_type=rule.device_type)
    return get_rule(conn, rule.id)


def get_rule(conn: sqlite3.Connection, rule_id: str) -> AlertRule:
    r = storage.rule_row(conn, rule_id)
    if r is None:
        raise NotFound(f"no alert rule {rule_id!r} ('fleetd alerts rules list' shows them)")
    return _rule(r)


def list_rules(conn: sqlite3.Connection) -> list[AlertRule]:
    return [_rule(r) for r in storage.rule_rows(conn)]


def _incident(r: sqlite3.Row) -> Incident:
    return Incident(id=r["id"], rule_id=r["rule_id"], rule_name=r["rule_name"], metric=r["metric"],
                    device_id=r["device_id"], device_name=r["device_name"], state=r["state"], value=r["value"],
                    last_value=r["last_value"], message=r["message"], started_at=to_dt(r["started_at"]),
                    resolved_at=to_dt(r["resolved_at"]), resolution=r["resolution"])


def list_incidents(conn: sqlite3.Connection, *, state: str = "", rule_id: str = "", device_id: str = "",
                   limit: int = 100) -> list[Incident]:
    if state and state not in ("firing", "resolved"):
        raise InvalidArgument("state must be firing or resolved")
    if not 1 <= limit <= 1000:
        raise InvalidArgument("limit must be 1..1000")
    return [_incident(r) for r in storage.incident_rows(conn, state=state, rule_id=rule_id, device_id=device_id,
                                                        limit=limit)]


def prune_incidents(conn: sqlite3.Connection, now: float) -> int:
    return storage.delete_resolved_incidents(conn, now - KEEP_RESOLVED_DAYS * 86400)


# --- the state machine --------------------------------------------------------------

@dataclass(frozen=True)
class Transition:
    kind: Literal["fire", "resolve"]
    rule: AlertRule
    device_id: str
    value: float | None
    message: str
    resolution: str = ""


def decide(rule: AlertRule, targets: dict[str, float], aggs: dict[str, rollups.Agg], firing: set[str],
           now: float, since: float) -> list[Transition]:
    """What changes for one rule: ``targets`` maps each targeted device to when it became active, ``aggs``
    holds the devices' data in the window, ``firing`` the devices with an open incident. No data or
    no device started less than a window ago (``since``: when the engine started watching) cannot
    count as ``no_data``."""
    out: list[Transition] = []
    cond = describe(rule)
    for did in sorted(firing - targets.keys()):
        out.append(Transition("resolve", rule, did, None, f"{cond}: device no longer targeted",
                              "device no longer targeted"))
    if rule.kind == "threshold":
        cmp = COMPARISONS[rule.comparison]
        for did in targets:
            agg = aggs.get(did)
            if agg is None:
                continue  # no data: nothing to judge by
            value = getattr(agg, rule.aggregate)
            if cmp(value, rule.threshold) and did not in firing:
                out.append(Transition("fire", rule, did, value, f"{rule.metric} {rule.aggregate} over "
                                      f"{fmt_window(rule.window_seconds)} is {value:.6g} ({rule.comparison} "
                                      f"{rule.threshold:g})"))
            elif not cmp(value, rule.threshold) and did in firing:
                out.append(Transition("resolve", rule, did, value, f"{rule.metric} {rule.aggregate} over "
                                      f"{fmt_window(rule.window_seconds)} is {value:.6g} again", "recovered"))
        return out
    created = rule.created_at.timestamp() if rule.created_at else 0.0
    for did, active_since in targets.items():
        agg = aggs.get(did)
        if agg is None and did not in firing and now - max(created, active_since, since) >= rule.window_seconds:
            out.append(Transition("fire", rule, did, None, f"no {rule.metric} data for "
                                  f"{fmt_window(rule.window_seconds)}"))
        elif agg is not None and did in firing:
            out.append(Transition("resolve", rule, did, agg.avg, f"{rule.metric} data again", "data again"))
    return out


def targets_of(conn: sqlite3.Connection, tags: dict[str, str], device_type: str,
               device_ids: Iterable[str] | None = None) -> dict[str, float]:
    """Active devices with all ``tags`` (and of ``device_type``) → when they became active."""
    return storage.active_devices_since(conn, tags, device_type,
                                        json.dumps(list(device_ids)) if device_ids is not None else None)


def plan(conn: sqlite3.Connection, rules: list[AlertRule], firing: dict[tuple[str, str], str], now: float,
         since: float, device_ids: set[str] | None = None) -> list[Transition]:
    """Every transition for ``rules`` (only for ``device_ids`` when given); reads one snapshot."""
    out: list[Transition] = []
    targets_cache: dict[tuple[str, str], dict[str, float]] = {}
    windows: dict[tuple[str, float], dict[str, rollups.Agg]] = {}
    by_rule: dict[str, set[str]] = {}
    for rid, did in firing:
        if device_ids is None or did in device_ids:
            by_rule.setdefault(rid, set()).add(did)
    with rollups.snapshot(conn):
        for rule in rules:
            key = (json.dumps(rule.tags, sort_keys=True), rule.device_type)
            if key not in targets_cache:
                targets_cache[key] = targets_of(conn, rule.tags, rule.device_type, device_ids)
            targets = targets_cache[key]
            start = now - rule.window_seconds
            wkey = (rule.metric, start)
            if wkey not in windows:
                windows[wkey] = rollups.window(conn, rule.metric, start,
                                               sorted(device_ids) if device_ids is not None else None)
            out += decide(rule, targets, windows[wkey], by_rule.get(rule.id, set()), now, since)
    return out


def record(conn: sqlite3.Connection, transitions: list[Transition], now: float) -> list[tuple[str, Incident]]:
    """Write the transitions (fire → new incident, resolve → close it) and queue their webhooks.

    A fire for a (rule, device) that already has an open incident is dropped:
    the unique index on open incidents is what deduplicates.
    """
    out: list[tuple[str, Incident]] = []
    for t in transitions:
        if t.kind == "fire":
            iid = new_id("inc")
            if not storage.insert_firing_incident(conn, incident_id=iid, rule_id=t.rule.id, rule_name=t.rule.name,
                                                  metric=t.rule.metric, device_id=t.device_id, value=t.value,
                                                  message=t.message, now=now):
                continue
            event = "alert.fired"
        else:
            found = storage.firing_incident_id(conn, t.rule.id, t.device_id)
            if found is None:
                continue
            iid = found
            storage.resolve_incident(conn, iid, last_value=t.value, resolution=t.resolution, message=t.message,
                                     now=now)
            event = "alert.resolved"
        inc = _incident(storage.incident_row(conn, iid))
        webhooks.enqueue(conn, event, {"incident": msgspec.to_builtins(inc), "rule": msgspec.to_builtins(t.rule)},
                         now)
        effect(conn, Publish(event, msgspec.to_builtins(inc)))
        out.append((event, inc))
    return out


# --- the engine -----------------------------------------------------------------------

class AlertRulesChanged(Effect, frozen=True):
    """Alert rules were created, changed or deleted (their open incidents with them)."""


_T = TypeVar("_T")


def _changed(conn: sqlite3.Connection, result: _T) -> _T:
    effect(conn, AlertRulesChanged())
    return result


class AlertEngine:
    """Evaluates the rules on a timer and as data arrives; owns rule changes so its cache stays true."""

    name = "alerts"
    scope: Scope = "fleet"  # docs/architecture.md, "Background parts"

    def __init__(self, store: Store, metrics: Metrics | None = None, *,
                 deliverer: Deliverer | None = None, every: float = 10.0, debounce: float = 0.5,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.deliverer = deliverer or Deliverer(store, clock=clock)
        self.every = every
        self.debounce = debounce
        self.clock = clock
        self.rules: dict[str, AlertRule] = {}
        self.firing: dict[tuple[str, str], str] = {}
        self.watched: frozenset[str] = frozenset()
        self.started = clock()
        self._loaded = False
        # PostgreSQL replicas: only the running engine (the lease holder's) evaluates (Fleet sets it).
        self.replicated = False
        self._dirty: set[str] = set()
        self._kick_pending = False
        self._lock: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._task: asyncio.Task[None] | None = None
        if metrics is not None:
            metrics.gauge("fleetd_alert_incidents_firing", "Open alert incidents.",
                          Read(storage.firing_incident_count))
            metrics.gauge("fleetd_webhook_deliveries", "Webhook deliveries in the log, by state.",
                          Read(storage.deliveries_by_state, ("state",)))

    # --- cache -----------------------------------------------------------------
    def rules_changed(self, e: AlertRulesChanged) -> None:
        """The handler of committed rule changes (this replica's or, on PostgreSQL, another's): reload the rules
        and the open incidents before the next evaluation."""
        self._loaded = False

    def _set_rules(self, rules: list[AlertRule]) -> None:
        self.rules = {r.id: r for r in rules}
        self.watched = frozenset(r.metric for r in rules if r.enabled)

    async def load(self) -> None:
        rules, firing = await self.store.read(lambda c: (list_rules(c), storage.firing_incidents(c)))
        self._set_rules(rules)
        self.firing = firing
        self._loaded = True

    def _lock_(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    # --- evaluation ------------------------------------------------------------
    def note_points(self, device_id: str, points: list[Point]) -> None:
        """Called after a device's points are committed: re-evaluate it soon if it sent a watched metric."""
        if self.replicated and self._task is None:  # not the lease holder: its periodic pass covers these points
            return
        if not self.watched or self.watched.isdisjoint([p.name for p in points]):
            return
        self._dirty.add(device_id)
        if not self._kick_pending:
            self._kick_pending = True
            asyncio.get_running_loop().call_later(self.debounce, self._kick)

    def _kick(self) -> None:
        self._kick_pending = False
        dirty, self._dirty = self._dirty, set()
        if dirty:
            task = asyncio.get_running_loop().create_task(self._evaluate_logged(dirty))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _evaluate_logged(self, device_ids: set[str] | None) -> None:
        try:
            await self.evaluate(device_ids)
        except Exception:
            log.exception("alert evaluation failed")

    async def evaluate(self, device_ids: set[str] | None = None) -> list[tuple[str, Incident]]:
        """One pass over every enabled rule (only ``device_ids`` when given). → (event, incident) changes."""
        async with self._lock_():
            if not self._loaded:
                await self.load()
            rules = [r for r in self.rules.values() if r.enabled]
            if not rules:
                return []
            now = self.clock()
            firing = dict(self.firing)
            transitions = await self.store.read(lambda c: plan(c, rules, firing, now, self.started, device_ids))
            if not transitions:
                return []
            changes = await self.store.write(lambda c: record(c, transitions, now))
            self._applied(changes)
            return changes

    def _applied(self, changes: list[tuple[str, Incident]]) -> None:
        for event, inc in changes:
            key = (inc.rule_id, inc.device_id)
            if event == "alert.fired":
                self.firing[key] = inc.id
            else:
                self.firing.pop(key, None)
            log.info("%s: %s on %s: %s", event, inc.rule_name, inc.device_id, inc.message)
        if changes:
            self.deliverer.wake()

    # --- rule changes ------------------------------------------------------------
    async def create_rule(self, actor: Actor, rule: AlertRule) -> AlertRule:
        async with self._lock_():
            created = await self.store.write(lambda c: _changed(c, create_rule(c, actor, rule, self.clock())))
            await self.load()
        self._soon()
        return created

    async def update_rule(self, actor: Actor, rule_id: str, changes: dict[str, Any]) -> AlertRule:
        """Change some of a rule's fields; disabling it resolves its open incidents."""
        def update(conn: sqlite3.Connection) -> tuple[AlertRule, list[tuple[str, Incident]]]:
            old = get_rule(conn, rule_id)
            new = check_rule(msgspec.structs.replace(old, **changes))
            now = self.clock()
            storage.update_rule(conn, rule_id, name=new.name, aggregate=new.aggregate, comparison=new.comparison,
                                threshold=new.threshold, window_seconds=new.window_seconds, enabled=new.enabled,
                                now=now)
            audit.record(conn, actor, "alert_rule.update", rule_id, **changes)
            closed = self._close_all(conn, new, "rule disabled", now) if old.enabled and not new.enabled else []
            return _changed(conn, (get_rule(conn, rule_id), closed))

        async with self._lock_():
            rule, closed = await self.store.write(update)
            await self.load()
            self._applied(closed)
        self._soon()
        return rule

    async def delete_rule(self, actor: Actor, rule_id: str) -> None:
        """Delete a rule; its open incidents resolve ("rule deleted") and stay in the history."""
        def delete(conn: sqlite3.Connection) -> list[tuple[str, Incident]]:
            rule = get_rule(conn, rule_id)
            closed = self._close_all(conn, rule, "rule deleted", self.clock())
            storage.delete_rule(conn, rule_id)
            audit.record(conn, actor, "alert_rule.delete", rule_id, condition=describe(rule))
            return _changed(conn, closed)

        async with self._lock_():
            closed = await self.store.write(delete)
            await self.load()
            self._applied(closed)

    @staticmethod
    def _close_all(conn: sqlite3.Connection, rule: AlertRule, why: str, now: float) -> list[tuple[str, Incident]]:
        return record(conn, [Transition("resolve", rule, d, None, f"{describe(rule)}: {why}", why)
                             for d in storage.firing_devices(conn, rule.id)], now)

    def _soon(self) -> None:
        """Evaluate everything shortly (after a rule changed), if the engine runs."""
        if self._task is None:
            return
        with contextlib.suppress(RuntimeError):
            task = asyncio.get_running_loop().create_task(self._evaluate_logged(None))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # --- lifecycle ---------------------------------------------------------------
    async def prune(self) -> tuple[int, int]:
        """Forget resolved incidents and finished deliveries past their keep time. → (incidents, deliveries)."""
        now = self.clock()
        return await self.store.write(lambda c: (prune_incidents(c, now), webhooks.prune(c, now)))

    async def _loop(self) -> None:
        next_prune = time.monotonic() + 60
        while True:
            await self._evaluate_logged(None)
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + 3600
                try:
                    await self.prune()
                except Exception:
                    log.exception("pruning old incidents failed")
            await asyncio.sleep(self.every)

    async def start(self) -> None:
        self.started = self.clock()
        self._loaded = False  # (re)started: another replica may have changed the open incidents meanwhile
        self._lock = asyncio.Lock()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="fleetd-alerts")

    async def stop(self) -> None:
        for task in [self._task, *self._tasks]:
            await cancel_and_wait(task)
        self._task = None
        self._tasks.clear()
