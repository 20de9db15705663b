"""configData and feedback bodies: the three modes land in the device's inventory, and under hypothesis any
body gets 200 or a 4xx with a JSON message — never a 5xx — and an invalid one changes nothing."""

from __future__ import annotations

import json
import string
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .client import CONFIG_MODES, EXECUTIONS, FINISHED, DdiClient
from .conftest import Fleetd

pytestmark = pytest.mark.e2e
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def config_board(fleetd: Fleetd) -> Iterator[tuple[str, DdiClient]]:
    tok = fleetd.target_token("config-board", device_type="ddi-cfg")
    with fleetd.ddi("config-board", tok["token"]) as c:
        yield tok["device_id"], c


def extra(fleetd: Fleetd, device_id: str) -> dict[str, Any]:
    return dict(fleetd.device(device_id)["inventory"].get("extra") or {})


def test_config_data_merges_replaces_and_removes(fleetd: Fleetd, config_board: tuple[str, DdiClient]) -> None:
    device_id, c = config_board
    assert "configData" in c.poll().links  # the server wants the attributes of a new device

    assert c.config_data({"hwRevision": "2", "VIN": "JH4TB2H26CC000000"}).status_code == 200  # mode defaults to merge
    assert extra(fleetd, device_id) == {"hwRevision": "2", "VIN": "JH4TB2H26CC000000"}
    assert "configData" not in c.poll().links  # it has them now

    assert c.config_data({"hwRevision": "3", "board": "rev-c"}, "merge").status_code == 200
    assert extra(fleetd, device_id) == {"hwRevision": "3", "VIN": "JH4TB2H26CC000000", "board": "rev-c"}

    assert c.config_data({"VIN": ""}, "remove").status_code == 200
    assert extra(fleetd, device_id) == {"hwRevision": "3", "board": "rev-c"}

    assert c.config_data({"serial": "0042"}, "replace").status_code == 200
    assert extra(fleetd, device_id) == {"serial": "0042"}


# --- hypothesis -------------------------------------------------------------------------

keys = st.text(string.ascii_letters + string.digits + "._-", min_size=1, max_size=32)
values = st.text(string.printable, max_size=64)
valid_config = st.fixed_dictionaries(
    {"data": st.dictionaries(keys, values, min_size=1, max_size=5)},
    optional={"mode": st.sampled_from(CONFIG_MODES)})
junk = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10),
                 st.lists(st.integers(), max_size=3))
invalid_config = st.one_of(
    st.fixed_dictionaries({"data": st.one_of(junk, st.dictionaries(keys, st.one_of(st.integers(), st.lists(
        st.integers(), max_size=2), st.dictionaries(keys, values, max_size=2)), min_size=1, max_size=3))}),
    st.fixed_dictionaries({"data": st.dictionaries(keys, values, min_size=1, max_size=3),
                           "mode": st.text(max_size=12).filter(lambda m: m not in CONFIG_MODES)}),
    st.fixed_dictionaries({"mode": st.sampled_from(CONFIG_MODES)}),  # no data
    junk,
)


