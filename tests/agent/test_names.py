"""The agent's name checks (fleet_agent.names): whole-value matching, file names the server gives, and that
``$``-anchored patterns do not come back into the agent."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import fleet_agent
from fleet_agent import names
from fleet_agent.client import AgentError, parse_join_token
from fleet_agent.config import ConfigError
from fleet_agent.identity import check_device_type, check_hardware_id
from fleet_agent.queue import DiskQueue, queue_stats
from fleetd.core import names as server_names
from fleetd.core.errors import InvalidArgument
from tests.core.test_names import dollar_anchored

KINDS = {k: v for k, v in vars(names).items() if isinstance(v, names.Kind)}
# A valid example of each kind.
VALID = {"HARDWARE_ID": "dev-01", "DEVICE_TYPE": "linux-aarch64", "DEVICE_TYPE_PATTERN": "linux-*",
         "APP_NAME": "camera-app",
         "VERSION": "1.2.3-rc.1+b5", "ENV_NAME": "HOME_DIR", "SHA256": "ab" * 32}
# The server's kind each agent kind must agree with.
SERVER_KIND = {"HARDWARE_ID": "HARDWARE_ID", "DEVICE_TYPE": "DEVICE_TYPE", "DEVICE_TYPE_PATTERN": "DEVICE_TYPE_PATTERN",
               "APP_NAME": "ARTIFACT_NAME",
               "ENV_NAME": "ENV_NAME"}


def test_every_kind_has_an_example() -> None:
    assert set(KINDS) == set(VALID)


@pytest.mark.parametrize("kind", sorted(VALID))
def test_each_validator_takes_its_example_and_refuses_a_trailing_newline(kind: str) -> None:
    v = KINDS[kind]
    assert v.check(VALID[kind]) == VALID[kind]
    for bad in (VALID[kind] + "\n", VALID[kind] + "\r\n", "\n" + VALID[kind], VALID[kind] + "\0"):
        with pytest.raises(names.BadName, match=v.what):
            v.check(bad)


@pytest.mark.parametrize("kind", sorted(SERVER_KIND))
def test_the_agent_and_the_server_agree_on_each_shared_kind(kind: str) -> None:
    assert KINDS[kind].pattern.pattern == getattr(server_names, SERVER_KIND[kind]).pattern.pattern


def test_identity_refuses_a_trailing_newline() -> None:
    with pytest.raises(ConfigError, match="hardware id 'dev-01\\\\n' must be"):
        check_hardware_id("dev-01\n")
    with pytest.raises(ConfigError, match="device type 'linux-aarch64\\\\n' must be"):
        check_device_type("linux-aarch64\n")


def test_a_join_token_part_with_a_newline_is_malformed() -> None:
    fp, tid, secret = "ab" * 32, "1c4efbcf3a71", "34e4466f4a4f72bd2ead76bd266d4384"
    assert parse_join_token(f"fdj1.{fp}.{tid}.{secret}").ca_fingerprint == fp
    for bad in (f"fdj1.{fp}\n.{tid}.{secret}", f"fdj1.{fp}.{tid}\n.{secret}"):
        with pytest.raises(AgentError, match="malformed"):
            parse_join_token(bad)


def test_a_queue_file_with_a_trailing_newline_is_not_an_item(tmp_path: Path) -> None:
    (tmp_path / "0000000000000001.json\n").write_text("{}")
    assert queue_stats(tmp_path) == {"items": 0, "bytes": 0}
    q = DiskQueue(tmp_path)
    assert len(q) == 0 and q.peek(10) == []


@pytest.mark.parametrize("bad", ["", ".", "..", ".fleet-manifest.json", "a/b", "../x", "a\\b", "nul\0.bin",
                                 "x.bin\n", "tab\t.bin", "del\x7f.bin", "c1\x85.bin", "rlo\u202egpj.exe",
                                 "lri\u2066x", "lrm\u200ex", "x" * 256, "é" * 128, "surrogate\udc80"])
def test_file_names_refused(bad: str) -> None:
    with pytest.raises(names.BadName, match="file name"):
        names.check_file_name(bad)


@pytest.mark.parametrize("good", ["app", "firmware-1.2.3.bin", ".hidden", "x" * 255, "é" * 127, "日本語.txt",
                                  "with space.tar.gz"])
def test_file_names_accepted(good: str) -> None:
    assert names.check_file_name(good) == good


@given(st.text(max_size=300) | st.sampled_from(sorted(server_names.RESERVED_FILE_NAMES)))
def test_the_agent_refuses_every_file_name_the_server_refuses(name: str) -> None:
    try:
        server_names.check_file_name(name)
    except InvalidArgument:
        with pytest.raises(names.BadName):
            names.check_file_name(name)


def test_no_agent_pattern_is_anchored_with_dollar() -> None:
    """``$`` matches before a trailing newline: the agent matches patterns whole with fullmatch (or ``\\Z``)."""
    offenders = dollar_anchored(Path(fleet_agent.__file__).parent)
    assert not offenders, "use re.fullmatch instead of a $-anchored pattern:\n" + "\n".join(offenders)
