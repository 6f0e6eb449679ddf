"""``corral list`` and ``corral info``: the read-only views of instances.

Column letters, cell texts, filters and the ``info`` layout follow ``lxc`` 5.0 so that
scripts written against ``lxc list --format csv`` keep working. The column and filter
functions are pure (see the unit tests); only the two handlers talk to the server.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from corral_cli import format as fmt
from corral_cli.client import Client, UsageError
from corral_cli.instances import is_active

Instance = dict[str, Any]


@dataclass(frozen=True)
class Column:
    """One ``-c`` column: its header, how to compute a cell, and what data it needs."""

    name: str
    data: Callable[[Instance], str]
    needs_state: bool = False
    needs_snapshots: bool = False


def _state(inst: Instance) -> dict[str, Any]:
    return inst.get("state") or {}


def _addresses(inst: Instance, family: str) -> str:
    if not is_active(inst):
        return ""
    found = []
    for nic, net in sorted((_state(inst).get("network") or {}).items()):
        if net.get("type") == "loopback":
            continue
        for addr in net.get("addresses") or []:
            if addr.get("family") == family and addr.get("scope") not in ("link", "local"):
                found.append(f"{addr.get('address')} ({nic})")
    return "\n".join(sorted(found, reverse=True))


def _type(inst: Instance) -> str:
    text = (inst.get("type") or "container").upper()
    return text + " (EPHEMERAL)" if inst.get("ephemeral") else text


def _active(get: Callable[[Instance], str]) -> Callable[[Instance], str]:
    return lambda inst: get(inst) if is_active(inst) else ""


def _root_pool(inst: Instance) -> str:
    for device in (inst.get("expanded_devices") or {}).values():
        if device.get("type") == "disk" and device.get("path") == "/":
            return str(device.get("pool", ""))
    return ""


COLUMNS: dict[str, Column] = {
    "4": Column("IPV4", lambda i: _addresses(i, "inet"), needs_state=True),
    "6": Column("IPV6", lambda i: _addresses(i, "inet6"), needs_state=True),
    "a": Column("ARCHITECTURE", lambda i: str(i.get("architecture", ""))),
    "b": Column("STORAGE POOL", _root_pool),
    "c": Column("CREATED AT", lambda i: fmt.format_time(i.get("created_at"))),
    "d": Column("DESCRIPTION", lambda i: str(i.get("description", ""))),
    "D": Column("DISK USAGE", _active(lambda i: fmt.byte_size_iec(
        ((_state(i).get("disk") or {}).get("root") or {}).get("usage", 0))), needs_state=True),
    "e": Column("PROJECT", lambda i: str(i.get("project") or "default")),
    "f": Column("BASE IMAGE", lambda i: str(
        (i.get("expanded_config") or i.get("config") or {}).get("volatile.base_image", ""))[:12]),
    "F": Column("BASE IMAGE", lambda i: str(
        (i.get("expanded_config") or i.get("config") or {}).get("volatile.base_image", ""))),
    "l": Column("LAST USED AT", lambda i: fmt.format_time(i.get("last_used_at"))),
    "L": Column("LOCATION", lambda i: str(i.get("location", ""))),
    "m": Column("MEMORY USAGE", _active(lambda i: fmt.byte_size_iec(
        (_state(i).get("memory") or {}).get("usage", 0))), needs_state=True),
    "n": Column("NAME", lambda i: str(i.get("name", ""))),
    "N": Column("PROCESSES", _active(lambda i: str(_state(i).get("processes", 0))),
                needs_state=True),
    "p": Column("PID", _active(lambda i: str(_state(i).get("pid", 0))), needs_state=True),
    "P": Column("PROFILES", lambda i: "\n".join(i.get("profiles") or [])),
    "s": Column("STATE", lambda i: str(i.get("status", "")).upper()),
    "S": Column("SNAPSHOTS", lambda i: str(len(i.get("snapshots") or [])),
                needs_snapshots=True),
    "t": Column("TYPE", _type),
    "u": Column("CPU USAGE", _active(
        lambda i: f"{(_state(i).get('cpu') or {}).get('usage', 0) // 1_000_000_000}s"),
        needs_state=True),
}


def _config_column(entry: str) -> Column:
    """``[config:]KEY[:NAME[:MAXWIDTH]]``: a column of an expanded config key."""
    parts = entry.removeprefix("config:").split(":")
    if len(parts) > 3 or not parts[0]:
        raise UsageError(f"Invalid config key column format (too many fields): '{entry}'")
    key = parts[0]
    name = parts[1] if len(parts) > 1 and parts[1] else key
    width = int(parts[2]) if len(parts) > 2 and parts[2] else -1

    def cell(inst: Instance) -> str:
        value = str((inst.get("expanded_config") or inst.get("config") or {}).get(key, ""))
        return value[:width] if width >= 0 else value

    return Column(name, cell)


def parse_columns(spec: str) -> list[Column]:
    """``ns46tS`` or ``ns,user.comment:COMMENT``: entries without a dot are shorthand letters."""
    columns: list[Column] = []
    for entry in spec.split(","):
        if not entry:
            raise UsageError(
                f"Empty column entry (redundant, leading or trailing command) in '{spec}'")
        if "." in entry:
            columns.append(_config_column(entry))
            continue
        for letter in entry:
            if letter not in COLUMNS:
                raise UsageError(f"Unknown column shorthand char '{letter}' in '{entry}'")
            columns.append(COLUMNS[letter])
    return columns


def _anchored(pattern: str) -> str:
    return pattern if "^" in pattern or "$" in pattern else f"^{pattern}$"


def _matches(pattern: str, value: str) -> bool:
    try:
        return re.search(_anchored(pattern), value) is not None
    except re.error:
        return pattern == value


def _net_match(inst: Instance, value: str, version: int) -> bool:
    try:
        network = ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    for net in (_state(inst).get("network") or {}).values():
        for addr in net.get("addresses") or []:
            try:
                ip = ipaddress.ip_address(addr.get("address", ""))
            except ValueError:
                continue
            if ip.version == version and ip in network:
                return True
    return False


SHORTHAND_FILTERS: dict[str, Callable[[Instance, str], bool]] = {
    "type": lambda i, v: str(i.get("type", "container")).lower() == v.lower(),
    "status": lambda i, v: str(i.get("status", "")).lower() == v.lower(),
    "architecture": lambda i, v: i.get("architecture") == v,
    "location": lambda i, v: i.get("location") == v,
    "ipv4": lambda i, v: _net_match(i, v, 4),
    "ipv6": lambda i, v: _net_match(i, v, 6),
}


def should_show(filters: Sequence[str], inst: Instance) -> bool:
    """``lxc list`` filters: a name regex/prefix, or ``key=value`` on shorthands or config."""
    for flt in filters:
        if "=" not in flt:
            name = str(inst.get("name", ""))
            if not (_matches(flt, name) or name.startswith(flt)):
                return False
            continue
        key, value = flt.split("=", 1)
        if key in SHORTHAND_FILTERS:
            if not any(SHORTHAND_FILTERS[key](inst, v) for v in value.split(",")):
                return False
            continue
        config = inst.get("expanded_config") or inst.get("config") or {}
        keys = [k for k in config if k == key or k.startswith(key + ".")]
        if not any(_matches(value, str(config[k])) for k in keys):
            return False
    return True


def instance_rows(instances: Sequence[Instance], columns: Sequence[Column]) -> list[list[str]]:
    return fmt.sort_rows([[col.data(inst) for col in columns] for inst in instances])


async def list_instances(client: Client, args: argparse.Namespace) -> int:
    """GET /1.0/instances with recursion 2 only when a column (or the format) needs state."""
    columns = parse_columns(args.columns)
    full = args.format in ("json", "yaml") or any(
        c.needs_state or c.needs_snapshots for c in columns)
    instances = await client.get("/1.0/instances", params={"recursion": "2" if full else "1"})
    shown = [inst for inst in instances or [] if should_show(args.filters, inst)]
    rows = instance_rows(shown, columns)
    sys.stdout.write(fmt.render(args.format, [c.name for c in columns], rows, shown))
    return 0


def info_lines(inst: Instance) -> list[str]:
    """The text of ``lxc info NAME`` for one InstanceFull object."""
    state = _state(inst)
    kind = inst.get("type") or "container"
    lines = [f"Name: {inst.get('name')}", f"Status: {str(inst.get('status', '')).upper()}",
             f"Type: {kind} (ephemeral)" if inst.get("ephemeral") else f"Type: {kind}",
             f"Architecture: {inst.get('architecture', '')}"]
    if inst.get("location") not in (None, "", "none"):
        lines.append(f"Location: {inst['location']}")
    pid = state.get("pid") or 0
    if pid:
        lines.append(f"PID: {pid}")
    for label, key in (("Created", "created_at"), ("Last Used", "last_used_at")):
        if fmt.format_time(inst.get(key)):
            lines.append(f"{label}: {fmt.format_time(inst.get(key))}")
    if pid:
        lines += ["", "Resources:", f"  Processes: {state.get('processes', 0)}"]
        lines += _resource_lines(state)
    lines += ha_lines(inst.get("ha"))
    snaps = inst.get("snapshots") or []
    if snaps:
        rows = sorted([str(s.get("name", "")).rsplit("/", 1)[-1],
                        fmt.format_time(s.get("created_at")) or " ",
                        fmt.format_time(s.get("expires_at")) or " ",
                        "YES" if s.get("stateful") else "NO"] for s in snaps)
        table = fmt.render_table(["Name", "Taken at", "Expires at", "Stateful"], rows)
        lines += ["", "Snapshots:", table.rstrip("\n")]
    return lines


def ha_lines(ha: Any) -> list[str]:
    """The ``HA:`` section of ``corral info`` (a corral extension): the mode, each
    replica's holder and age, a failover that waits and the last one."""
    if not isinstance(ha, dict):
        return []
    lines = ["", "HA:", f"  Mode: {ha.get('mode', 'none')}",
             f"  Placement epoch: {ha.get('epoch', 0)}"]
    for replica in ha.get("replicas") or []:
        lag = replica.get("lag")
        age = "no complete replica yet" if lag is None else f"{lag:.1f}s behind"
        lines.append(f"  Replica on {replica.get('member')}: {age}")
    if ha.get("waiting"):
        lines.append(f"  Waiting: {ha['waiting']}")
    last = ha.get("last_failover") or {}
    if last:
        lag = last.get("lag")
        age = "" if lag is None else f", replica {lag:.1f}s old"
        lines.append(f"  Last failover: {last.get('from')} -> {last.get('to')} "
                     f"(epoch {last.get('epoch')}{age})")
        if last.get("snapshots_left"):
            lines.append("  Snapshots left on the old member: "
                         + ", ".join(last["snapshots_left"]))
    return lines


