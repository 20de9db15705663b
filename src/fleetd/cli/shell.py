"""fleetd devices shell: a terminal on a device through its remote-access channel (docs/remote-access.md).

Asks the server for a session (POST /v1/remote/sessions), then opens its WebSocket and sends the single-use token
first. With a terminal on stdin it goes raw and forwards window size changes (SIGWINCH); otherwise stdin is
forwarded as it comes and its end is sent as ^D, again each time the remote side wrote something and then went
quiet (:data:`EOF_AGAIN_SECONDS`): a ^D that reaches the pty before a shell's line editor set it up becomes a NUL
there, not an end of input, so one ^D alone would leave ``fleetd devices shell ID < /dev/null`` at its prompt
until it idled out. The remote exit status becomes the command's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import sys
import threading
from typing import Annotated, Any

import msgspec
import typer

from .client import Client, RemoteError, ssl_context
from .common import ApiKeyOpt, CaOpt, ServerOpt, errors_reported, remote
from .devices import ADMIN, DeviceArg
from .output import fail

CommandArg = Annotated[list[str] | None, typer.Argument(
    help="A command to run instead of a login shell (after --: fleetd devices shell ID -- uptime).",
    show_default=False)]
# Exit status when the session ended without the remote one (channel lost, idle, refused mid-way): as ssh's 255.
LOST = 255
# Without a terminal: after stdin ended, the remote side's output followed by this much quiet gets another ^D.
EOF_AGAIN_SECONDS = 0.3


def request_session(client: Client, device_id: str, cols: int = 80, rows: int = 24, command: str | None = None,
                    kind: str = "terminal", options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A session grant (POST /v1/remote/sessions): its token, and where its WebSocket is."""
    import httpx

    body = {"device_id": device_id, "kind": kind, "cols": cols, "rows": rows, "command": command,
            "options": options or {}}
    try:
        r = client.http.post("/v1/remote/sessions", content=msgspec.json.encode(body),
                             headers={"Content-Type": "application/json"})
    except httpx.HTTPError as e:
        raise RemoteError("unavailable", f"cannot reach {client.server}: {e}", 503) from None
    if r.status_code in (404, 405):
        raise RemoteError("failed_precondition", f"{client.server} has remote access off", r.status_code,
                          "Start the server with remote_access = true in fleetd.toml (or FLEETD_REMOTE_ACCESS=true); "
                          "see docs/remote-access.md")
    if r.status_code != 200:
        try:
            err = r.json()
        except ValueError:
            raise RemoteError("unknown", f"HTTP {r.status_code}: {r.text[:200]}", r.status_code) from None
        raise RemoteError(err.get("code", "unknown"), err.get("message", r.text), r.status_code)
    return dict(r.json())


def devices_shell(device: DeviceArg, command: CommandArg = None, server: ServerOpt = None, api_key: ApiKeyOpt = None,
                  ca: CaOpt = None) -> None:
    """Open a terminal on a device (its agent must have remote access on), or run one command there. Exits with
    the remote exit status."""
    interactive = sys.stdin.isatty()
    cols, rows = _size()
    with errors_reported(), remote(server, api_key, ca) as client:
        dev = client.call(ADMIN, "GetDevice", {"id": device})
        grant = request_session(client, dev["id"], cols, rows, " ".join(command) if command else None)
        url, tls = session_target(client, grant)
    status = asyncio.run(_session(url, grant["token"], tls, interactive))
    raise typer.Exit(status)


def session_target(client: Client, grant: dict[str, Any]) -> tuple[str, ssl.SSLContext | None]:
    """The session's WebSocket URL, and the TLS context that trusts the server (as the client's calls do)."""
    url = client.server.replace("https://", "wss://", 1).replace("http://", "ws://", 1) + grant["path"]
    tls = ssl_context(client.ca_file) if url.startswith("wss:") else None
    return url, tls if isinstance(tls, ssl.SSLContext) else None