def send_json(c: DdiClient, method: str, path: str, body: Any) -> Any:
    r = c.request(method, path, content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert r.status_code < 500, f"{method} {path} {body!r}: {r.status_code} {r.text}"
    if r.status_code != 200:
        assert 400 <= r.status_code < 500 and r.json().get("message"), f"{body!r}: {r.status_code} {r.text}"
    return r


@SETTINGS
@given(body=valid_config)
def test_any_valid_config_data_is_taken(fleetd: Fleetd, config_board: tuple[str, DdiClient],
                                        body: dict[str, Any]) -> None:
    device_id, c = config_board
    before = extra(fleetd, device_id)
    if len(before) > 40:  # stay far below any cap on attributes per device (hawkBit's default is 100)
        assert c.config_data({"reset": "1"}, "replace").status_code == 200
        before = {"reset": "1"}
    r = send_json(c, "PUT", "/configData", body)
    assert r.status_code == 200, r.text
    mode, data = body.get("mode", "merge"), body["data"]
    want = {"merge": {**before, **data}, "replace": dict(data),
            "remove": {k: v for k, v in before.items() if k not in data}}[mode]
    assert extra(fleetd, device_id) == want


@SETTINGS
@given(body=invalid_config)
def test_invalid_config_data_is_refused_and_changes_nothing(fleetd: Fleetd, config_board: tuple[str, DdiClient],
                                                            body: Any) -> None:
    device_id, c = config_board
    before = extra(fleetd, device_id)
    r = send_json(c, "PUT", "/configData", body)
    assert r.status_code == 400, f"{body!r}: {r.status_code} {r.text}"
    assert extra(fleetd, device_id) == before


# Feedback that keeps the action open; closing ones are covered in test_ddi_flow.
open_feedback = st.fixed_dictionaries(
    {"status": st.fixed_dictionaries(
        {"execution": st.sampled_from([e for e in EXECUTIONS if e not in ("closed", "canceled", "rejected")]),
         "result": st.fixed_dictionaries({"finished": st.just("none")}, optional={
             "progress": st.integers(0, 50).flatmap(lambda of: st.fixed_dictionaries(
                 {"cnt": st.integers(0, of), "of": st.just(of)}))})},
        optional={"details": st.lists(st.text(max_size=40), max_size=3), "code": st.integers(0, 999)})},
    optional={"id": st.integers(0, 10**6).map(str), "time": st.just("20250101T120000")})
# fleetd also takes "downloading" (some clients send it), so it is not a bad execution here.
NOT_BAD = (*EXECUTIONS, "downloading")
bad_feedback = st.one_of(
    junk,
    st.fixed_dictionaries({"status": junk}),
    st.fixed_dictionaries({"status": st.fixed_dictionaries({
        "execution": st.one_of(junk, st.text(max_size=12).filter(lambda e: e not in NOT_BAD)),
        "result": st.fixed_dictionaries({"finished": st.sampled_from(FINISHED)})})}),
    st.fixed_dictionaries({"status": st.fixed_dictionaries({
        "execution": st.sampled_from(EXECUTIONS),
        "result": st.one_of(junk, st.fixed_dictionaries({"finished": st.one_of(
            junk, st.text(max_size=12).filter(lambda f: f not in FINISHED))}))})}),
    st.fixed_dictionaries({"status": st.fixed_dictionaries({
        "execution": st.sampled_from(EXECUTIONS), "result": st.fixed_dictionaries({"finished": st.sampled_from(
            FINISHED)}), "details": st.one_of(st.text(min_size=1, max_size=10), st.lists(st.integers(), min_size=1,
                                                                                          max_size=3))})}),
)


@pytest.fixture(scope="module")
def open_action(fleetd: Fleetd) -> Iterator[tuple[str, str, int, DdiClient]]:
    """(device id, fleetd action id, DDI action id, client) of a deployment the device has fetched."""
    tok = fleetd.target_token("feedback-board", device_type="ddi-cfg")
    fleetd.push("fbfw", "1.0.0", b"feedback\n" * 100, "ddi-cfg", kind="firmware")
    act = fleetd.deploy(tok["device_id"], "fbfw@1.0.0")
    with fleetd.ddi("feedback-board", tok["token"]) as c:
        dep = c.deployment(c.poll().links["deploymentBase"])
        yield tok["device_id"], act, dep.action_id, c


@SETTINGS
@given(body=open_feedback)
def test_feedback_that_keeps_the_action_open_is_answered_and_keeps_it_open(
        fleetd: Fleetd, open_action: tuple[str, str, int, DdiClient], body: dict[str, Any]) -> None:
    device_id, act, aid, c = open_action
    send_json(c, "POST", f"/deploymentBase/{aid}/feedback", body)
    assert fleetd.action(device_id, act)["state"] in ("queued", "downloading", "verifying", "installing")


@SETTINGS
@given(body=bad_feedback)
def test_malformed_feedback_is_refused_and_changes_nothing(
        fleetd: Fleetd, open_action: tuple[str, str, int, DdiClient], body: Any) -> None:
    device_id, act, aid, c = open_action
    before = fleetd.action(device_id, act)
    r = send_json(c, "POST", f"/deploymentBase/{aid}/feedback", body)
    assert r.status_code == 400, f"{body!r}: {r.status_code} {r.text}"
    after = fleetd.action(device_id, act)
    assert (after["state"], after["progress"], after["message"]) == (before["state"], before["progress"],
                                                                    before["message"])
