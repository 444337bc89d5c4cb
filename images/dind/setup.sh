#!/bin/sh
# Runs inside the image build (as root): Debian's Docker engine and e2fsprogs.
set -eu
here=$(dirname "$0")
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends docker.io e2fsprogs
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
install -m 0755 "$here/entrypoint.sh" /usr/local/bin/agentrt-dind
