"""The replicated state: plain, picklable data and nothing else.

Records are dataclasses so the code reads well; they hold no locks, loops or
sockets (pysyncobj pickles the state when it compacts its log). The records there are
one or more of per instance have ``__slots__`` (see ``slotted.py``: a third less memory
per instance, and snapshots stay loadable both ways).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from cluster.state.slotted import slotted
from corral_shared.resources import ZERO, Resources


@dataclass
class Member:
    name: str
    address: str
    architecture: str = "x86_64"
    roles: list[str] = field(default_factory=list)
    description: str = ""
    heartbeat_at: float = 0.0  # the member's own clock: shown, never compared with another
    state: str = "ONLINE"  # ONLINE or EVACUATED: what the administrator asked
    # ONLINE or OFFLINE as committed by the Raft leader (``member.liveness``), judged on
    # the leader's own clock; ``beats`` counts committed heartbeats, ``liveness_beats`` is
    # the count the last transition was judged on (apply's compare-and-set).
    liveness: str = "ONLINE"
    beats: int = 0
    liveness_beats: int = 0
    raft_address: str = ""
    joined_at: float = 0.0
    # Member-local settings as in LXD (scheduler.instance, scheduler.capacity.cpu/.memory).
    config: dict[str, str] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)  # cluster groups, as in LXD
    # What the member's agent reports: {"cpu": n, "memory": bytes, "disk": bytes}.
    capacity: dict[str, float] = field(default_factory=dict)
    instance_types: list[str] = field(default_factory=lambda: ["container"])

    def __setstate__(self, data: dict[str, Any]) -> None:
        self.__dict__.update(Member("", "").__dict__ | data)


@slotted
@dataclass(slots=True)
class Action:
    """A one-shot change once queued for the node agent, numbered by the instance's
    generation. Nothing queues any more: every change is desired state that the agent
    converges on (power: node_agent/converge.py; existence, name and spec:
    node_agent/desired.py; snapshots and restores: node_agent/desired_snapshots.py). A
    snapshot from before may hold queued actions: the agent reads creates, renames,
    updates, deletes, snapshot changes and restores as desired state and carries queued
    power actions out once."""

    generation: int
    kind: str  # create|start|stop|restart|freeze|unfreeze|update|rename|snapshot|...
    args: dict[str, Any] = field(default_factory=dict)


@slotted
@dataclass(slots=True)
class Observed:
    """What the node agent last reported for an instance."""

    generation: int = 0
    status: str = "Stopped"
    error: str = ""
    boots: int = 0  # the restarts carried out (``Instance.boots``)
    host: str = ""  # "member/boot id" of the host that reported: a reboot since is seen
    # Whether the agent created the instance (node_agent/desired.py). True by default: a
    # record from before the field existed was created, or a queued create (``pending``)
    # does it; ``instance.create`` sets False.
    created: bool = True
    name: str = ""  # the name the instance has on its host ("" = the record's)
    spec_gen: int = 0  # the spec revision (``Instance.spec_gen``) the host has
    restore_gen: int = 0  # the last restore (``Instance.restore_gen``) carried out


@dataclass
class Snapshot:
    """One entry of an instance's desired snapshot set (node_agent/desired_snapshots.py):
    ``ready`` once the agent reports it taken, ``deleted`` while its removal is asked and
    not yet reported, ``local`` the name the host has it under while a rename is not yet
    reported ("" = ``name``: an identity that survives renames), ``generation`` that of
    its last change (a failure is reported there). A snapshot from before the last three
    fields reads their class defaults."""

    name: str
    created_at: float
    config: dict[str, str] = field(default_factory=dict)
    devices: dict[str, dict[str, str]] = field(default_factory=dict)
    profiles: list[str] = field(default_factory=list)
    description: str = ""
    stateful: bool = False
    expires_at: float = 0.0
    ready: bool = False
    deleted: bool = False
    local: str = ""
    generation: int = 0

    @property
    def shown(self) -> bool:
        """Whether clients see it: taken, and no removal asked."""
        return self.ready and not self.deleted


@dataclass
class Replica:
    """A copy of an HA instance's root volume on another member (``cluster/state/ha.py``).

    ``snapshot``: the newest complete replica snapshot that member holds ("" = none yet);
    ``synced_at``: when the source began reading it (the source's clock, carried in the
    command); ``epoch``: the instance's placement epoch it was shipped under; ``bytes``:
    the size of the last shipment."""

    member: str
    snapshot: str = ""
    synced_at: float = 0.0
    epoch: int = 0
    bytes: int = 0

    def __setstate__(self, data: dict[str, Any]) -> None:
        self.__dict__.update(Replica("").__dict__ | data)


@slotted
@dataclass(slots=True)
class Instance:
    uid: str
    name: str
    type: str
    location: str
    architecture: str
    image: str
    created_at: float
    config: dict[str, str] = field(default_factory=dict)
    devices: dict[str, dict[str, str]] = field(default_factory=dict)
    profiles: list[str] = field(default_factory=list)
    ephemeral: bool = False
    description: str = ""
    last_used_at: float = 0.0
    # The desired power state (Running|Stopped|Frozen|Deleted) that the agent converges
    # on (node_agent/converge.py); ``boots`` counts the restarts asked for and
    # ``power_args`` says how the last power change is made (stateful, force, timeout;
    # None for the defaults). ``generation`` grows with every desired change.
    power: str = "Stopped"
    generation: int = 0
    boots: int = 0
    power_args: dict[str, Any] | None = None
    # The rest of the desired state (node_agent/desired.py): the generations of the last
    # spec change (update, patch) and of the last rename.
    spec_gen: int = 0
    name_gen: int = 0
    # The last restore asked (node_agent/desired_snapshots.py): its generation and the
    # snapshot's name, which follows the snapshot's renames.
    restore_gen: int = 0
    restore_snap: str = ""
    # Only in snapshots from before: the one-shot changes queued then (``Action``), read
    # by the agent as desired state; nothing queues any more.
    pending: list[Action] = field(default_factory=list)
    observed: Observed = field(default_factory=Observed)
    results: dict[int, str] = field(default_factory=dict)  # generation -> error ("" = ok)
    snapshots: dict[str, Snapshot] = field(default_factory=dict)
    demand: Resources = ZERO  # what it reserves on its member (cluster/state/reservations.py)
    group: str = ""  # the placement group it is counted in (reservations.py)
    moving_to: str = ""  # the member a move is copying it to (apply_moves.py)
    stateful: bool = False  # a stateful stop's checkpoint waits for the next start
    # The intent (``State.intents``) that holds this instance: every other change of it is
    # refused until that intent finishes (``apply_intents.lock_problem``). A snapshot from
    # before the field existed reads the class default "" (unlocked).
    intent: str = ""
    # HA (``cluster/state/ha.py``, ``apply_ha.py``). ``epoch``: the placement epoch, raised
    # by each failover; a member acts on the instance, and accepts replica data for it,
    # only under the current one. ``replicas``: its replica holders, by member (None
    # while it has none: no empty dict per instance).
    # ``from_replica``: the replica snapshot a failover started it from, until its new
    # member created it. ``ha_waiting``: why a failover found no member yet ("" = none).
    # ``failover``: the last failover (from, at, lag, snapshot, epoch).
    epoch: int = 0
    replicas: dict[str, Replica] | None = None
    from_replica: str = ""
    ha_waiting: str = ""
    failover: dict[str, Any] | None = None

    @property
    def busy(self) -> bool:
        """Whether the agent has not yet reported every desired change."""
        return bool(self.pending) or self.observed.generation < self.generation


@dataclass
class Image:
    fingerprint: str
    info: dict[str, Any]
    public: bool = False
    uploaded_at: float = 0.0
    last_used_at: float = 0.0
    members: list[str] = field(default_factory=list)


@dataclass
class Alias:
    name: str
    target: str
    description: str = ""
    type: str = "container"


@dataclass
class Profile:
    name: str
    config: dict[str, str] = field(default_factory=dict)
    devices: dict[str, dict[str, str]] = field(default_factory=dict)
    description: str = ""


@dataclass
class StoragePool:
    name: str
    driver: str
    config: dict[str, str] = field(default_factory=dict)
    description: str = ""


@dataclass
class Network:
    name: str
    type: str
    config: dict[str, str] = field(default_factory=dict)
    description: str = ""


@dataclass
class Certificate:
    """A trusted TLS client, keyed by the SHA-256 fingerprint of its DER certificate."""

    fingerprint: str
    name: str
    certificate: str  # PEM
    type: str = "client"
    restricted: bool = False
    projects: list[str] = field(default_factory=list)
    description: str = ""


@dataclass
class TrustToken:
    """A pending, single-use trust token; only the SHA-256 of its secret is replicated."""

    secret_hash: str
    name: str
    created_at: float
    expires_at: float  # 0 = never


@dataclass
class JoinToken:
    """A pending, single-use cluster join token for one new member name."""

    name: str
    secret_hash: str
    created_at: float
    expires_at: float


FINISHED_PHASES = ("done", "failed", "cancelled")


@dataclass
class Intent:
    """Long work (a move, an evacuation, a restore) as a replicated record, driven phase by
    phase by a controller on the Raft leader (``cluster/controllers``); a new leader
    resumes it from here. Only ``apply_intents`` changes it, and times are the commands'.
    """

    id: str
    kind: str  # which controller drives it: move, live_move, evacuate, restore, ...
    request: dict[str, Any] = field(default_factory=dict)  # what was asked, as validated
    plan: dict[str, Any] = field(default_factory=dict)  # what the controller worked out
    phase: str = "new"  # the controller's step; done, failed and cancelled are final
    items: dict[str, dict[str, Any]] = field(default_factory=dict)  # per instance, merged
    progress: dict[str, Any] = field(default_factory=dict)  # the operation's metadata
    error: str = ""
    cancel: bool = False  # cancelling was asked (``intent.cancel``); the controller undoes
    cancellable: bool = True  # False once past the switch: cancel is then refused
    locks: dict[str, str] = field(default_factory=dict)  # instance name -> uid it holds
    member: str = ""  # the member that took the request
    created_at: float = 0.0
    updated_at: float = 0.0

    def __setstate__(self, data: dict[str, Any]) -> None:
        self.__dict__.update(Intent("", "").__dict__ | data)

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED_PHASES


@dataclass
class ControllerEpoch:
    """Who runs the controllers, and under which epoch (``controller.claim`` raises it by
    one). A command carrying another ``epoch`` is refused: it comes from a deposed
    leader's controller (``apply_intents.fence``)."""

    member: str = ""
    epoch: int = 0
    claimed_at: float = 0.0


