"""A real `fleetd serve` process on a free loopback port, driven over HTTPS."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fleetd_cmd() -> list[str]:
    """How to run fleetd: $FLEETD_BIN (e.g. the PyInstaller binary) or this interpreter."""
    binary = os.environ.get("FLEETD_BIN")
    return [binary] if binary else [sys.executable, "-m", "fleetd"]


def run_cli(*args: str, check: bool = True, env: dict[str, str] | None = None,
            input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run([*fleetd_cmd(), *args], capture_output=True, text=True, env=e, input=input,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"fleetd {' '.join(args)} exited {p.returncode}\nstdout:{p.stdout}\nstderr:{p.stderr}")
    return p


class ServerProcess:
    def __init__(self, data_dir: Path, *, tls: bool = True, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None, mdns: bool = False, host: str = "127.0.0.1",
                 max_open_files: int | None = None, database: str = "") -> None:
        """``database``: a PostgreSQL DSN (``--database``, and FLEETD_DATABASE for the offline commands on the
        data dir: :meth:`create_key`); empty: the data dir's SQLite file."""
        self.data_dir = data_dir
        self.database = database
        self.tls = tls
        self.mdns = mdns
        self.host = host
        self.port = free_port()
        self.extra_args = extra_args or []
        self.env = env or {}
        self.max_open_files = max_open_files
        self.proc: subprocess.Popen[str] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"
        self.stdout_first = ""

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def ca(self) -> str:
        return str(self.data_dir / "ca.pem")

    def start(self, timeout: float = 30) -> ServerProcess:
        args = [*fleetd_cmd(), "serve", "--data-dir", str(self.data_dir), "--host", self.host,
                "--port", str(self.port), *([] if self.mdns else ["--no-mdns"]), *self.extra_args]
        if not self.tls:
            args.append("--no-tls")
        if self.database:
            args += ["--database", self.database]
        env = dict(os.environ, **self.env)
        self._log = open(self.log_path, "a")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, text=True, env=env,
                                     preexec_fn=self._limit_files if self.max_open_files else None)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"fleetd exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with self.client() as c:
                    if c.get("/healthz", timeout=2).status_code == 200:
                        return self
            except (httpx.HTTPError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"fleetd did not become healthy in {timeout}s:\n{self.log()}")

    def _limit_files(self) -> None:
        import resource
        assert self.max_open_files
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.max_open_files, self.max_open_files))

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def client(self, api_key: str | None = None, **kw: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        verify: Any = self.ca if self.tls else False
        if self.tls:
            import ssl
            verify = ssl.create_default_context(cafile=self.ca)
        return httpx.Client(base_url=self.url, verify=verify, headers=headers, **kw)

    def rpc(self, service: str, method: str, body: Any = None, api_key: str | None = None) -> httpx.Response:
        with self.client(api_key) as c:
            return c.post(f"/fleetd.v1.{service}/{method}", content=json.dumps(body or {}),
                          headers={"Content-Type": "application/json"})

    def create_key(self, role: str = "admin", name: str | None = None) -> str:
        p = run_cli("keys", "create", "--data-dir", str(self.data_dir), "--name", name or f"e2e-{role}",
                    "--role", role, "--json", env={"FLEETD_DATABASE": self.database} if self.database else None)
        return str(json.loads(p.stdout)["key"])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)
