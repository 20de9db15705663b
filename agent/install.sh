#!/bin/sh
# Installs fleet-agent on a Linux device and enrolls it with a fleetd server.
#
# The usual way is the one-liner `fleetd tokens create` prints, run as root or as a user who may sudo:
#   curl -fsSL -k --pinnedpubkey sha256//PIN https://SERVER:8420/agent/install.sh \
#     | sh -s -- --server https://SERVER:8420 --pin sha256//PIN --token TOKEN
#
# Options: see usage() below (sh install.sh --help).
#
# What it does: checks for Python >= 3.9 with httpx, zeroconf and cryptography (installs them with
# apt-get, or pip where there is no apt-get, saying so first); downloads the agent (a Python zipapp)
# and its launcher from the same server, pinned to the same key; installs them to /opt/fleet-agent;
# enrolls the device (state in /var/lib/fleet-agent); installs and starts the systemd unit
# fleet-agent.service when systemd runs the machine.
set -eu

SERVER=""
TOKEN=""
PIN=""
NAME=""
PREFIX=""
SYSTEMD=1
REMOTE=0
REMOTE_USER=""
REMOTE_COPY_DIRS=""
REMOTE_FORWARD=0
PYTHON="${PYTHON:-python3}"
MODULES="httpx zeroconf cryptography"

say() { printf 'fleet-agent install: %s\n' "$*"; }
die() { printf 'fleet-agent install: error: %s\n' "$*" >&2; exit 1; }
OPTIONS="--server URL --token TOKEN [--pin sha256//KEY] [--name NAME] [--python PATH] [--prefix DIR] [--no-systemd] [--remote-access [--remote-user USER] [--remote-copy-dirs DIR:DIR] [--remote-forward]]"
usage() {
  cat <<EOF
usage: install.sh $OPTIONS
  (as the one-liner: curl ... /agent/install.sh | sh -s -- OPTIONS)
  --server URL     the fleetd server (required)
  --token TOKEN    a join token from 'fleetd tokens create' (required)
  --pin sha256//B  the server's TLS public key hash, as curl --pinnedpubkey takes it (required for https)
  --name NAME      the device's display name (default: its hardware id)
  --python PATH    the Python 3.9+ that runs the agent (default: python3 on the PATH; the environment
                   variable PYTHON=PATH does the same). Missing modules are installed for it: with apt-get
                   (python3-httpx python3-zeroconf python3-cryptography), then with PATH -m pip if still missing
  --prefix DIR     install under DIR instead of / (DIR/opt/fleet-agent, DIR/var/lib/fleet-agent); needs no
                   root, installs no packages and enables no systemd unit: for trying it out
  --no-systemd     install no systemd unit; print how to run the agent instead
  --remote-access  let the server's admins open terminals on this device (docs/remote-access.md): writes
                   remote_access = true in the state dir's agent.conf and installs python3-websockets
  --remote-user U  the user those terminals run as (with --remote-access; "root" only if you mean it)
  --remote-copy-dirs D:D
                   the directories 'fleetd devices cp' may read and write in (with --remote-access): absolute
                   paths joined by ':', of letters, digits and . _ - + @ / only (default: none, no copies)
  --remote-forward let 'fleetd devices forward' open TCP connections from this device (with --remote-access)
  -h, --help       this text
Run it as root, or as a user who may sudo: it then runs itself again with sudo (asking for your password).
Without --prefix it installs to /opt/fleet-agent (with /usr/local/bin/fleet-agent), keeps state in
/var/lib/fleet-agent and, where systemd runs the machine, starts fleet-agent.service.
EOF
}

need_value() {
  case "${2-}" in ""|--*) die "$1 needs a value (see --help)" ;; esac
}
while [ $# -gt 0 ]; do
  case "$1" in
    --server) need_value "$@"; SERVER=$2; shift 2 ;;
    --token) need_value "$@"; TOKEN=$2; shift 2 ;;
    --pin) need_value "$@"; PIN=$2; shift 2 ;;
    --name) need_value "$@"; NAME=$2; shift 2 ;;
    --python) need_value "$@"; PYTHON=$2; shift 2 ;;
    --prefix) need_value "$@"; PREFIX=$2; shift 2 ;;
    --no-systemd) SYSTEMD=0; shift ;;
    --remote-access) REMOTE=1; shift ;;
    --remote-user) need_value "$@"; REMOTE_USER=$2; shift 2 ;;
    --remote-copy-dirs) need_value "$@"; REMOTE_COPY_DIRS=$2; shift 2 ;;
    --remote-forward) REMOTE_FORWARD=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown option '$1' (options: $OPTIONS; see --help)" ;;
  esac
