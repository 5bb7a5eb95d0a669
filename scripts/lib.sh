# shellcheck shell=bash
# Shared helpers for the setup scripts: install what is missing, start what is needed.
# Sourced, not run.

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

apt_updated=0
# Installs the Debian packages among "$@" that are not installed yet.
ensure_packages() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null 2>&1; then
    log "missing packages: ${missing[*]} (install them with your package manager)"
    return 1
  fi
  if [ "$apt_updated" -eq 0 ]; then
    log "apt-get update"
    as_root apt-get update -qq
    apt_updated=1
  fi
  log "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# What running VMs needs on the host (the process runtime).
VM_PACKAGES=(qemu-system-x86 qemu-utils ovmf swtpm swtpm-tools xorriso)

# Installs VM_PACKAGES and checks that every tool they bring is really there afterwards: installing
# one package can remove another (qemu-system-x86 7.2 removes a backported qemu-utils 10.x), so the
# set is installed again until nothing is missing, and a tool still absent then stops the set-up.
ensure_vm_tools() {
  ensure_packages "${VM_PACKAGES[@]}"
  ensure_packages "${VM_PACKAGES[@]}"
  local missing=()
  for tool in qemu-system-x86_64 qemu-img qemu-io swtpm swtpm_setup xorriso; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  for file in /usr/share/OVMF/OVMF_CODE_4M.fd /usr/share/OVMF/OVMF_VARS_4M.fd; do
    [ -f "$file" ] || missing+=("$file")
  done
  if [ ${#missing[@]} -ne 0 ]; then
    log "still missing after installing ${VM_PACKAGES[*]}: ${missing[*]}"
    return 1
  fi
}

# A command-line tool from PyPI in a virtual environment of its own; prints the command's path.
ensure_py_tool() { # <package> <command>
  local venv="${XDG_CACHE_HOME:-$HOME/.cache}/fastvm/py-$1"
  if [ ! -x "$venv/bin/$2" ]; then
    command -v python3 >/dev/null 2>&1 || ensure_packages python3 python3-venv
    python3 -m venv "$venv" 2>/dev/null || { ensure_packages python3-venv && python3 -m venv "$venv"; }
    log "installing $1 from PyPI"
    "$venv/bin/pip" install -q "$1" >&2
  fi
  if [ ! -x "$venv/bin/$2" ]; then
    log "$2 is missing after installing $1"
    return 1
  fi
  echo "$venv/bin/$2"
}

ensure_rust() {
  command -v cargo >/dev/null 2>&1 && return 0
  log "cargo not found: install Rust (https://rustup.rs) and run this again"
  return 1
}

# Starts a Docker engine when none answers (tests of the docker runtime and the health check need one).
ensure_dockerd() {
  ensure_packages docker.io
  if docker info >/dev/null 2>&1; then return 0; fi
  log "starting dockerd"
  as_root sh -c 'nohup dockerd >/var/log/fastvm-dockerd.log 2>&1 &'
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 1
  done
  log "dockerd did not come up; see /var/log/fastvm-dockerd.log"
  return 1
}

# Node.js 20 or newer for the dashboard's build (Tailwind v4 needs it).
ensure_node() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    ensure_packages nodejs npm
  fi
  local major
  major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
  if [ "$major" -lt 20 ]; then
    log "Node.js $(node --version 2>/dev/null) is too old for the dashboard's build: install Node.js 20 or newer"
    return 1
  fi
}

# Builds the dashboard (frontend/dist, which the controller embeds) when it is missing or older than
# its sources; a fresh clone installs its npm packages first, exactly as the lock file names them.
ensure_dashboard() {
  local stamp=frontend/dist/index.html
  if [ -f "$stamp" ] && [ -z "$(find frontend/src frontend/build.mjs frontend/package.json frontend/patches \
      frontend/package-lock.json -newer "$stamp" 2>/dev/null | head -n1)" ]; then
    return 0
  fi
  ensure_node
  log "building the dashboard (npm ci && npm run build)"
  (cd frontend && npm ci --no-audit --no-fund --loglevel=error && npm run build)
}

# Debian's Chromium, which the browser tests drive headless.
ensure_chromium() {
  ensure_packages chromium
  if [ ! -x /usr/bin/chromium ]; then
    log "still missing after installing chromium: /usr/bin/chromium"
    return 1
  fi
}
