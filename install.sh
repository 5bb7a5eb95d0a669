#!/usr/bin/env bash
# Installs Fast VM on this host, in five steps: (1) system dependencies (QEMU/KVM, qemu-img, OVMF,
# swtpm, xorriso; cargo and node/npm to build from source) on Debian/Ubuntu, Fedora/RHEL or Arch, with a
# KVM check; (2) Docker, optional; (3) network: interfaces and bridges, optionally a new bridge and
# /etc/qemu/bridge.conf; (4) Fast VM itself: binaries in /usr/local/bin, data in /var/lib/fastvm,
# settings in /etc/fastvm/env, a `fastvm` system user; (5) start: a hardened systemd service, or the
# command to run it where systemd does not run.
#
# Interactive by default. --yes answers every question with its default (or the flag given for it),
# --dry-run prints every action without doing it, running it again changes nothing, --uninstall
# removes it (the data stays unless --purge). --help lists the flags.
set -euo pipefail

PREFIX=/usr/local
DATA_DIR=/var/lib/fastvm
CONF_DIR=/etc/fastvm
UNIT=/etc/systemd/system/fastvm.service
LISTEN=0.0.0.0:8000
SERVICE_USER=fastvm

yes=0 dry=0 uninstall=0 purge=0 foreground=0
docker=ask bridge=ask bridge_name=br0 bridge_parent="" admin_password="" binaries="" listen=""
changed=0

usage() {
  cat <<'EOF'
Usage: install.sh [options]
  --yes                  no questions: defaults, or the flags below
  --dry-run              print every action, do none
  --uninstall [--purge]  remove Fast VM (--purge: its data and user too)
  --admin-password PASS  the first admin's password (else asked; with --yes and none given: admin,
                         which the dashboard asks to change)
  --listen ADDR:PORT     where the dashboard listens (default 0.0.0.0:8000)
  --docker | --no-docker install Docker for the docker runtime (default: no)
  --bridge NAME          create bridge NAME (with --bridge-parent IFACE enslaved) for bridge NICs
  --bridge-parent IFACE  the interface the new bridge takes over
  --no-bridge            leave the network as it is (default)
  --binaries DIR         install fastvm and vmrunner from DIR instead of building this checkout
  --foreground           where systemd does not run, start Fast VM in the foreground at the end
EOF
}

while [ $# -gt 0 ]; do
  case $1 in
    --yes | -y) yes=1 ;;
    --dry-run) dry=1 ;;
    --uninstall) uninstall=1 ;;
    --purge) purge=1 ;;
    --admin-password) admin_password=$2; shift ;;
    --listen) listen=$2; shift ;;
    --docker) docker=yes ;;
    --no-docker) docker=no ;;
    --bridge) bridge=yes bridge_name=$2; shift ;;
    --bridge-parent) bridge_parent=$2; shift ;;
    --no-bridge) bridge=no ;;
    --binaries) binaries=$2; shift ;;
    --foreground) foreground=1 ;;
    --help | -h) usage; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

say() { printf '\033[1;34m==>\033[0m %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
fail() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

# Runs a command that changes the system, or only shows it with --dry-run.
run() {
  changed=1
  if [ "$dry" -eq 1 ]; then
    printf '    would run: %s\n' "$*"
  else
    "$@"
  fi
}

# Writes stdin to a file (mode $2) unless it already holds exactly that.
put() {
  local file=$1 mode=$2 content
  content=$(cat)
  if [ -f "$file" ] && [ "$(cat "$file")" = "$content" ]; then
    return 0
  fi
  changed=1
  if [ "$dry" -eq 1 ]; then
    printf '    would write %s\n' "$file"
    return 0
  fi
  mkdir -p "$(dirname "$file")"
  (umask 077 && printf '%s\n' "$content" >"$file.tmp")
  chmod "$mode" "$file.tmp"
  mv "$file.tmp" "$file"
}

# ask "question" default → y or n (the default with --yes or without a terminal).
ask() {
  local answer
  if [ "$yes" -eq 1 ] || [ ! -t 0 ]; then
    echo "$2"
    return
  fi
  read -r -p "    $1 [$2] " answer
  answer=${answer:-$2}
  case $answer in [yY]*) echo y ;; *) echo n ;; esac
}

[ "$(id -u)" -eq 0 ] || [ "$dry" -eq 1 ] || fail "run it as root (sudo $0 $*)"
here=$(cd "$(dirname "$0")" && pwd)

