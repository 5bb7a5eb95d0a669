#!/usr/bin/env bash
# Builds the Fast VM images without a container registry:
#   scripts/build-images.sh [--profile debug|release] [--controller]
# 1. a Debian base image, fastvm/debian:bookworm, from debootstrap + docker import (once; reused after),
#    unless debian:bookworm-slim is already present;
# 2. the binaries, compiled here, staged in dist/;
# 3. fastvm/vmrunner (and fastvm/controller with --controller) from the Dockerfile's *-prebuilt targets.
# On a host that can pull images, `docker compose build` builds the same images from source instead.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

profile=release
controller=0
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --controller) controller=1; shift ;;
    *) echo "usage: $0 [--profile debug|release] [--controller]" >&2; exit 2 ;;
  esac
done

ensure_dockerd
if [ -n "${FASTVM_BASE_IMAGE:-}" ]; then
  base="$FASTVM_BASE_IMAGE"
elif docker image inspect debian:bookworm-slim >/dev/null 2>&1; then
  base=debian:bookworm-slim
else
  base=fastvm/debian:bookworm
  if ! docker image inspect "$base" >/dev/null 2>&1; then
    ensure_packages debootstrap
    mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)
    mirror=${mirror:-http://deb.debian.org/debian}
    rootfs=$(mktemp -d)
    trap 'as_root rm -rf "$rootfs"' EXIT
    log "debootstrap bookworm from $mirror (about a minute)"
    as_root debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
    log "importing $base"
    as_root tar -C "$rootfs" -c . | docker import - "$base" >/dev/null
  fi
fi

flag=""
[ "$profile" = release ] && flag=--release
bins=(--bin vmrunner)
[ "$controller" = 1 ] && bins+=(--bin fastvm)
# The controller embeds the dashboard.
[ "$controller" = 1 ] && ensure_dashboard
log "cargo build $flag ${bins[*]}"
cargo build -q $flag "${bins[@]}"
rm -rf dist && mkdir -p dist
cp "target/$profile/vmrunner" dist/
[ "$controller" = 1 ] && cp "target/$profile/fastvm" dist/

# Builds image $1 from target $2; the image it replaces goes (unless a container still uses it), so
# rebuilds do not pile up untagged images of half a gigabyte each.
build_image() {
  local old
  old=$(docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true)
  log "docker build $1 (base $base)"
  docker build -q --build-arg BASE="$base" --target "$2" -t "$1" . >/dev/null
  if [ -n "$old" ] && [ "$old" != "$(docker image inspect -f '{{.Id}}' "$1")" ]; then
    docker image rm "$old" >/dev/null 2>&1 || true
  fi
}
build_image fastvm/vmrunner:latest vmrunner-prebuilt
if [ "$controller" = 1 ]; then
  build_image fastvm/controller:latest controller-prebuilt
fi
log "images ready"
