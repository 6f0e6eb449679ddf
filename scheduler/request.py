"""A placement request: everything about one instance that placement looks at."""

from __future__ import annotations

from dataclasses import dataclass

from corral_shared.resources import Resources, demand_of
from scheduler import keys


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    """Place instance ``name`` (``id`` seeds the tie-break, so a retried request with the
    same id lands on the same member of a tie).

    ``target``: ``""`` (anywhere), a member name, or ``"@group"`` (a cluster group).
    ``architecture``: ``""`` accepts any. ``exclude``: members to avoid, e.g. the source of
    a move or an evacuation.
    """

    id: str
    name: str
    type: str
    architecture: str
    demand: Resources
    target: str = ""
    placement_group: str = ""
    exclude: frozenset[str] = frozenset()

    @property
    def target_group(self) -> str:
        """The cluster group of an ``@group`` target, else ``""``."""
        return self.target[1:] if self.target.startswith("@") else ""

    @property
    def target_member(self) -> str:
        """The member of a member-name target, else ``""``."""
        return "" if self.target.startswith("@") else self.target


def request_for(id: str, name: str, type: str, architecture: str,
                config: dict[str, str], devices: dict[str, dict[str, str]],
                target: str = "", exclude: frozenset[str] = frozenset()) -> PlacementRequest:
    """A request from an instance's *expanded* config and devices (profiles applied).

    Raises ``ValueError`` when the limits cannot be read (see ``demand_of``).
    """
    return PlacementRequest(
        id=id, name=name, type=type, architecture=architecture,
        demand=demand_of(type, config, devices), target=target,
        placement_group=config.get(keys.INSTANCE_GROUP_KEY, ""), exclude=exclude)
