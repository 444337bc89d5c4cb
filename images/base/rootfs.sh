#!/bin/sh
# The air-gapped half of agentrt/base: debootstrap Debian (minbase + ./packages) from a mirror
# and write it as a tarball for `docker import`. Needs root, debootstrap and tar.
#
#   rootfs.sh OUTPUT.tar [MIRROR] [SUITE]
set -eu
out=$1
mirror=${2:-http://deb.debian.org/debian}
suite=${3:-bookworm}
here=$(cd "$(dirname "$0")" && pwd)
include=$(grep -v '^[[:space:]]*#' "$here/packages" | grep . | paste -sd, -)
work=$(mktemp -d "$(dirname "$out")/agentrt-rootfs.XXXXXX")

cleanup() {
    # A failed debootstrap can leave /proc, /sys or a bind of the host's /dev mounted in the
    # target; rm -rf through such a mount would delete the host's files, so unmount first and
    # keep the directory if anything is still mounted.
    for mnt in $(awk -v p="$work/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r); do
        umount -l "$mnt" 2>/dev/null || true
    done
    if awk -v p="$work/" 'index($2, p) == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
        echo "rootfs.sh: $work still has mounts; not removing it" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT INT TERM

debootstrap --variant=minbase --include="$include" "$suite" "$work/rootfs" "$mirror"

# What the image does not need, and what describes the build host rather than the image.
rm -f "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/log/*.log \
      "$work"/rootfs/etc/hostname "$work"/rootfs/etc/resolv.conf
rm -rf "$work"/rootfs/var/lib/apt/lists/*
: > "$work/rootfs/etc/resolv.conf"

tar --numeric-owner -C "$work/rootfs" --exclude='./proc/*' --exclude='./sys/*' \
    --exclude='./dev/*' -cf "$out" .
