"""The shared name validators (fleetd.core.names): whole-value matching, file names, and that none come back."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from fleetd.core import names
from fleetd.core.errors import InvalidArgument

KINDS = {k: v for k, v in vars(names).items() if isinstance(v, names.Kind)}
# A valid example of each kind.
VALID = {"HARDWARE_ID": "dev-01", "CONTROLLER_ID": "ctrl:1", "DEVICE_TYPE": "linux-aarch64",
         "DEVICE_TYPE_PATTERN": "linux-*",
         "DEVICE_NAME": "Kitchen camera", "ARTIFACT_NAME": "camera-app", "TAG_KEY": "site",
         "TAG_VALUE": "home", "ACCOUNT_NAME": "alice@example", "METRIC_NAME": "cpu.temp",
         "ENV_NAME": "HOME_DIR", "DDI_TENANT": "DEFAULT"}
SRC = Path(names.__file__).parent


def test_every_kind_has_an_example() -> None:
    assert set(KINDS) == set(VALID)


@pytest.mark.parametrize("kind", sorted(VALID))
def test_each_validator_takes_its_example_and_refuses_a_trailing_newline(kind: str) -> None:
    v = KINDS[kind]
    assert v.check(VALID[kind]) == VALID[kind]
    for bad in (VALID[kind] + "\n", VALID[kind] + "\r\n", "\n" + VALID[kind], VALID[kind] + "\0"):
        with pytest.raises(InvalidArgument, match=v.what):
            v.check(bad)


@pytest.mark.parametrize("kind", ["DEVICE_NAME", "TAG_VALUE"])
@pytest.mark.parametrize("char", ["\x7f", "\x85", "\u202e", "\u2066", "\u2069", "\u200f"])
def test_display_names_refuse_control_and_bidi_characters(kind: str, char: str) -> None:
    with pytest.raises(InvalidArgument):
        KINDS[kind].check(f"photo{char}gpj.exe")


@pytest.mark.parametrize("bad", ["", ".", "..", ".fleet-manifest.json", "a/b", "a\\b", "nul\0.bin",
                                 "line\n.bin", "tab\t.bin", "del\x7f.bin", "rlo\u202egpj.exe", "lri\u2066x",
                                 "pdi\u2069x", "lre\u202ax", "x" * 256, "é" * 128])
def test_file_names_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="file name"):
        names.check_file_name(bad)


@pytest.mark.parametrize("good", ["app", "firmware-1.2.3.bin", ".hidden", "x" * 255, "é" * 127, "日本語.txt",
                                  "with space.tar.gz"])
def test_file_names_accepted(good: str) -> None:
    assert names.check_file_name(good) == good


def test_search_text_is_capped_and_escaped() -> None:
    assert names.like_pattern("50%_a\\b", "search") == "%50\\%\\_a\\\\b%"
    assert names.like_pattern("user.", "action", prefix=True) == "user.%"
    with pytest.raises(InvalidArgument, match="search must be at most 200"):
        names.like_pattern("x" * 201, "search")


def _regex_calls(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, pattern) of every string literal given to a re function as its pattern."""
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "re"
                and node.func.attr in ("compile", "match", "search") and node.args
                and isinstance(node.args[0], (ast.Constant, ast.JoinedStr, ast.BinOp))):
            parts = [n.value for n in ast.walk(node.args[0]) if isinstance(n, ast.Constant)
                     and isinstance(n.value, str)]
            if parts:
                found.append((node.lineno, parts[-1]))
    return found


def dollar_anchored(root: Path) -> list[str]:
    """``file:line: pattern`` of each ``$``-anchored pattern in the Python files under ``root``."""
    offenders = []
    for path in sorted(root.rglob("*.py")):
        for line, pattern in _regex_calls(ast.parse(path.read_text(), str(path))):
            if pattern.endswith("$") and not pattern.endswith("\\$"):
                offenders.append(f"{path.relative_to(root)}:{line}: {pattern!r}")
    return offenders


def test_no_pattern_is_anchored_with_dollar() -> None:
    """``$`` matches before a trailing newline: patterns are matched whole with fullmatch (or end in \\Z)."""
    offenders = dollar_anchored(SRC)
    assert not offenders, "use re.fullmatch instead of a $-anchored pattern:\n" + "\n".join(offenders)


def test_the_ast_check_sees_a_dollar_anchored_pattern() -> None:
    tree = ast.parse('import re\nX = re.compile(r"^[a-z]+$")\nre.match(r"^a" r"b$", s)\n')
    assert [p for _, p in _regex_calls(tree)] == ["^[a-z]+$", "^ab$"]


def test_the_api_refuses_names_with_a_trailing_newline(client: Any, admin_key: str) -> None:
    from tests.conftest import rpc
    from tests.support.devices_helper import TestDevice

    r = TestDevice(client, hardware_id="dev-1\n").enroll()
    assert r.status_code == 400 and "hardware_id 'dev-1\\n' must be" in r.json()["message"]
    r = rpc(client, "UserService", "CreateKey", {"name": "ci\n", "role": "viewer"}, key=admin_key)
    assert r.status_code == 400 and "key name 'ci\\n' must be" in r.json()["message"]
    r = rpc(client, "DeviceAdminService", "ListDevices", {"tags": {"site\n": "x"}}, key=admin_key)
    assert r.status_code == 400 and "tag key 'site\\n'" in r.json()["message"]
