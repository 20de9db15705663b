"""The request sequences of the three real DDI clients, replayed byte for byte against fleetd.

Each test sends what the client's source sends (headers, bodies with their quirks, the order of requests)
and checks the answer the way that client parses it. Sources read for these facts:

- Zephyr: subsys/mgmt/hawkbit/hawkbit.c and hawkbit_priv.h (zephyrproject-rtos/zephyr), fixed-size JSON
  descriptors parsed by lib/utils/json.c.
- SWUpdate: suricatta/server_hawkbit.c and corelib/channel_curl.c (sbabic/swupdate).
- rauc-hawkbit-updater: src/hawkbit-client.c (rauc/rauc-hawkbit-updater).

In process (real app, on SQLite and on PostgreSQL); the libcurl details (HEAD, resume, ``Expect: 100-continue``)
are checked against a real ``fleetd serve`` with the real curl in test_swupdate_curl_against_a_real_server.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from fleetd.accounts.audit import SYSTEM
from fleetd.artifacts import catalog as artifacts
from fleetd.fleet import Fleet

from ..conftest import rpc
from .conftest import Fleetd

# The in-process sequences run on SQLite and on PostgreSQL (the real-server one is not parametrized).
pytestmark = pytest.mark.both_backends

FIRMWARE = b"\x3d\xb8\xf3\x96" + bytes(range(256)) * 40  # an MCUboot-ish image, 10 KiB


# --- helpers ----------------------------------------------------------------------------------

def call(client: Any, key: str, service: str, method: str, **body: Any) -> dict[str, Any]:
    r = rpc(client, service, method, body, key=key)
    assert r.status_code == 200, r.text
    return dict(r.json())


def push_firmware(fleet: Fleet, name: str, version: str, file_name: str, device_type: str,
                  data: bytes = FIRMWARE) -> None:
    blob = asyncio.run(fleet.blobs.put_bytes(data))
    fleet.store.write_sync(lambda c: artifacts.create(
        c, SYSTEM, fleet.keys.signing_key, name=name, version=version, kind="firmware", device_types=[device_type],
        sha256=blob.sha256, size=blob.size, file_name=file_name, install_spec=None))


def deploy(client: Any, key: str, hardware_id: str, artifact: str) -> str:
    dev = next(d for d in call(client, key, "DeviceAdminService", "ListDevices", search=hardware_id)["devices"]
               if d["hardware_id"] == hardware_id)
    return str(call(client, key, "DeviceAdminService", "Deploy", device_ids=[dev["id"]],
                    artifact=artifact)["action_ids"][0])


def action_state(client: Any, key: str, hardware_id: str, action_id: str) -> str:
    dev = next(d for d in call(client, key, "DeviceAdminService", "ListDevices", search=hardware_id)["devices"]
               if d["hardware_id"] == hardware_id)
    acts = call(client, key, "DeviceAdminService", "ListActions", device_id=dev["id"])["actions"]
    return str(next(a for a in acts if a["id"] == action_id)["state"])


def asprintf(template: str, *values: object) -> str:
    """Fill a C format string's %d/%s in order, as the clients build their JSON bodies (no escaping)."""
    parts = re.split(r"%[ds]", template)
    assert len(parts) == len(values) + 1
    return parts[0] + "".join(str(v) + p for v, p in zip(values, parts[1:], strict=True))


def path_of(href: str) -> str:
    """What a client that strips scheme and host (Zephyr's hawkbit_get_url) requests."""
    u = urlsplit(href)
    return u.path + (f"?{u.query}" if u.query else "")


def complete_json(r: Any) -> Any:
    """Zephyr compares Content-Length with the bytes it got and needs a 200 (response_cb)."""
    assert r.status_code == 200, r.text
    assert r.headers.get("content-length") == str(len(r.content)), r.headers
    assert "chunked" not in r.headers.get("transfer-encoding", "")
    return r.json()


