"""RolloutService: staged rollouts with automatic rollback."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

import msgspec

from ..core.fields import Int32, page_limit
from ..http.rpc import Context, Service
from . import service as rollouts
from .service import Rollout, RolloutDevice, RolloutSpec
from .steps import Change

service = Service("RolloutService", "Staged rollouts: an artifact to a target in cumulative stages, each soaked "
                  "before the next; failures past a threshold halt the rollout and roll it back.")


async def _change(ctx: Context, fn: Callable[[sqlite3.Connection, float], Change]) -> Rollout:
    """Run a transition in one write transaction (the store passes its effects on), wake the orchestrator and
    answer the rollout as it is now."""
    now = time.time()
    change = await ctx.fleet.store.write(lambda c: fn(c, now))
    ctx.fleet.orchestrator.wake()
    return await ctx.fleet.store.read(lambda c: rollouts.get(c, change.rollout_id, time.time(),
                                                             last_seen=ctx.fleet.hub.last_seen))


@service.method(auth="operator")
async def CreateRollout(ctx: Context, req: RolloutSpec) -> Rollout:
    """Create a rollout; it starts at its start time (now by default), inside its maintenance window if it has one.
    The answer counts the devices of each stage (``stages[].targeted``), as the stages will take them."""
    return await _change(ctx, lambda c, now: rollouts.create(c, ctx.actor, req, now)[1])


class ListRolloutsRequest(msgspec.Struct, kw_only=True):
    # Only rollouts in this state.
    state: str = ""
    limit: Int32 = 100


class ListRolloutsResponse(msgspec.Struct, kw_only=True):
    rollouts: list[Rollout]


@service.method(auth="viewer", readonly=True)
async def ListRollouts(ctx: Context, req: ListRolloutsRequest) -> ListRolloutsResponse:
    """Rollouts, newest first (limit 1..1000); stage counts are left out (GetRollout has them)."""
    limit = page_limit(req.limit, 100, 1000)
    found = await ctx.fleet.store.read(lambda c: rollouts.list_rollouts(c, time.time(), req.state, limit))
    return ListRolloutsResponse(rollouts=found)


class RolloutRef(msgspec.Struct, kw_only=True):
    id: str


@service.method(auth="viewer", readonly=True)
async def GetRollout(ctx: Context, req: RolloutRef) -> Rollout:
    """One rollout with per-stage device counts, what it waits for, and the reason of a halt."""
    return await ctx.fleet.store.read(lambda c: rollouts.get(c, req.id, time.time(), last_seen=ctx.fleet.hub.last_seen))


class ListRolloutDevicesRequest(msgspec.Struct, kw_only=True):
    id: str
    # Only devices with this status: pending, queued, in_progress, soaking, succeeded, failed, skipped.
    status: str = ""
    limit: Int32 = 1000


class ListRolloutDevicesResponse(msgspec.Struct, kw_only=True):
    devices: list[RolloutDevice]
    total: int


@service.method(auth="viewer", readonly=True)
async def ListRolloutDevices(ctx: Context, req: ListRolloutDevicesRequest) -> ListRolloutDevicesResponse:
    """Each device's stage and status in a rollout, with why it failed or was skipped (limit 1..100000)."""
    limit = page_limit(req.limit, 1000, 100_000)
    found, total = await ctx.fleet.store.read(
        lambda c: rollouts.device_progress(c, req.id, time.time(), req.status, limit, ctx.fleet.hub.last_seen))
    return ListRolloutDevicesResponse(devices=found, total=total)


@service.method(auth="operator")
async def PauseRollout(ctx: Context, req: RolloutRef) -> Rollout:
    """Hold a rollout: no new stage and no new installs; a failure past the threshold still rolls it back."""
    return await _change(ctx, lambda c, now: rollouts.pause(c, ctx.actor, req.id, now))


@service.method(auth="operator")
async def ResumeRollout(ctx: Context, req: RolloutRef) -> Rollout:
    """Let a paused rollout go on."""
    return await _change(ctx, lambda c, now: rollouts.resume(c, ctx.actor, req.id, now))


@service.method(auth="operator")
async def CancelRollout(ctx: Context, req: RolloutRef) -> Rollout:
    """Stop a rollout: its unfinished installs are cancelled; devices that installed keep the new version."""
    return await _change(ctx, lambda c, now: rollouts.cancel(c, ctx.actor, req.id, now))


@service.method(auth="operator")
async def PromoteRollout(ctx: Context, req: RolloutRef) -> Rollout:
    """Start the next stage now, without waiting for the soak, the start time or the window."""
    return await _change(ctx, lambda c, now: rollouts.promote(c, ctx.actor, req.id, now, ctx.fleet.hub.last_seen))


class RollbackRolloutRequest(msgspec.Struct, kw_only=True):
    id: str
    # Why, for the audit log and the rollout's reason.
    reason: str = ""


@service.method(auth="operator")
async def RollbackRollout(ctx: Context, req: RollbackRolloutRequest) -> Rollout:
    """Roll back by hand: unfinished installs are cancelled and every device running the new version goes back."""
    reason = req.reason.strip()[:500]
    return await _change(ctx, lambda c, now: rollouts.rollback(c, ctx.actor, req.id, now, reason,
                                                               ctx.fleet.hub.last_seen))
