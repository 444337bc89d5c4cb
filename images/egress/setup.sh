#!/bin/sh
# Runs inside the image build (as root): Debian's tinyproxy, and the entry point.
set -eu
here=$(dirname "$0")
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends tinyproxy
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
install -m 0755 "$here/start.sh" /usr/local/bin/agentrt-egress
