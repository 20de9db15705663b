"""fleetd mqtt broker-config: the Mosquitto configuration (and its files) for fleetd's devices (docs/mqtt.md)."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .common import default_data_dir, errors_reported
from .output import fail

if TYPE_CHECKING:
    from ..core.pki import KeyMaterial

mqtt_app = typer.Typer(help="The MQTT transport: the broker's configuration.", no_args_is_help=True)


def fleet_material(data_dir: str) -> KeyMaterial:
    """The fleet's CA (with its key) as the server has it: the data dir's files, or the database's on PostgreSQL."""
    from ..core import pki, sealing
    from ..core.config import load_settings

    settings = load_settings({"data_dir": data_dir})
    if not settings.database:
        if not pki.has_keys(settings.data_path):
            fail(f"{settings.data_path} holds no fleet CA", "Start 'fleetd serve' once with this data dir (it makes "
                 "the CA), or pass --data-dir with the server's data dir.")
        return pki.material_in(settings.data_path, write=False)
    from ..store.database import Store
    from ..store.keys import shared_material

    store = Store(settings.database, 1)
    try:
        return shared_material(store, sealing.load(settings.key_encryption_key_file), settings.data_path)
    finally:
        store.close()


def _listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise typer.BadParameter(f"{value!r} is not [HOST:]PORT, e.g. 0.0.0.0:8883 or 8883")
    return host.strip("[]") or "0.0.0.0", int(port)


@mqtt_app.command("broker-config")
def broker_config(
    out: Annotated[Path, typer.Option("--dir", help="Where to write the broker's files (CA, its certificate and "
                                      "key, CRL, ACL, mosquitto.conf, data/).")] = Path("./mosquitto-fleetd"),
    listen: Annotated[str, typer.Option(help="The TLS listener, [HOST:]PORT.")] = "0.0.0.0:8883",
    name: Annotated[list[str] | None, typer.Option(
        "--name", help="A host name or address devices and fleetd reach the broker by, for its certificate "
        "(repeat; default: this machine's names and addresses).", show_default=False)] = None,
    user: Annotated[str, typer.Option(help="The user mosquitto runs as (it reads the files after dropping root).")]
    = "mosquitto",
    data_dir: Annotated[str | None, typer.Option(help="The fleet's data dir, whose CA issues the broker's "
                                                 "certificate (default: $FLEETD_DATA_DIR, else ./fleetd-data).",
                                                 show_default=False)] = None,
    plugin: Annotated[str, typer.Option(help="mosquitto's dynamic security plugin (default: found under "
                                        "/usr/lib).", show_default=False)] = "",
) -> None:
    """Print a Mosquitto 2.0 configuration for fleetd's devices and write the files it names into --dir.

    Start the broker with it: mosquitto -c DIR/mosquitto.conf. Then point fleetd at it: mqtt_url =
    "mqtts://HOST:PORT" (docs/mqtt.md).
    """
    from ..core.pki import local_names_and_addresses
    from ..mqtt.broker_config import find_plugin, write_broker_files

    host, port = _listen(listen)
    plugin = plugin or find_plugin()
    if not plugin or not Path(plugin).is_file():
        fail(f"mosquitto's dynamic security plugin is not at {plugin!r}" if plugin else
             "mosquitto's dynamic security plugin (mosquitto_dynamic_security.so) is not under /usr/lib",
             "Install mosquitto 2.0 or later (Debian: apt install mosquitto), or pass --plugin with where yours "
             "has it; fleetd shuts revoked devices out through it.")
    with errors_reported():
        ca = fleet_material(data_dir or default_data_dir())
        names = name or [n for group in local_names_and_addresses() for n in group]
        try:
            files = write_broker_files(out, ca, host=host, port=port, names=names, user=user or getpass.getuser(),
                                       plugin=plugin)
        except OSError as e:
            fail(f"cannot write the broker's files into {out}: {e.strerror}", "Pass --dir with a folder you may write.")
    sys.stdout.write(files.config)
