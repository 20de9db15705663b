"""The mqtt package's SQL: the telemetry batches already stored, by device and batch id (docs/mqtt.md)."""

from __future__ import annotations

import sqlite3


def claim_batch(conn: sqlite3.Connection, device_id: str, batch_id: str, at: float) -> bool:
    """Record the batch as stored; False when it already was (a redelivery)."""
    return conn.execute("INSERT INTO mqtt_batches (device_id, batch_id, received_at) VALUES (?, ?, ?) "
                        "ON CONFLICT DO NOTHING", (device_id, batch_id, at)).rowcount == 1


def release_batch(conn: sqlite3.Connection, device_id: str, batch_id: str) -> None:
    """Forget a claimed batch whose points could not be stored, so that its redelivery is stored."""
    conn.execute("DELETE FROM mqtt_batches WHERE device_id = ? AND batch_id = ?", (device_id, batch_id))


def forget_batches(conn: sqlite3.Connection, before: float) -> int:
    return int(conn.execute("DELETE FROM mqtt_batches WHERE received_at < ?", (before,)).rowcount)