RECENT_COMMANDS = 20_000


@dataclass
class State:
    members: dict[str, Member] = field(default_factory=dict)
    instances: dict[str, Instance] = field(default_factory=dict)
    images: dict[str, Image] = field(default_factory=dict)
    aliases: dict[str, Alias] = field(default_factory=dict)
    profiles: dict[str, Profile] = field(default_factory=dict)
    storage_pools: dict[str, StoragePool] = field(default_factory=dict)
    networks: dict[str, Network] = field(default_factory=dict)
    config: dict[str, str] = field(default_factory=dict)
    certificates: dict[str, Certificate] = field(default_factory=dict)
    trust_tokens: dict[str, TrustToken] = field(default_factory=dict)  # by secret hash
    join_tokens: dict[str, JoinToken] = field(default_factory=dict)  # by new member name
    # Results of recently applied command ids: a retried command is applied once.
    recent: OrderedDict[str, Any] = field(default_factory=OrderedDict)
    index: int = 0  # number of commands applied; a cheap change counter
    # Sum of the demands of the instances on each member (None: to be recomputed).
    reserved: dict[str, Resources] | None = field(default_factory=dict)
    # Instances of each placement group on each member (None: to be recomputed).
    grouped: dict[str, dict[str, int]] | None = field(default_factory=dict)
    intents: dict[str, Intent] = field(default_factory=dict)  # by id, oldest first
    controller: ControllerEpoch = field(default_factory=ControllerEpoch)

    def __setstate__(self, data: dict[str, Any]) -> None:
        # A snapshot pickled before a field existed still loads, with that field empty;
        # the running totals are then recomputed from the instances.
        stale = {key: None for key in ("reserved", "grouped") if key not in data}
        self.__dict__.update(State().__dict__ | stale | data)

    def instance_by_uid(self, uid: str) -> Instance | None:
        for inst in self.instances.values():
            if inst.uid == uid:
                return inst
        return None
