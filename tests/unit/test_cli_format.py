"""corral_cli.format: the output details scripts rely on, checked against real lxc output."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from corral_cli import format as fmt

# Captured from `lxc list` (LXD 5.0.2) on the anchor daemon.
LXC_LIST = """\
+------+---------+------+------+-----------+-----------+
| NAME |  STATE  | IPV4 | IPV6 |   TYPE    | SNAPSHOTS |
+------+---------+------+------+-----------+-----------+
| ref1 | RUNNING |      |      | CONTAINER | 0         |
+------+---------+------+------+-----------+-----------+
"""


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """lxc prints local time; pin the zone so the expected strings hold anywhere."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_table_is_byte_identical_to_lxc_list() -> None:
    header = ["NAME", "STATE", "IPV4", "IPV6", "TYPE", "SNAPSHOTS"]
    assert fmt.render_table(header, [["ref1", "RUNNING", "", "", "CONTAINER", "0"]]) == LXC_LIST


def test_empty_table_keeps_its_header() -> None:
    assert fmt.render_table(["NAME", "STATE"], []) == (
        "+------+-------+\n| NAME | STATE |\n+------+-------+\n")


def test_multi_line_cells_span_text_lines_and_each_row_gets_a_rule() -> None:
    table = fmt.render_table(["n", "ipv4"], [["c1", "10.0.0.2 (eth0)\n10.0.0.1 (eth1)"],
                                             ["c2", ""]])
    assert table.splitlines() == [
        "+----+-----------------+",
        "| N  |      IPV4       |",
        "+----+-----------------+",
        "| c1 | 10.0.0.2 (eth0) |",
        "|    | 10.0.0.1 (eth1) |",
        "+----+-----------------+",
        "| c2 |                 |",
        "+----+-----------------+",
    ]


@pytest.mark.parametrize(("name", "title"), [
    ("user.comment", "USER COMMENT"), ("created_at", "CREATED AT"),
    ("limits.cpu.0.5", "LIMITS CPU 0.5"), ("Taken at", "TAKEN AT"), ("_", " ")])
def test_headers_follow_tablewriter_title(name: str, title: str) -> None:
    assert fmt.go_title(name) == title


def test_csv_quotes_like_go_encoding_csv() -> None:
    rows = [["plain", "a,b", 'say "hi"', "two\nlines", " lead", ""]]
    assert fmt.render_csv(rows) == 'plain,"a,b","say ""hi""","two\nlines"," lead",\n'


@given(st.lists(st.lists(st.text(alphabet=st.characters(blacklist_categories=["Cs"],
                                                       blacklist_characters="\r\x00")),
                         min_size=3, max_size=3), max_size=5))
def test_csv_reads_back_with_a_standard_reader(rows: list[list[str]]) -> None:
    text = fmt.render_csv(rows)
    assert list(csv.reader(io.StringIO(text, newline=""))) == rows


@given(st.lists(st.lists(st.text(alphabet="ab \n", max_size=6), min_size=2, max_size=2),
                max_size=4))
def test_every_table_line_has_the_same_width(rows: list[list[str]]) -> None:
    lines = fmt.render_table(["one", "two"], rows).splitlines()
    assert len({len(line) for line in lines}) == 1


def test_json_is_compact_on_one_line() -> None:
    assert fmt.render_json([{"name": "c1", "é": 1}]) == '[{"name":"c1","é":1}]\n'


def test_yaml_reads_like_go_yaml() -> None:
    data = {"config": {"volatile.idmap.base": "0", "limits.cpu": "1", "x": "true"},
            "devices": {}, "profiles": ["default"], "description": "",
            "created_at": "2026-11-27T11:14:23.631927299Z", "raw": "a\nb\n",
            "long": "x" * 200}
    text = fmt.render_yaml(data)
    assert 'volatile.idmap.base: "0"' in text and 'x: "true"' in text
    assert "devices: {}\nprofiles:\n- default\n" in text
    assert 'description: ""' in text
    assert "created_at: 2026-11-27T11:14:23.631927299Z\n" in text
    assert "raw: |\n  a\n  b\n" in text and "long: " + "x" * 200 + "\n" in text
    assert list(yaml.safe_load(text)) == list(data)  # server order kept


def test_yaml_sorted_for_events() -> None:
    assert fmt.render_yaml({"type": "lifecycle", "metadata": {}}, sort_keys=True) == (
        "metadata: {}\ntype: lifecycle\n")


def test_render_dispatches_and_rejects_unknown_formats() -> None:
    raw = [{"name": "c1"}]
    assert fmt.render("csv", ["NAME"], [["c1"]], raw) == "c1\n"
    assert json.loads(fmt.render("json", ["NAME"], [["c1"]], raw)) == raw
    assert yaml.safe_load(fmt.render("yaml", ["NAME"], [["c1"]], raw)) == raw
    with pytest.raises(fmt.FormatError, match='Invalid format "xml"'):
        fmt.render("xml", ["NAME"], [], raw)


def test_natural_sort_puts_c2_before_c10() -> None:
    rows = [["c10", "x"], ["c2", "y"], ["b", "z"], ["c2", "a"]]
    assert fmt.sort_rows(rows) == [["b", "z"], ["c2", "a"], ["c2", "y"], ["c10", "x"]]


@pytest.mark.parametrize(("size", "iec", "si"), [
    (0, "0B", "0B"), (690, "690B", "690B"), (868352, "848.00KiB", "868.35kB"),
    (1604321, "1.53MiB", "1.60MB"), (5 * 1024**3, "5.00GiB", "5.37GB")])
def test_byte_sizes_match_lxd_units(size: int, iec: str, si: str) -> None:
    assert fmt.byte_size_iec(size) == iec
    assert fmt.byte_size_si(size) == si


def test_times_parse_nanoseconds_and_hide_unset_values(utc: None) -> None:
    assert fmt.format_time("2026-11-27T11:14:23.631927299Z") == "2026/11/27 11:14 UTC"
    assert fmt.format_time("2026-11-27T12:14:23+01:00") == "2026/11/27 11:14 UTC"
    assert fmt.format_time("0001-01-01T00:00:00Z") == ""
    assert fmt.format_time("1970-01-01T00:00:00Z") == ""
    assert fmt.format_time(None) == "" and fmt.format_time("garbage") == ""


def test_upload_date_layout_of_image_list() -> None:
    assert fmt.upload_date("2026-11-27T11:14:21.65476Z") == "Nov 27, 2026 at 11:14am (UTC)"
    assert fmt.upload_date("2026-01-02T00:05:00Z") == "Jan 2, 2026 at 12:05am (UTC)"
    assert fmt.upload_date("2026-01-02T13:05:00Z") == "Jan 2, 2026 at 1:05pm (UTC)"
