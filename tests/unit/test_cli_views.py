"""Pure pieces of the CLI: list columns and filters, info text, image and operation rows,
progress rendering and error decoding."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import pytest

from corral_cli.client import UsageError, error_from
from corral_cli.images import alias_cell, image_matches, image_row
from corral_cli.listing import info_lines, instance_rows, parse_columns, should_show
from corral_cli.operations import flatten, operation_row, render_event
from corral_cli.progress import Progress, operation_progress


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def running(name: str = "c1", **extra: Any) -> dict[str, Any]:
    """An InstanceFull (recursion=2) as LXD 5.0 returns it, trimmed to what the CLI reads."""
    inst: dict[str, Any] = {
        "name": name, "status": "Running", "status_code": 103, "type": "container",
        "architecture": "x86_64", "ephemeral": False, "profiles": ["default"],
        "location": "none", "created_at": "2026-11-27T11:14:23.631927299Z",
        "last_used_at": "2026-11-27T11:15:00Z", "description": "",
        "config": {"user.role": "web"}, "expanded_config": {"user.role": "web",
                                                            "image.os": "busybox"},
        "expanded_devices": {"root": {"type": "disk", "path": "/", "pool": "default"}},
        "snapshots": [{"name": "snap0", "created_at": "2026-11-27T11:20:00Z",
                       "expires_at": "0001-01-01T00:00:00Z", "stateful": False}],
        "state": {"pid": 4242, "processes": 3, "cpu": {"usage": 2_500_000_000},
                  "memory": {"usage": 868352, "usage_peak": 1604321},
                  "disk": {}, "network": {
                      "eth0": {"type": "broadcast", "state": "up", "host_name": "veth1",
                               "hwaddr": "00:16:3e:ba:73:2d", "mtu": 1500,
                               "counters": {"bytes_received": 690, "bytes_sent": 864,
                                            "packets_received": 2, "packets_sent": 4},
                               "addresses": [
                                   {"family": "inet", "address": "10.99.77.147",
                                    "netmask": "24", "scope": "global"},
                                   {"family": "inet", "address": "10.99.77.2",
                                    "netmask": "24", "scope": "global"},
                                   {"family": "inet6", "address": "fe80::1",
                                    "netmask": "64", "scope": "link"}]},
                      "lo": {"type": "loopback", "state": "up", "mtu": 65536, "counters": {},
                             "addresses": [{"family": "inet", "address": "127.0.0.1",
                                            "netmask": "8", "scope": "local"}]}}},
    }
    inst.update(extra)
    return inst


def stopped(name: str = "c2") -> dict[str, Any]:
    return running(name, status="Stopped", status_code=102, snapshots=None,
                   state={"pid": 0, "network": None})


def test_default_columns_render_like_lxc_list() -> None:
    columns = parse_columns("ns46tS")
    assert [c.name for c in columns] == ["NAME", "STATE", "IPV4", "IPV6", "TYPE", "SNAPSHOTS"]
    rows = instance_rows([stopped(), running()], columns)
    assert rows == [
        ["c1", "RUNNING", "10.99.77.2 (eth0)\n10.99.77.147 (eth0)", "", "CONTAINER", "1"],
        ["c2", "STOPPED", "", "", "CONTAINER", "0"]]


def test_other_shorthand_columns() -> None:
    columns = parse_columns("apPcLlbmNu")
    assert instance_rows([running()], columns) == [[
        "x86_64", "4242", "default", "2026/11/27 11:14 UTC", "none", "2026/11/27 11:15 UTC",
        "default", "848.00KiB", "3", "2s"]]
    assert instance_rows([stopped()], parse_columns("pNm")) == [["", "", ""]]


def test_config_key_columns_and_ephemeral_type() -> None:
    columns = parse_columns("n,user.role:ROLE,image.os")
    assert [c.name for c in columns] == ["NAME", "ROLE", "image.os"]
    assert instance_rows([running(ephemeral=True)], parse_columns("t,user.role::2")) == [
        ["CONTAINER (EPHEMERAL)", "we"]]


@pytest.mark.parametrize("spec", ["nX", "n,,s", "n,"])
def test_bad_column_specs_are_usage_errors(spec: str) -> None:
    with pytest.raises(UsageError):
        parse_columns(spec)


@pytest.mark.parametrize(("filters", "shown"), [
    ([], True), (["c"], True), (["c1"], True), (["c[0-9]"], True), (["web"], False),
    (["status=running"], True), (["status=stopped"], False),
    (["status=stopped,running"], True), (["type=container"], True),
    (["user.role=web"], True), (["user.role=db"], False), (["user.role=w.*"], True),
    (["ipv4=10.99.77.0/24"], True), (["ipv4=192.168.0.0/16"], False),
])
def test_list_filters_follow_lxc(filters: list[str], shown: bool) -> None:
    assert should_show(filters, running()) is shown


def test_info_text_matches_lxc_info() -> None:
    lines = info_lines(running())
    assert lines[:7] == ["Name: c1", "Status: RUNNING", "Type: container",
                         "Architecture: x86_64", "PID: 4242",
                         "Created: 2026/11/27 11:14 UTC", "Last Used: 2026/11/27 11:15 UTC"]
    text = "\n".join(lines)
    assert "\nResources:\n  Processes: 3\n  CPU usage:\n    CPU usage (in seconds): 2\n" in text
    assert "    Memory (current): 848.00KiB\n    Memory (peak): 1.53MiB\n" in text
    assert "      Bytes received: 690B\n" in text
    assert "        inet:  10.99.77.147/24 (global)\n" in text
    assert "        inet6: fe80::1/64 (link)\n" in text
    assert "\nSnapshots:\n+-------+" in text and "| snap0 | 2026/11/27 11:20 UTC |" in text


def test_info_of_a_stopped_instance_has_no_resources() -> None:
    lines = info_lines(stopped())
    assert "Resources:" not in lines and not any(line.startswith("PID") for line in lines)


def test_image_rows_match_lxc_image_list() -> None:
    image = {"aliases": [{"name": "busybox-long"}, {"name": "bb"}],
             "fingerprint": "98ebf3ebdf7b9d55c4e6cf3be65ec235e7e0c243d2a66fd433e13a00bc1d0e7f",
             "public": False, "properties": {"description": "BusyBox"},
             "architecture": "x86_64", "type": "container", "size": 1037977,
             "uploaded_at": "2026-11-27T11:14:21.65476Z"}
    assert image_row(image) == ["bb (1 more)", "98ebf3ebdf7b", "no", "BusyBox", "x86_64",
                                "CONTAINER", "0.99MB", "Nov 27, 2026 at 11:14am (UTC)"]
    assert alias_cell([]) == ""
    assert image_matches(["98eb"], image) and image_matches(["busy"], image)
    assert not image_matches(["abc"], image)
    assert image_matches(["description=BusyBox"], image)


def test_operations_are_flattened_and_rendered() -> None:
    op = {"id": "1f", "class": "task", "description": "Creating instance",
          "status": "Running", "may_cancel": False, "created_at": "2026-11-27T11:14:23Z"}
    assert flatten({"running": [op], "success": None}) == [op]
    assert operation_row(op) == ["1f", "TASK", "Creating instance", "RUNNING", "NO",
                                 "2026/11/27 11:14 UTC"]


def test_events_print_as_sorted_yaml_blocks_or_json_lines() -> None:
    event = {"type": "lifecycle", "timestamp": "t", "metadata": {"action": "x"}}
    assert render_event(event, "yaml") == (
        "metadata:\n  action: x\ntimestamp: t\ntype: lifecycle\n\n\n")
    assert render_event(event, "json").count("\n") == 1


@pytest.mark.parametrize(("metadata", "text"), [
    ({"download_progress": "rootfs: 45% (12MB/s)"}, "rootfs: 45% (12MB/s)"),
    ({"create_instance_from_image_unpack_progress": "Unpack: 7%"}, "Unpack: 7%"),
    ({"progress": {"stage": "Unpack", "percent": "50", "speed": "1MB"}}, "Unpack: 50% (1MB/s)"),
    ({"fds": {}}, None), (None, None),
])
def test_operation_progress_reads_lxd_metadata(metadata: Any, text: str | None) -> None:
    assert operation_progress(metadata) == text


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_rewrites_one_line_on_a_terminal() -> None:
    stream = FakeTTY()
    progress = Progress("Retrieving image: {}", stream=stream)
    progress.update("10%")
    progress.update("100%")
    progress.done()
    last = "Retrieving image: 100%"
    assert stream.getvalue() == f"\rRetrieving image: 10%\r{last}\r{' ' * len(last)}\r"


def test_progress_off_a_terminal_stays_quiet_for_quick_work() -> None:
    stream = io.StringIO()
    progress = Progress("x: {}", stream=stream)
    progress.update("50%")
    progress.done("finished")
    assert stream.getvalue() == "finished\n"


def test_error_from_prefers_the_lxd_envelope() -> None:
    err = error_from(404, '{"type":"error","error_code":404,"error":"Instance not found"}')
    assert (err.status_code, err.message) == (404, "Instance not found")
    plain = error_from(502, "Bad Gateway\n")
    assert (plain.status_code, plain.message) == (502, "Bad Gateway")
