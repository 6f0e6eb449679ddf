"""The QEMU driver (virtual machines), split by aspect.

::

    driver.py   QemuDriver: define/start/stop/freeze/state/... (one QEMU per VM)
    cmdline.py  definition -> VmSpec -> QEMU argv (pure)
    qmp.py      a small synchronous QMP client (one connection per call; a held Monitor)
    snapshots.py qcow2 internal snapshots of the disk, LXD names in snapshots.json
    backup.py   point-in-time copies of a running disk for HA replicas (backup job,
                dirty bitmaps)
    migration/  live migration to another host: NBD disk mirror + QMP migrate (common,
                tls, target, source, switchover)
    agent.py    host side of the in-guest exec agent (virtio-serial line protocol)
    vm_exec.py  command-line exec through the agent (what exec_argv returns)
    host.py     /proc readers for the QEMU process, tap devices
    guest_metrics.py  LXD's metrics from inside the guest: one script run by the agent,
                pure parsers of its output
    host_metrics.py   LXD's metrics as the host sees the VM (QMP, /proc, taps), when
                the agent does not answer
    accel.py    KVM-or-TCG probe (a boot sector under KVM, in a child, with a timeout)
"""

from node_agent.drivers.qemu.driver import QemuDriver

__all__ = ["QemuDriver"]
