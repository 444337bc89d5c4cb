#!/bin/sh
# The server's entry point. POSTGRES_PASSWORD (a plain password or a SCRAM-SHA-256 verifier)
# becomes the superuser's password in single-user mode, before anything listens on TCP; it is
# then dropped from the environment so no backend inherits it.
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
if [ -n "${POSTGRES_PASSWORD:-}" ]; then
    quoted=$(printf '%s' "$POSTGRES_PASSWORD" | sed "s/'/''/g")
    printf "ALTER ROLE postgres PASSWORD '%s'\n" "$quoted" \
        | postgres --single -D "$PGDATA" postgres > /dev/null
fi
unset POSTGRES_PASSWORD
exec postgres -D "$PGDATA"
