#!/usr/bin/env bash
# The main job: a one-member corral cluster with two busybox containers.
# Idempotent: re-running reuses the daemon, the image and the containers.
set -euo pipefail
cd "$(dirname "$0")/.."
CORRAL=.venv/bin/corral
export CORRAL_DIR=${CORRAL_DIR:-/var/lib/corral}
mkdir -p "$CORRAL_DIR"

if ! $CORRAL waitready --timeout 1 >/dev/null 2>&1; then
    echo "starting corral daemon (CORRAL_DIR=$CORRAL_DIR, log $CORRAL_DIR/corral.log)"
    setsid nohup $CORRAL daemon >/dev/null 2>&1 < /dev/null &
    $CORRAL waitready --timeout 60
fi
$CORRAL init --auto 2>/dev/null || true    # refused harmlessly when already initialised
if ! $CORRAL image list --format csv | grep -q '^busybox,'; then
    $CORRAL image build busybox
fi
for name in demo1 demo2; do
    if ! $CORRAL list --format csv -c n | grep -qx "$name"; then
        $CORRAL launch busybox "$name" -c limits.memory=64MiB -c limits.cpu=1
    fi
    state=$($CORRAL list --format csv -c s "$name" | head -n1)
    [ "$state" = "RUNNING" ] || $CORRAL start "$name"
done
sleep 2    # give DHCP a moment so the list shows addresses
$CORRAL list
echo "+ corral exec demo1 -- sh -c 'hostname; nproc; cat /sys/fs/cgroup/memory/memory.limit_in_bytes; ip -4 -o addr show eth0'"
$CORRAL exec demo1 -- sh -c 'hostname; nproc; cat /sys/fs/cgroup/memory/memory.limit_in_bytes; ip -4 -o addr show eth0'

# A 3-member cluster on this machine: each member a network-namespace host with its own
# daemon, formed with join tokens; containers spread over the members.
DEV=${CORRAL_DEV_DIR:-/var/lib/corral-dev}
if ! CORRAL_DIR=$DEV/m1 $CORRAL waitready --timeout 1 >/dev/null 2>&1; then
    $CORRAL dev-cluster down --dir "$DEV" >/dev/null 2>&1 || true
    $CORRAL dev-cluster up --nodes 3 --dir "$DEV"
fi
export CORRAL_DIR=$DEV/m1
if ! $CORRAL image list --format csv | grep -q '^busybox,'; then
    $CORRAL image build busybox
fi
for name in web1 web2 web3; do
    if ! $CORRAL list --format csv -c n | grep -qx "$name"; then
        $CORRAL launch busybox "$name"    # placed on the member with the fewest instances
    fi
done
echo "+ CORRAL_DIR=$DEV/m2 corral cluster list"
CORRAL_DIR=$DEV/m2 $CORRAL cluster list
echo "+ CORRAL_DIR=$DEV/m3 corral list -c nsL"
CORRAL_DIR=$DEV/m3 $CORRAL list -c nsL
echo "+ CORRAL_DIR=$DEV/m3 corral exec web1 -- hostname    (relayed to web1's member)"
CORRAL_DIR=$DEV/m3 $CORRAL exec web1 -- hostname