done

[ -n "$SERVER" ] || die "--server URL is missing; copy the whole command from 'fleetd tokens create'"
[ -n "$TOKEN" ] || die "--token is missing; copy the whole command from 'fleetd tokens create'"
[ -z "$REMOTE_USER" ] || [ "$REMOTE" = 1 ] || die "--remote-user goes with --remote-access"
case "$REMOTE_USER" in *[!A-Za-z0-9._-]*) die "--remote-user must be a user name, got '$REMOTE_USER'" ;; esac
if [ "$REMOTE" = 0 ] && { [ -n "$REMOTE_COPY_DIRS" ] || [ "$REMOTE_FORWARD" = 1 ]; }; then
  die "--remote-copy-dirs and --remote-forward go with --remote-access"
fi
# What reaches agent.conf goes inside a quoted string: only characters that need no quoting there, or in a shell.
case "$REMOTE_COPY_DIRS" in
  *[!A-Za-z0-9._+@/:-]*) die "--remote-copy-dirs takes absolute directories joined by ':', of letters, digits and . _ - + @ / only; got '$REMOTE_COPY_DIRS' (for other names, write remote_copy_dirs in agent.conf yourself: docs/remote-access.md)" ;;
  :*|*:|*::*) die "--remote-copy-dirs has an empty directory in '$REMOTE_COPY_DIRS' (directories are joined by one ':')" ;;