if [ "$uninstall" -eq 1 ]; then
  say "removing Fast VM"
  if [ -d /run/systemd/system ] && systemctl is-enabled fastvm >/dev/null 2>&1; then
    run systemctl disable --now fastvm
  fi
  for path in "$UNIT" "$PREFIX/bin/fastvm" "$PREFIX/bin/vmrunner" "$CONF_DIR"; do
    if [ -e "$path" ]; then run rm -rf "$path"; fi
  done
  if [ "$purge" -eq 1 ]; then
    if [ -e "$DATA_DIR" ]; then run rm -rf "$DATA_DIR"; fi
    if id "$SERVICE_USER" >/dev/null 2>&1; then run userdel "$SERVICE_USER"; fi
  elif [ -e "$DATA_DIR" ]; then
    note "kept $DATA_DIR (VM disks, backups, the database): --purge removes it"
  fi
  [ "$changed" -eq 1 ] || note "nothing to remove"
  exit 0
fi

# ---- 1. system dependencies ----
say "1/5 system dependencies"
# shellcheck disable=SC1091
. /etc/os-release 2>/dev/null || fail "no /etc/os-release: which distribution is this?"
family=""
case " ${ID:-} ${ID_LIKE:-} " in
  *" debian "* | *" ubuntu "*) family=debian ;;
  *" fedora "* | *" rhel "* | *" centos "*) family=fedora ;;
  *" arch "*) family=arch ;;
  *) fail "unsupported distribution ${ID:-?}: install QEMU, qemu-img, OVMF, swtpm and xorriso, then run this with --binaries" ;;
esac
build=1
[ -n "$binaries" ] && build=0
case $family in
  debian) pkgs=(qemu-system-x86 qemu-utils ovmf swtpm swtpm-tools xorriso iproute2 curl ca-certificates)
    [ "$build" -eq 1 ] && pkgs+=(build-essential pkg-config nodejs npm) ;;
  fedora) pkgs=(qemu-kvm qemu-img edk2-ovmf swtpm swtpm-tools xorriso iproute curl)
    [ "$build" -eq 1 ] && pkgs+=(gcc pkgconf-pkg-config nodejs npm) ;;
  arch) pkgs=(qemu-base edk2-ovmf swtpm libisoburn iproute2 curl)
    [ "$build" -eq 1 ] && pkgs+=(base-devel nodejs npm) ;;
esac
missing=()
for pkg in "${pkgs[@]}"; do
  case $family in
    debian) dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg") ;;
    fedora) rpm -q "$pkg" >/dev/null 2>&1 || missing+=("$pkg") ;;
    arch) pacman -Q "$pkg" >/dev/null 2>&1 || missing+=("$pkg") ;;
  esac
done
if [ ${#missing[@]} -gt 0 ]; then
  note "installing ${missing[*]}"
  case $family in
    debian) run apt-get update -qq
      # Twice: installing one package can remove another (a backported qemu-utils by qemu-system-x86).
      run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
      run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" ;;
    fedora) run dnf install -y -q "${missing[@]}" ;;
    arch) run pacman -S --noconfirm --needed "${missing[@]}" ;;
  esac
fi
if [ "$build" -eq 1 ] && ! command -v cargo >/dev/null 2>&1; then
  fail "building from source needs cargo (https://rustup.rs), or give --binaries DIR"
fi
if [ "$dry" -eq 0 ]; then
  absent=()
  for tool in qemu-system-x86_64 qemu-img swtpm xorriso ip; do
    command -v "$tool" >/dev/null 2>&1 || absent+=("$tool")
  done
  ovmf=""
  for f in /usr/share/OVMF/OVMF_CODE_4M.fd /usr/share/OVMF/OVMF_CODE.fd /usr/share/edk2/ovmf/OVMF_CODE.fd \
    /usr/share/edk2/x64/OVMF_CODE.4m.fd; do
    [ -f "$f" ] && ovmf=$f && break
  done
  [ -n "$ovmf" ] || absent+=(OVMF)
  [ ${#absent[@]} -eq 0 ] || fail "still missing after installing: ${absent[*]}"
fi
if [ -e /dev/kvm ]; then
  note "KVM: /dev/kvm is there"
else
  vendor=$(grep -m1 -o -E 'vmx|svm' /proc/cpuinfo || true)
  case $vendor in
    vmx) note "KVM: no /dev/kvm; load it with: modprobe kvm_intel (and enable VT-x in the firmware)" ;;
    svm) note "KVM: no /dev/kvm; load it with: modprobe kvm_amd (and enable AMD-V in the firmware)" ;;
    *) note "KVM: this CPU offers no virtualization extensions: VMs run with TCG (slow)" ;;
  esac
