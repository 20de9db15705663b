"""A SWUpdate board without a real bootloader, for the os-image tests.

Debian's ``swupdate`` (built for signed images: CMS, ``-k`` certificate) installs a ``.swu`` built here (a cpio
archive, "crc" format, with ``sw-description`` first and its signature) into two file-backed slots. The bootloader
environment is GRUB's environment block, a file: SWUpdate's ``grub`` interface (``-B grub``) reads and writes
``/boot/grub/grubenv``, so each swupdate run gets a private mount namespace in which the board's ``boot/`` folder
is bind-mounted on ``/boot`` (``unshare -m``). ``boot()`` is the bootloader, as a U-Boot or GRUB script would
be: on ``ustate=1`` (installed, on trial: SWUpdate's state marker) it counts the boot in ``bootcount`` and after
``TRIES`` boots falls back: ``slot`` switched back, ``ustate=3`` (failed). The agent reads and writes the same
environment through ``bootenv.py get NAME`` / ``bootenv.py set NAME VALUE`` (fw_printenv -n / fw_setenv on a
U-Boot board).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

TRIES = 3

BOOTENV = '''#!%s
"""get NAME | set NAME VALUE: GRUB's environment block (a 1024-byte file) at %s."""
import os, sys
path = %r
text = open(path, "rb").read().decode()
pairs = dict(line.split("=", 1) for line in text.splitlines()[1:] if "=" in line and not line.startswith("#"))
if sys.argv[1] == "get":
    if sys.argv[2] not in pairs:
        sys.exit("no variable " + sys.argv[2])
    print(pairs[sys.argv[2]])
else:
    pairs[sys.argv[2]] = sys.argv[3]
    body = "# GRUB Environment Block\\n" + "".join(f"{k}={v}\\n" for k, v in pairs.items())
    data = body.encode() + b"#" * (1024 - len(body.encode()))
    with open(path + ".new", "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".new", path)
'''


def cpio_crc(members: list[tuple[str, bytes]]) -> bytes:
    """A cpio archive in the SVR4 "crc" format (070702), as SWUpdate reads .swu files."""
    out = bytearray()

    def pad(n: int) -> None:
        out.extend(b"\0" * ((4 - n % 4) % 4))

    for ino, (name, data) in enumerate([*members, ("TRAILER!!!", b"")], start=1):
        trailer = name == "TRAILER!!!"
        check = 0 if trailer else sum(data) & 0xFFFFFFFF
        fields = [0 if trailer else ino, 0 if trailer else 0o100644, 0, 0, 1, 0, len(data), 0, 0, 0, 0,
                  len(name) + 1, check]
        header = b"070702" + b"".join(b"%08X" % f for f in fields)
        out.extend(header + name.encode() + b"\0")
        pad(len(header) + len(name) + 1)
        out.extend(data)
        pad(len(data))
    return bytes(out)


class SwuBoard:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "boot" / "grub").mkdir(parents=True, exist_ok=True)
        self.key, self.cert = root / "key.pem", root / "cert.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key),
                        "-out", str(self.cert), "-days", "3650", "-subj", "/CN=fleet swupdate test"],
                       check=True, capture_output=True)
        for slot in ("A", "B"):
            (root / f"slot{slot}.img").write_bytes(b"\0" * 65536)
        self.envfile = root / "boot" / "grub" / "grubenv"
        self.bootenv = root / "bootenv.py"
        self.bootenv.write_text(BOOTENV % (sys.executable, self.envfile, str(self.envfile)))
        self.bootenv.chmod(0o755)
        self.set("slot", "A")
        self.set("ustate", "0")
        self.set("bootcount", "0")
        swupdate = (f"unshare -m sh -c 'mount --bind {root}/boot /boot && exec swupdate \"$@\"' swupdate "
                    f"-k {self.cert} -B grub -H fleet-test-board:1.0")
        self.env = {"FLEET_AGENT_SWUPDATE": swupdate, "FLEET_AGENT_BOOTENV_GET": f"{self.bootenv} get",
                    "FLEET_AGENT_BOOTENV_SET": f"{self.bootenv} set",
                    "FLEET_AGENT_BOOTED_SLOT_FILE": f"{root}/run/booted-slot"}
        self.boots: list[str] = []
        self.boot()

    def get(self, name: str) -> str:
        return subprocess.run([str(self.bootenv), "get", name], check=True, capture_output=True,
                              text=True).stdout.strip()

    def set(self, name: str, value: str) -> None:
        if not self.envfile.exists():
            self.envfile.write_bytes(b"# GRUB Environment Block\n" + b"#" * (1024 - 25))
        subprocess.run([str(self.bootenv), "set", name, value], check=True)

    def boot(self) -> str:
        """Power on: the bootloader's script picks the slot (and counts a trial boot); /run is empty again."""
        (self.root / "run" / "booted-slot").unlink(missing_ok=True)
        count = 0
        if self.get("ustate") == "1":
            count = int(self.get("bootcount") or 0) + 1
            if count > TRIES:
                self.set("slot", "B" if self.get("slot") == "A" else "A")
                self.set("ustate", "3")
                count = 0
        self.set("bootcount", str(count))
        self.boots.append(self.get("slot"))
        return self.boots[-1]

    # --- what the tests ask of either board (rauc_board, swu_board) --------------------------------
    file_name = "os.swu"

    def image(self, version: str, data: bytes) -> bytes:
        return self.swu(version, data)

    def foreign_image(self) -> bytes:
        """An image for another board (hardware revision), which swupdate refuses."""
        return self.swu("2.0", b"x" * 1000, hardware="9.9")

    def next_slot(self) -> str:
        return self.get("slot")

    def booted(self) -> str:
        return self.boots[-1]

    def confirmed(self, slot: str) -> bool:
        return self.get("slot") == slot and self.get("ustate") == "0"

    def left(self, slot: str) -> bool:
        return self.get("slot") != slot

    def power_off(self) -> None:
        pass

    def close(self) -> None:
        pass

    def slot(self, name: str) -> bytes:
        return (self.root / f"slot{name}.img").read_bytes()

    def swu(self, version: str, image: bytes, hardware: str = "1.0") -> bytes:
        sha = hashlib.sha256(image).hexdigest()
        colls = "".join(
            f'    {s} = {{\n      images: ( {{ filename = "rootfs.img"; device = "{self.root}/slot{s}.img"; '
            f'type = "raw"; sha256 = "{sha}"; }} );\n      bootenv: ( {{ name = "slot"; value = "{s}"; }} );\n    }};\n'
            for s in ("A", "B"))
        desc = (f'software =\n{{\n  version = "{version}";\n  hardware-compatibility: [ "{hardware}" ];\n'
                f'  stable = {{\n{colls}  }};\n}}\n').encode()
        sig = subprocess.run(["openssl", "cms", "-sign", "-signer", str(self.cert), "-inkey", str(self.key),
                              "-outform", "DER", "-nosmimecap", "-binary"], input=desc, check=True,
                             capture_output=True).stdout
        return cpio_crc([("sw-description", desc), ("sw-description.sig", sig), ("rootfs.img", image)])
