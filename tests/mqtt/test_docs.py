"""docs/mqtt.md shows the ACL that broker-config writes, line for line."""

from __future__ import annotations

from pathlib import Path

from fleetd.mqtt.broker_config import acl_text

DOC = Path(__file__).resolve().parents[2] / "docs" / "mqtt.md"


def test_the_documented_acl_is_the_written_one() -> None:
    written = [line for line in acl_text().splitlines() if line and not line.startswith("#")]
    text = DOC.read_text()
    block = text[text.index("and the ACL file"):]
    block = block[block.index("```\n") + 4:]
    documented = [line for line in block[:block.index("```")].splitlines() if line]
    assert documented == written
