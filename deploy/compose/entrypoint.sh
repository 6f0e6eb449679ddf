#!/bin/sh
# The entrypoint of a corral member in docker-compose.test.yml: run the daemon, bootstrap
# or join the cluster, then stay in the foreground with the daemon.
#
#   CORRAL_MEMBER        this member's name (default: the hostname)
#   CORRAL_BOOTSTRAP=1   this member makes the cluster and publishes a join token for each
#                        of CORRAL_PEERS (space separated) in CORRAL_TOKENS_DIR
#   CORRAL_JOIN_TOKEN    a join token; without it a joiner waits for CORRAL_TOKENS_DIR/NAME.token
#   CORRAL_JOIN_TIMEOUT  how long a joiner waits for its token (s, default 120)
#   CORRAL_ADDRESS       the cluster address (default: eth0's IPv4 address, port 8443)
#
# A member that cannot bootstrap or join says why on stderr (a line starting
# "corral-compose[NAME]: FATAL:") and exits 1. A member whose state volume already holds a
# cluster only starts its daemon again.
set -eu

NAME=${CORRAL_MEMBER:-$(hostname)}
TOKENS=${CORRAL_TOKENS_DIR:-/run/corral-tokens}
JOIN_TIMEOUT=${CORRAL_JOIN_TIMEOUT:-120}
READY_TIMEOUT=${CORRAL_READY_TIMEOUT:-60}
export CORRAL_DIR=${CORRAL_DIR:-/var/lib/corral}
DAEMON=

log() { echo "corral-compose[$NAME]: $*" >&2; }

stop_daemon() {
    if [ -n "$DAEMON" ] && kill -0 "$DAEMON" 2>/dev/null; then
        kill -TERM "$DAEMON" 2>/dev/null || true
        wait "$DAEMON" 2>/dev/null || true
    fi
}

fail() {
    log "FATAL: $*"
    stop_daemon
    exit 1
}

# Docker 20.10 cannot give a container a cgroup namespace of its own on cgroup v1 from a
# compose file, and its cgroup mounts show only the container's own subtree while
# /proc/self/cgroup names the full path: liblxc then finds no cgroup it can use ("funky
# cgroup layout") and starts containers without limits. In a cgroup namespace rooted at the
# container's cgroup both agree, and every cgroup liblxc makes stays inside the container's,
# so the engine removes them with it.
if [ -z "${CORRAL_CGROUPNS:-}" ]; then
    export CORRAL_CGROUPNS=1
    exec unshare --cgroup -- "$0" "$@"
fi

# Outside privileged mode (see the compose file) the engine masks parts of /proc and /sys
# (files and directories mounted over) and mounts /sys, /proc/sys and the cgroup
# hierarchies read-only. liblxc and the daemon write there, and an unprivileged container
# (a user namespace) may mount its own proc and sysfs only where they are fully visible:
# unmount the masks, deepest first, and remount the rest read-write.
for mnt in $(awk '$5 ~ "^/proc/." || $5 ~ "^/sys/firmware" {print $5}' /proc/self/mountinfo | sort -r); do
    umount "$mnt" 2>/dev/null || log "cannot unmount $mnt"
done
mount -o remount,rw /sys 2>/dev/null || log "cannot remount /sys read-write"
for mnt in $(grep -E ' - cgroup2? ' /proc/self/mountinfo | cut -d' ' -f5); do
    mount -o remount,bind,rw "$mnt" 2>/dev/null || log "cannot remount $mnt read-write"
done

if [ -n "${CORRAL_ADDRESS:-}" ]; then
    ADDRESS=$CORRAL_ADDRESS
else
    IP=$(ip -4 -o addr show dev eth0 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}')
    [ -n "$IP" ] || fail "no IPv4 address on eth0 (is the container on a network?); set CORRAL_ADDRESS"
    ADDRESS=$IP:8443
fi

trap 'log "stopping"; stop_daemon; exit 0' TERM INT
started=$(date +%s)
corral daemon &
DAEMON=$!
corral waitready --timeout "$READY_TIMEOUT" >/dev/null 2>&1 ||
    fail "the daemon did not answer within ${READY_TIMEOUT}s (see its log above)"

# `cluster list` prints [] until the member is initialised.
if [ "$(corral cluster list --format json 2>/dev/null)" != "[]" ]; then
    log "already a cluster member (state in $CORRAL_DIR): daemon started again"
elif [ "${CORRAL_BOOTSTRAP:-}" = 1 ]; then
    umask 077
    mkdir -p "$TOKENS"
    rm -f "$TOKENS"/*.token  # an earlier cluster's, if its volume was kept: never hand them out
    out=$(corral init --auto --address "$ADDRESS" --member-name "$NAME" 2>&1) ||
        fail "cannot bootstrap the cluster at $ADDRESS: $out"
    for peer in ${CORRAL_PEERS:-}; do
        out=$(corral cluster add "$peer" 2>&1) || fail "cannot make a join token for $peer: $out"
        printf '%s\n' "$out" | tail -n 1 >"$TOKENS/.$peer.token.tmp"
        mv "$TOKENS/.$peer.token.tmp" "$TOKENS/$peer.token"
        log "published a join token for $peer in $TOKENS/$peer.token"
    done
    log "bootstrapped the cluster at $ADDRESS"
else
    token=${CORRAL_JOIN_TOKEN:-}
    waited=0
    while [ -z "$token" ]; do
        if [ -s "$TOKENS/$NAME.token" ]; then
            token=$(cat "$TOKENS/$NAME.token")
        elif [ "$waited" -ge "$JOIN_TIMEOUT" ]; then
            fail "no join token for $NAME in $TOKENS after ${JOIN_TIMEOUT}s: is the bootstrap member up? (its logs say)"
        else
            sleep 1
            waited=$((waited + 1))
        fi
    done
    out=$(corral init --join "$token" --address "$ADDRESS" 2>&1) ||
        fail "cannot join the cluster as $NAME at $ADDRESS: $out"
    rm -f "$TOKENS/$NAME.token"  # single-use: spent now
    log "joined the cluster at $ADDRESS"
fi
log "ready in $(($(date +%s) - started))s"

# The daemon runs in the foreground from here on; its exit ends the container.
set +e
wait "$DAEMON"
rc=$?
[ "$rc" -eq 0 ] || log "the daemon exited with status $rc"
exit "$rc"
