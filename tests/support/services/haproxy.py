"""haproxy (Debian's, /usr/sbin/haproxy) on a free loopback port, spreading TCP connections over backends."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from ._process import Service, ServiceError, accepts, free_port

BINARY_PATHS = ("/usr/sbin/haproxy",)


def haproxy_binary() -> Path:
    found = shutil.which("haproxy") or next((p for p in BINARY_PATHS if Path(p).exists()), None)
    if not found:
        raise ServiceError("no haproxy: install Debian's (apt-get install haproxy; .ci/run does) and run the "
                           "tests again.")
    return Path(found)


class HAProxy(Service):
    """``with HAProxy(["127.0.0.1:8421", "127.0.0.1:8422"]) as lb:`` listens on ``lb.port`` and passes each
    connection, round-robin, to a backend that is up: ``mode tcp``, so fleetd's own TLS goes through untouched.

    With ``health_path`` (e.g. ``/healthz``) haproxy checks every backend with that HTTP GET every
    ``check_interval_ms`` and takes one out after two failed checks in a row (back in after one good one: a
    check is failed by a refused connection, another status than 200, or 2 s without an answer); ``check_tls``
    makes the check speak TLS (without verifying the certificate, as fleetd's is self-signed). Without
    ``health_path`` the check is a TCP connect. ``lb.states()`` reads what haproxy thinks of each backend.
    """

    name = "haproxy"

    def __init__(self, backends: list[str], *, health_path: str | None = "/healthz", check_tls: bool = False,
                 check_interval_ms: int = 200, config: str | None = None) -> None:
        """``config``: a whole haproxy configuration to run instead of the one made here (e.g. docs/scaling.md's):
        its ``bind`` line is pointed at ``self.address``, its ``server`` lines at ``backends`` (named r0, r1, ...
        in order), and an admin socket is added to its ``global`` section."""
        if not backends:
            raise ValueError("HAProxy needs at least one backend host:port")
        super().__init__()
        self.given_config = config
        self.backends = list(backends)
        self.health_path = health_path
        self.check_tls = check_tls
        self.check_interval_ms = check_interval_ms
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"

    @property
    def stats_socket(self) -> Path:
        return self.dir / "admin.sock"

    @property
    def config_path(self) -> Path:
        return self.dir / "haproxy.cfg"

    def config(self) -> str:
        if self.given_config is not None:
            return self._adapted(self.given_config)
        check = (f"check inter {self.check_interval_ms}ms fall 2 rise 1"
                 + (" check-ssl verify none" if self.check_tls else ""))
        servers = "".join(f"    server r{i} {b} {check}\n" for i, b in enumerate(self.backends))
        http_check = (f"    option httpchk GET {self.health_path}\n    http-check expect status 200\n"
                      if self.health_path else "")
        return (
            "global\n"
            f"    stats socket {self.stats_socket} mode 600 level admin\n"
            "    maxconn 512\n"
            "defaults\n"
            "    mode tcp\n"
            "    timeout connect 2s\n"
            "    timeout check 2s\n"
            "    timeout client 60s\n"
            "    timeout server 60s\n"
            "frontend fleetd\n"
            f"    bind {self.address}\n"
            "    default_backend replicas\n"
            "backend replicas\n"
            "    balance roundrobin\n"
            f"{http_check}{servers}"
        )

    def _adapted(self, text: str) -> str:
        out, servers = [], iter(enumerate(self.backends))
        for line in text.splitlines():
            word = line.split()[0] if line.split() else ""
            indent = line[:len(line) - len(line.lstrip())]
            if word == "bind":
                line = f"{indent}bind {self.address}"
            elif word == "server":
                i, backend = next(servers, (None, None))
                if backend is None:
                    continue  # more server lines than backends
                line = f"{indent}server r{i} {backend} " + " ".join(line.split()[3:])
            out.append(line)
            if line.strip() == "global":
                out.append(f"    stats socket {self.stats_socket} mode 600 level admin")
        left = list(servers)
        if left:
            raise ValueError(f"the configuration has fewer server lines than backends ({len(left)} left over)")
        return "\n".join(out) + "\n"

    def _start(self) -> None:
        binary = str(haproxy_binary())
        self.config_path.write_text(self.config())
        self._run([binary, "-c", "-f", str(self.config_path)], "haproxy -c (config check)")
        self._spawn([binary, "-db", "-f", str(self.config_path)])  # -db: foreground, no daemon
        self._wait(lambda: accepts(self.port) and self.stats_socket.exists(), 15, "listening")

    def command(self, line: str) -> str:
        """One command on haproxy's admin socket (e.g. ``show stat``), its answer."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.stats_socket))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def states(self) -> dict[str, str]:
        """Each backend's ``host:port`` -> ``UP``, ``DOWN`` (or haproxy's other states, e.g. ``MAINT``)."""
        rows = [line.split(",") for line in self.command("show stat").splitlines() if line.startswith("replicas,")]
        by_name = {f"r{i}": b for i, b in enumerate(self.backends)}
        return {by_name[r[1]]: r[17].split()[0] for r in rows if r[1] in by_name}
