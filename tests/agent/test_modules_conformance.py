"""docs/agent.md's v3 conformance table against the agent: the states and queries it says are supported are the
ones the agent calls external modules with (and every v3 state is in the table), and the File Tree entries it
says are there are the ones a module finds — and those it says are not, are not."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fleet_agent.modules import MODULES_DIR_ENV, State
from fleet_agent.modules.external import CALLED, TREE_FILES
from tests.agent.apps_support import Device, make_action

DOC = Path(__file__).resolve().parents[2] / "docs" / "agent.md"
ROW = re.compile(r"^\| (state|query|file) `([^`]+)`( answer `[^`]+`)? \| (yes|no) \| (.+) \|$")
AGENT = Path(__file__).resolve().parents[2] / "agent" / "fleet_agent" / "modules"


def table() -> dict[tuple[str, str], bool]:
    text = DOC.read_text()
    body = text.split("<!-- conformance:start -->", 1)[1].split("<!-- conformance:end -->", 1)[0]
    rows: dict[tuple[str, str], bool] = {}
    for line in body.strip().splitlines()[2:]:
        m = ROW.match(line)
        if m is None:
            assert line.startswith("| Mender artifact"), f"a row the test cannot read: {line}"
            continue
        if not m[3]:  # a row about one answer of a query
            rows[(m[1], m[2])] = m[4] == "yes"
    return rows


def test_the_table_lists_every_v3_state_and_the_ones_the_agent_calls() -> None:
    rows = table()
    said = {name for (what, name), yes in rows.items() if what in ("state", "query") and yes}
    assert said == {s.value for s in CALLED}
    assert {s.value for s in State} <= said, "every state of the protocol is supported"
    # ... and the states the driver and the external module's code use are those.
    used = set()
    for source in ("sequence.py", "external.py"):
        used |= {State[m].value for m in re.findall(r"State\.([A-Z_]+)", (AGENT / source).read_text())}
    assert used == said


MODULE = """#!/bin/sh
[ "$1" = ArtifactInstall ] || exit 0
cd "$2"
for f in version current_artifact_name current_artifact_group current_device_type header/* files tmp stream-next \
         streams; do
    [ -e "$f" ] && echo "$f" >> "@OUT@"
done
cat header/header-info > "@OUT@.header-info"
exit 0
"""


def test_the_tree_a_module_finds_is_the_one_the_table_describes(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "seen"
    (tmp_path / "modules").mkdir()
    script = tmp_path / "modules" / "lister"
    script.write_text(MODULE.replace("@OUT@", str(out)))
    script.chmod(0o755)
    monkeypatch.setenv(MODULES_DIR_ENV, str(tmp_path / "modules"))
    dev = Device(tmp_path / "state")
    dev.ex.start()
    try:
        art = dev.artifact(b"x", "1.0.0", name="t", module="lister", file_name="x.bin", meta={"k": "v"})
        assert dev.run(make_action(art)).final[0] == "succeeded"
    finally:
        dev.ex.stop()
    seen = set(out.read_text().split())
    rows = table()
    files = {name for (what, name), yes in rows.items() if what == "file" and yes}
    absent = {name for (what, name), yes in rows.items() if what == "file" and not yes}
    assert files == set(TREE_FILES)
    assert seen == files and not seen & absent
    info = json.loads((tmp_path / "seen.header-info").read_text())
    assert info == {"payloads": [{"type": "lister"}],
                    "artifact_provides": {"artifact_name": "t-1.0.0", "artifact_group": "t"},
                    "artifact_depends": {"device_type": ["test-dev"]}}


def test_the_built_in_module_names_are_one_list() -> None:
    from fleet_agent.modules import ModuleName
    from fleetd.artifacts.catalog import BUILTIN_MODULES

    names = [m.value for m in ModuleName]
    assert list(BUILTIN_MODULES) == names, "the server's list is the agent's enum"
    doc = DOC.read_text().split("### Built-in modules", 1)[1].split("###", 1)[0]
    assert re.findall(r"^\| `([a-z-]+)` \|", doc, re.M) == names, "docs/agent.md's table lists each, in order"


def test_module_names_follow_the_servers_rule() -> None:
    from fleet_agent.modules import MODULE_NAME
    from fleetd.artifacts.catalog import MODULE_NAME as SERVER

    assert MODULE_NAME.pattern.pattern == SERVER.pattern.pattern
