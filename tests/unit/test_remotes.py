"""``REMOTE:NAME`` arguments: which remote a command talks to, and what is left of them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from corral_cli.client import UsageError
from corral_cli.parser import parse_args
from corral_cli.remote_config import Remote, resolve


@pytest.fixture
def conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CORRAL_CONF", str(tmp_path))
    monkeypatch.delenv("CORRAL_SOCKET", raising=False)
    (tmp_path / "config.yml").write_text(yaml.safe_dump({
        "default-remote": "local",
        "remotes": {"r1": {"addr": "https://127.0.0.1:8443"},
                    "r2": {"addr": "https://[::1]:9443"}}}))
    return tmp_path


def test_without_a_config_file_everything_stays_local(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_CONF", str(tmp_path / "none"))
    args = parse_args(["list", "r1:"])
    assert resolve(args) is None and args.filters == ["r1:"]


def test_a_prefix_names_the_remote_and_is_stripped(conf: Path) -> None:
    args = parse_args(["list", "r1:"])
    assert resolve(args) == Remote("r1", "https://127.0.0.1:8443")
    assert args.filters == []
    args = parse_args(["launch", "busybox", "r2:c2"])
    assert resolve(args) == Remote("r2", "https://[::1]:9443")
    assert (args.image, args.name) == ("busybox", "c2")


def test_exec_command_lines_and_unknown_prefixes_are_left_alone(conf: Path) -> None:
    args = parse_args(["exec", "r1:c1", "--", "echo", "r2:x"])
    assert resolve(args) == Remote("r1", "https://127.0.0.1:8443")
    assert args.name == "c1" and args.command == ["echo", "r2:x"]
    args = parse_args(["file", "push", "./a:b", "c1/root/a:b"])
    assert resolve(args) is None and args.paths == ["./a:b", "c1/root/a:b"]


def test_local_prefix_means_the_unix_socket_and_two_remotes_are_refused(conf: Path) -> None:
    args = parse_args(["info", "local:c1"])
    assert resolve(args) is None and args.name == "c1"
    with pytest.raises(UsageError):
        resolve(parse_args(["launch", "r1:busybox", "r2:c2"]))


def test_the_default_remote_applies_without_a_prefix(conf: Path) -> None:
    data = yaml.safe_load((conf / "config.yml").read_text())
    (conf / "config.yml").write_text(yaml.safe_dump({**data, "default-remote": "r1"}))
    assert resolve(parse_args(["list"])) == Remote("r1", "https://127.0.0.1:8443")
