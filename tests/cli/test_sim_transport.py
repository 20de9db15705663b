"""The simulator's connection pool (cli/sim_transport.py) against a scripted HTTP/1.1 peer on loopback.

The fleetd server always answers with Content-Length on a kept-alive connection (tests/e2e/test_simulate.py
covers that path); these answers are the other framings a server may use, and the races it may cause.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
import pytest

from fleetd.cli import sim_transport
from fleetd.cli.sim_transport import PooledTransport, client_on, make_transport

T = TypeVar("T")
CLOSE = b""  # in a script: close the connection without answering

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def serve(script: list[list[bytes]], scenario: Callable[[str, PooledTransport, httpx.AsyncClient], Awaitable[T]],
          ) -> tuple[T, list[bytes]]:
    """Run ``scenario`` against a peer answering the n-th connection's requests with ``script[n]``.

    Returns the scenario's result and every request head the peer received.
    """
    heads: list[bytes] = []
    conns = iter(script)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in next(conns):
            heads.append(await reader.readuntil(b"\r\n\r\n"))
            if answer is CLOSE:
                break
            writer.write(answer)
            await writer.drain()
        writer.close()

    async def main() -> T:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport = make_transport(f"http://127.0.0.1:{port}", None, 1)
        try:
            async with client_on(transport) as http:
                return await scenario(f"http://127.0.0.1:{port}", transport, http)
        finally:
            server.close()

    return asyncio.run(main()), heads


def test_chunked_body_with_trailers_then_the_connection_is_reused() -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n")

    async def scenario(url: str, pool: PooledTransport, http: httpx.AsyncClient) -> tuple[str, str, int]:
        first = await http.get(url + "/a?x=1")
        second = await http.get(url + "/b")
        return first.text, second.text, pool.opened

    (first, second, opened), heads = serve([[chunked, OK]], scenario)
    assert (first, second, opened) == ("hello world", "ok", 1)
    assert heads[0].startswith(b"GET /a?x=1 HTTP/1.1\r\n") and b"\r\nhost: 127.0.0.1:" in heads[0].lower()


def test_a_body_delimited_by_close_is_read_whole_and_its_connection_not_reused() -> None:
    async def scenario(url: str, pool: PooledTransport, http: httpx.AsyncClient) -> tuple[str, str, int]:
        first = await http.get(url + "/a")
        second = await http.get(url + "/b")
        return first.text, second.text, pool.opened

    (first, second, opened), _ = serve([[b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"], [OK]],
                                       scenario)
    assert (first, second, opened) == ("until the end", "ok", 2)


def test_a_kept_alive_connection_closed_before_the_answer_is_retried_once_on_a_fresh_one() -> None:
    async def scenario(url: str, pool: PooledTransport, http: httpx.AsyncClient) -> tuple[str, str, int]:
        first = await http.get(url + "/a")
        second = await http.get(url + "/b")  # the peer closes the kept-alive connection instead
        return first.text, second.text, pool.opened

    (first, second, opened), heads = serve([[OK, CLOSE], [OK]], scenario)
    assert (first, second, opened) == ("ok", "ok", 2)
    assert [h.split(b" ")[1] for h in heads] == [b"/a", b"/b", b"/b"]


def test_a_fresh_connection_closed_before_the_answer_is_an_error_not_a_retry() -> None:
    async def scenario(url: str, pool: PooledTransport, http: httpx.AsyncClient) -> int:
        with pytest.raises(httpx.RemoteProtocolError, match="closed the connection without answering"):
            await http.get(url + "/a")
        return pool.opened

    opened, _ = serve([[CLOSE]], scenario)
    assert opened == 1


def test_a_malformed_answer_is_a_protocol_error_and_frees_the_connection_slot() -> None:
    async def scenario(url: str, pool: PooledTransport, http: httpx.AsyncClient) -> tuple[str, int]:
        with pytest.raises(httpx.RemoteProtocolError, match=r"not valid HTTP/1\.1"):
            await http.get(url + "/a")
        return (await http.get(url + "/b")).text, pool.opened  # a pool of one: the slot came back

    (text, opened), _ = serve([[b"HTTP/1.1 two hundred\r\n\r\n"], [OK]], scenario)
    assert (text, opened) == ("ok", 2)


def test_a_large_body_is_streamed_and_abandoning_it_closes_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sim_transport, "EAGER_BODY", 4)
    big = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789"

    async def scenario(url: str, pool: PooledTransport, http: httpx.AsyncClient) -> tuple[bytes, bytes, str, int]:
        whole = (await http.get(url + "/a")).content  # read to the end: the connection goes on
        async with http.stream("GET", url + "/b") as r:
            part = await anext(r.aiter_raw())  # half was sent: read eagerly, an error
        return whole, part, (await http.get(url + "/c")).text, pool.opened

    (whole, part, text, opened), _ = serve([[big, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234"], [OK]],
                                           scenario)
    assert (whole, part, text, opened) == (b"0123456789", b"01234", "ok", 2)
