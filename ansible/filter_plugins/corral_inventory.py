"""Checks of a corral inventory, run on the controller before any host is touched.

The playbook's first play gathers each host's settings (``corral_settings``, the role
defaults merged with the inventory) and hands the list to ``corral_inventory_problems``;
a non-empty answer fails the run with every problem named, before a single connection.
Pure functions, so ``tests/unit/test_ansible_inventory.py`` checks them without Ansible.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import tarfile
from collections.abc import Iterable, Mapping
from typing import Any

MEMBER_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,62}$")
STORAGE_BACKENDS = ("dir", "btrfs")
SERVICE_MANAGERS = ("auto", "systemd", "detached")
PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"


def member_name_problem(name: object) -> str:
    """LXD's rule for member (and instance) names: a hostname of 1-63 characters."""
    if not isinstance(name, str) or not MEMBER_NAME.match(name) or name.endswith("-"):
        return (f"corral_member_name {name!r} is not a valid member name (1-63 letters, "
                "digits and dashes, starting with a letter, not ending with a dash)")
    return ""


def address_problem(address: object) -> str:
    """The cluster address must be one IP address of the host (no name, no wildcard)."""
    try:
        ip = ipaddress.ip_address(str(address))
    except ValueError:
        return f"corral_address {address!r} is not an IP address"
    if ip.is_unspecified or ip.is_multicast:
        return f"corral_address {address!r} must be an address of the host, not {ip}"
    return ""


def port_problem(port: object) -> str:
    """The API port; Raft listens on the next one, so that must exist too."""
    if isinstance(port, bool) or not _is_int(port) or not 0 < int(str(port)) < 65535:
        return f"corral_api_port {port!r} must be an integer from 1 to 65534"
    return ""


def bridge_problems(name: object, address: object) -> list[str]:
    """The instance bridge: an interface name, and a host address in an IPv4 subnet."""
    problems = []
    if not isinstance(name, str) or not 0 < len(name) <= 15 or "/" in name or " " in name:
        problems.append(f"corral_bridge_name {name!r} must be 1-15 characters without "
                        "'/' or spaces")
    try:
        iface = ipaddress.ip_interface(str(address))
    except ValueError:
        iface = None
    if (iface is None or iface.version != 4 or "/" not in str(address)
            or iface.network.prefixlen > 30 or iface.ip in (iface.network.network_address,
                                                          iface.network.broadcast_address)):
        problems.append(f"corral_bridge_address {address!r} must be the bridge's own address "
                        "in an IPv4 subnet of /30 or larger, like 10.190.72.1/24")
    return problems


def storage_problems(backend: object, size: object) -> list[str]:
    problems = []
    if backend not in STORAGE_BACKENDS:
        problems.append(f"corral_storage_backend {backend!r} must be one of "
                        f"{', '.join(STORAGE_BACKENDS)}")
    if size not in (None, ""):
        if isinstance(size, bool) or not _is_int(size) or int(str(size)) < 1:
            problems.append(f"corral_storage_size {size!r} must be a whole number of GiB "
                            "(at least 1)")
        elif backend != "btrfs":
            problems.append("corral_storage_size applies to a btrfs pool (a loop file); "
                            f"corral_storage_backend is {backend!r}")
    return problems


def max_voters_problem(value: object) -> str:
    if isinstance(value, bool) or not _is_int(value) or int(str(value)) < 1:
        return f"corral_max_voters {value!r} must be an integer of at least 1"
    return ""


def wheels_problem(archive: object) -> str:
    """The controller's archive of wheels (``make wheels``) must hold corral's."""
    path = str(archive or "")
    try:
        with tarfile.open(path) as tar:
            names = tar.getnames()
    except (OSError, tarfile.TarError) as exc:
        return (f"corral_wheels_archive {path!r} cannot be read on the controller ({exc}): "
                "build it first with make wheels")
    if not any(n.startswith("corral-") and n.endswith(".whl") for n in names):
        return f"corral_wheels_archive {path!r} holds no corral-*.whl: run make wheels"
    return ""


