"""The servers under test, each a real process on a free loopback port: fleetd, the hello baseline, nginx."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..e2e.server import fleetd_cmd, free_port
from .procs import REPO, find_tool


@dataclass
class Service:
    """A server process the benchmark started, and so may stop."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _wait_until_up(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    """Poll ``url`` (certificate unchecked: only reachability matters here) until it answers."""
    import httpx
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(map(str, proc.args))} exited with {proc.returncode}:\n"  # type: ignore[arg-type]
                               f"{log.read_text()[-4000:]}")
        try:
            httpx.get(url, verify=False, timeout=2)
            return
        except (httpx.HTTPError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s:\n{log.read_text()[-4000:]}")


def _start(name: str, cmd: list[str], url: str, log: Path, probe: str = "/", timeout: float = 120,
           env: dict[str, str] | None = None) -> Service:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, **env} if env else None)
    service = Service(name, proc, url, log)
    try:
        _wait_until_up(url + probe, proc, log, timeout)
    except BaseException:
        service.stop()
        raise
    return service


def start_fleetd(data_dir: Path, logs: Path, log_name: str = "fleetd", env: dict[str, str] | None = None) -> Service:
    """`fleetd serve` as a user runs it (HTTPS), without mDNS, logging warnings only; ``env`` adds settings
    (FLEETD_*)."""
    port = free_port()
    cmd = [*fleetd_cmd(), "serve", "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", str(port),
           "--no-mdns", "--log-level", "warning"]
    return _start("fleetd", cmd, f"https://127.0.0.1:{port}", logs / f"{log_name}.log", "/healthz", env=env)


def start_hello(data_dir: Path, logs: Path) -> Service:
    """The baseline: Litestar hello world on uvicorn with the data dir's certificate and key."""
    port = free_port()
    cmd = [sys.executable, "-m", "tests.bench.hello_app", "--port", str(port),
           "--cert", str(data_dir / "server.pem"), "--key", str(data_dir / "server.key")]
    return _start("hello", cmd, f"https://127.0.0.1:{port}", logs / "hello.log")


NGINX_CONF = """\
# Written by tests/bench: Debian's nginx serving one file, as the download baseline.
{user}worker_processes 1;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    default_type application/octet-stream;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    server {{
        listen 127.0.0.1:{https_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location = /blob {{ alias {file}; }}
    }}
    server {{
        listen 127.0.0.1:{http_port};
        location = /blob {{ alias {file}; }}
        location = /up {{ return 204; }}
    }}
}}
"""


def start_nginx(data_dir: Path, file: Path, logs: Path) -> tuple[Service, str, str]:
    """nginx (one worker, like fleetd's one process) serving ``file`` → (service, https URL, http URL).

    HTTPS uses the data dir's server.pem/server.key; plain HTTP is there for reference (sendfile).
    """
    nginx = find_tool("nginx")
    if nginx is None:
        raise RuntimeError("nginx is not installed")
    prefix = logs / "nginx"
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    https_port, http_port = free_port(), free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(
        # As root, nginx's workers would drop to "nobody", who may not read the 0700 data dir.
        user="user root;\n" if os.geteuid() == 0 else "", prefix=prefix, https_port=https_port,
        http_port=http_port, cert=data_dir / "server.pem", key=data_dir / "server.key", file=file))
    cmd = [nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    svc = _start("nginx", cmd, f"http://127.0.0.1:{http_port}", logs / "nginx.log", "/up")
    return svc, f"https://127.0.0.1:{https_port}/blob", f"http://127.0.0.1:{http_port}/blob"
