"""A hawkBit DDI device client, written from hawkBit's Direct Device Integration API documentation.

It knows nothing of fleetd: it speaks the DDI resources under
``{server}/{tenant}/controller/v1/{controllerId}`` as SWUpdate's suricatta,
rauc-hawkbit-updater and Zephyr's hawkBit client do — poll the controller base,
follow the absolute HAL ``_links`` it answers, fetch ``deploymentBase``, download
the artifacts (resuming with ``Range``), check ``sha1``/``md5``/``sha256``, and
report ``feedback``. :class:`DdiDevice` runs that loop in a thread, like an
update daemon on a device.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

# hawkBit's feedback vocabulary (DdiStatus.ExecutionStatus and DdiResult.FinalResult).
EXECUTIONS = ("closed", "proceeding", "canceled", "scheduled", "rejected", "resumed", "downloaded", "download")
FINISHED = ("success", "failure", "none")
CONFIG_MODES = ("merge", "replace", "remove")
_ACTION_IN_HREF = re.compile(r"/(deploymentBase|cancelAction|installedBase)/(\d+)(?:/|$)")


class DdiProtocolError(AssertionError):
    """The server answered something a hawkBit client could not work with."""


def parse_sleep(value: str) -> int:
    """``config.polling.sleep`` ("HH:MM:SS", as hawkBit sends it) in seconds."""
    m = re.fullmatch(r"(\d{2}):([0-5]\d):([0-5]\d)", value)
    if not m:
        raise DdiProtocolError(f"polling sleep {value!r} is not HH:MM:SS")
    h, mi, s = (int(g) for g in m.groups())
    return h * 3600 + mi * 60 + s


def action_id_of(href: str) -> int:
    """The numeric action id in a deploymentBase/cancelAction/installedBase link."""
    m = _ACTION_IN_HREF.search(urlsplit(href).path)
    if not m:
        raise DdiProtocolError(f"no numeric action id in link {href!r}")
    return int(m.group(2))


def hashes_of(data: bytes) -> dict[str, str]:
    return {"sha1": hashlib.sha1(data).hexdigest(), "md5": hashlib.md5(data).hexdigest(),
            "sha256": hashlib.sha256(data).hexdigest()}


@dataclass
class Artifact:
    filename: str
    size: int
    hashes: dict[str, str]
    links: dict[str, str]

    def mismatches(self, data: bytes) -> list[str]:
        """What does not match in ``data``: size and every hash the deployment announced."""
        got = hashes_of(data)
        bad = [f"size {len(data)} != {self.size}"] if len(data) != self.size else []
        return bad + [f"{k} {got[k]} != {v}" for k, v in self.hashes.items() if k in got and got[k] != v]


@dataclass
class Chunk:
    part: str
    name: str
    version: str
    artifacts: list[Artifact]


@dataclass
class Deployment:
    """A ``deploymentBase`` (or ``installedBase``) resource."""

    action_id: int
    download: str
    update: str
    chunks: list[Chunk]
    raw: dict[str, Any]

    @property
    def maintenance_window(self) -> str | None:
        return self.raw["deployment"].get("maintenanceWindow")

    @classmethod
    def parse(cls, body: Any) -> Deployment:
        try:
            dep = body["deployment"]
            chunks = [Chunk(part=c["part"], name=c["name"], version=c["version"], artifacts=[
                Artifact(filename=a["filename"], size=int(a["size"]), hashes=dict(a["hashes"]),
                         links={rel: link["href"] for rel, link in a.get("_links", {}).items()})
                for a in c.get("artifacts", [])]) for c in dep["chunks"]]
            # hawkBit writes the id as a JSON string holding a number ("8"); clients parse it as one.
            return cls(action_id=int(body["id"]), download=dep["download"], update=dep["update"], chunks=chunks,
                       raw=body)
        except (KeyError, TypeError, ValueError) as e:
            raise DdiProtocolError(f"not a DDI deployment resource ({e!r}): {body!r}") from e


@dataclass
class Poll:
    """The answer to a poll of the controller base resource."""

    status: int
    etag: str | None
    body: dict[str, Any] | None = None

    @property
    def sleep(self) -> int:
        assert self.body is not None
        return parse_sleep(self.body["config"]["polling"]["sleep"])

    @property
    def links(self) -> dict[str, str]:
        assert self.body is not None
        return {rel: link["href"] for rel, link in self.body.get("_links", {}).items()}


def feedback_body(execution: str, finished: str = "none", *, progress: tuple[int, int] | None = None,
                  details: list[str] | None = None, action_id: int | None = None) -> dict[str, Any]:
    """A DdiActionFeedback as device clients send it (with the ``id`` and ``time`` old clients still send)."""
    result: dict[str, Any] = {"finished": finished}
    if progress is not None:
        result["progress"] = {"cnt": progress[0], "of": progress[1]}
    body: dict[str, Any] = {"time": dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S"),
                            "status": {"execution": execution, "result": result, "details": details or []}}
    if action_id is not None:
        body["id"] = str(action_id)
    return body


class DdiClient:
    """One controller's view of the DDI API, over HTTPS pinned to the fleet CA."""

    def __init__(self, server: str, controller_id: str, token: str | None, *, scheme: str = "TargetToken",
                 tenant: str = "DEFAULT", ca: str | None = None, timeout: float = 10) -> None:
        self.server = server.rstrip("/")
        self.tenant = tenant
        self.controller_id = controller_id
        self.base = f"{self.server}/{tenant}/controller/v1/{controller_id}"
        headers = {"Accept": "application/hal+json"}
        if token is not None:
            headers["Authorization"] = f"{scheme} {token}"
        verify: Any = ssl.create_default_context(cafile=ca) if ca else False
        self.http = httpx.Client(headers=headers, verify=verify, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> DdiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, path_or_href: str) -> str:
        return path_or_href if "://" in path_or_href else self.base + path_or_href

    def request(self, method: str, path_or_href: str, **kw: Any) -> httpx.Response:
        return self.http.request(method, self.url(path_or_href), **kw)

    def check_href(self, href: str) -> str:
        """hawkBit's links are absolute URLs on the server the device talks to."""
        if not href.startswith(self.server + "/"):
            raise DdiProtocolError(f"link {href!r} is not an absolute URL under {self.server}")
        return href

    # --- resources ----------------------------------------------------------------

    def poll(self, etag: str | None = None) -> Poll:
        r = self.request("GET", "", headers={"If-None-Match": etag} if etag else {})
        if r.status_code == 304:
            return Poll(304, r.headers.get("etag"))
        if r.status_code != 200:
            return Poll(r.status_code, r.headers.get("etag"), _json_or_none(r))
        body = r.json()
        poll = Poll(200, r.headers.get("etag"), body)
        parse_sleep(body["config"]["polling"]["sleep"])
        for href in poll.links.values():
            self.check_href(href)
        return poll

    def deployment(self, href: str) -> Deployment:
        r = self.request("GET", self.check_href(href) if "://" in href else href)
        if r.status_code != 200:
            raise DdiProtocolError(f"GET {href}: {r.status_code} {r.text}")
        dep = Deployment.parse(r.json())
        for chunk in dep.chunks:
            for a in chunk.artifacts:
                for link in a.links.values():
                    self.check_href(link)
        return dep

    def feedback(self, action_id: int, execution: str, finished: str = "none", *,
                 progress: tuple[int, int] | None = None, details: list[str] | None = None,
                 resource: str = "deploymentBase") -> httpx.Response:
        body = feedback_body(execution, finished, progress=progress, details=details, action_id=action_id)
        return self.request("POST", f"/{resource}/{action_id}/feedback", json=body)

    def config_data(self, data: Any, mode: str | None = None) -> httpx.Response:
        body: dict[str, Any] = {"data": data}
        if mode is not None:
            body["mode"] = mode
        return self.request("PUT", "/configData", json=body)

    def cancel_action(self, href: str) -> dict[str, Any]:
        r = self.request("GET", href)
        if r.status_code != 200:
            raise DdiProtocolError(f"GET {href}: {r.status_code} {r.text}")
        body: dict[str, Any] = r.json()
        try:
            int(body["id"]), int(body["cancelAction"]["stopId"])
        except (KeyError, TypeError, ValueError) as e:
            raise DdiProtocolError(f"not a DDI cancel resource ({e!r}): {body!r}") from e
        return body

    def download(self, href: str, *, start: int | None = None, end: int | None = None,
                 method: str = "GET", headers: dict[str, str] | None = None) -> httpx.Response:
        h = dict(headers or {})
        if start is not None:
            h["Range"] = f"bytes={start}-{'' if end is None else end}"
        return self.request(method, href, headers=h)

    def download_resumed(self, artifact: Artifact, first: int) -> bytes:
        """Fetch ``first`` bytes, then the rest with a Range request, as a client resuming after a drop."""
        href = artifact.links.get("download") or artifact.links["download-http"]
        a = self.download(href, start=0, end=first - 1)
        if a.status_code != 206 or len(a.content) != first:
            raise DdiProtocolError(f"first part: {a.status_code}, {len(a.content)} bytes")
        b = self.download(href, start=first, headers={"If-Range": a.headers["etag"]} if "etag" in a.headers else {})
        if b.status_code != 206:
            raise DdiProtocolError(f"rest: {b.status_code} {b.headers}")
        want = f"bytes {first}-{artifact.size - 1}/{artifact.size}"
        if b.headers.get("content-range") != want:
            raise DdiProtocolError(f"rest: Content-Range {b.headers.get('content-range')!r}, wanted {want!r}")
        return a.content + b.content


