"""An MQTT broker (Debian's mosquitto) on a free loopback port, for issue 19's MQTT transport."""

from __future__ import annotations

import contextlib
import getpass
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from ._process import Service, ServiceError, accepts, free_port

BINARY_PATHS = ("/usr/sbin/mosquitto",)


def mosquitto_binary() -> Path:
    found = shutil.which("mosquitto") or next((p for p in BINARY_PATHS if Path(p).exists()), None)
    if not found:
        raise ServiceError("no mosquitto: install Debian's (apt-get install mosquitto mosquitto-clients; .ci/run "
                           "does) and run the tests again.")
    return Path(found)


class Mosquitto(Service):
    """``with Mosquitto() as broker:`` listens on ``broker.port`` (127.0.0.1) with persistence in its temp dir.

    ``settings`` is the rest of the configuration, after the harness's ``listener`` line (default: anonymous
    clients allowed; pass e.g. fleetd's generated TLS, certificate and ACL settings instead). ``restart()`` stops
    and starts the broker on the same port and data, so persistent sessions and retained messages survive it.
    """

    name = "mosquitto"

    def __init__(self, settings: str = "allow_anonymous true\n",
                 config: Callable[[Path, int], str] | None = None) -> None:
        """``config``: the whole configuration instead, as ``config(dir, port)`` returns it (called once, at the
        first start), e.g. ``fleetd mqtt broker-config --dir DIR --listen 127.0.0.1:PORT``'s output as printed."""
        super().__init__()
        self.settings = settings
        self._make_config = config
        self._config_text: str | None = None
        self.port = free_port()
        self.host = "127.0.0.1"

    @property
    def config_path(self) -> Path:
        return self.dir / "mosquitto.conf"

    def config(self) -> str:
        if self._make_config is not None:
            if self._config_text is None:
                self._config_text = self._make_config(self.dir, self.port)
            return self._config_text
        # As root mosquitto would switch to the `mosquitto` user, who cannot read the tests' files: stay who we are.
        return (f"user {getpass.getuser()}\n"
                f"persistence true\npersistence_location {self.dir}/\n"
                "log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n"
                f"listener {self.port} {self.host}\n{self.settings}")

    def _start(self) -> None:
        self.config_path.write_text(self.config())
        self._spawn([str(mosquitto_binary()), "-c", str(self.config_path)])
        # Listening is the signal (not an MQTT CONNECT: with TLS settings the listener wants a handshake first).
        self._wait(lambda: accepts(self.port, self.host), 15, "listening")

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """The broker stopped for the ``with`` block (it saves its state on the way out), then started again on the
        same port and dir: clients see it unreachable meanwhile."""
        self._stop_process()
        try:
            yield
        finally:
            self._start()

    def restart(self) -> None:
        """Stop the broker (it saves its state on the way out) and start it again on the same port and dir."""
        self._stop_process()
        self._start()
