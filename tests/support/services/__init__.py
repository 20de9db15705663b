"""Real services on loopback for tests: PostgreSQL, an S3-compatible store (SeaweedFS), haproxy and mosquitto.

Each is a context manager that starts the service on free loopback ports in its own temp dir, waits until it
answers, and always stops it and removes the dir. tests/conftest.py wraps them in fixtures: one server per
session, a fresh database or bucket per test. docs/testing.md says how to use them.
"""

from ._process import ServiceError, free_port, free_ports
from .haproxy import HAProxy
from .mosquitto import Mosquitto
from .postgres import PostgresServer
from .s3 import Bucket, S3Server

__all__ = ["Bucket", "HAProxy", "Mosquitto", "PostgresServer", "S3Server", "ServiceError", "free_port", "free_ports"]
