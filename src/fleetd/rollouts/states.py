"""The states of a rollout: the one list (tests/test_closed_lists.py checks every other place that names them)."""

from __future__ import annotations

import enum


class RolloutState(enum.StrEnum):
    SCHEDULED = "scheduled"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back"
    CANCELLED = "cancelled"


# The states a rollout can still leave; the others are where it ended.
ACTIVE = (RolloutState.SCHEDULED, RolloutState.RUNNING, RolloutState.PAUSED)
ENDED = tuple(s for s in RolloutState if s not in ACTIVE)
