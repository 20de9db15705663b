"""The WHERE clause of a list query whose filters are optional, built one condition at a time."""

from __future__ import annotations

from typing import Any


class Where:
    """Conditions ANDed together, and their parameters in order; a filter that is off adds nothing."""

    def __init__(self) -> None:
        self.conditions: list[str] = []
        self.args: list[Any] = []

    def add(self, condition: str, *args: Any) -> None:
        """AND ``condition``, whose ``?`` placeholders take ``args``."""
        self.conditions.append(condition)
        self.args.extend(args)

    def equal(self, column: str, value: Any) -> None:
        """AND ``column = value``, unless the filter is off (``value`` None or empty)."""
        if value is not None and value != "":
            self.add(f"{column} = ?", value)

    @property
    def sql(self) -> str:
        """`` WHERE ...``, or nothing when no filter is on."""
        return f" WHERE {' AND '.join(self.conditions)}" if self.conditions else ""
