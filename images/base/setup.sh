#!/bin/sh
# Runs inside the image build (as root) for both paths: installs whatever of ./packages the
# parent image lacks (nothing, for a debootstrap rootfs, so no network is needed), then adds
# the unprivileged user and /workspace.
set -eu
here=$(dirname "$0")
missing=""
for pkg in $(grep -v '^[[:space:]]*#' "$here/packages"); do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    # shellcheck disable=SC2086
    apt-get install -y --no-install-recommends $missing
fi
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb

groupadd --gid 1000 agent
useradd --uid 1000 --gid 1000 --home-dir /home/agent --create-home --shell /bin/bash agent
install -d -o agent -g agent -m 0755 /workspace

# /workspace is bind-mounted from the host and may be owned by another uid; the container has
# a single user, so git's cross-user ownership check protects nothing here.
git config --system safe.directory '*'
git config --system user.name agent
git config --system user.email agent@agentrt.invalid
git config --system init.defaultBranch main
