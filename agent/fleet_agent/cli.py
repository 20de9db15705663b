"""``fleet-agent enroll | run | status`` (argparse: the agent carries no CLI framework)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from . import __version__, needs

try:
    from .client import AgentError, ServerClient
    from .config import AgentState, ConfigError, Runtime, Settings, StateLock
    from .enroll import Enrolled, EnrollOptions, enroll, key_lost_message
    from .identity import load_or_create_key
    from .queue import queue_stats
    from .runloop import Backoff, RunLoop
    from .worker import installed_apps
except ModuleNotFoundError as e:  # httpx or cryptography: say which package to install, not a traceback
    if e.name not in needs.PACKAGES:
        raise
    raise SystemExit(f"fleet-agent: error: {needs.install_hint(needs.missing())}") from None

log = logging.getLogger("fleet_agent")

ENV_HELP = """environment:
  FLEET_AGENT_STATE_DIR        state dir (default /var/lib/fleet-agent)
  FLEET_AGENT_SERVER           server URL, as --server
  FLEET_AGENT_TOKEN            join token, as --token (keeps it out of the process list)
  FLEET_AGENT_MAX_BACKOFF      longest wait between retries when the server is unreachable, s (default 300)
  FLEET_AGENT_TELEMETRY_MAX_BYTES  telemetry kept on disk while offline (default 5 MiB; oldest dropped)
  FLEET_AGENT_MDNS_TIMEOUT     how long to look for a server by mDNS, s (default 3)
  FLEET_AGENT_MDNS_INTERFACES  comma-separated addresses of the interfaces to browse mDNS on (default all)
  FLEET_AGENT_POLL_INTERVAL    check in every N s instead of the server's interval (testing)
  FLEET_AGENT_CONFIG           the device's own settings (default STATE_DIR/agent.conf): remote access