fi

# ---- 2. Docker (optional) ----
say "2/5 Docker (only for FASTVM_RUNTIME=docker)"
if [ "$docker" = ask ]; then
  [ "$(ask "install Docker for the docker runtime? (y/n)" n)" = y ] && docker=yes || docker=no
fi
if [ "$docker" = yes ]; then
  if command -v docker >/dev/null 2>&1; then
    note "Docker is installed"
  else
    case $family in
      debian) run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io ;;
      fedora) run dnf install -y -q moby-engine ;;
      arch) run pacman -S --noconfirm --needed docker ;;
    esac
  fi
else
  note "skipped"
fi

# ---- 3. network ----
say "3/5 network"
ip -br link 2>/dev/null | sed 's/^/    /' || true
if [ "$bridge" = ask ]; then
  [ "$(ask "create a bridge for VMs on your network? (y/n)" n)" = y ] && bridge=yes || bridge=no
fi
if [ "$bridge" = yes ]; then
  if ip link show "$bridge_name" >/dev/null 2>&1; then
    note "bridge $bridge_name exists"
  elif command -v nmcli >/dev/null 2>&1 && [ -n "$bridge_parent" ]; then
    run nmcli connection add type bridge ifname "$bridge_name" con-name "$bridge_name"
    run nmcli connection add type bridge-slave ifname "$bridge_parent" master "$bridge_name"
    run nmcli connection up "$bridge_name"
  else
    run ip link add name "$bridge_name" type bridge
    run ip link set "$bridge_name" up
    if [ -n "$bridge_parent" ]; then run ip link set "$bridge_parent" master "$bridge_name"; fi
    note "made with ip: it does not survive a reboot; add it to your network configuration"
  fi
  if ! grep -qs "^allow $bridge_name\$" /etc/qemu/bridge.conf; then
    { cat /etc/qemu/bridge.conf 2>/dev/null || true; echo "allow $bridge_name"; } | put /etc/qemu/bridge.conf 0644
  fi
else
  note "unchanged (bridge and macvtap NICs can use bridges and interfaces made later)"
fi

# ---- 4. Fast VM ----
say "4/5 Fast VM"
if [ "$build" -eq 1 ]; then
  [ -f "$here/Cargo.toml" ] || fail "not a Fast VM checkout: give --binaries DIR"
  binaries=$here/target/release
  note "building (release) in $here"
  if [ "$dry" -eq 1 ]; then
    printf '    would run: (cd frontend && npm ci && node build.mjs) and cargo build --release\n'
  else
    (cd "$here/frontend" && npm ci --no-audit --no-fund --loglevel=error >/dev/null && node build.mjs >/dev/null)
    (cd "$here" && cargo build --release --quiet --bin fastvm --bin vmrunner)
  fi
fi
for bin in fastvm vmrunner; do
  src=$binaries/$bin
  [ "$dry" -eq 1 ] || [ -x "$src" ] || fail "$src is missing"
  if ! cmp -s "$src" "$PREFIX/bin/$bin"; then run install -m 0755 "$src" "$PREFIX/bin/$bin"; fi
done
if ! id "$SERVICE_USER" >/dev/null 2>&1; then
  run useradd --system --home-dir "$DATA_DIR" --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
fi
if getent group kvm >/dev/null && ! id -nG "$SERVICE_USER" 2>/dev/null | grep -qw kvm; then
  run usermod -aG kvm "$SERVICE_USER"
fi
if [ ! -d "$DATA_DIR" ]; then run install -d -m 0700 -o "$SERVICE_USER" -g "$SERVICE_USER" "$DATA_DIR"; fi
first_start=0
[ -f "$DATA_DIR/fastvm.db" ] || first_start=1
env_file=$CONF_DIR/env
secret=""
[ -f "$env_file" ] && secret=$(sed -n 's/^JWT_SECRET_KEY=//p' "$env_file")
[ -n "$secret" ] || secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
if [ -z "$listen" ]; then
  if [ -f "$env_file" ]; then listen=$(sed -n 's/^FASTVM_LISTEN=//p' "$env_file"); fi
  listen=${listen:-$LISTEN}
