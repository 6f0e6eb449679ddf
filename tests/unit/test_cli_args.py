"""The corral command line: lxc's syntax, routing to handlers, and argument rules."""

from __future__ import annotations

import argparse
import importlib
import inspect

import pytest

from corral_cli.client import UsageError
from corral_cli.config import split_set_args
from corral_cli.exec import exec_body, is_interactive
from corral_cli.main import main
from corral_cli.parser import build_parser, parse_args


def handlers(parser: argparse.ArgumentParser) -> set[str]:
    """Every handler string reachable in the parser tree."""
    found = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if sub.get_default("handler"):
                    found.add(sub.get_default("handler"))
                found |= handlers(sub)
    return found


def test_every_command_names_an_existing_coroutine_or_local_function() -> None:
    names = handlers(build_parser()) | {"server:init_cluster"}
    assert len(names) > 50
    for name in names:
        module, func = name.split(":")
        target = getattr(importlib.import_module(f"corral_cli.{module}"), func)
        if name == "server:daemon":
            assert not inspect.iscoroutinefunction(target)
        else:
            assert inspect.iscoroutinefunction(target), name


def test_exec_keeps_everything_after_the_double_dash() -> None:
    args = parse_args(["exec", "c1", "--env", "A=B", "--cwd", "/tmp", "--user", "1000", "--",
                       "sh", "-c", "ls -la --color", "--", "x"])
    assert args.handler == "exec:run"
    assert args.name == "c1" and args.env == ["A=B"] and args.cwd == "/tmp" and args.user == 1000
    assert args.command == ["sh", "-c", "ls -la --color", "--", "x"]


def test_exec_without_double_dash_takes_plain_words() -> None:
    assert parse_args(["exec", "c1", "uptime"]).command == ["uptime"]
    with pytest.raises(UsageError):
        parse_args(["exec", "c1", "ls", "-la"])  # lxc rejects it too: flags need "--"


def test_quiet_is_global_and_may_come_anywhere() -> None:
    assert parse_args(["launch", "busybox", "c1", "-q"]).quiet is True
    assert parse_args(["-q", "list"]).quiet is True
    assert parse_args(["list"]).quiet is False
    assert parse_args(["exec", "c1", "--", "grep", "-q", "x"]).command == ["grep", "-q", "x"]


def test_launch_collects_config_and_profiles() -> None:
    args = parse_args(["launch", "busybox", "c1", "-c", "limits.cpu=1", "-c", "user.a=b",
                       "-p", "default", "-p", "extra", "--ephemeral"])
    assert args.handler == "instances:launch"
    assert (args.image, args.name) == ("busybox", "c1")
    assert args.config == ["limits.cpu=1", "user.a=b"]
    assert args.profile == ["default", "extra"] and args.ephemeral
    unnamed = parse_args(["launch", "busybox"])
    assert unnamed.name is None and unnamed.profile is None and unnamed.type == "container"


def test_init_with_an_image_creates_an_instance() -> None:
    args = parse_args(["init", "busybox", "c1"])
    assert args.handler == "instances:init" and args.image == "busybox"


def test_init_auto_goes_to_bootstrap_with_its_options_and_unknown_flags() -> None:
    args = parse_args(["init", "--auto", "--network-address", "10.0.0.1",
                       "--bridge-name", "corralbr0", "--storage-path", "/srv/pool",
                       "--some-future-flag=v"])
    assert args.handler == "server:init_cluster"
    assert (args.network_address, args.bridge_name, args.storage_path) == (
        "10.0.0.1", "corralbr0", "/srv/pool")
    assert args.extra == ["--some-future-flag=v"] and args.image is None
    joined = parse_args(["init", "--join", "10.0.0.1:8443", "--token", "t"])
    assert joined.handler == "server:init_cluster" and joined.join == "10.0.0.1:8443"
    assert joined.witness is False
    witness = parse_args(["init", "--join", "TOKEN", "--witness"])
    assert witness.handler == "server:init_cluster" and witness.witness is True


def test_daemon_passes_unknown_flags_through() -> None:
    args = parse_args(["daemon", "--debug", "--raft-port", "9000"])
    assert args.handler == "server:daemon" and args.debug and args.extra == ["--raft-port", "9000"]


def test_other_commands_reject_unknown_flags() -> None:
    with pytest.raises(UsageError, match="unrecognized arguments: --bogus"):
        parse_args(["list", "--bogus"])


def test_a_group_without_a_subcommand_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        parse_args(["image"])
    with pytest.raises(UsageError):
        parse_args([])