"""


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", metavar="DIR",
                        help="where the key, state and queues live (default $FLEET_AGENT_STATE_DIR or "
                             "/var/lib/fleet-agent)")
    common.add_argument("-v", "--verbose", action="store_true", help="log debug detail")

    p = argparse.ArgumentParser(prog="fleet-agent", description="The fleetd device agent.", epilog=ENV_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"fleet-agent {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def identity_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--server", metavar="URL", default=os.environ.get("FLEET_AGENT_SERVER", ""),
                        help="the server's base URL, e.g. https://10.0.0.2:8420 (default: find it by mDNS)")
        sp.add_argument("--name", default="", help="display name (default: the hardware id)")
        sp.add_argument("--hardware-id", metavar="ID", default="",
                        help="override the hardware id (default: board serial or /etc/machine-id)")
        sp.add_argument("--device-type", metavar="TYPE", default="",
                        help="the device type artifacts are matched on (default linux-<machine>)")

    e = sub.add_parser("enroll", parents=[common], help="enroll this device with a fleetd server",
                       description="Enroll with a join token (active at once) or without one (pending until an "
                                   "admin claims the claim code this prints). Safe to run again.")
    e.add_argument("--token", default=os.environ.get("FLEET_AGENT_TOKEN", ""),
                   help="join token fdj1.… from 'fleetd tokens create' (without it: claim flow)")
    identity_opts(e)
    e.add_argument("--json", action="store_true", help="print the result as JSON")

    r = sub.add_parser("run", parents=[common], help="run the agent (enrolls first if needed)",
                       description="Check in, run actions, send telemetry; until SIGTERM.")
    r.add_argument("--token", default=os.environ.get("FLEET_AGENT_TOKEN", ""),
                   help="join token, used when the device is not enrolled yet or still pending")
    identity_opts(r)
    r.add_argument("--once", action="store_true", help="one iteration, then exit (status 1 if it failed)")

    s = sub.add_parser("status", parents=[common], help="show enrollment, last check-in, queues and apps")
    s.add_argument("--json", action="store_true", help="print the status as JSON")
    return p


def _setup_logging(verbose: bool) -> None:
    fmt = "%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM") \
        else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt, stream=sys.stderr)
    if not verbose:
        for noisy in ("httpx", "httpcore", "zeroconf"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def _options(args: argparse.Namespace) -> EnrollOptions:
    return EnrollOptions(token=args.token, server=args.server, name=args.name, hardware_id=args.hardware_id,
                         device_type=args.device_type)


def _enrolled_dict(st: AgentState) -> dict[str, Any]:
    return {"device_id": st.device_id, "status": st.status, "claim_code": st.claim_code, "server": st.server,
            "ca_fingerprint": st.ca_fingerprint, "trust": st.trust, "hardware_id": st.hardware_id,
            "device_type": st.device_type, "name": st.name}


def _print_enrolled(st: AgentState) -> None:
    print(f"enrolled as {st.device_id} ({st.status}) with {st.server}")
    if st.status == "pending":
        print(f"claim code:      {st.claim_code}")
        if st.trust == "tofu":
            print(f"CA fingerprint:  {st.ca_fingerprint}")
            print("  (trusted on first use: compare it with the fingerprint 'fleetd serve' prints before you "
                  "claim the device)")
        print("waiting for an admin to claim it (fleetd devices claim CODE, or the web UI)")


def cmd_enroll(args: argparse.Namespace, settings: Settings) -> int:
    settings.paths.ensure()
    with StateLock(settings.paths):
        res = enroll(settings, _options(args))
        res.client.close()
    if args.json:
        print(json.dumps(_enrolled_dict(res.state), indent=2))
    else:
        _print_enrolled(res.state)
    return 0


def _enroll_until_done(settings: Settings, opts: EnrollOptions, stop: threading.Event, once: bool) -> Enrolled:
    """First start: enroll, retrying with backoff while the server cannot be reached, or while the hardware id
    has another key (409) until an admin re-keys or deletes the device (a service that exited would be
    restarted every few seconds instead)."""
    backoff = Backoff(1.0, settings.max_backoff)
    while True:
        try:
            return enroll(settings, opts)
        except AgentError as e:
            waits_for_admin = e.code == "already_exists"
            if not (e.transient or waits_for_admin) or once:
                raise
            delay = backoff.next(e.retry_after)
            level = logging.ERROR if waits_for_admin else logging.WARNING
            log.log(level, "cannot enroll yet: %s; next try in %.1f s", e, delay)
            if stop.wait(delay):
                raise AgentError("cancelled", "stopped before enrolling") from None


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    paths = settings.paths
    paths.ensure()
    stop = threading.Event()
    loop: list[RunLoop] = []

    def on_signal(signum: int, frame: Any) -> None:
        log.info("got %s; stopping", signal.Signals(signum).name)
        stop.set()
        if loop:
            loop[0].stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    with StateLock(paths):
        state = AgentState.load(paths)
        key_lost = state is not None and not paths.key.exists()
        if state is not None and key_lost:
            # A new key alone would only fail Authenticate: enroll with it, which a re-key token lets in.
            log.error("%s", key_lost_message(state, f"{paths.key} is missing, but {paths.state} says this device "
                                                    "enrolled"))
        if state is None or key_lost or (args.token and state.status == "pending"):
            try:
                res = _enroll_until_done(settings, _options(args), stop, args.once)
            except AgentError:
                if stop.is_set():
                    return 0
                raise
            state, client = res.state, res.client
            if state.status == "pending":
                _print_enrolled(state)
        else:
            try:
                ca_pem = paths.ca.read_text()
            except FileNotFoundError:
                raise ConfigError(f"{paths.ca} is missing: the device no longer knows which server to trust; "
                                  "enroll again with a join token (fleet-agent enroll --token ...)") from None
            client = ServerClient(args.server or state.server, ca_pem, load_or_create_key(paths.key),
                                  state.device_id)

        def reenroll() -> AgentState:
            again = enroll(settings, EnrollOptions(token=args.token, server=client.base_url,
                                                   hardware_id=state.hardware_id, device_type=state.device_type,
                                                   name=state.name))
            again.client.close()
            return again.state

        loop.append(RunLoop(settings, state, client, token=args.token, reenroll=reenroll))
        if stop.is_set():
            loop[0].stop()
        log.info("fleet-agent %s running as %s with %s (state dir %s)", __version__, state.device_id,
                 client.base_url, paths.root)
        remote = None if args.once else _start_remote_access(settings, client)
        try:
            return loop[0].run(once=args.once)
        finally:
            if remote is not None:
                remote.stop()


def _start_remote_access(settings: Settings, client: ServerClient) -> Any:
    """The remote-access channel (remote.py, imported only then) when agent.conf turns it on; else None."""
    from . import remote_config

    conf = remote_config.load(remote_config.config_path(settings.paths.root))
    if not conf.remote_access:
        log.info("remote access is off (remote_access = true in %s turns it on)", conf.path)
        return None
    return remote_config.import_remote().start(client, settings.paths.ca.read_text(), conf,
                                               min(settings.max_backoff, 60.0), str(settings.paths.root / "apps"))


def _ago(ts: float) -> str:
    if not ts:
        return "never"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
    return f"{when} ({max(0, int(time.time() - ts))} s ago)"


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.1f} MiB"


def status_dict(settings: Settings) -> dict[str, Any] | None:
    paths = settings.paths
    state = AgentState.load(paths)
    if state is None:
        return None
    rt = Runtime.load(paths)
    running = _alive(rt.pid)
    on_disk = {a["name"]: a for a in installed_apps(paths.root)}
    if rt.components:
        # What the running agent's executor reported at its last check-in, with the apps' last errors.
        apps = [dict(c, last_error=on_disk.get(str(c.get("name")), {}).get("last_error", "")) for c in rt.components]
    else:
        apps = list(on_disk.values())
    return {
        **_enrolled_dict(state),
        "status": rt.status or state.status,
        "running": running,
        "pid": rt.pid if running else 0,
        "last_checkin": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(rt.last_checkin)) if rt.last_checkin
        else None,
        "last_checkin_unix": rt.last_checkin,
        "last_error": rt.last_error,
        "poll_interval": rt.poll_interval or state.poll_interval,
        "queues": {"reports": queue_stats(paths.reports_queue), "telemetry": queue_stats(paths.telemetry_queue)},
        "apps": apps,
    }


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    st = status_dict(settings)
    if st is None:
        if args.json:
            print(json.dumps({"enrolled": False, "state_dir": str(settings.state_dir)}))
        else:
            print(f"not enrolled (state dir {settings.state_dir}); run: fleet-agent enroll --token TOKEN")
        return 1
    if args.json:
        print(json.dumps(dict(st, enrolled=True), indent=2))
        return 0
    q = st["queues"]
    rows = [
        ("device", f"{st['device_id']}" + (f" ({st['name']})" if st["name"] else "")),
        ("hardware id", st["hardware_id"]),
        ("device type", st["device_type"]),
        ("server", st["server"]),
        ("status", st["status"] + (f", claim code {st['claim_code']}" if st["status"] == "pending" else "")),
        ("CA fingerprint", f"{st['ca_fingerprint']} ("
                           + ("from a join token" if st["trust"] == "token" else "trusted on first use") + ")"),
        ("agent", f"running (pid {st['pid']})" if st["running"] else "not running"),
        ("last check-in", _ago(st["last_checkin_unix"])),
        ("last error", st["last_error"] or "-"),
        ("queued", f"{q['reports']['items']} reports ({_size(q['reports']['bytes'])}), "
                   f"{q['telemetry']['items']} telemetry batches ({_size(q['telemetry']['bytes'])})"),
    ]
    for k, v in rows:
        print(f"{k + ':':<16}{v}")
    apps = st["apps"]
    if not apps:
        print("apps:           none")
        return 0
    print("apps:")
    table = [("NAME", "VERSION", "STATE", "HEALTH", "RESTARTS", "LAST ERROR")]
    table += [(str(a.get("name", "")), str(a.get("version", "")), str(a.get("state", "")),
               str(a.get("health", "") or "-"), str(a.get("restarts", 0)), str(a.get("last_error", "") or "-"))
              for a in apps]
    widths = [max(len(r[i]) for r in table) for i in range(5)]
    for r in table:
        print("  " + "  ".join(r[i].ljust(widths[i]) for i in range(5)) + "  " + r[5])
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        settings = Settings.from_env(args.state_dir)
        if args.command == "enroll":
            return cmd_enroll(args, settings)
        if args.command == "run":
            return cmd_run(args, settings)
        return cmd_status(args, settings)
    except (AgentError, ConfigError) as e:
        message = e.message if isinstance(e, AgentError) else str(e)
        print(f"fleet-agent: error: {message}", file=sys.stderr)
        return 1
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        print(f"fleet-agent: error: {e.strerror or e}{where}; is the state dir writable by this user? (run as "
              "root, or pass --state-dir)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


__all__ = ["main", "status_dict"]