# --- Zephyr --------------------------------------------------------------------------------------

# Zephyr's controller id is "<CONFIG_BOARD>-<hex device id>"; older releases hardcode the tenant "default"
# (HAWKBIT_JSON_URL "/default/controller/v1" in include/zephyr/mgmt/hawkbit.h), newer ones CONFIG_HAWKBIT_TENANT.
ZEPHYR_ID = "nrf52840dk_nrf52840-00112233aabbccdd"
ZEPHYR_JSON = "application/json;charset=UTF-8"  # HTTP_HEADER_CONTENT_TYPE_JSON


def zephyr_href_tail(href: str, marker: str, limit: int) -> str:
    """hawkbit_find_deployment_base / _cancelAction_base / hawkbit_parse_deployment: strstr(href, marker), and the
    rest must fit the fixed buffer (DEPLOYMENT_BASE_SIZE and CANCEL_BASE_SIZE 50, DOWNLOAD_HTTP_SIZE 200)."""
    at = href.find(marker)
    assert at >= 0, f"Zephyr: missing {marker!r} in href {href!r}"
    tail = href[at:]
    assert len(tail) <= limit - 1, f"Zephyr: {tail!r} is too big (max {limit - 1})"
    return tail


@pytest.mark.parametrize("tenant", ["default", "DEFAULT"])
def test_zephyr_sequence(client, fleet, admin_key, tenant) -> None:  # type: ignore[no-untyped-def]
    gw = call(client, admin_key, "DdiService", "CreateGatewayToken", device_type="nrf52840")["token"]
    # CONFIG_HAWKBIT_DDI_GATEWAY_SECURITY: the only header Zephyr adds ("Authorization: GatewayToken ...").
    h = {"Authorization": f"GatewayToken {gw}"}
    base = f"/{tenant}/controller/v1/{ZEPHYR_ID}"

    # s_probe: poll; the sleep must be exactly HH:MM:SS (strlen == HAWKBIT_SLEEP_LENGTH 8).
    poll = complete_json(client.get(base, headers=h))
    assert len(poll["config"]["polling"]["sleep"]) == 8
    assert "configData" in poll["_links"]
    # s_config_device: the default callback's body, descriptor order mode, data, id, time, status.
    cfg = ('{"mode":"merge","data":{"VIN":"00112233aabbccdd","hwRevision":"3"},"id":"","time":"",'
           '"status":{"execution":"closed","result":{"finished":"success"}}}')
    r = client.put(base + "/configData", content=cfg, headers={**h, "Content-Type": ZEPHYR_JSON})
    assert r.status_code == 200, r.text
    # Newer Zephyr goes straight back to s_probe: a configData link still there would loop forever.
    assert "configData" not in complete_json(client.get(base, headers=h)).get("_links", {})

    push_firmware(fleet, "zephyr-fw", "1.1.0", "zephyr.signed.bin", "nrf52840")
    aid = deploy(client, admin_key, ZEPHYR_ID, "zephyr-fw@1.1.0")
    links = complete_json(client.get(base, headers=h))["_links"]
    zephyr_href_tail(links["deploymentBase"]["href"], "deploymentBase/", 50)

    # s_probe_deployment_base and hawkbit_parse_deployment.
    dep = complete_json(client.get(path_of(links["deploymentBase"]["href"]), headers=h))
    num = int(dep["id"])  # strtol(res->id): the id is a string
    assert num > 0
    assert len(dep["deployment"]["chunks"]) == 1  # HAWKBIT_DEP_MAX_CHUNKS
    [chunk] = dep["deployment"]["chunks"]
    assert chunk["part"] == "bApp"  # "Only part 'bApp' is supported"
    assert len(chunk["artifacts"]) == 1  # HAWKBIT_DEP_MAX_CHUNK_ARTS
    [art] = chunk["artifacts"]
    assert re.fullmatch(r"[0-9a-f]{64}", art["hashes"]["sha256"])  # hex2bin into 32 bytes
    assert isinstance(art["size"], int) and art["size"] < 2**31  # JSON_TOK_NUMBER is an int32
    # Older releases: strstr(href, "/DEFAULT/controller/v1"), whatever tenant spelling they polled with.
    download = zephyr_href_tail(art["_links"]["download-http"]["href"], "/DEFAULT/controller/v1", 200)
    assert "md5sum-http" in art["_links"]

    # s_download: one plain GET, 200 only; Content-Length drives progress and the completeness check.
    r = client.get(path_of(download) if "://" in download else download, headers=h)
    assert r.status_code == 200 and r.headers["content-length"] == str(art["size"])
    assert hashlib.sha256(r.content).hexdigest() == art["hashes"]["sha256"]
    # Zephyr sends no feedback before the reboot. After it, the poll still offers the same action; Zephyr sees
    # its stored action id (Preventing repeated attempt to install) and reports closed/success (s_report).
    links = complete_json(client.get(base, headers=h))["_links"]
    again = complete_json(client.get(path_of(links["deploymentBase"]["href"]), headers=h))
    assert int(again["id"]) == num
    fb = asprintf('{"id":"%d","status":{"execution":"closed","result":{"finished":"success"}}}', num)
    r = client.post(f"{base}/deploymentBase/{num}/feedback", content=fb, headers={**h, "Content-Type": ZEPHYR_JSON})
    assert r.status_code == 200, r.text
    assert action_state(client, admin_key, ZEPHYR_ID, aid) == "succeeded"
    assert "deploymentBase" not in complete_json(client.get(base, headers=h))["_links"]

    # s_cancel: straight from the poll's link to its feedback, no GET of the cancel resource.
    push_firmware(fleet, "zephyr-fw", "1.2.0", "zephyr.signed.bin", "nrf52840")
    aid2 = deploy(client, admin_key, ZEPHYR_ID, "zephyr-fw@1.2.0")
    href = complete_json(client.get(base, headers=h))["_links"]["deploymentBase"]["href"]
    assert client.get(path_of(href), headers=h).status_code == 200
    call(client, admin_key, "DeviceAdminService", "CancelAction", id=aid2)
    cancel = complete_json(client.get(base, headers=h))["_links"]["cancelAction"]["href"]
    zephyr_href_tail(cancel, "cancelAction/", 50)
    body = '{"status":{"execution":"closed","result":{"finished":"success"}}}'
    r = client.post(path_of(cancel) + "/feedback", content=body, headers={**h, "Content-Type": ZEPHYR_JSON})
    assert r.status_code == 200, r.text
    # Back to s_probe: the cancellation must be gone, or Zephyr answers it again and again.
    assert "cancelAction" not in complete_json(client.get(base, headers=h)).get("_links", {})


