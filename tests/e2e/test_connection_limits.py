"""Slowloris: connections that never finish their request head cannot lock other clients out."""

from __future__ import annotations

import http.client
import re
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from fleetd.http.limits import MAX_HEAD_BYTES

from .server import ServerProcess

pytestmark = pytest.mark.e2e
CAP = 20
# Fewer files than slow connections: without the guard the server runs out of descriptors and stops
# accepting, as 1,000 connections did under the default limit of 1,024.
MAX_OPEN_FILES = 256
SLOW = 300
PARTIAL_HEAD = b"GET /healthz HTTP/1.1\r\nHost: fleetd\r\nX-Slow: "


@contextmanager
def slow_connections(server: ServerProcess, n: int) -> Iterator[list[socket.socket]]:
    with ExitStack() as stack:
        socks = []
        for _ in range(n):
            s = stack.enter_context(socket.create_connection((server.host, server.port), timeout=30))
            s.sendall(PARTIAL_HEAD)
            socks.append(s)
        yield socks


def closed_by_server(s: socket.socket) -> bool:
    try:
        return s.recv(1024) == b""
    except ConnectionResetError:
        return True


def test_unfinished_heads_are_capped_and_spare_established_connections(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", tls=False, max_open_files=MAX_OPEN_FILES,
                           env={"FLEETD_MAX_UNFINISHED_REQUESTS": str(CAP),
                                "FLEETD_REQUEST_HEAD_TIMEOUT": "3600"}).start()
    try:
        keep_alive = http.client.HTTPConnection(server.host, server.port, timeout=30)
        keep_alive.request("GET", "/healthz")
        assert keep_alive.getresponse().read()  # now idle between requests: not an unfinished request
        # A request whose head is complete (its body is still coming) is established: never closed as slow.
        established = socket.create_connection((server.host, server.port), timeout=30)
        established.sendall(b"POST /fleetd.v1.UserService/Login HTTP/1.1\r\nHost: fleetd\r\n"
                            b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{")
        with slow_connections(server, SLOW) as slow:
            with server.client(timeout=30) as c:
                assert c.get("/healthz").status_code == 200
            assert closed_by_server(slow[0])  # the oldest unfinished one made room
            with server.client(server.create_key("viewer")) as c:
                metrics = c.get("/metrics").text
            assert re.search(r"^fleetd_http_closed_over_cap_total [1-9]", metrics, re.M), metrics
            established.sendall(b"}")
            assert established.recv(1024).startswith(b"HTTP/1.1 ")
            keep_alive.request("GET", "/healthz")
            assert keep_alive.getresponse().status == 200
        established.close()
        keep_alive.close()
    finally:
        server.stop()


def test_a_request_head_not_finished_in_time_is_closed(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", tls=False, env={"FLEETD_REQUEST_HEAD_TIMEOUT": "0.5"}).start()
    try:
        with socket.create_connection((server.host, server.port), timeout=30) as silent, \
                slow_connections(server, 1) as (partial,):
            assert closed_by_server(partial)
            assert closed_by_server(silent)  # it sent nothing at all
    finally:
        server.stop()


def test_a_huge_request_head_is_refused(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data", tls=False).start()
    try:
        with socket.create_connection((server.host, server.port), timeout=30) as s:
            s.sendall(PARTIAL_HEAD + b"x" * MAX_HEAD_BYTES)
            assert s.recv(1024).startswith(b"HTTP/1.1 431 ")
    finally:
        server.stop()