esac
for dir in $(printf '%s' "$REMOTE_COPY_DIRS" | tr ':' ' '); do
  case "$dir" in /*) ;; *) die "--remote-copy-dirs takes absolute directories (starting with /), got '$dir'" ;; esac
done
[ "$REMOTE" = 0 ] || MODULES="$MODULES websockets"
SERVER=${SERVER%/}
case "$SERVER" in
  https://*)
    case "$PIN" in
      sha256//?*) ;;
      "") die "--pin sha256//KEY is missing: an https server is trusted only by its pinned key; copy the whole command from 'fleetd tokens create'" ;;
      *) die "--pin must look like sha256//BASE64 (curl --pinnedpubkey), got '$PIN'" ;;
    esac ;;
  http://*) say "warning: $SERVER is plain http; the download is not protected" ;;
  *) die "--server must be an http:// or https:// URL, got '$SERVER'" ;;
esac
command -v curl >/dev/null 2>&1 || die "curl is needed (it ran this script, so it should be here)"

fetch() {  # fetch PATH FILE: the server's PATH into FILE; curl's exit status
  if [ -n "$PIN" ]; then
    # -k: the fleet CA is in no system store; the pinned key is checked instead, as for this script.
    curl -fsS -k --pinnedpubkey "$PIN" --retry 3 -o "$2" "$SERVER$1"
  else
    curl -fsS --retry 3 -o "$2" "$SERVER$1"
  fi
}

if [ -n "$PREFIX" ]; then
  mkdir -p "$PREFIX" || die "cannot create --prefix $PREFIX"
  PREFIX=$(cd "$PREFIX" && pwd)
elif [ "$(id -u)" != 0 ]; then
  # Not root: run this script again with sudo. It came through a pipe, so it is fetched again (pinned alike);
  # sudo keeps no environment, so everything goes as options.
  command -v sudo >/dev/null 2>&1 \
    || die "run it as root (there is no sudo here: su -c, or a root shell), or give --prefix DIR to install somewhere you may write"
  SELF=$(mktemp) || die "cannot create a temporary file"
  fetch /agent/install.sh "$SELF" || { rm -f "$SELF"; die "could not download $SERVER/agent/install.sh again to run it with sudo"; }
  set -- --server "$SERVER" --token "$TOKEN" --python "$PYTHON"
  [ -z "$PIN" ] || set -- "$@" --pin "$PIN"
  [ -z "$NAME" ] || set -- "$@" --name "$NAME"
  [ "$SYSTEMD" = 1 ] || set -- "$@" --no-systemd
  [ "$REMOTE" = 0 ] || set -- "$@" --remote-access
  [ -z "$REMOTE_USER" ] || set -- "$@" --remote-user "$REMOTE_USER"
  [ -z "$REMOTE_COPY_DIRS" ] || set -- "$@" --remote-copy-dirs "$REMOTE_COPY_DIRS"
  [ "$REMOTE_FORWARD" = 0 ] || set -- "$@" --remote-forward
  say "not root: running again with sudo"
  status=0
  sudo sh -s -- "$@" <"$SELF" || status=$?
  rm -f "$SELF"
  exit "$status"
fi

OPT="$PREFIX/opt/fleet-agent"
STATE="$PREFIX/var/lib/fleet-agent"
BIN="$PREFIX/usr/local/bin"
UNIT_DIR="$PREFIX/etc/systemd/system"

# --- Python and the three modules --------------------------------------------------------------------

py_ok() { "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' 2>/dev/null; }
missing_modules() {
  for m in $MODULES; do
    "$PYTHON" -c "import $m" 2>/dev/null || printf '%s ' "$m"
  done
}
have_apt() { command -v apt-get >/dev/null 2>&1; }
module_hint() {  # what installs the modules "$@", by package name
  pkgs=""
  for m in "$@"; do pkgs="$pkgs python3-$m"; done
  printf 'on Debian and Raspberry Pi OS: apt install%s (for /usr/bin/python3); with another Python: %s -m pip install %s' \
    "$pkgs" "$PYTHON" "$*"
}

if ! command -v "$PYTHON" >/dev/null 2>&1; then
  [ -z "$PREFIX" ] && have_apt || die "python3 is not installed; install Python 3.9 or newer, then run this again"
  say "installing python3 with apt-get"
  apt-get update -qq && apt-get install -y -qq python3 || die "apt-get could not install python3"
fi
PYTHON=$(command -v "$PYTHON")
py_ok || die "$PYTHON is $("$PYTHON" -V 2>&1); fleet-agent needs Python 3.9 or newer"

missing=$(missing_modules)
if [ -n "$missing" ] && [ -n "$PREFIX" ]; then
  die "$PYTHON cannot import $missing, and --prefix installs no packages: install them, then run this again ($(module_hint $missing))"
fi
if [ -n "$missing" ] && have_apt; then
  pkgs=""
  for m in $missing; do pkgs="$pkgs python3-$m"; done
  say "installing$pkgs with apt-get (missing Python modules: $missing)"
  apt-get update -qq && apt-get install -y -qq $pkgs || say "apt-get could not install$pkgs"
  missing=$(missing_modules)
fi
if [ -n "$missing" ]; then
  say "installing $missing with pip for $PYTHON"
  "$PYTHON" -m pip install --quiet $missing 2>/dev/null \
    || "$PYTHON" -m pip install --quiet --break-system-packages $missing \
    || die "could not install the Python modules $missing; install them, then run this again ($(module_hint $missing))"
  missing=$(missing_modules)
  [ -z "$missing" ] || die "$PYTHON still cannot import $missing"
fi

# --- download the agent from the same server, pinned to the same key --------------------------------

mkdir -p "$OPT" "$STATE" "$BIN"
chmod 700 "$STATE"
TMP="$OPT/.download.$$"
trap 'rm -f "$TMP.pyz" "$TMP.launcher" "$TMP.err"' EXIT
trap 'exit 130' INT TERM

say "downloading the agent from $SERVER"
fetch /agent/fleet-agent.pyz "$TMP.pyz" || die "could not download $SERVER/agent/fleet-agent.pyz (see curl's message above)"
"$PYTHON" -m zipfile -t "$TMP.pyz" >/dev/null 2>&1 || die "the downloaded agent is not a valid zipapp"
LAUNCHER=""
if fetch /agent/fleet-agent-launcher.py "$TMP.launcher" 2>"$TMP.err"; then
  LAUNCHER="$OPT/fleet-agent-launcher.py"
elif [ $? = 22 ]; then  # curl -f: an HTTP error such as 404, from a server that has no launcher
  say "this server has no agent launcher; the agent runs without self-update trial runs"
else
  cat "$TMP.err" >&2
  die "could not download $SERVER/agent/fleet-agent-launcher.py (see curl's message above)"
fi
chmod 755 "$TMP.pyz"
mv -f "$TMP.pyz" "$OPT/fleet-agent.pyz"
if [ -n "$LAUNCHER" ]; then
  chmod 755 "$TMP.launcher"
  mv -f "$TMP.launcher" "$LAUNCHER"
  # The launcher runs the agent (a self-updated one from the state dir once there is one, else this
  # zipapp) and gives each new version a trial run with a way back.
  RUN="$PYTHON $LAUNCHER --state-dir $STATE --agent $OPT/fleet-agent.pyz"
else
  RUN="$PYTHON $OPT/fleet-agent.pyz run --state-dir $STATE"
fi

# A command for people: `fleet-agent status` and friends, with this install's state dir.
cat > "$BIN/fleet-agent.tmp" <<EOF
#!/bin/sh
FLEET_AGENT_STATE_DIR="\${FLEET_AGENT_STATE_DIR:-$STATE}" exec $PYTHON "$OPT/fleet-agent.pyz" "\$@"
EOF
chmod 755 "$BIN/fleet-agent.tmp"
mv -f "$BIN/fleet-agent.tmp" "$BIN/fleet-agent"
say "installed to $OPT (command: $BIN/fleet-agent)"

# --- enroll --------------------------------------------------------------------------------------------

say "enrolling with $SERVER"
# The token goes in the environment, not on the agent's command line (which any user can read).
FLEET_AGENT_TOKEN="$TOKEN" "$PYTHON" "$OPT/fleet-agent.pyz" enroll --state-dir "$STATE" --server "$SERVER" \
  ${NAME:+--name "$NAME"} || die "enrollment failed (the agent said why above)"

# --- remote access, when asked for: the device's own setting, which no server can change -----------------

if [ "$REMOTE" = 1 ]; then
  {
    echo "# Written by install.sh --remote-access (docs/remote-access.md)"
    echo "remote_access = true"
    [ -z "$REMOTE_USER" ] || echo "remote_user = \"$REMOTE_USER\""
    [ -z "$REMOTE_COPY_DIRS" ] || echo "remote_copy_dirs = \"$REMOTE_COPY_DIRS\""
    [ "$REMOTE_FORWARD" = 0 ] || echo "remote_forward = true"
  } > "$STATE/agent.conf.tmp"
  chmod 644 "$STATE/agent.conf.tmp"
  mv -f "$STATE/agent.conf.tmp" "$STATE/agent.conf"
  say "remote access on ($STATE/agent.conf)${REMOTE_USER:+; terminals run as $REMOTE_USER}${REMOTE_COPY_DIRS:+; file copies in $REMOTE_COPY_DIRS}"
  [ "$REMOTE_FORWARD" = 0 ] || say "port forwarding from this device allowed (remote_forward)"
fi

# --- run it --------------------------------------------------------------------------------------------

systemd_runs() { [ -d /run/systemd/system ] && [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; }
if [ "$SYSTEMD" = 1 ] && systemd_runs; then
  mkdir -p "$UNIT_DIR"
  cat > "$UNIT_DIR/fleet-agent.service.tmp" <<EOF
[Unit]
Description=fleet-agent, the fleetd device agent
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
Environment=FLEET_AGENT_STATE_DIR=$STATE
ExecStart=$RUN
Restart=always
RestartSec=5

[Install]
WantedBy=multi-user.target
EOF
  mv -f "$UNIT_DIR/fleet-agent.service.tmp" "$UNIT_DIR/fleet-agent.service"
  if [ -z "$PREFIX" ]; then
    systemctl daemon-reload
    systemctl enable fleet-agent.service
    systemctl restart fleet-agent.service  # starts it, or (run again to upgrade) runs the new agent
    say "done: fleet-agent.service is running (journalctl -u fleet-agent -f)"
  else
    say "done: unit written to $UNIT_DIR/fleet-agent.service (not enabled: --prefix)"
  fi
else
  say "done. Run the agent with:"
  say "  $RUN"
fi
