"""PyInstaller runtime hook: die with the launcher process (Linux).

A one-file binary runs as two processes: the bootloader unpacks the bundle and
starts Python as its child, forwarding signals to it. SIGKILL cannot be
forwarded, so `kill -9 <pid>` would stop only the bootloader and leave the
server running, orphaned, still holding its port and data dir lock. Asking the
kernel to SIGKILL us when the parent dies keeps `kill -9` meaning what it means
for a plain process.
"""

import sys


def _die_with_parent() -> None:
    import ctypes
    import signal

    pr_set_pdeathsig = 1  # <linux/prctl.h>
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # no prctl: behave as a plain one-file binary


if sys.platform.startswith("linux"):
    _die_with_parent()
