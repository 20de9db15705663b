"""Webhooks: where alert events are POSTed, and the delivery log.

A delivery is written in the same transaction as the change it reports (an
outbox), with its JSON body fixed then, so every retry sends the same bytes
under the same signature::

    X-Fleetd-Signature: sha256=<hex HMAC-SHA256 of the body, keyed with the webhook's secret>
    X-Fleetd-Event: alert.fired
    X-Fleetd-Delivery: 42

Each webhook gets its deliveries in order: the oldest pending one is retried
with exponential backoff (2 s, 4 s, 8 s, ... at most 10 minutes apart) until it
succeeds (any 2xx) or has been tried ``max_attempts`` times (then it is
``failed``), and only then does the next one go.

Where a webhook may point is :mod:`fleetd.alerts.egress`'s policy, checked when it is
saved and again at each delivery; redirects are not followed, and the log keeps
the status code and its standard reason, never the receiver's body.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import hmac
import json
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import msgspec

from .. import __version__
from ..accounts import audit
from ..accounts.audit import Actor
from ..core.clock import new_id, to_dt
from ..core.errors import InvalidArgument, NotFound
from ..core.lifecycle import Scope
from ..core.tasks import cancel_and_wait, within
from ..store.database import Store
from . import storage
from .egress import Policy, Refused, pinned_transport

if TYPE_CHECKING:  # httpx is loaded on the first delivery: a server without webhooks never needs it
    import httpx

log = logging.getLogger(__name__)

EVENTS = ("alert.fired", "alert.resolved")
SIGNATURE_HEADER = "X-Fleetd-Signature"
MAX_URL = 2000
KEEP_FINISHED_DAYS = 30


class Webhook(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    name: str
    url: str
    # The events it receives: alert.fired, alert.resolved.
    events: list[str]
    enabled: bool
    created_by: str | None = None
    created_at: dt.datetime | None = None
    # The signing secret: only in the answer to CreateWebhook.
    secret: str | None = None


class Delivery(msgspec.Struct, kw_only=True):
    id: int
    webhook_id: str
    event: str
    incident_id: str | None = None
    # pending, delivered or failed.
    state: str
    attempts: int
    # When a pending delivery is tried next.
    next_attempt_at: dt.datetime | None = None
    # HTTP status of the last attempt; unset when it got no answer.
    last_status: int | None = None
    last_error: str = ""
    created_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _webhook(r: sqlite3.Row, secret: bool = False) -> Webhook:
    return Webhook(id=r["id"], name=r["name"], url=r["url"], events=json.loads(r["events"]),
                   enabled=bool(r["enabled"]), created_by=r["created_by"], created_at=to_dt(r["created_at"]),
                   secret=r["secret"] if secret else None)


def check_url(url: str) -> str:
    u = urlparse(url.strip())
    if u.scheme not in ("http", "https") or not u.hostname or len(url) > MAX_URL:
        raise InvalidArgument(f"webhook url must be an http:// or https:// URL with a host (at most {MAX_URL} "
                              f"characters), got {url!r}")
    return url.strip()


async def check_destination(url: str, policy: Policy) -> None:
    """Before saving: refuse a URL whose host is (or resolves to) an address the policy does not allow."""
    u = urlparse(check_url(url))
    assert u.hostname is not None
    await policy.check_url_host(u.hostname, u.port or (443 if u.scheme == "https" else 80))


def create(conn: sqlite3.Connection, actor: Actor, *, name: str, url: str, events: list[str] | None = None,
           secret: str = "") -> Webhook:
    url = check_url(url)
    name = name.strip() or (urlparse(url).hostname or "webhook")
    if len(name) > 100:
        raise InvalidArgument("webhook name is at most 100 characters")
    events = list(dict.fromkeys(events or EVENTS))
    bad = [e for e in events if e not in EVENTS]
    if bad:
        raise InvalidArgument(f"unknown webhook events {bad}; choose from {', '.join(EVENTS)}")
    if secret and len(secret) < 16:
        raise InvalidArgument("a webhook secret must be at least 16 characters (or leave it out to get a random one)")
    secret = secret or secrets.token_hex(24)
    wid = new_id("wh")
    storage.insert_webhook(conn, webhook_id=wid, name=name, url=url, secret=secret, events=json.dumps(events),
                           created_by=actor.name or actor.id, now=time.time())
    audit.record(conn, actor, "webhook.create", wid, url=url, events=events)
    return _webhook(storage.webhook_row(conn, wid), secret=True)


def list_webhooks(conn: sqlite3.Connection) -> list[Webhook]:
    return [_webhook(r) for r in storage.webhook_rows(conn)]


def delete(conn: sqlite3.Connection, actor: Actor, webhook_id: str) -> None:
    if not storage.delete_webhook(conn, webhook_id):
        raise NotFound(f"no webhook {webhook_id!r} ('fleetd alerts webhooks list' shows them)")
    audit.record(conn, actor, "webhook.delete", webhook_id)


def enqueue(conn: sqlite3.Connection, event: str, payload: dict[str, Any], now: float) -> int:
    """Queue ``payload`` for every enabled webhook that wants ``event``; call inside the change's transaction."""
    body = msgspec.json.encode({"event": event, **payload})
    wanted = [wid for wid, events in storage.enabled_webhook_events(conn) if event in json.loads(events)]
    storage.insert_deliveries(conn, wanted, event=event, incident_id=payload.get("incident", {}).get("id"),
                              body=body, now=now)
    return len(wanted)