@pytest.mark.parametrize(("argv", "handler"), [
    (["rm", "c1"], "instances:delete"), (["ls"], "listing:list_instances"),
    (["mv", "a", "b"], "instances:rename"), (["move", "a", "b"], "instances:rename"),
    (["freeze", "c1"], "instances:pause"), (["image", "rm", "x"], "images:delete"),
    (["image", "alias", "ls"], "images:alias_list"),
    (["config", "device", "rm", "c1", "d"], "config:device_remove"),
    (["profile", "device", "add", "p", "d", "disk", "path=/x"], "profiles:device_add"),
    (["operation", "rm", "id"], "operations:delete"), (["file", "rm", "c1/x"], "files:delete"),
])
def test_lxc_aliases_route_to_the_same_handlers(argv: list[str], handler: str) -> None:
    assert parse_args(argv).handler == handler


def test_list_defaults_match_lxc() -> None:
    args = parse_args(["list"])
    assert (args.columns, args.format, args.filters) == ("ns46tS", "table", [])
    args = parse_args(["list", "web", "status=running", "-c", "n,user.x", "-f", "csv"])
    assert args.filters == ["web", "status=running"] and args.format == "csv"


def test_stop_flags_and_negative_timeout() -> None:
    args = parse_args(["stop", "a", "b", "--force", "--timeout", "-1"])
    assert args.names == ["a", "b"] and args.force and args.timeout == -1
    assert parse_args(["stop", "a"]).timeout == -1


def test_monitor_accepts_several_types() -> None:
    args = parse_args(["monitor", "--type", "lifecycle", "--type", "operation"])
    assert args.type == ["lifecycle", "operation"] and args.format == "yaml"


def test_main_prints_lxc_style_errors_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--bogus"]) == 1
    assert capsys.readouterr().err.endswith("Error: unrecognized arguments: --bogus\n")


@pytest.mark.parametrize(("argv", "expected"), [
    (["c1", "user.a=1", "user.b=2"], ("c1", {"user.a": "1", "user.b": "2"})),
    (["c1", "user.a", "two words"], ("c1", {"user.a": "two words"})),
    (["c1", "user.a="], ("c1", {"user.a": ""})),
    (["core.https_address", ":8443"], (None, {"core.https_address": ":8443"})),
    (["core.https_address=:8443"], (None, {"core.https_address": ":8443"})),
])
def test_config_set_reads_arguments_like_lxc(argv: list[str],
                                             expected: tuple[str | None, dict[str, str]]) -> None:
    assert split_set_args(argv) == expected


def test_config_set_rejects_a_lone_instance_name() -> None:
    with pytest.raises(UsageError):
        split_set_args(["c1"])
    with pytest.raises(UsageError):
        split_set_args(["c1", "novalue", "x", "y"])


def _exec_args(*extra: str) -> argparse.Namespace:
    return parse_args(["exec", "c1", *extra, "--", "true"])


@pytest.mark.parametrize(("flags", "stdin_tty", "stdout_tty", "interactive"), [
    ((), True, True, True), ((), True, False, False), ((), False, True, False),
    (("-t",), False, False, True), (("-T",), True, True, False),
    (("--mode", "interactive"), False, False, True), (("-n",), True, True, False),
])
def test_interactive_mode_follows_lxc(flags: tuple[str, ...], stdin_tty: bool,
                                      stdout_tty: bool, interactive: bool) -> None:
    assert is_interactive(_exec_args(*flags), stdin_tty, stdout_tty) is interactive


def test_conflicting_terminal_flags_are_refused() -> None:
    with pytest.raises(UsageError, match="-t and -T"):
        is_interactive(_exec_args("-t", "-T"), True, True)
    with pytest.raises(UsageError, match="--mode"):
        is_interactive(_exec_args("-t", "--mode", "interactive"), True, True)


def test_exec_body_has_every_field_lxc_sends() -> None:
    args = parse_args(["exec", "c1", "--env", "A=B", "--env", "junk", "--group", "5", "--",
                       "sh", "-c", "id"])
    body = exec_body(args, True, {"TERM": "xterm", "HOME": "/root"}, (80, 24))
    assert body == {"command": ["sh", "-c", "id"], "wait-for-websocket": True,
                    "interactive": True, "environment": {"TERM": "xterm", "A": "B"},
                    "width": 80, "height": 24, "record-output": False, "user": 0,
                    "group": 5, "cwd": ""}
