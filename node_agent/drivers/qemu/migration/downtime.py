"""The downtime limit QEMU is given, pass by pass, up to ``migration.downtime``.

QEMU stops the guest for the switchover as soon as what is left to send fits in its
downtime limit at the bandwidth it measured. At QEMU's 300 ms that happens with tens of
MiB still dirty, and the guest stays stopped while they go: an idle 256 MiB guest here
was stopped 58 ms (median; up to 160 ms) through the cluster, 36 ms with a 20 ms limit.
As OpenStack Nova's ``live_migration_downtime_steps`` do, a migration starts with a low
limit and raises it after passes that did not converge; ``migration.downtime`` stays the
most the guest may be stopped, and a guest that dirties memory fast still gets it.
"""

from __future__ import annotations

FIRST_MS = 20  # the limit of the first passes (the whole RAM, then what it dirtied)
STEADY_PASSES = 2  # passes at FIRST_MS before the limit doubles each pass


def downtime_steps(limit_ms: int) -> list[int]:
    """The limits tried, lowest first, ending at ``limit_ms``: 300 -> 20, 40, 80, 160,
    300. Raises ValueError unless ``limit_ms`` is positive."""
    if limit_ms <= 0:
        raise ValueError(f"downtime must be positive, got {limit_ms} ms")
    steps, step = [], min(limit_ms, FIRST_MS)
    while step < limit_ms:
        steps.append(step)
        step *= 2
    return [*steps, limit_ms]


def limit_for_pass(steps: list[int], pass_number: int) -> int:
    """The limit during RAM pass ``pass_number`` (1: the first, whole copy)."""
    return steps[min(max(pass_number - STEADY_PASSES, 0), len(steps) - 1)]


class DowntimeSchedule:
    """Which limit QEMU holds, and which it should get when a pass begins."""

    def __init__(self, limit_ms: int) -> None:
        self.steps = downtime_steps(limit_ms)
        self.current = self.steps[0]

    def on_pass(self, pass_number: int) -> int | None:
        """The new limit to set as pass ``pass_number`` begins, or None to keep it."""
        wanted = limit_for_pass(self.steps, pass_number)
        if wanted == self.current:
            return None
        self.current = wanted
        return wanted