def _delivery(r: sqlite3.Row) -> Delivery:
    return Delivery(id=r["id"], webhook_id=r["webhook_id"], event=r["event"], incident_id=r["incident_id"],
                    state=r["state"], attempts=r["attempts"],
                    next_attempt_at=to_dt(r["next_attempt_at"]) if r["state"] == "pending" else None,
                    last_status=r["last_status"], last_error=r["last_error"], created_at=to_dt(r["created_at"]),
                    finished_at=to_dt(r["finished_at"]))


def list_deliveries(conn: sqlite3.Connection, *, webhook_id: str = "", state: str = "", limit: int = 100
                    ) -> list[Delivery]:
    if state and state not in ("pending", "delivered", "failed"):
        raise InvalidArgument("state must be pending, delivered or failed")
    if not 1 <= limit <= 1000:
        raise InvalidArgument("limit must be 1..1000")
    return [_delivery(r) for r in storage.delivery_rows(conn, webhook_id=webhook_id, state=state, limit=limit)]


def prune(conn: sqlite3.Connection, now: float) -> int:
    return storage.delete_finished_deliveries(conn, now - KEEP_FINISHED_DAYS * 86400)


# --- delivering ------------------------------------------------------------------


class Deliverer:
    """Sends pending deliveries; wake it after queueing some, it also looks on its own every ``idle`` seconds."""

    name = "webhooks"
    scope: Scope = "fleet"  # docs/architecture.md, "Background parts"

    def __init__(self, store: Store, *, backoff_base: float = 2.0, backoff_max: float = 600.0,
                 max_attempts: int = 12, timeout: float = 10.0, idle: float = 30.0,
                 clock: Callable[[], float] = time.time, policy: Policy | None = None) -> None:
        self.store = store
        self.policy = policy or Policy()
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.idle = idle
        self.clock = clock
        self._wake: asyncio.Event | None = None  # made in start(): an Event belongs to one event loop
        self._task: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None

    def backoff(self, attempts: int) -> float:
        """Seconds before attempt ``attempts + 1``, after ``attempts`` failed ones."""
        return float(min(self.backoff_base * 2 ** (attempts - 1), self.backoff_max))

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _send(self, client: httpx.AsyncClient, row: sqlite3.Row) -> tuple[int | None, str]:
        body = bytes(row["body"])
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(row["secret"], body),
                   "X-Fleetd-Event": row["event"], "X-Fleetd-Delivery": str(row["id"]),
                   "User-Agent": f"fleetd/{__version__}"}
        import httpx

        try:
            # The body is never read: it is the receiver's to write and not the operators' to see.
            async with client.stream("POST", row["url"], content=body, headers=headers) as r:
                status = r.status_code
        except Refused as e:
            return None, str(e)
        except httpx.HTTPError as e:
            return None, f"{type(e).__name__}: {e}"[:500] or type(e).__name__
        if 200 <= status < 300:
            return status, ""
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "non-standard status"
        if 300 <= status < 400:
            reason += " (redirects are not followed)"
        return status, f"HTTP {status} {reason}"

    def _record(self, conn: sqlite3.Connection, row: sqlite3.Row, status: int | None, error: str) -> None:
        now = self.clock()
        attempts = row["attempts"] + 1
        if not error:
            storage.delivery_succeeded(conn, row["id"], attempts=attempts, status=status, now=now)
        elif attempts >= self.max_attempts:
            storage.delivery_failed(conn, row["id"], attempts=attempts, status=status, error=error, now=now)
        else:
            storage.delivery_retry_at(conn, row["id"], attempts=attempts, status=status, error=error,
                                      at=now + self.backoff(attempts))

    async def _webhook_queue(self, client: httpx.AsyncClient, row: sqlite3.Row | None) -> int:
        """Send this webhook's due head, and the ones after it while they succeed. → attempts made."""
        sent = 0
        while row is not None and sent < 100:
            status, error = await self._send(client, row)
            await self.store.write(functools.partial(self._record, row=row, status=status, error=error))
            sent += 1
            if error:
                log.info("webhook %s: delivery %s failed (attempt %d): %s", row["webhook_id"], row["id"],
                         row["attempts"] + 1, error)
                break
            heads = await self.store.read(functools.partial(storage.due_heads, now=self.clock()))
            row = next((h for h in heads if h["webhook_id"] == row["webhook_id"]), None)
        return sent

    async def run_once(self) -> int:
        """Try every due delivery once (webhooks in parallel, each in order). → attempts made."""
        now = self.clock()
        heads = await self.store.read(lambda c: storage.due_heads(c, now))
        if not heads:
            return 0
        if self._http is None:
            import httpx

            self._http = httpx.AsyncClient(transport=pinned_transport(self.policy, self.timeout),
                                           timeout=self.timeout, follow_redirects=False)
        counts = await asyncio.gather(*(self._webhook_queue(self._http, h) for h in heads))
        return sum(counts)

    async def _loop(self) -> None:
        assert self._wake is not None
        while True:
            self._wake.clear()
            try:
                await self.run_once()
                due = await self.store.read(storage.next_due)
            except Exception:
                log.exception("webhook delivery pass failed")
                due = None
            wait = self.idle if due is None else min(self.idle, max(0.05, due - self.clock()))
            with contextlib.suppress(asyncio.TimeoutError):
                await within(self._wake.wait(), wait)

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="fleetd-webhooks")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
        if self._http is not None:
            await self._http.aclose()
            self._http = None
