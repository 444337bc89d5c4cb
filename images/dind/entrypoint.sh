#!/bin/sh
# Starts dockerd in the container. Arguments are passed on to dockerd (e.g. --host ...).
#
# Loop devices are the kernel's, not the container's: /dev/loop-control hands out free numbers
# and the kernel creates loopN on demand, but a container's /dev holds only the nodes it was
# given, so make the nodes (the device cgroup rule `b 7:* rwm` lets them be opened).
set -eu
n=0
while [ "$n" -le "${AGENTRT_DIND_LOOPS:-255}" ]; do
    [ -e "/dev/loop$n" ] || mknod -m 0660 "/dev/loop$n" b 7 "$n"
    n=$((n + 1))
done
# cgroup v2 with a private cgroup namespace: move ourselves out of the root so that dockerd
# may enable controllers for its children (what the official docker:dind image does).
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    mkdir -p /sys/fs/cgroup/init
    xargs -rn1 < /sys/fs/cgroup/cgroup.procs > /sys/fs/cgroup/init/cgroup.procs 2>/dev/null || :
    sed -e 's/ / +/g' -e 's/^/+/' < /sys/fs/cgroup/cgroup.controllers \
        > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || :
fi
rm -f /var/run/docker.pid /run/docker/containerd/containerd.pid
exec dockerd "$@"
