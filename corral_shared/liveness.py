"""The offline threshold's default and minimum: the one figure that the Raft leader's
liveness judgement (``cluster.state.apply_members``, ``cluster.controllers.liveness``)
and every member's self-fencing (``node_agent.fencing.timing``, whose lease must end
before the leader can judge OFFLINE) are both built on, so it is written once, here."""

from __future__ import annotations

from typing import Final

DEFAULT_OFFLINE_THRESHOLD: Final = 4.0  # seconds, ``cluster.offline_threshold`` unset
MIN_OFFLINE_THRESHOLD: Final = 3.0  # seconds, the least ``cluster.offline_threshold``
