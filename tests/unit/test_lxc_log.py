"""The start-failure message keeps lxc.log's first errors even when teardown noise follows."""

from __future__ import annotations

from pathlib import Path

from node_agent.drivers.lxc import _log_excerpt


def test_errors_survive_a_long_tail_of_warnings(tmp_path: Path) -> None:
    lines = ["lxc-start c1 1 INFO     conf - setting up"]
    lines += ["lxc-start c1 2 ERROR    conf - Permission denied - Failed to create \"/dev\""]
    lines += [f"lxc-start c1 3 WARN     cgfsng - Device or resource busy {i}" for i in range(30)]
    log = tmp_path / "lxc.log"
    log.write_text("\n".join(lines) + "\n")
    excerpt = _log_excerpt(log).splitlines()
    assert excerpt[0] == lines[1]
    assert excerpt[1:] == lines[-4:]


def test_a_short_log_is_shown_whole_and_once(tmp_path: Path) -> None:
    lines = ["a ERROR x", "b WARN y", "c ERROR z"]
    log = tmp_path / "lxc.log"
    log.write_text("\n".join(lines))
    assert _log_excerpt(log).splitlines() == lines


def test_a_missing_log_gives_an_empty_excerpt(tmp_path: Path) -> None:
    assert _log_excerpt(tmp_path / "absent.log") == ""
