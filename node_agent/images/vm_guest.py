"""The guest side of the corral busybox VM: its init scripts and its exec agent.

The agent speaks a line protocol on the virtio-serial port named :data:`AGENT_PORT` (the
host's end is a unix socket, see ``node_agent/drivers/qemu/agent.py``). Requests and
replies are one line each, fields separated by single spaces; every byte string travels
as base64 (busybox ``base64``), so no field contains a space or a newline::

    host:  HELLO <nonce>                         guest:  OK <nonce> corral-agent 1
    host:  EXEC <id> <timeout s, 0=none> <b64(arg0)> <b64(arg1)> ...
    guest: RESULT <id> <exit code> .<b64(stdout)> .<b64(stderr)>

The dot before each base64 field keeps empty output a non-empty field. The guest cannot
block until a host connects (its reads return EOF while none is), so it polls: a first
request may wait up to 1 s on a VM idle for more than 20 s. Commands run as
root in ``/`` with stdin from /dev/null; a timeout kills them (exit 137). Arguments lose
trailing newlines (shell command substitution), and each output is capped at 1 MiB.
"""

from __future__ import annotations

AGENT_PORT = "org.corral.agent"
AGENT_VERSION = 1
READY_MARKER = "corral-vm: userspace up"
CMDLINE = "console=ttyS0 panic=-1 quiet"

INIT = """\
#!/bin/sh
# initramfs /init: the pseudo filesystems, then busybox init (stays PID 1).
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
exec /sbin/init
"""

INITTAB = """\
::sysinit:/etc/init.d/rcS
ttyS0::respawn:-/bin/sh
::respawn:/usr/sbin/corral-agent
::ctrlaltdel:/sbin/reboot
::shutdown:/bin/umount -a -r
"""

RCS = f"""\
#!/bin/sh
# Boot script (once, from init): drivers, root disk, network, ACPI power button.
while read -r module; do insmod "/lib/modules/$module.ko" 2>/dev/null; done </etc/modules
hostname -F /etc/hostname
ip link set lo up
mkdir -p /run /var/log /mnt/root
for disk in /dev/vda /dev/vda2; do  # the whole disk, or the root after a UEFI ESP
    [ -b "$disk" ] && mount -t ext4 "$disk" /mnt/root 2>/dev/null && break
done
if [ -e /sys/class/net/eth0 ]; then
    ip link set eth0 up
    udhcpc -f -S -i eth0 -s /usr/share/udhcpc/default.script -p /run/udhcpc.eth0.pid \\
        -T 2 -A 5 </dev/null >/dev/null 2>&1 &
fi
acpid -c /etc/acpi -l /var/log/acpid.log
echo "{READY_MARKER} ($(uname -r))"
exit 0
"""

POWER_BUTTON = """\
#!/bin/sh
# busybox acpid runs this on the ACPI power button (QMP system_powerdown)
poweroff
"""

AGENT = f"""\
#!/bin/sh
# corral exec agent (protocol in corral's node_agent/images/vm_guest.py). init respawns it.
port=""
for dir in /sys/class/virtio-ports/*; do
    [ "$(cat "$dir/name" 2>/dev/null)" = {AGENT_PORT} ] && port="/dev/${{dir##*/}}"
done
[ -c "$port" ] || {{ sleep 5; exit 1; }}
exec 3<>"$port"
cd /

run() {{
    id=$1 limit=$2
    shift 2
    for arg in "$@"; do
        shift
        set -- "$@" "$(printf %s "$arg" | base64 -d)"
    done
    if [ "$limit" = 0 ]; then
        "$@" </dev/null >/tmp/.agent.out 2>/tmp/.agent.err
    else
        timeout -s KILL "$limit" "$@" </dev/null >/tmp/.agent.out 2>/tmp/.agent.err
    fi
    rc=$?
    out=$(head -c 1048576 /tmp/.agent.out | base64 -w 0)
    err=$(head -c 1048576 /tmp/.agent.err | base64 -w 0)
    rm -f /tmp/.agent.out /tmp/.agent.err
    echo "RESULT $id $rc .$out .$err" >&3
}}

idle=0
while :; do
    # With no host connected, reads return EOF at once, so poll: every 0.2 s for 20 s
    # after boot or a request, then every second (a TCG guest pays for each wake-up).
    if ! IFS= read -r line <&3; then
        if [ "$idle" -lt 100 ]; then
            idle=$((idle + 1))
            sleep 0.2
        else
            sleep 1
        fi
        continue
    fi
    idle=0
    set -f
    set -- $line
    set +f
    case "$1" in
        HELLO) echo "OK $2 corral-agent {AGENT_VERSION}" >&3 ;;
        EXEC)
            if [ $# -ge 4 ]; then
                id=$2 limit=$3
                shift 3
                run "$id" "$limit" "$@"
            fi
            ;;
    esac
done
"""
