"""The shared artifact vectors (tests/vectors/manifests.json), from the server's side.

The file must be exactly what tests/vectors/generate.py makes with today's
server code (so the manifest format cannot drift without the agent's tests
seeing it), and the server's own verification must reach every case's verdict.
The agent's side is tests/agent/test_apps_verify.py. The device-type pattern vectors
(tests/vectors/device_types.txt) hold the server, the agent and the RTOS shim (tests/rtos/test_dtype.py) to one rule.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
from typing import Any

import msgspec
import pytest

from fleetd.artifacts.catalog import ArtifactRef, canonical_json, check_metadata
from fleetd.cli.devclient import Download, VerificationError, verify_artifact
from fleetd.core.errors import InvalidArgument
from fleetd.core.names import DEVICE_TYPE, DEVICE_TYPE_PATTERN, device_type_matches
from fleetd.devices.devauth import verify_signature
from fleetd.rollouts import storage as rollout_storage
from fleetd.rollouts.progress import Target
from fleetd.store.dialect import dialect_of
from tests.vectors.device_types import Case, matching, patterns
from tests.vectors.generate import OUT, generate

VECTORS = json.loads(OUT.read_bytes())
CASES = {c["name"]: c for c in VECTORS["cases"]}


def test_the_vectors_file_is_what_generate_makes() -> None:
    assert OUT.read_bytes() == generate(), "run: python tests/vectors/generate.py"


def test_the_cases_cover_every_check() -> None:
    checks = {c["check"] for c in VECTORS["cases"]}
    assert checks == {None, "signature", "offline_signature", "manifest", "device_type", "file"}
    assert {c["verdict"] for c in VECTORS["cases"]} == {"accept", "reject"}


def server_verdict(case: dict[str, Any]) -> str:
    """Verify as the server's device client does (devclient.verify_artifact), offline signatures as the
    server checks them when storing one (devauth.verify_signature)."""
    art = case["artifact"]
    ref = msgspec.convert(art, ArtifactRef)
    data = base64.b64decode(case["file"])
    key = base64.b64decode(VECTORS["signing_public_key"])
    try:
        verify_artifact(ref, key, Download(sha256=hashlib.sha256(data).hexdigest(), size=len(data)),
                        device_type=case["device_type"])
    except VerificationError:
        return "reject"
    required = {base64.b64decode(k) for k in case["required_offline_keys"]}
    if required and not any(
            base64.b64decode(s.public_key) in required
            and verify_signature(base64.b64decode(s.public_key), base64.b64decode(s.signature),
                                 ref.manifest.encode())
            for s in ref.offline_signatures):
        return "reject"
    return "accept"


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_server_reaches_each_verdict(name: str) -> None:
    assert server_verdict(CASES[name]) == CASES[name]["verdict"], CASES[name]["why"]


@pytest.mark.parametrize("name", ["good", "good_install_spec"])
def test_good_manifests_are_canonical_json(name: str) -> None:
    text = CASES[name]["artifact"]["manifest"]
    assert canonical_json(json.loads(text)) == text.encode()


@pytest.mark.parametrize("case", matching(), ids=lambda c: f"{c.verdict}:{c.pattern}:{c.device_type}")
def test_the_server_matches_device_types_as_the_vectors_say(case: Case) -> None:
    assert DEVICE_TYPE.ok(case.device_type), "a vector's device type must be a valid one"
    assert device_type_matches(case.pattern, case.device_type) is (case.verdict == "match"), case.why


@pytest.mark.parametrize("case", patterns(), ids=lambda c: f"{c.verdict}:{c.pattern}")
def test_the_server_takes_exactly_the_valid_patterns(case: Case) -> None:
    assert DEVICE_TYPE_PATTERN.ok(case.pattern) is (case.verdict == "valid"), case.why
    if case.verdict == "invalid":
        with pytest.raises(InvalidArgument, match="or a pattern"):
            check_metadata("beat", "1.0.0", "app", [case.pattern], "beat.sh")


def test_sql_matches_as_the_function_does() -> None:
    # Rollout targets and the compatible-artifact list match in SQL, through the store's dialect (GLOB on SQLite).
    conn = sqlite3.connect(":memory:")
    d = dialect_of(conn)
    for case in matching():
        want = case.verdict == "match"
        assert conn.execute(f"SELECT {d.star_match('?', '?')}", [case.device_type, case.pattern]).fetchone()[0] == want
        got = conn.execute(f"SELECT {d.json_list_star_matches('?')}", [json.dumps(["zz-none", case.pattern]),
                                                                        case.device_type]).fetchone()[0]
        assert got == want, case
    for case in patterns():
        if case.verdict == "invalid":  # GLOB would read ? and [ as wildcards: such a pattern never reaches SQL
            with pytest.raises(InvalidArgument):
                rollout_storage.count_target_devices(conn, Target({}, [case.pattern], []))