def _resource_lines(state: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    disks = [f"    {name}: {fmt.byte_size_iec(d['usage'])}"
             for name, d in sorted((state.get("disk") or {}).items()) if d.get("usage")]
    if disks:
        lines += ["  Disk usage:", *disks]
    cpu = (state.get("cpu") or {}).get("usage") or 0
    if cpu:
        lines += ["  CPU usage:", f"    CPU usage (in seconds): {cpu // 1_000_000_000}"]
    memory = state.get("memory") or {}
    mem = [f"    {label}: {fmt.byte_size_iec(memory[key])}"
           for label, key in (("Memory (current)", "usage"), ("Memory (peak)", "usage_peak"),
                              ("Swap (current)", "swap_usage"), ("Swap (peak)", "swap_usage_peak"))
           if memory.get(key)]
    if mem:
        lines += ["  Memory usage:", *mem]
    nets: list[str] = []
    for name, net in sorted((state.get("network") or {}).items()):
        counters = net.get("counters") or {}
        nets += [f"    {name}:", f"      Type: {net.get('type', '')}",
                 f"      State: {str(net.get('state', '')).upper()}"]
        if net.get("host_name"):
            nets.append(f"      Host interface: {net['host_name']}")
        if net.get("hwaddr"):
            nets.append(f"      MAC address: {net['hwaddr']}")
        if net.get("mtu"):
            nets.append(f"      MTU: {net['mtu']}")
        nets += [f"      Bytes received: {fmt.byte_size_si(counters.get('bytes_received', 0))}",
                 f"      Bytes sent: {fmt.byte_size_si(counters.get('bytes_sent', 0))}",
                 f"      Packets received: {counters.get('packets_received', 0)}",
                 f"      Packets sent: {counters.get('packets_sent', 0)}", "      IP addresses:"]
        for addr in net.get("addresses") or []:
            family = addr.get("family", "")
            sep = ":  " if family == "inet" else ": "
            nets.append(f"        {family}{sep}{addr.get('address')}/{addr.get('netmask')} "
                        f"({addr.get('scope')})")
    if nets:
        lines += ["  Network usage:", *nets]
    return lines


async def info(client: Client, args: argparse.Namespace) -> int:
    """``corral info NAME`` (instance details) or ``corral info`` (the server's /1.0 as YAML)."""
    if not args.name:
        path = "/1.0/resources" if args.resources else "/1.0"
        sys.stdout.write(fmt.render_yaml(await client.get(path)))
        return 0
    path = f"/1.0/instances/{quote(args.name, safe='')}"
    inst = await client.get(path, params={"recursion": "1"})
    if "state" not in inst:  # a server without recursion on one instance
        inst["state"] = await client.get(path + "/state")
        inst["snapshots"] = await client.get(path + "/snapshots", params={"recursion": "1"})
    print("\n".join(info_lines(inst)))
    if args.show_log:
        log_name = "qemu.log" if inst.get("type") == "virtual-machine" else "lxc.log"
        async with client.raw("GET", f"{path}/logs/{log_name}") as resp:
            print(f"\nLog:\n\n{await resp.text()}")
    return 0