async def open_session(url: str, token: str, tls: ssl.SSLContext | None) -> tuple[Any, dict[str, Any]]:
    """The session's WebSocket, its token sent, and the server's first answer ({"opened": ...}); fails with the
    server's words when the session did not open."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    try:
        ws = await connect(url, ssl=tls, max_size=1 << 20, open_timeout=15)
    except (OSError, InvalidStatus) as e:
        fail(f"cannot open the session's WebSocket at {url}: {e}")
    try:
        await ws.send(msgspec.json.encode({"token": token}).decode())
        first = msgspec.json.decode(await ws.recv())
    except ConnectionClosed as e:
        fail(f"the server closed the session before it opened: {e}")
    if "error" in first:
        await ws.close()
        fail(f"{first['error']} [{first.get('code', '')}]")
    return ws, dict(first)


def _size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stdin.fileno())
        return size.columns, size.lines
    except OSError:
        return 80, 24


async def _session(url: str, token: str, tls: ssl.SSLContext | None, interactive: bool) -> int:
    from websockets.exceptions import ConnectionClosed

    ws, _ = await open_session(url, token, tls)
    async with ws:
        loop = asyncio.get_running_loop()
        stdin = sys.stdin.fileno()
        outgoing: asyncio.Queue[str | bytes] = asyncio.Queue()  # one sender keeps keystrokes in order

        async def sender() -> None:
            while True:
                await ws.send(await outgoing.get())

        sending = asyncio.create_task(sender())
        stdin_ended = False
        last_output = 0.0  # when the remote side last wrote (loop time); 0: not since the last ^D

        async def end_of_input_again() -> None:
            nonlocal last_output
            while True:
                await asyncio.sleep(EOF_AGAIN_SECONDS / 3)
                if stdin_ended and last_output and loop.time() - last_output >= EOF_AGAIN_SECONDS:
                    last_output = 0.0
                    outgoing.put_nowait(b"\x04")

        eof_again = None if interactive else asyncio.create_task(end_of_input_again())
        saved = None
        if interactive:
            import termios
            import tty

            saved = termios.tcgetattr(stdin)
            tty.setraw(stdin)

            def resized() -> None:
                cols, rows = _size()
                outgoing.put_nowait(msgspec.json.encode({"resize": [cols, rows]}).decode())

            loop.add_signal_handler(signal.SIGWINCH, resized)

        def chunk() -> bytes:  # b"": the end of stdin
            try:
                return os.read(stdin, 16384)
            except OSError:
                return b""

        def ended() -> None:  # sent as ^D, the pty's end of input (a ^D typed on a terminal goes as it is)
            nonlocal stdin_ended, last_output
            stdin_ended, last_output = True, 0.0
            outgoing.put_nowait(b"\x04")

        def readable() -> None:
            if data := chunk():
                outgoing.put_nowait(data)
            else:
                loop.remove_reader(stdin)
                ended()

        def pump() -> None:  # a file or /dev/null, which no selector takes: a thread reads it
            while data := chunk():
                loop.call_soon_threadsafe(outgoing.put_nowait, data)
            loop.call_soon_threadsafe(ended)

        try:
            loop.add_reader(stdin, readable)
        except PermissionError:
            threading.Thread(target=pump, daemon=True).start()
        out = sys.stdout.buffer
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    out.write(message)
                    out.flush()
                    last_output = loop.time()
                    continue
                ctl = msgspec.json.decode(message)
                if "exit" in ctl:
                    return int(ctl["exit"]) & 0xFF if ctl["exit"] >= 0 else 128 - int(ctl["exit"])
                if "closed" in ctl:
                    _restore(stdin, saved)
                    print(f"\r\nfleetd: the session ended: {ctl['closed']}", file=sys.stderr)
                    return LOST
            return LOST
        except ConnectionClosed as e:
            _restore(stdin, saved)
            print(f"\r\nfleetd: the connection to the server closed: {e}", file=sys.stderr)
            return LOST
        finally:
            sending.cancel()
            if eof_again is not None:
                eof_again.cancel()
            with contextlib.suppress(Exception):
                loop.remove_reader(stdin)
            _restore(stdin, saved)


def _restore(fd: int, saved: Any) -> None:
    if saved is not None:
        import termios

        with contextlib.suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