def _json_or_none(r: httpx.Response) -> dict[str, Any] | None:
    try:
        body = r.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


@dataclass
class DeviceLog:
    """What a :class:`DdiDevice` did, for tests to assert on."""

    deployments: list[Deployment] = field(default_factory=list)
    feedback: list[tuple[int, str, str, int]] = field(default_factory=list)  # action, execution, finished, HTTP
    cancels: list[tuple[int, int]] = field(default_factory=list)  # action, HTTP status of the cancel feedback
    errors: list[str] = field(default_factory=list)
    polls: int = 0


class DdiDevice:
    """An update daemon: polls, installs what it is sent (or fails on purpose), acknowledges cancels.

    ``fail`` holds versions whose install it reports as ``closed``/``failure``;
    ``hold`` versions it downloads and reports ``proceeding`` for, and then keeps
    open (so that a cancel can reach it).
    """

    def __init__(self, client: DdiClient, *, interval: float = 0.3, fail: set[str] | None = None,
                 hold: set[str] | None = None) -> None:
        self.client = client
        self.interval = interval
        self.fail = set(fail or ())
        self.hold = set(hold or ())
        self.installed: dict[str, str] = {}
        self.log = DeviceLog()
        self._done: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ddi-{client.controller_id}", daemon=True)

    def start(self) -> DdiDevice:
        self._thread.start()
        return self

    def stop(self) -> DeviceLog:
        self._stop.set()
        self._thread.join(15)
        self.client.close()
        return self.log

    def _run(self) -> None:
        etag: str | None = None
        while not self._stop.is_set():
            try:
                poll = self.client.poll(etag)
                with self._lock:
                    self.log.polls += 1
                if poll.status == 200:
                    etag = poll.etag
                    if self._act(poll.links):
                        etag = None  # something changed on our side: look again without the cache
                elif poll.status != 304:
                    self.log.errors.append(f"poll answered {poll.status}: {poll.body}")
            except (httpx.HTTPError, DdiProtocolError, KeyError, ValueError) as e:
                self.log.errors.append(f"{type(e).__name__}: {e}")
            self._stop.wait(self.interval)

    def _act(self, links: dict[str, str]) -> bool:
        if "cancelAction" in links:
            cancel = self.client.cancel_action(links["cancelAction"])
            stop_id = int(cancel["cancelAction"]["stopId"])
            r = self.client.feedback(int(cancel["id"]), "closed", "success", details=["cancelled on the device"],
                                     resource="cancelAction")
            with self._lock:
                self.log.cancels.append((stop_id, r.status_code))
            self._done.add(stop_id)
            return True
        href = links.get("deploymentBase")
        if href is None or action_id_of(href) in self._done:
            return False
        dep = self.client.deployment(href)
        with self._lock:
            self.log.deployments.append(dep)
        self._done.add(dep.action_id)
        self._install(dep)
        return True

    def _send(self, action_id: int, execution: str, finished: str = "none", **kw: Any) -> None:
        r = self.client.feedback(action_id, execution, finished, **kw)
        with self._lock:
            self.log.feedback.append((action_id, execution, finished, r.status_code))
        if r.status_code != 200:
            self.log.errors.append(f"feedback {execution}/{finished} on {action_id}: {r.status_code} {r.text}")

    def _install(self, dep: Deployment) -> None:
        aid = dep.action_id
        arts = [a for c in dep.chunks for a in c.artifacts]
        self._send(aid, "proceeding", progress=(0, len(arts)), details=["download started"])
        for i, art in enumerate(arts):
            r = self.client.download(art.links.get("download") or art.links["download-http"])
            bad = [f"HTTP {r.status_code}"] if r.status_code != 200 else art.mismatches(r.content)
            if bad:
                self._send(aid, "closed", "failure", details=[f"{art.filename}: {'; '.join(bad)}"])
                return
            self._send(aid, "proceeding", progress=(i + 1, len(arts)), details=[f"{art.filename} verified"])
        versions = {c.version for c in dep.chunks}
        if versions & self.hold:
            return
        if versions & self.fail:
            what = ", ".join(sorted(versions))
            self._send(aid, "closed", "failure", details=[f"install of {what} failed on purpose"])
            return
        for c in dep.chunks:
            self.installed[c.name] = c.version
        self._send(aid, "closed", "success", details=["installed"])

    def wait(self, what: str, cond: Any, timeout: float = 20) -> Any:
        """Wait until ``cond(self)`` is truthy (and return it); fail with the device's errors otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                got = cond(self)
            if got:
                return got
            time.sleep(0.1)
        raise AssertionError(f"{self.client.controller_id}: timed out waiting for {what}; errors: {self.log.errors}")