def certificate_problem(variable: str, path: object) -> str:
    if path in (None, ""):
        return ""
    try:
        with open(str(path), encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        return f"{variable} {path!r} cannot be read on the controller: {exc}"
    if PEM_CERTIFICATE not in text:
        return f"{variable} {path!r} is not a PEM certificate"
    return ""


def host_problems(settings: Mapping[str, Any]) -> list[str]:
    """Everything wrong with one host's settings, each message naming the variable."""
    found = [
        member_name_problem(settings.get("member_name")),
        address_problem(settings.get("address")),
        port_problem(settings.get("api_port")),
        *bridge_problems(settings.get("bridge_name"), settings.get("bridge_address")),
        *storage_problems(settings.get("storage_backend"), settings.get("storage_size")),
        max_voters_problem(settings.get("max_voters")),
        wheels_problem(settings.get("wheels_archive")),
        certificate_problem("corral_metrics_certificate", settings.get("metrics_certificate")),
    ]
    if not isinstance(settings.get("witness"), bool):
        found.append(f"corral_witness {settings.get('witness')!r} must be true or false")
    if settings.get("service_manager") not in SERVICE_MANAGERS:
        found.append(f"corral_service_manager {settings.get('service_manager')!r} must be "
                     f"one of {', '.join(SERVICE_MANAGERS)}")
    for key in ("dir", "venv"):
        value = settings.get(key)
        if not isinstance(value, str) or not value.startswith("/") or value.rstrip("/") == "":
            found.append(f"corral_{key} {value!r} must be an absolute path below /")
    return [p for p in found if p]


# Settings given at bootstrap that hold for the whole cluster: every host must agree.
CLUSTER_WIDE = ("storage_backend", "storage_size", "bridge_name", "bridge_address",
                "max_voters", "metrics_certificate")


def inventory_problems(hosts: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every problem of the inventory: per host (prefixed with the hosts that have it),
    then across hosts (duplicate names or addresses, cluster-wide settings that differ,
    the first host as a witness, more witnesses than voters)."""
    hosts = list(hosts)
    if not hosts:
        return ["the inventory has no host in group corral"]
    by_problem: dict[str, list[str]] = {}
    for h in hosts:
        for problem in host_problems(h):
            by_problem.setdefault(problem, []).append(str(h.get("host")))
    problems = [f"{', '.join(names)}: {p}" for p, names in by_problem.items()]
    for key, label in (("member_name", "corral_member_name"), ("address", "corral_address")):
        seen: dict[str, str] = {}
        for h in hosts:
            value = str(h.get(key))
            if value in seen:
                problems.append(f"{h.get('host')} and {seen[value]} have the same {label} "
                                f"{value!r}")
            seen.setdefault(value, str(h.get("host")))
    for key in CLUSTER_WIDE:
        values = {repr(h.get(key)) for h in hosts}
        if len(values) > 1:
            problems.append(f"corral_{key} differs between hosts ({', '.join(sorted(values))})"
                            ": it is a setting of the whole cluster; set it once for the group")
    if hosts[0].get("witness") is True:
        problems.append(f"{hosts[0].get('host')}: the first host bootstraps the cluster and "
                        "cannot be a witness (a witness joins an existing cluster)")
    witnesses = sum(1 for h in hosts if h.get("witness") is True)
    voters = hosts[0].get("max_voters")
    if _is_int(voters) and witnesses > int(str(voters)):
        problems.append(f"{witnesses} witnesses but corral_max_voters is {voters}: every "
                        "witness needs a voter seat")
    return problems


def join_address(address: str, port: object) -> str:
    """``HOST:PORT`` as ``corral init --address`` takes it (IPv6 in brackets)."""
    host = f"[{address}]" if ":" in str(address) else str(address)
    return f"{host}:{port}"


def certificate_fingerprint(path: str) -> str:
    """SHA-256 of a PEM certificate's DER bytes: how corral (and LXD) name a certificate."""
    import base64

    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    body = text.split(PEM_CERTIFICATE, 1)[1].split("-----END CERTIFICATE-----", 1)[0]
    return hashlib.sha256(base64.b64decode("".join(body.split()))).hexdigest()


def _is_int(value: object) -> bool:
    return isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit())


class FilterModule:
    """The filters the playbook uses."""

    def filters(self) -> dict[str, Any]:
        return {
            "corral_inventory_problems": inventory_problems,
            "corral_join_address": join_address,
            "corral_certificate_fingerprint": certificate_fingerprint,
        }