fi
if [ "$first_start" -eq 1 ] && [ -z "$admin_password" ] && [ "$yes" -eq 0 ] && [ -t 0 ]; then
  read -r -s -p "    the admin's password (8 or more characters; empty: admin, to change at first sign-in): " admin_password
  echo
fi
put "$env_file" 0640 <<EOF
# Fast VM settings (see the README for every variable). Read by the fastvm service.
FASTVM_DATA_DIR=$DATA_DIR
FASTVM_LISTEN=$listen
JWT_SECRET_KEY=$secret
EOF
if [ "$dry" -eq 0 ]; then chgrp "$SERVICE_USER" "$env_file"; fi
# The first admin gets its password now, from the command line tool: no admin/admin ever exists, and
# the password is written nowhere.
if [ "$first_start" -eq 1 ] && [ -n "$admin_password" ]; then
  changed=1
  if [ "$dry" -eq 1 ]; then
    note "would create the first admin (admin) with the password given"
  else
    printf '%s\n' "$admin_password" | setpriv --reuid="$SERVICE_USER" --regid="$SERVICE_USER" --init-groups \
      env RUST_LOG=warn "$PREFIX/bin/fastvm" admin reset-password admin --password-stdin --data-dir "$DATA_DIR" >/dev/null
    note "created the first admin (admin) with the password given"
  fi
fi

# ---- 5. start ----
say "5/5 start"
put "$UNIT" 0644 <<EOF
[Unit]
Description=Fast VM: QEMU/KVM virtual machines from a browser or an API
Documentation=https://github.com/fastvm/fastvm
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=$SERVICE_USER
Group=$SERVICE_USER
SupplementaryGroups=kvm
EnvironmentFile=$CONF_DIR/env
ExecStart=$PREFIX/bin/fastvm serve
Restart=on-failure
# Each VM runs under its own supervisor (vmrunner): stopping or restarting the service must not
# take them down. Only the controller is signalled; the next one adopts the running VMs.
KillMode=process
# Bridge and macvtap NICs create links; nothing else needs privileges.
AmbientCapabilities=CAP_NET_ADMIN
CapabilityBoundingSet=CAP_NET_ADMIN
NoNewPrivileges=true
ProtectSystem=strict
ReadWritePaths=$DATA_DIR
ProtectHome=true
PrivateTmp=true
ProtectKernelTunables=true
ProtectKernelModules=true
ProtectKernelLogs=true
ProtectControlGroups=true
ProtectClock=true
ProtectHostname=true
RestrictSUIDSGID=true
RestrictRealtime=true
RestrictNamespaces=true
LockPersonality=true
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
DevicePolicy=closed
DeviceAllow=/dev/kvm rw
DeviceAllow=/dev/net/tun rw
DeviceAllow=/dev/vhost-net rw
DeviceAllow=char-macvtap rw
UMask=0077

[Install]
WantedBy=multi-user.target
EOF
start_cmd="$0 --yes --foreground (or, by hand: sudo -u $SERVICE_USER env \$(grep -v '^#' $env_file) $PREFIX/bin/fastvm serve)"
if [ -d /run/systemd/system ]; then
  run systemctl daemon-reload
  if ! systemctl is-enabled fastvm >/dev/null 2>&1 || ! systemctl is-active fastvm >/dev/null 2>&1; then
    run systemctl enable --now fastvm
  elif [ "$changed" -eq 1 ]; then
    run systemctl restart fastvm
  fi
  note "running: systemctl status fastvm; logs: journalctl -u fastvm"
else
  note "systemd is not running here: the unit is in $UNIT for when it does; start Fast VM with"
  note "  $start_cmd"
fi
host=${listen%:*}
[ "$host" = 0.0.0.0 ] && host=localhost
[ "$changed" -eq 1 ] || note "nothing changed: Fast VM is installed as asked"
say "dashboard: http://$host:${listen##*:}/ (API docs at /docs)"
if [ "$foreground" -eq 1 ] && [ ! -d /run/systemd/system ] && [ "$dry" -eq 0 ]; then
  set -a
  # shellcheck disable=SC1090,SC1091
  . "$env_file"
  set +a
  cd "$DATA_DIR"
  exec setpriv --reuid="$SERVICE_USER" --regid="$SERVICE_USER" --init-groups \
    --inh-caps=+net_admin --ambient-caps=+net_admin "$PREFIX/bin/fastvm" serve
fi
