"""``python -m fleet_agent``: the same as the ``fleet-agent`` command."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
