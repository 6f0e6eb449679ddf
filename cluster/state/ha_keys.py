"""The HA config keys (``cluster.ha``, ``cluster.ha.*``) and what they mean, as plain data.

Kept apart from ``ha.py`` so that ``validate`` can check the keys with the others
without importing the state functions (which import ``validate``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

HA_KEY = "cluster.ha"
REPLICAS_KEY = "cluster.ha.replicas"
INTERVAL_KEY = "cluster.ha.replication_interval"
MAX_LAG_KEY = "cluster.ha.max_lag"
MODES = ("none", "restart")
DEFAULT_REPLICAS = 1
DEFAULT_INTERVAL = 5.0
MIN_INTERVAL = 1.0
REPLICATING_DRIVERS = ("dir", "btrfs")


@dataclass(frozen=True)
class HaSettings:
    """What an instance's expanded config asks of HA (the defaults where unset)."""

    enabled: bool = False
    replicas: int = DEFAULT_REPLICAS
    interval: float = DEFAULT_INTERVAL
    max_lag: float | None = None  # None: promote any replica, and record its age


def _seconds(minimum: float) -> Callable[[str], str]:
    def check(value: str) -> str:
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        return "" if number >= minimum and number < float("inf") else (
            f"must be a number of seconds, at least {minimum:g}")

    return check


def _replicas(value: str) -> str:
    return "" if value.isdigit() and 1 <= int(value) <= 16 else "must be a whole number, 1 to 16"


def _mode(value: str) -> str:
    return "" if value in MODES else f"must be one of {', '.join(MODES)}"


CONFIG_KEYS: dict[str, Callable[[str], str]] = {
    HA_KEY: _mode,
    REPLICAS_KEY: _replicas,
    INTERVAL_KEY: _seconds(MIN_INTERVAL),
    MAX_LAG_KEY: _seconds(0.0),
}


def settings_of(config: Mapping[str, str]) -> HaSettings:
    """The HA settings of an expanded config (values were validated; a bad one reads as
    its default rather than stopping the log)."""
    enabled = config.get(HA_KEY, "") == "restart"
    replicas = config.get(REPLICAS_KEY, "")
    interval = config.get(INTERVAL_KEY, "")
    max_lag = config.get(MAX_LAG_KEY, "")
    return HaSettings(
        enabled=enabled,
        replicas=int(replicas) if not _replicas(replicas) else DEFAULT_REPLICAS,
        interval=float(interval) if interval and not _seconds(MIN_INTERVAL)(interval)
        else DEFAULT_INTERVAL,
        max_lag=float(max_lag) if max_lag and not _seconds(0.0)(max_lag) else None)
