#!/bin/sh
# The proxy's entry point: writes the configuration and the filter agentrt generated
# (AGENTRT_EGRESS_CONFIG, AGENTRT_EGRESS_FILTER) to /tmp and runs tinyproxy in the foreground.
set -eu
umask 077
printf '%s\n' "${AGENTRT_EGRESS_CONFIG:?}" > /tmp/tinyproxy.conf
printf '%s\n' "${AGENTRT_EGRESS_FILTER:?}" > /tmp/filter
unset AGENTRT_EGRESS_CONFIG AGENTRT_EGRESS_FILTER
exec tinyproxy -d -c /tmp/tinyproxy.conf
