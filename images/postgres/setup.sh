#!/bin/sh
# Runs inside the image build (as root): installs Debian's PostgreSQL 15 and makes the cluster
# agentrt's server runs (scram-sha-256 for every TCP client, peer auth on the local socket).
set -eu
here=$(dirname "$0")
bin=/usr/lib/postgresql/15/bin
export DEBIAN_FRONTEND=noninteractive
apt-get update
# postgresql-common first, told not to make its "main" cluster: agentrt makes its own below,
# in a fixed place, instead of Debian's /etc/postgresql layout managed by pg_ctlcluster.
apt-get install -y --no-install-recommends postgresql-common
sed -ri 's/^#?\s*create_main_cluster\s*=.*$/create_main_cluster = false/' \
    /etc/postgresql-common/createcluster.conf
apt-get install -y --no-install-recommends postgresql-15
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb

install -d -o postgres -g postgres -m 2775 /var/run/postgresql
install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data
# Local (unix socket) connections: peer, so only the postgres OS user (docker exec -u postgres)
# is the superuser. Host connections: scram-sha-256, never trust or md5.
runuser -u postgres -- "$bin/initdb" -D /var/lib/postgresql/data -U postgres -E UTF8 \
    --no-locale --auth-local=peer --auth-host=scram-sha-256
cat >> /var/lib/postgresql/data/pg_hba.conf <<'HBA'
# agentrt: agents reach the server over the run's internal Docker network.
host    all             all             0.0.0.0/0               scram-sha-256
host    all             all             ::/0                    scram-sha-256
HBA
cat >> /var/lib/postgresql/data/postgresql.conf <<'CONF'
# agentrt
listen_addresses = '*'
password_encryption = 'scram-sha-256'
max_connections = 200
CONF
install -m 0755 "$here/start.sh" /usr/local/bin/agentrt-postgres
