"""A v3 update module written as a shell script from the protocol's description (docs/agent.md links it), for
the tests: it installs ``files/payload.txt`` as ``$DEST/current``, keeps the previous as ``$DEST/backup`` for
ArtifactRollback, and logs every call (state, and the File Tree entries it saw) to ``$DEST/calls``.

The payload steers it: a payload containing ``fail-install`` fails ArtifactInstall after changing the file (so
only a rollback repairs it); ``reboot-yes`` / ``reboot-automatic`` answer NeedsArtifactReboot Yes / Automatic;
``fail-verify`` fails ArtifactVerifyReboot. ArtifactReboot "reboots" by running ``$REBOOT`` (the tests'
FLEET_AGENT_REBOOT_CMD stand-in, which may kill the agent as a reboot would).
"""

from __future__ import annotations

from pathlib import Path

SCRIPT = r"""#!/bin/sh
# A Mender Update Module (protocol v3), for fleet-agent's tests.
set -e
STATE="$1"
TREE="$2"
DEST="@DEST@"
echo "$STATE $(cat "$TREE/header/artifact_name" 2>/dev/null) cwd=$(pwd)" >> "$DEST/calls"
payload() { cat "$TREE"/files/*; }
case "$STATE" in
    Download)
        test "$(cat "$TREE/version")" = 3
        test -d "$TREE/files" && test -d "$TREE/tmp" && test -f "$TREE/header/header-info"
        test -f "$TREE/header/type-info" && test -f "$TREE/header/meta-data"
        cp "$TREE/header/meta-data" "$DEST/meta-data"
        cp "$TREE/current_device_type" "$DEST/device_type"
        ;;
    SupportsRollback)
        echo Yes
        ;;
    NeedsArtifactReboot)
        if payload | grep -q reboot-yes; then echo Yes
        elif payload | grep -q reboot-automatic; then echo Automatic
        else echo No; fi
        ;;
    ArtifactInstall)
        rm -f "$DEST/backup"
        if [ -f "$DEST/current" ]; then cp "$DEST/current" "$DEST/backup"; fi
        payload > "$DEST/current"
        if payload | grep -q fail-install; then echo "the payload asked to fail" >&2; exit 3; fi
        ;;
    ArtifactReboot)
        echo yes > "$DEST/rebooted"
        @REBOOT@
        ;;
    ArtifactVerifyReboot)
        if payload | grep -q reboot-yes; then test -f "$DEST/rebooted"; fi
        if payload | grep -q fail-verify; then echo "came up wrong" >&2; exit 4; fi
        ;;
    ArtifactCommit)
        # The backup stays: a cut before the agent records the commit is rolled back, as v3 says.
        rm -f "$DEST/rebooted"
        ;;
    ArtifactRollback)
        # Idempotent: a cut during it runs it again.
        if [ -f "$DEST/backup" ]; then cp "$DEST/backup" "$DEST/current"; else rm -f "$DEST/current"; fi
        ;;
    ArtifactRollbackReboot|ArtifactVerifyRollbackReboot|ArtifactFailure|Cleanup)
        ;;
    *)
        # Unknown states and queries: print nothing, succeed (as the protocol asks).
        ;;
esac
exit 0
"""


def write_module(modules_dir: Path, dest: Path, name: str = "v3-test", reboot: str = ":") -> Path:
    """The module as ``modules_dir/name``, working on ``dest``; ``reboot``: the shell command of ArtifactReboot."""
    modules_dir.mkdir(parents=True, exist_ok=True)
    dest.mkdir(parents=True, exist_ok=True)
    path = modules_dir / name
    path.write_text(SCRIPT.replace("@DEST@", str(dest)).replace("@REBOOT@", reboot))
    path.chmod(0o755)
    return path


def calls(dest: Path) -> list[str]:
    """The states the module was called with, in order."""
    p = dest / "calls"
    return [line.split()[0] for line in p.read_text().splitlines()] if p.exists() else []