# --- SWUpdate ------------------------------------------------------------------------------------

SWU = b"070701" + b"\0" * 4090  # a .swu is a cpio archive
SWU_ID = "board-0042"


def swupdate_headers(token: str) -> dict[str, str]:
    """channel_set_content_type: on every JSON request, GETs included."""
    return {"Authorization": f"TargetToken {token}", "Content-Type": "application/json",
            "Accept": "application/json", "charsets": "utf-8"}


def swupdate_feedback(num: int, cnt: int, of: int, finished: str, execution: str, details: str) -> str:
    """json_hawkbit_deployment_feedback, as asprintf fills it: id as a number, details spliced in raw."""
    return asprintf('{ "id": %d, "time": "20251124T041500", "status": { "result": { "progress": { "cnt" : %d, '
                    '"of" : %d }, "finished": "%s" }, "execution": "%s", "details" : [ %s ] } }',
                    num, cnt, of, finished, execution, details)


def test_swupdate_sequence(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    tok = call(client, admin_key, "DdiService", "CreateTargetToken", device="board-0042",
               device_type="stm32mp1")["token"]
    h = swupdate_headers(tok)
    base = f"/DEFAULT/controller/v1/{SWU_ID}"
    poll = complete_json(client.get(base, headers=h))
    assert "configData" in poll["_links"]
    # server_send_target_data: the identify section, with id "" and an empty detail.
    cfg = ('{ "id": "", "time": "20251124T041500", "status": { "result": { "finished": "success" }, '
           '"execution": "closed", "details" : [ "" ] }, "data" : {  "board": "stm32mp1","hwrev": "2.0" } }')
    r = client.put(base + "/configData", content=cfg, headers=h)
    assert r.status_code == 200, r.text

    push_firmware(fleet, "rootfs", "2.1.0", "core-image-2.1.0.swu", "stm32mp1", SWU)
    aid = deploy(client, admin_key, SWU_ID, "rootfs@2.1.0")

    def deployment() -> tuple[int, dict[str, Any]]:
        # server_get_deployment_info: cancelAction wins over deploymentBase; json_object_get_int on "id".
        links = complete_json(client.get(base, headers=h))["_links"]
        assert "cancelAction" not in links
        dep = complete_json(client.get(links["deploymentBase"]["href"], headers=h))
        return int(dep["id"]), dep

    num, dep = deployment()
    assert dep["deployment"]["update"] in ("forced", "attempt")  # json_get_deployment_update_action
    [chunk] = dep["deployment"]["chunks"]
    assert all(isinstance(chunk[k], str) for k in ("part", "version", "name"))
    [art] = chunk["artifacts"]
    assert art["filename"].endswith(".swu")  # anything else: "is not a SWU image, skipping"
    assert isinstance(art["size"], int) and isinstance(art["hashes"]["sha1"], str)
    url = art["_links"]["download"]["href"]  # preferred over download-http

    # server_install_update: "Installing Update Chunk Artifacts." (cnt = chunk index, of = chunk count).
    r = client.post(f"{base}/deploymentBase/{num}/feedback", headers=h,
                    content=swupdate_feedback(num, 0, 1, "none", "proceeding", '"Installing Update Chunk Artifacts."'))
    assert r.status_code == 200, r.text
    # channel_get_file: HEAD (CURLOPT_NOBODY) for the size, then GET; a dropped transfer resumes with Range.
    dl = {"Authorization": f"TargetToken {tok}", "Content-Type": "application/octet-stream",
          "Accept": "application/octet-stream"}
    head = client.head(url, headers=dl)
    assert head.status_code == 200 and head.headers["content-length"] == str(len(SWU)) and not head.content
    first = client.get(url, headers={**dl, "Range": "bytes=0-999"})
    rest = client.get(url, headers={**dl, "Range": "bytes=1000-"})
    assert (first.status_code, rest.status_code) == (206, 206)
    assert hashlib.sha1(first.content + rest.content).hexdigest() == art["hashes"]["sha1"]
    # server_check_during_dwl polls (and re-reads the deployment) while downloading.
    assert deployment()[0] == num
    # process_notification_thread: cnt = percent, of = step (0); several details; "of": 0 must not divide.
    details = '"ERROR : nothing", "Installing image", " "'
    r = client.post(f"{base}/deploymentBase/{num}/feedback", headers=h,
                    content=swupdate_feedback(num, 3, 0, "none", "proceeding", details))
    assert r.status_code == 200, r.text
    # No details at all: asprintf splices " " → "details" : [   ].
    r = client.post(f"{base}/deploymentBase/{num}/feedback", headers=h,
                    content=swupdate_feedback(num, 1, 1, "none", "proceeding", " "))
    assert r.status_code == 200, r.text
    assert action_state(client, admin_key, SWU_ID, aid) == "installing"
    # Reboot; STATE_TESTING: server_handle_initial_state finds the action again and closes it.
    assert deployment()[0] == num
    r = client.post(f"{base}/deploymentBase/{num}/feedback", headers=h,
                    content=swupdate_feedback(num, 0, 0, "success", "closed", '"Update Installed."'))
    assert r.status_code == 200, r.text
    assert action_state(client, admin_key, SWU_ID, aid) == "succeeded"

    # A cancellation: GET the cancel resource for its stopId, then server_send_cancel_reply.
    push_firmware(fleet, "rootfs", "2.2.0", "core-image-2.2.0.swu", "stm32mp1", SWU + b"2")
    aid2 = deploy(client, admin_key, SWU_ID, "rootfs@2.2.0")
    deployment()
    call(client, admin_key, "DeviceAdminService", "CancelAction", id=aid2)
    cancel_url = complete_json(client.get(base, headers=h))["_links"]["cancelAction"]["href"]
    body = complete_json(client.get(cancel_url, headers=h))
    stop = int(body["cancelAction"]["stopId"])
    assert int(body["id"]) == stop
    reply = asprintf('{ "id": %d, "time": "20251124T041500", "status": { "result": { "finished": "success" }, '
                     '"execution": "closed", "details" : [ "cancellation acknowledged." ] } }', stop)
    r = client.post(cancel_url + "/feedback", content=reply, headers=h)
    assert r.status_code == 200, r.text
    assert "cancelAction" not in complete_json(client.get(base, headers=h)).get("_links", {})


# --- rauc-hawkbit-updater ------------------------------------------------------------------------------

RAUC_ID = "rauc-gw-7"


def test_rauc_hawkbit_updater_sequence(client, fleet, admin_key) -> None:  # type: ignore[no-untyped-def]
    tok = call(client, admin_key, "DdiService", "CreateTargetToken", device=RAUC_ID, device_type="imx8")["token"]
    # rest_request: this Accept on every call, the Content-Type only with a body.
    h = {"Accept": "application/json;charset=UTF-8", "Authorization": f"TargetToken {tok}"}
    hb = {**h, "Content-Type": "application/json;charset=UTF-8"}
    base = f"/DEFAULT/controller/v1/{RAUC_ID}"  # build_api_url
    poll = complete_json(client.get(base, headers=h))
    # json_get_sleeptime: strptime("%T").
    assert re.fullmatch(r"\d\d:\d\d:\d\d", poll["config"]["polling"]["sleep"])
    assert "configData" in poll["_links"]
    # identify(): json_build_status(NULL id, NULL detail, "success", "closed", [device] section): no mode, no id.
    cfg = {"time": "20251124T041500", "status": {"result": {"finished": "success"}, "execution": "closed"},
           "data": {"product": "imx8-gateway", "hw_revision": "2"}}
    assert client.put(base + "/configData", content=json.dumps(cfg), headers=hb).status_code == 200

    push_firmware(fleet, "bundle", "5.0.0", "update-5.0.0.raucb", "imx8")
    aid = deploy(client, admin_key, RAUC_ID, "bundle@5.0.0")
    poll = complete_json(client.get(base, headers=h))
    dep = complete_json(client.get(poll["_links"]["deploymentBase"]["href"], headers=h))
    action_id = dep["id"]
    assert isinstance(action_id, str)  # json_get_string(resp_root, "$.id")
    chunk = dep["deployment"]["chunks"][0]
    art = chunk["artifacts"][0]
    assert isinstance(chunk["version"], str) and isinstance(chunk["name"], str) and isinstance(art["size"], int)
    url = art["_links"].get("download", {}).get("href") or art["_links"]["download-http"]["href"]
    # get_binary: Accept octet-stream, and nothing but a 200 counts.
    r = client.get(url, headers={"Authorization": f"TargetToken {tok}", "Accept": "application/octet-stream"})
    assert r.status_code == 200 and hashlib.sha1(r.content).hexdigest() == art["hashes"]["sha1"]

    def feedback(detail: str, finished: str, execution: str) -> None:
        # json_build_status with an id: "id" (a string), "time", "status" {"result", "execution", "details"}.
        body = {"id": action_id, "time": "20251124T041501",
                "status": {"result": {"finished": finished}, "execution": execution, "details": [detail]}}
        r = client.post(f"{base}/deploymentBase/{action_id}/feedback", content=json.dumps(body), headers=hb)
        assert r.status_code == 200, r.text

    feedback("Download complete. 1.00 MB/s", "none", "proceeding")
    feedback("File checksum OK.", "none", "proceeding")
    feedback("Installing: 40%", "none", "proceeding")
    assert action_state(client, admin_key, RAUC_ID, aid) == "installing"
    feedback("Software bundle installed successfully.", "success", "closed")
    assert action_state(client, admin_key, RAUC_ID, aid) == "succeeded"


# --- the same against a real server, with the real libcurl -------------------------------------------------

@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_swupdate_curl_against_a_real_server(fleetd: Fleetd, tmp_path: Path) -> None:
    """What libcurl does for SWUpdate on the wire: a GET with a JSON Content-Type, HEAD for the size, a resumed
    transfer (CURLOPT_RESUME_FROM_LARGE), POST and PUT bodies behind ``Expect: 100-continue``."""
    tok = fleetd.target_token("curl-board", "curlboard")["token"]
    swu = SWU + b"curl"
    fleetd.push("curl-rootfs", "1.0.0", swu, "curlboard", kind="firmware", file_name="curl-rootfs.swu")
    dev = fleetd.find_device("curl-board")
    assert dev is not None
    aid = fleetd.deploy(dev["id"], "curl-rootfs@1.0.0")
    base = f"{fleetd.server.url}/DEFAULT/controller/v1/curl-board"

    def curl(*args: str) -> str:
        auth = f"Authorization: TargetToken {tok}"
        p = subprocess.run(["curl", "-sS", "--fail", "--cacert", fleetd.server.ca, "-H", auth, *args],
                           capture_output=True, timeout=30)
        assert p.returncode == 0, p.stderr.decode()
        return p.stdout.decode("latin-1")

    json_h = ["-H", "Content-Type: application/json", "-H", "Accept: application/json", "-H", "charsets: utf-8"]
    poll = json.loads(curl(*json_h, base))
    dep = json.loads(curl(*json_h, poll["_links"]["deploymentBase"]["href"]))
    num = int(dep["id"])
    art = dep["deployment"]["chunks"][0]["artifacts"][0]
    url = art["_links"]["download"]["href"]
    octet = ["-H", "Content-Type: application/octet-stream", "-H", "Accept: application/octet-stream"]
    head = curl(*octet, "--head", url)
    assert re.search(rf"(?im)^content-length: {len(swu)}\r?$", head), head
    out = tmp_path / "dl.swu"
    out.write_bytes(swu[:1500])  # what arrived before the connection dropped
    curl(*octet, "-C", "-", "-o", str(out), url)
    assert hashlib.sha1(out.read_bytes()).hexdigest() == art["hashes"]["sha1"]

    body = swupdate_feedback(num, 0, 0, "success", "closed", '"Update Installed."')
    curl(*json_h, "-H", "Expect: 100-continue", "--data-binary", body, f"{base}/deploymentBase/{num}/feedback")
    fleetd.wait_action(dev["id"], aid, "succeeded")
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{ "id": "", "time": "20251124T041500", "status": { "result": { "finished": "success" }, '
                   '"execution": "closed", "details" : [ "" ] }, "data" : {  "hwrev": "curl" } }')
    curl(*json_h, "-H", "Expect: 100-continue", "-T", str(cfg), f"{base}/configData")  # -T: CURLOPT_UPLOAD, a PUT
    assert fleetd.device(dev["id"])["inventory"]["extra"]["hwrev"] == "curl"
