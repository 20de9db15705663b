"""The agent's life after enrolling: check in, hand actions to the executor, deliver reports and telemetry.

One iteration: send queued reports (oldest first), CheckIn with the inventory
(when it changed) and every component, hand new actions to the executor's
worker thread (one at a time, in the server's order), sample telemetry into
its queue (also when the server is away), push queued telemetry. Then sleep
the server's next_checkin (its poll interval, sooner while an action is open) ±10 %, or back off
exponentially (1 s doubling to ``max_backoff``, ±20 %) when the server cannot be reached. Reports made while
the loop sleeps wake it, and the end of an action makes it check in at once.

Nothing here stops the apps: with no server the executor keeps running what it
ran, and reports and telemetry wait on disk.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from . import discovery, inventory
from .client import AgentError, KeyMismatch, ServerClient, UnknownDevice
from .config import AgentState, Runtime, Settings
from .enroll import key_lost_message
from .mqtt import LinkDown, batch_id
from .queue import DiskQueue
from .telemetry import Sampler
from .worker import TERMINAL, ActionWorker, Report, lazy_executor

log = logging.getLogger(__name__)

MAX_POINTS_PER_BATCH = 500
MAX_REPORT_MESSAGE = 2000
# Look for the server again by mDNS after this many failed iterations (only if it was found that way).
REDISCOVER_AFTER = 3
REDISCOVER_EVERY = 60.0


class Backoff:
    """Exponential backoff with jitter: 1 s, 2 s, 4 s, … up to ``cap``, each ±``jitter``."""

    def __init__(self, initial: float = 1.0, cap: float = 300.0, jitter: float = 0.2) -> None:
        self.initial = initial
        self.cap = cap
        self.jitter = jitter
        self.failures = 0

    def next(self, at_least: float | None = None) -> float:
        base = min(self.cap, self.initial * (2 ** min(self.failures, 30)))
        self.failures += 1
        delay = min(self.cap, base * random.uniform(1 - self.jitter, 1 + self.jitter))
        return max(delay, at_least or 0.0)

    def reset(self) -> None:
        self.failures = 0


class RunLoop:
    def __init__(self, settings: Settings, state: AgentState, client: ServerClient, *, executor: Any = None,
                 token: str = "", sampler: Sampler | None = None,
                 inventory_fn: Callable[[], dict[str, Any]] = inventory.collect,
                 reenroll: Callable[[], AgentState] | None = None) -> None:
        self.settings = settings
        self.paths = settings.paths
        self.state = state
        self.client = client
        self.token = token
        self.reports = DiskQueue(self.paths.reports_queue)
        self.telemetry = DiskQueue(self.paths.telemetry_queue, settings.telemetry_max_bytes)
        self.runtime = Runtime.load(self.paths)
        self.executor = executor if executor is not None else lazy_executor(self.paths.root, client, state)
        self.sampler = sampler or Sampler(self.paths.root)
        self.inventory_fn = inventory_fn
        self.reenroll = reenroll
        self.backoff = Backoff(1.0, settings.max_backoff)
        self.worker = ActionWorker(self.executor, self._reporter, self._action_done)
        self.checkins = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._checkin_now = False
        self._rt_lock = threading.Lock()
        self._last_inventory: dict[str, Any] | None = None
        self._last_components: list[dict[str, Any]] = []
        self._last_sample = float("-inf")
        self._last_rediscover = float("-inf")
        self._online = False
        self._failures = 0  # iterations in a row that did not reach the server
        self._trial_confirmed = False
        self._next_checkin = 0  # from the last check-in; 0: the poll interval
        self.certificate: Any = None
        if settings.client_certificate:  # docs/pki.md; cryptography's x509 only then
            from .certificate import ClientCertificate
            self.certificate = ClientCertificate(self.paths, client)
        self.mqtt: Any = None  # an mqtt.MqttLink while the server names a broker (with the certificate above)
        self._mqtt_said = ""
        self._mqtt_serial: Any = None  # the certificate the link connected with

    # --- control ------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to end (a signal handler may call this)."""
        self._stop.set()
        self._wake.set()

    @property
    def poll_interval(self) -> float:
        return float(self.settings.poll_interval or self.runtime.poll_interval or self.state.poll_interval or 60)

    @property
    def next_checkin(self) -> float:
        """Seconds to the next check-in: what the server last asked for (sooner while an action is open)."""
        return float(self.settings.poll_interval or self._next_checkin or self.poll_interval)

    def run(self, once: bool = False) -> int:
        """Loop until stop(); with ``once``, one iteration (waiting for the actions it started). Exit status."""
        self.runtime.pid = os.getpid()
        try:
            self.executor.start()
        except Exception:
            log.exception("the executor failed to start the installed apps")
        if self.state.status == "pending":
            self._show_pending()
        try:
            while not self._stop.is_set():
                try:
                    ok = self.iteration(once)
                except Exception as e:  # a bug or a full disk: log it and try again later, never die of it
                    log.exception("unexpected error in the run loop")
                    self._online, ok = False, False
                    self._note_error(f"{type(e).__name__}: {e}")
                if once:
                    return 0 if ok else 1
                if ok:
                    delay = self.next_checkin * random.uniform(0.9, 1.1)
                else:
                    delay = self.backoff.next(self._retry_after)
                    log.info("next try in %.1f s", delay)
                self._sleep(delay)
            return 0
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        if not self.worker.idle():
            log.info("stopping while action %s runs; it is resumed at the next start", self.worker.current)
        self.reports.settle()  # a report being written is finished, never torn
        if self._online and len(self.reports):
            try:
                self.drain_reports()
            except AgentError as e:
                log.info("reports stay queued: %s", e)
        try:
            self.executor.stop()
        except Exception:
            log.exception("the executor failed to stop cleanly")
        self.runtime.pid = 0
        self._save_runtime()
        self.client.close()
        if self.mqtt is not None:
            self.mqtt.stop()

    # --- one iteration ----------------------------------------------------------------
    _retry_after: float | None = None

    def iteration(self, once: bool = False) -> bool:
        """True when the server was reached and everything queued that could be sent was sent."""
        self._retry_after = None
        self.runtime.last_attempt = time.time()
        try:
            try:
                self.drain_reports()
                actions = self.check_in()
                self._dispatch(actions)
                if once:
                    self.worker.wait_idle()
                    self.drain_reports()
            finally:
                # Online or not; after the check-in, so that cpu.percent spans some time even with --once.
                self._sample_if_due()
            self.push_telemetry()
        except UnknownDevice as e:
            self._online = False
            self._failures += 1
            self._note_error(str(e))
            self._enroll_again(e)
            return False
        except AgentError as e:
            self._online = False
            self._failures += 1
            self._retry_after = e.retry_after
            self._note_error(str(e))
            if e.code == "permission_denied" and e.http_status == 403:
                self._set_status("revoked")
                log.error("the server refuses this device: %s", e.message)
            elif e.transient:
                log.warning("server unreachable: %s", e)
                self._maybe_rediscover()
            else:
                log.error("check-in failed: %s", e)
            self._save_runtime()
            return False
        self._online = True
        self._failures = 0
        self.backoff.reset()
        self._confirm_trial()
        with self._rt_lock:
            self.runtime.last_checkin = time.time()
            self.runtime.last_error = ""
        self._save_runtime()
        return True

    def check_in(self) -> list[dict[str, Any]]:
        body: dict[str, Any] = {"components": self._components()}
        inv = self.inventory_fn()
        if inv != self._last_inventory:
            body["inventory"] = inv
        resp = self.client.call("CheckIn", body)
        self._last_inventory = inv
        self.checkins += 1
        status = str(resp.get("status") or self.state.status)
        poll = int(resp.get("poll_interval") or 0)
        self._next_checkin = int(resp.get("next_checkin") or 0)
        with self._rt_lock:
            self.runtime.status = status
            self.runtime.server = self.client.base_url
            if poll:
                self.runtime.poll_interval = poll
            self.runtime.components = body["components"]
        if status != self.state.status or (poll and poll != self.state.poll_interval) \
                or self.client.base_url != self.state.server:
            if self.state.status == "pending" and status == "active":
                log.info("this device was claimed: it is active now")
            self.state.status, self.state.server = status, self.client.base_url
            if status != "pending":
                self.state.claim_code = ""
            if poll:
                self.state.poll_interval = poll
            self.state.save(self.paths)
        url = str(resp.get("mqtt_url") or "")
        if self.state.status == "active":
            if url and self.certificate is None:  # cryptography's x509 only once a broker is named
                from .certificate import ClientCertificate
                self.certificate = ClientCertificate(self.paths, self.client)
            if self.certificate is not None:
                self.certificate.renew_if_due()
        self._use_mqtt(url)
        actions = resp.get("actions") or []
        return [a for a in actions if isinstance(a, dict)]

    def _use_mqtt(self, url: str) -> None:
        """Connect to the MQTT broker the server names with this device's client certificate from the fleet CA
        (check_in asks for it and renews it); a renewed certificate connects again (docs/mqtt.md)."""
        if self.mqtt is not None and (self.mqtt.url != url or self.state.status != "active"):
            self.mqtt.stop()
            self.mqtt = None
        if not url or self.state.status != "active" or self.certificate is None:
            return
        serial = self.certificate.meta.get("serial")
        if self.mqtt is not None:
            if serial == self._mqtt_serial:
                return
            log.info("connecting to the MQTT broker again with the renewed client certificate")
            self.mqtt.stop()
            self.mqtt = None
        from . import mqtt

        said, self._mqtt_said = self._mqtt_said, url  # why not, once per broker address
        if not self.certificate.cert_path.is_file():
            if said != url:
                log.info("the server has an MQTT broker (%s), but this device has no client certificate yet: "
                         "HTTPS until it gets one", url)
            return
        try:
            link = mqtt.MqttLink(url, self.state.device_id, self.paths.ca, self.certificate.cert_path,
                                 self.paths.key, on_action=self._wake.set)
            link.start()
            self.mqtt, self._mqtt_serial = link, serial
        except ImportError:
            if said != url:
                log.warning("the server has an MQTT broker (%s), but paho-mqtt is missing: HTTPS only (install "
                            "python3-paho-mqtt to use it)", url)
        except (ValueError, OSError) as e:
            log.warning("not using the MQTT broker %s: %s", url, e)

    def _send(self, method: str, leaf: str, body: dict[str, Any]) -> None:
        """A report or telemetry batch over MQTT when the broker is there, else (or if it fails) over HTTPS."""
        if self.mqtt is not None and self.mqtt.connected:
            try:
                self.mqtt.publish(leaf, {**body, "batch_id": batch_id(body["points"])} if leaf == "telemetry"
                                  else body)
                return
            except LinkDown as e:
                log.info("MQTT: %s; sending over HTTPS", e)
        self.client.call(method, body)

    def _components(self) -> list[dict[str, Any]]:
        try:
            comps = [dict(c) for c in self.executor.components()]
        except Exception:
            log.exception("the executor could not list its components; sending the last list again")
            return self._last_components
        self._last_components = comps
        return comps

    def _dispatch(self, actions: list[dict[str, Any]]) -> None:
        self.worker.drop_missing({str(a.get("id")) for a in actions})
        self._submit(actions)

    def _submit(self, actions: list[dict[str, Any]]) -> None:
        busy = self.worker.ids()
        with self._rt_lock:
            handled = set(self.runtime.handled_actions)
        for a in actions:
            aid = str(a.get("id") or "")
            if not aid or aid in handled or aid in busy or aid in self.worker.returned:
                continue
            self.worker.submit(a)
            busy.add(aid)

    # --- reports ------------------------------------------------------------------------
    def _reporter(self, action: dict[str, Any]) -> Report:
        aid = str(action.get("id"))

        def report(state: str, message: str = "", progress: int = 0, result: dict[str, Any] | None = None) -> None:
            item: dict[str, Any] = {"action_id": aid, "state": str(state),
                                    "message": str(message or "")[:MAX_REPORT_MESSAGE],
                                    "progress": max(0, min(100, int(progress or 0)))}
            if result is not None:
                item["result"] = result
            self.reports.put(item)
            if state in TERMINAL:
                with self._rt_lock:
                    self.runtime.mark_handled(aid)
                self._save_runtime()
            self._wake.set()

        return report

    def _action_done(self, action_id: str) -> None:
        self._checkin_now = True
        self._wake.set()

    def drain_reports(self) -> bool:
        """Send queued reports in order; True if one of them was a final state. Raises on transient errors."""
        delivered_final = False
        while True:
            items = self.reports.peek(1)
            if not items:
                return delivered_final
            seq, item = items[0]
            if not isinstance(item, dict) or not item.get("action_id"):
                log.warning("dropping a malformed queued report: %r", item)
                self.reports.ack([seq])
                continue
            try:
                self._send("ReportStatus", "status", item)
            except AgentError as e:
                if e.code == "failed_precondition":
                    log.info("action %s already ended on the server (%s); report dropped", item["action_id"],
                             e.message)
                elif e.code == "not_found":
                    log.warning("the server no longer knows action %s; dropping its report (%s)",
                                item["action_id"], item["state"])
                elif e.code == "invalid_argument":
                    log.error("the server refused a report for action %s as invalid (%s); dropping it",
                              item["action_id"], e.message)
                else:
                    raise
            self.reports.ack([seq])
            if item.get("state") in TERMINAL:
                delivered_final = True

    # --- telemetry ------------------------------------------------------------------
    def _sample_if_due(self) -> None:
        if self.state.status != "active":
            return
        now = time.monotonic()
        if now - self._last_sample < self.poll_interval * 0.9:
            return
        self._last_sample = now
        try:
            points = self.sampler.sample()
        except Exception:
            log.exception("reading telemetry failed")
            return
        if points:
            self.telemetry.put({"points": points[:MAX_POINTS_PER_BATCH]})

    def push_telemetry(self) -> None:
        """Send queued points in batches of at most 500, oldest first; transient failures leave them queued."""
        if self.state.status != "active":
            return
        while True:
            items = self.telemetry.peek(64)
            if not items:
                return
            batch: list[Any] = []
            seqs: list[int] = []
            for seq, item in items:
                points = item.get("points") if isinstance(item, dict) else None
                points = points if isinstance(points, list) else []
                if batch and len(batch) + len(points) > MAX_POINTS_PER_BATCH:
                    break
                batch.extend(points[:MAX_POINTS_PER_BATCH])
                seqs.append(seq)
            try:
                if batch:
                    self._send("PushTelemetry", "telemetry", {"points": batch})
            except AgentError as e:
                # resource_exhausted without Retry-After is a quota (the metric-name limits), not a rate limit:
                # the same batch would be refused again, and would hold every later point behind it.
                if e.code == "invalid_argument" or (e.code == "resource_exhausted" and e.retry_after is None):
                    log.error("the server refused %d telemetry points (%s); dropping them", len(batch), e.message)
                elif e.transient or e.http_status in (401, 403):
                    log.info("telemetry stays queued: %s", e)
                    return
                else:
                    log.error("telemetry refused (%s); dropping %d points", e, len(batch))
            self.telemetry.ack(seqs)

    # --- waiting ------------------------------------------------------------------------
    def _sleep(self, delay: float) -> None:
        deadline = time.monotonic() + delay
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if not self._wake.wait(left):
                return
            self._wake.clear()
            while self.mqtt is not None and not self.mqtt.actions.empty():  # pushed by the server over MQTT
                self._submit([self.mqtt.actions.get()])
            if self._stop.is_set() or not self._online:
                continue
            try:
                final = self.drain_reports()
            except AgentError as e:
                log.info("reports stay queued until the next check-in: %s", e)
                self._online = False
                continue
            except Exception:
                log.exception("unexpected error while sending reports")
                self._online = False
                continue
            if final or self._checkin_now:
                self._checkin_now = False
                return

    # --- trouble --------------------------------------------------------------------------
    def _note_error(self, message: str) -> None:
        with self._rt_lock:
            self.runtime.last_error = message

    def _set_status(self, status: str) -> None:
        if self.state.status != status:
            self.state.status = status
            self.state.save(self.paths)
        with self._rt_lock:
            self.runtime.status = status

    def _show_pending(self) -> None:
        msg = f"waiting to be claimed: claim code {self.state.claim_code or '(unknown)'}"
        if self.state.trust == "tofu":
            msg += f"; fleet CA fingerprint {self.state.ca_fingerprint} (compare it with the server's)"
        log.warning("%s", msg)

    def _enroll_again(self, why: UnknownDevice) -> None:
        if isinstance(why, KeyMismatch) and not self.token:
            # Enrolling with this key again is refused (409) until an admin re-keys the device: say so, once a try.
            message = key_lost_message(self.state, "the server refuses this device's key")
            self._note_error(message)
            log.error("%s", message)
            return
        if self.reenroll is None:
            log.error("the server no longer knows this device; run fleet-agent enroll")
            return
        if isinstance(why, KeyMismatch):
            log.warning("the server refuses this device's key; enrolling again with the token given")
        else:
            log.warning("the server no longer knows device %s (deleted or rejected); enrolling again",
                        self.state.device_id)
        try:
            self.state = self.reenroll()
        except AgentError as e:
            log.error("enrolling again failed: %s", e)
            return
        self.client.device_id = self.state.device_id
        self.client.forget_token()
        self._last_inventory = None
        if self.state.status == "pending":
            self._show_pending()

    def _maybe_rediscover(self) -> None:
        if not self.state.discovered or self._failures < REDISCOVER_AFTER:
            return
        now = time.monotonic()
        if now - self._last_rediscover < REDISCOVER_EVERY:
            return
        self._last_rediscover = now
        candidates = discovery.order(discovery.browse(self.settings.mdns_timeout, self.settings.mdns_interfaces),
                                     self.state.ca_fingerprint)
        for c in candidates:
            if c.url.rstrip("/") == self.client.base_url or not c.url.startswith("https://"):
                continue
            old = self.client.base_url
            self.client.base_url = c.url.rstrip("/")
            try:
                self.client.forget_token()
                self.client.auth_headers()  # TLS to the pinned CA and our key: the same fleet, and it knows us
            except AgentError as e:
                log.info("mDNS found %s, but it is not usable: %s", c.url, e)
                self.client.base_url = old
                continue
            log.info("the server moved: %s → %s", old, self.client.base_url)
            return

    def _confirm_trial(self) -> None:
        """A new agent on trial (self-update) has checked in: tell the launcher it may stay."""
        if self._trial_confirmed or not os.environ.get("FLEET_AGENT_TRIAL"):
            return
        try:
            from . import selfupdate  # type: ignore[attr-defined,unused-ignore]

            if selfupdate.confirm(self.paths.root):
                self._trial_confirmed = True
                log.info("this agent passed its trial run (it checked in)")
        except Exception:
            log.exception("could not confirm this agent's trial run")

    def _save_runtime(self) -> None:
        with self._rt_lock:
            try:
                self.runtime.save(self.paths)
            except OSError as e:
                log.warning("cannot write %s: %s", self.paths.runtime, e)


__all__ = ["Backoff", "RunLoop"]
