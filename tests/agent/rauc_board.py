"""A RAUC board without a real bootloader, for the os-image tests (as RAUC's own tests do it).

Debian's ``rauc`` runs as ``rauc service`` on a private D-Bus session bus (``DBUS_STARTER_BUS_TYPE=session``,
which RAUC reads to pick the session bus), with a system.conf whose two slots are plain files and whose
bootloader is RAUC's ``custom`` backend: a shell script keeping the boot state in files. ``boot()`` is the
bootloader: it picks the slot the state says and tells ``rauc service`` with ``--override-boot-slot`` (in place
of ``rauc.slot=`` on a kernel command line). The bootloader model: the primary slot boots if it is confirmed
(``good``) or still on trial with attempts left (each trial boot uses one); otherwise the other slot boots.

Bundles are built by ``rauc bundle`` with a test key and certificate (openssl), in the ``plain`` format: the
``verity`` format needs device-mapper (/dev/mapper/control), which this machine's container does not have.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

TRIES = 3  # boot attempts of a slot on trial
BACKEND = """#!/bin/sh
# RAUC custom bootloader backend: the boot state in files (primary; state.<bootname>: good, bad or "trial N")
d="$(dirname "$0")/boot"
case "$1" in
  get-primary) cat "$d/primary" ;;
  set-primary) echo "$2" > "$d/primary.tmp" && mv "$d/primary.tmp" "$d/primary"
               echo "trial %d" > "$d/state.$2" ;;
  get-state) case "$(cat "$d/state.$2")" in good|trial\\ [1-9]*) echo good ;; *) echo bad ;; esac ;;
  set-state) echo "$3" > "$d/state.$2" ;;
  get-current) cat "$d/booted" ;;
  *) echo "unknown command $1" >&2; exit 1 ;;
esac
""".replace("%d", str(TRIES))


def tools_missing() -> str:
    missing = [t for t in ("rauc", "mksquashfs", "dbus-daemon", "openssl") if shutil.which(t) is None]
    return ", ".join(missing)


class Board:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "boot").mkdir(exist_ok=True)
        (root / "mnt").mkdir(exist_ok=True)
        self.conf = root / "system.conf"
        self.key, self.cert = root / "key.pem", root / "cert.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key),
                        "-out", str(self.cert), "-days", "3650", "-subj", "/CN=fleet os-image test"],
                       check=True, capture_output=True)
        backend = root / "bootloader.sh"
        backend.write_text(BACKEND)
        backend.chmod(0o755)
        for slot in ("A", "B"):
            (root / f"slot{slot}.img").write_bytes(b"\0" * 65536)
            (root / "boot" / f"state.{slot}").write_text("good\n")
        (root / "boot" / "primary").write_text("A\n")
        self.conf.write_text(f"""[system]
compatible=fleet-test-board
bootloader=custom
statusfile={root}/status.raucs
mountprefix={root}/mnt

[handlers]
bootloader-custom-backend={backend}

[keyring]
path={self.cert}

[slot.rootfs.0]
device={root}/slotA.img
type=raw
bootname=A

[slot.rootfs.1]
device={root}/slotB.img
type=raw
bootname=B
""")
        bus = subprocess.run(["dbus-daemon", "--session", "--fork", "--print-address=1", "--print-pid=1"],
                             check=True, capture_output=True, text=True).stdout.split()
        self.bus_address, self.bus_pid = bus[0], int(bus[1])
        self.env = {"DBUS_SESSION_BUS_ADDRESS": self.bus_address, "DBUS_STARTER_BUS_TYPE": "session",
                    "FLEET_AGENT_RAUC": f"rauc -c {self.conf}"}
        self.service: subprocess.Popen[bytes] | None = None
        self.boots: list[str] = []
        self.boot()

    # --- the bootloader and the power --------------------------------------------------------
    def state(self, slot: str) -> str:
        return (self.root / "boot" / f"state.{slot}").read_text().strip()

    def primary(self) -> str:
        return (self.root / "boot" / "primary").read_text().strip()

    def boot(self) -> str:
        """Power on: the bootloader picks a slot, then ``rauc service`` starts in it."""
        self.power_off()
        primary = self.primary()
        other = "B" if primary == "A" else "A"
        chosen = other
        st = self.state(primary)
        if st == "good":
            chosen = primary
        elif st.startswith("trial ") and int(st.split()[1]) > 0:
            left = int(st.split()[1]) - 1
            (self.root / "boot" / f"state.{primary}").write_text(f"trial {left}\n")
            chosen = primary
        (self.root / "boot" / "booted").write_text(chosen + "\n")
        self.boots.append(chosen)
        with open(self.root / "service.log", "ab") as log:
            self.service = subprocess.Popen(["rauc", "service", "-c", str(self.conf),
                                             f"--override-boot-slot={chosen}"],
                                            env=dict(os.environ, **self.env), stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while self.rauc("status", check=False).returncode != 0:
            assert time.monotonic() < deadline, (self.root / "service.log").read_text()[-2000:]
            time.sleep(0.05)
        return chosen

    def power_off(self) -> None:
        if self.service is not None:
            self.service.kill()
            self.service.wait()
            self.service = None

    def close(self) -> None:
        self.power_off()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.bus_pid, signal.SIGTERM)

    # --- RAUC --------------------------------------------------------------------------------
    def rauc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["rauc", "-c", str(self.conf), *args], env=dict(os.environ, **self.env),
                              capture_output=True, text=True, check=check, timeout=60)

    def booted(self) -> str:
        return (self.root / "boot" / "booted").read_text().strip()

    def slot(self, bootname: str) -> bytes:
        return (self.root / f"slot{bootname}.img").read_bytes()

    # --- what the tests ask of either board (rauc_board, swu_board) --------------------------------
    file_name = "os.raucb"

    def image(self, version: str, data: bytes) -> bytes:
        return self.bundle(version, data)

    def foreign_image(self) -> bytes:
        """An image for another board, which the back end refuses."""
        return self.bundle("2.0", b"x" * 1000, compatible="other-board")

    def next_slot(self) -> str:
        return self.primary()

    def confirmed(self, slot: str) -> bool:
        return self.state(slot) == "good"

    def left(self, slot: str) -> bool:
        """The slot was given up: marked bad, and not the one to boot."""
        return self.state(slot) == "bad" and self.primary() != slot

    def bundle(self, version: str, image: bytes, compatible: str = "fleet-test-board") -> bytes:
        work = self.root / f"bundle-{version}"
        shutil.rmtree(work, ignore_errors=True)
        (work / "content").mkdir(parents=True)
        (work / "content" / "rootfs.img").write_bytes(image)
        (work / "content" / "manifest.raucm").write_text(
            f"[update]\ncompatible={compatible}\nversion={version}\n\n[bundle]\nformat=plain\n\n"
            "[image.rootfs]\nfilename=rootfs.img\n")
        out = work / "os.raucb"
        subprocess.run(["rauc", "bundle", "--cert", str(self.cert), "--key", str(self.key), str(work / "content"),
                        str(out)], check=True, capture_output=True)
        return out.read_bytes()
