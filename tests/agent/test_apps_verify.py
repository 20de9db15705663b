"""The shared artifact vectors (tests/vectors/manifests.json), from the agent's side: fleet_agent.verify must
reach every verdict the server's code reaches (tests/test_vectors.py), refusing at the step each case names."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from fleet_agent import names
from fleet_agent.verify import VerificationError, check_digest, verify_file, verify_manifest
from tests.vectors.device_types import Case, matching, patterns
from tests.vectors.generate import _artifact

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "manifests.json").read_bytes())
CASES = {c["name"]: c for c in VECTORS["cases"]}
KEY = base64.b64decode(VECTORS["signing_public_key"])


def agent_check(case: dict[str, Any]) -> str | None:
    """None when the agent accepts the case, else the check that refused it."""
    data = base64.b64decode(case["file"])
    offline = [base64.b64decode(k) for k in case["required_offline_keys"]]
    try:
        manifest = verify_manifest(case["artifact"], KEY, case["device_type"], offline)
        check_digest(len(data), hashlib.sha256(data).hexdigest(), manifest)
    except VerificationError as e:
        assert e.message, "a refusal must say why"
        return e.check
    return None


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_agent_reaches_each_verdict_at_the_named_check(name: str) -> None:
    case = CASES[name]
    got = agent_check(case)
    assert ("accept" if got is None else "reject") == case["verdict"], case["why"]
    assert got == case["check"]


def test_the_signed_bytes_are_the_string_as_received() -> None:
    # Re-serializing the manifest (here: with spaces) changes the bytes, and the signature no longer holds.
    case = CASES["good_install_spec"]
    art = dict(case["artifact"], manifest=json.dumps(json.loads(case["artifact"]["manifest"]), sort_keys=True))
    with pytest.raises(VerificationError) as e:
        verify_manifest(art, KEY, case["device_type"])
    assert e.value.check == "signature"


def test_a_manifest_is_refused_for_a_device_type_it_does_not_list() -> None:
    case = CASES["good"]
    with pytest.raises(VerificationError, match="not for this device's 'rtos-nrf52'") as e:
        verify_manifest(case["artifact"], KEY, "rtos-nrf52")
    assert e.value.check == "device_type"


def test_verify_file_hashes_the_file_on_disk(tmp_path: Path) -> None:
    case = CASES["good"]
    manifest = verify_manifest(case["artifact"], KEY, case["device_type"])
    f = tmp_path / "blob"
    f.write_bytes(base64.b64decode(case["file"]))
    verify_file(f, manifest)
    f.write_bytes(base64.b64decode(CASES["tampered_file"]["file"]))
    with pytest.raises(VerificationError, match="SHA-256"):
        verify_file(f, manifest)


@pytest.mark.parametrize("case", matching(), ids=lambda c: f"{c.verdict}:{c.pattern}:{c.device_type}")
def test_the_agent_matches_device_types_as_the_vectors_say(case: Case) -> None:
    assert names.device_type_matches(case.pattern, case.device_type) is (case.verdict == "match"), case.why


@pytest.mark.parametrize("case", patterns(), ids=lambda c: f"{c.verdict}:{c.pattern}")
def test_the_agent_takes_only_valid_patterns_from_a_manifest(case: Case) -> None:
    # An invalid pattern in a manifest covers nothing, even the string itself (the server never signs one).
    assert names.DEVICE_TYPE_PATTERN.ok(case.pattern) is (case.verdict == "valid"), case.why


def test_a_signed_pattern_the_server_would_refuse_covers_nothing() -> None:
    # "*" alone matches every name but is not a valid pattern (the server refuses it at push): a manifest
    # signed with it anyway is refused, though the signature holds.
    case = CASES["device_type_pattern"]
    art = _artifact(base64.b64decode(case["file"]), version="1.2.0", device_types=("*",))
    assert names.device_type_matches("*", case["device_type"])
    with pytest.raises(VerificationError) as e:
        verify_manifest(art, KEY, case["device_type"])
    assert e.value.check == "device_type"
