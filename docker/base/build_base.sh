#!/usr/bin/env bash
# Build the service image's base from Debian's own packages, for machines that cannot pull python:3.11-slim (no
# Docker Hub): debootstrap a minimal bookworm with python3, python3-venv and ca-certificates, keep the root file
# system as a tar in a cache, and build an image FROM scratch around it (docker/base/Containerfile) that also trusts
# the machine's own certificate authorities (/usr/local/share/ca-certificates: an egress proxy's, so pip reaches PyPI).
#   docker/base/build_base.sh [TAG]      (as root; TAG default std_daq-base:bookworm)
# Environment: BASE_CACHE (default /var/cache/std_daq-base), DEBIAN_MIRROR (default the first URI of apt's sources).
# A re-run reuses the cached tar, and the image when it carries the digest of the tar and those authorities as label.
set -euo pipefail
cd "$(dirname "$0")"

TAG=${1:-std_daq-base:bookworm}
CACHE=${BASE_CACHE:-/var/cache/std_daq-base}
PACKAGES=python3,python3-venv,ca-certificates
SUITE=bookworm
say() { echo "[build_base] $*" >&2; }

mirror() {
    if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
    local uri
    uri=$(grep -hsoE '^URIs: *\S+/debian$' /etc/apt/sources.list.d/*.sources | head -1 | awk '{print $2}')
    [ -n "$uri" ] || uri=$(grep -hsoE '^deb +\S+/debian +' /etc/apt/sources.list | head -1 | awk '{print $2}')
    echo "${uri:-http://deb.debian.org/debian}"
}

rootfs_key=$(printf '%s %s' "$SUITE" "$PACKAGES" | sha256sum | cut -c1-16)
rootfs_tar=$CACHE/rootfs-$rootfs_key.tar
local_cas=(/usr/local/share/ca-certificates/*.crt)
[ -e "${local_cas[0]}" ] || local_cas=()
key=$(cat build_base.sh Containerfile "${local_cas[@]}" - <<<"$rootfs_key" | sha256sum | cut -c1-16)
if [ ! -s "$rootfs_tar" ]; then
    command -v debootstrap >/dev/null || { say "debootstrap is missing (apt-get install debootstrap)"; exit 1; }
    mkdir -p "$CACHE"
    work=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    say "debootstrap $SUITE ($PACKAGES) from $(mirror) into $work"
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$work/root" "$(mirror)" >"$work/log" 2>&1 || {
        tail -30 "$work/log" >&2; say "debootstrap failed"; exit 1; }
    rm -rf "$work"/root/var/lib/apt/lists/* "$work"/root/var/cache/apt/*.bin "$work"/root/var/cache/apt/archives/*.deb \
        "$work"/root/usr/share/doc/* "$work"/root/usr/share/man/* "$work"/root/usr/share/locale/*
    tar --numeric-owner -C "$work/root" -cf "$work/rootfs.tar" .
    mv "$work/rootfs.tar" "$rootfs_tar"
    say "cached $rootfs_tar ($(du -h "$rootfs_tar" | cut -f1))"
fi

if [ "$(docker image inspect -f '{{index .Config.Labels "std_daq.base"}}' "$TAG" 2>/dev/null)" = "$key" ]; then
    say "$TAG is up to date ($key)"
    exit 0
fi
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
ln "$rootfs_tar" "$context/rootfs.tar" 2>/dev/null || cp "$rootfs_tar" "$context/rootfs.tar"
mkdir "$context/local-ca"
[ ${#local_cas[@]} = 0 ] || cp "${local_cas[@]}" "$context/local-ca/"
say "building $TAG from $rootfs_tar"
docker build -q --network host -f Containerfile --label "std_daq.base=$key" -t "$TAG" "$context" >/dev/null
say "built $TAG"
