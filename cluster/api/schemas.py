"""The JSON body each route takes, as LXD's API types them (``shared/api`` in LXD).

Only the fields corral reads are named; the rest are skipped, as LXD skips fields it
does not know, so whatever an LXD client sends still passes. Every field may be absent
or ``null`` (``cluster.api.bodies`` hands the handler only the fields given). Config is
a map of strings and devices a map of names to maps of strings, as in LXD.
Names with dashes (``wait-for-websocket``) are spelled as on the wire.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

Str = str | None
Bool = bool | None
Int = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)] | None  # Go's int, kept sane
Number = Annotated[float, msgspec.Meta(ge=-(2**31), le=2**31 - 1)] | Int
Strings = list[str] | None
Config = dict[str, str] | None
Devices = dict[str, dict[str, str]] | None


class Schema(msgspec.Struct, omit_defaults=True):
    """Base of all bodies: fields left at their default (``None``) were not given."""


class Empty(Schema):
    """A body the route reads nothing from, but which must still be a JSON object."""


# Instances
class InstanceSource(Schema):
    type: Str = None
    alias: Str = None
    fingerprint: Str = None
    server: Str = None
    protocol: Str = None
    mode: Str = None
    properties: Config = None


class InstancesPost(Schema):
    name: Str = None
    type: Str = None
    source: InstanceSource | None = None
    config: Config = None
    devices: Devices = None
    profiles: Strings = None
    ephemeral: Bool = None
    description: Str = None
    start: Bool = None
    architecture: Str = None
    stateful: Bool = None


class InstancePut(Schema):
    """PUT and PATCH of ``/1.0/instances/<name>``."""

    config: Config = None
    devices: Devices = None
    profiles: Strings = None
    ephemeral: Bool = None
    description: Str = None
    architecture: Str = None
    stateful: Bool = None
    restore: Str = None


class InstancePost(Schema):
    """Rename, or a move within the cluster (``migration: true``)."""

    name: Str = None
    migration: Bool = None
    live: Bool = None


class InstanceStatePut(Schema):
    action: Str = None
    timeout: Number = None
    force: Bool = None
    stateful: Bool = None


class Exec(Schema):
    command: Strings = None
    environment: Config = None
    wait_for_websocket: Bool = msgspec.field(default=None, name="wait-for-websocket")
    record_output: Bool = msgspec.field(default=None, name="record-output")
    interactive: Bool = None
    width: Int = None
    height: Int = None
    user: Int = None
    group: Int = None
    cwd: Str = None


class Console(Schema):
    width: Int = None
    height: Int = None
    type: Str = None


class SnapshotsPost(Schema):
    name: Str = None
    stateful: Bool = None
    expires_at: Str = None
    description: Str = None


class SnapshotPost(Schema):
    name: Str = None
    migration: Bool = None
    live: Bool = None


# Images and aliases
class ImageSource(Schema):
    type: Str = None
    # corral's "build" source: the member builds an image of this kind itself.
    kind: Str = None
    vm: Bool = None
    uefi: Bool = None
    mode: Str = None
    server: Str = None
    protocol: Str = None
    alias: Str = None
    fingerprint: Str = None
    url: Str = None


class ImagesPost(Schema):
    source: ImageSource | None = None
    public: Bool = None
    auto_update: Bool = None
    properties: Config = None
    aliases: list[dict[str, str]] | None = None


class ImagePut(Schema):
    public: Bool = None
    properties: Config = None
    auto_update: Bool = None
    expires_at: Str = None
    profiles: Strings = None


class AliasesPost(Schema):
    name: Str = None
    target: Str = None
    description: Str = None
    type: Str = None


class AliasPut(Schema):
    target: Str = None
    description: Str = None


class NamePost(Schema):
    """A rename: profiles and aliases."""

    name: Str = None


# Profiles
class ProfilesPost(Schema):
    name: Str = None
    config: Config = None
    devices: Devices = None
    description: Str = None


class ProfilePut(Schema):
    config: Config = None
    devices: Devices = None
    description: Str = None


# Server, cluster, certificates
# LXD's server config is map[string]any: numbers and booleans are taken as their text.
ServerConfig = dict[str, str | bool | int | float] | None


class ServerPut(Schema):
    config: ServerConfig = None


class MemberPut(Schema):
    config: Config = None
    description: Str = None
    roles: Strings = None
    groups: Strings = None
    failure_domain: Str = None


class MemberStatePost(Schema):
    action: Str = None
    mode: Str = None


class ClusterCheckPost(Schema):
    """``POST /1.0/cluster/check`` (a corral extension): how long members may take to
    apply the marker, in seconds."""

    timeout: Number = None


class ClusterMembersPost(Schema):
    server_name: Str = None


class MemberAccept(Schema):
    """A joining member's request (``/internal/cluster/accept``)."""

    server_name: Str = None
    secret: Str = None
    address: Str = None
    architecture: Str = None
    capacity: dict[str, int | float] | None = None
    instance_types: list[str] | None = None
    witness: Bool = None


class Init(Schema):
    """``corral init``'s request (``POST /internal/init``)."""

    join: Str = None
    member_name: Str = None
    bridge_name: Str = None
    network_address: Str = None
    storage_path: Str = None
    storage_backend: Str = None  # the default pool's driver: "dir" (default) or "btrfs"
    storage_size: Str = None  # of a btrfs pool's loop file, e.g. "5GiB"
    address: Str = None
    witness: Bool = None  # with ``join``: a voter that holds no instances and no storage


class MigrationSend(Schema):
    """A member asking the source of a live move to send (``.../outgoing``)."""

    incoming: dict[str, str | int] | None = None
    downtime_ms: Int = None


class CertificatesPost(Schema):
    name: Str = None
    type: Str = None
    certificate: Str = None
    password: Str = None
    trust_token: Str = None
    token: Bool = None
    restricted: Bool = None
    projects: Strings = None


class CertificatePut(Schema):
    name: Str = None
    type: Str = None
    certificate: Str = None
    restricted: Bool = None
    projects: Strings = None
