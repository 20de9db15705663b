"""AuditService: read the audit log."""

from __future__ import annotations

import datetime as dt

import msgspec

from ..core.errors import InvalidArgument
from ..core.fields import Int32, Int64, page_limit
from ..http.rpc import Context, Service
from . import audit
from .audit import AuditEntry

service = Service("AuditService", "The audit log of admin actions and security events.")


class ListAuditRequest(msgspec.Struct, kw_only=True):
    # The entry's type or its beginning, e.g. "user." or "auth.login"; several, comma-separated:
    # "artifact.,token.create". A beginning no type has is an error that lists them.
    action: str = ""
    # Actor id or name: a user, an API key, a device, or fleetd. One that never acted is an error.
    actor: str = ""
    target: str = ""
    # ok, denied or failed.
    outcome: str = ""
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    # Page backwards: entries with an id below this.
    before_id: Int64 = 0
    limit: Int32 = 100


class ListAuditResponse(msgspec.Struct, kw_only=True):
    entries: list[AuditEntry]
    # Pass as before_id to get the next (older) page; 0 when there is none.
    next_before_id: int = 0


@service.method(auth="operator", readonly=True)
async def List(ctx: Context, req: ListAuditRequest) -> ListAuditResponse:
    """Entries newest first, filtered; at most ``limit`` (1..1000)."""
    req.limit = page_limit(req.limit, 100, 1000)
    if req.outcome and req.outcome not in ("ok", "denied", "failed"):
        raise InvalidArgument("outcome must be ok, denied or failed")
    entries = await ctx.fleet.store.read(lambda c: audit.query(
        c, action=req.action or None, actor=req.actor or None, target=req.target or None,
        outcome=req.outcome or None, since=req.since.timestamp() if req.since else None,
        until=req.until.timestamp() if req.until else None, before_id=req.before_id or None,
        limit=req.limit))
    next_id = entries[-1].id if len(entries) == req.limit else 0
    return ListAuditResponse(entries=entries, next_before_id=next_id)
