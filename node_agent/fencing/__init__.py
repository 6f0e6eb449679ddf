"""Self-fencing: a member cut off from the cluster hard-stops its HA instances before the
Raft leader can judge it OFFLINE and fail them over, so an instance never runs twice.

::

    timing.py      the lease inequality and its defaults (pure)
    fence.py       SelfFence: the lease on the member's clock; writing the lease, killing
    lease_file.py  fencing/lease.json: deadline + HA instances' (pid, start time)
    proc.py        a process named by pid and start time; kill only if still the same
    watchdog.py    a separate process that enforces the lease file, even when the
                   daemon is frozen or dead; ensure_watchdog starts it detached
    guard.py       FenceGuard: what the node agent calls (beat, holds, refresh)
    kills.py       FenceKills: the HA instances fenced here, counted once each

``lease_file``, ``proc``, ``timing`` and ``watchdog`` import only the standard library,
``corral_shared`` and each other: the watchdog stays a small process (and this
``__init__`` imports nothing).
"""
