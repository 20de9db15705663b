"""The byte flow every remote-access session shares (docs/remote-access.md): a terminal's pty, a command's pipes, a
forwarded connection.

Output is read from ``out_fd`` only while the server's window has room (``credit``, raised by its WINDOW frames) and
goes to the server as DATA; the server's DATA is written to ``in_fd``, and every byte the descriptor took is granted
back with a WINDOW frame. Loaded with the first session (remote_terminal.py, remote_streams.py), never at idle.
"""

from __future__ import annotations

import asyncio
import os

from .remote import CREDIT, DATA, READ_CHUNK, WINDOW, WINDOW_BYTES, Send, pack, spawn


class Flow:
    """One session's two directions over non-blocking descriptors, within the server's window."""

    def __init__(self, sid: int, send: Send, loop: asyncio.AbstractEventLoop) -> None:
        self.sid, self.send, self.loop = sid, send, loop
        self.out_fd: int | None = None  # None: no output (or it ended)
        self.in_fd: int | None = None  # None: no input (or it was closed)
        self.credit = WINDOW_BYTES
        self.pending = b""  # input the descriptor did not take yet
        self.reading = False
        self.closed = False

    # --- output ----------------------------------------------------------------------------------------------
    def _read_on(self) -> None:
        if not self.reading and not self.closed and self.out_fd is not None and self.credit > 0:
            self.loop.add_reader(self.out_fd, self._readable)
            self.reading = True

    def _read_off(self) -> None:
        if self.reading and self.out_fd is not None:
            self.loop.remove_reader(self.out_fd)
        self.reading = False

    def _readable(self) -> None:
        assert self.out_fd is not None
        try:
            data = os.read(self.out_fd, min(READ_CHUNK, self.credit))
        except BlockingIOError:
            return
        except OSError:  # EIO (every writer of a pty is gone), a reset connection: the output's end
            data = b""
        if not data:
            self._read_off()
            self.out_fd = None
            self.output_ended()
            return
        self.credit -= len(data)
        if self.credit <= 0:
            self._read_off()
        spawn(self.loop, self.send(pack(self.sid, DATA, data)))

    def granted(self, n: int) -> None:
        """The server's WINDOW frame: ``n`` more bytes may go."""
        self.credit += n
        self._read_on()

    # --- input -----------------------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """The server's DATA frame: written as the descriptor takes it, the rest kept in order."""
        if self.closed:
            return
        self.pending += data
        self._writable()

    def _writable(self) -> None:
        if self.in_fd is None or self.closed:
            return
        if self.pending:
            try:
                n = os.write(self.in_fd, self.pending)
            except BlockingIOError:
                n = 0
            except OSError:  # the reader is gone: what it did not take is dropped; the session ends on its own
                n = len(self.pending)
            self.pending = self.pending[n:]
            if n:
                spawn(self.loop, self.send(pack(self.sid, WINDOW, CREDIT.pack(n))))
        if self.pending:
            self.loop.add_writer(self.in_fd, self._writable)
            return
        self.loop.remove_writer(self.in_fd)
        self.input_drained()

    def resize(self, cols: int, rows: int) -> None:
        """The server's RESIZE frame: only terminals have a size."""

    # --- what a kind does at its ends ------------------------------------------------------------------------
    def output_ended(self) -> None:
        """``out_fd`` reached its end (it is no longer read)."""

    def input_drained(self) -> None:
        """Everything the server sent so far was written."""


__all__ = ["Flow"]
