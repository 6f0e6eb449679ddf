"""Validation of exec request bodies and LXD's environment defaults."""

from __future__ import annotations

from typing import Any

import pytest

from cluster.api.handlers.exec import (
    DEFAULT_PATH,
    ExecRequest,
    exec_cwd,
    exec_environment,
    parse_exec_body,
)
from cluster.api.response import ApiError


def test_minimal_body_gets_lxd_defaults() -> None:
    req = parse_exec_body({"command": ["ls", "-l"]})
    assert req == ExecRequest(command=["ls", "-l"])


def test_pylxd_body_with_nulls_is_accepted() -> None:
    req = parse_exec_body({"command": ["id"], "environment": {"A": "1"},
                           "wait-for-websocket": True, "interactive": False,
                           "user": None, "group": None, "cwd": None})
    assert (req.wait_for_websocket, req.user, req.group, req.cwd) == (True, 0, 0, "")
    assert req.environment == {"A": "1"}


def test_full_interactive_body() -> None:
    req = parse_exec_body({"command": ["bash"], "interactive": True, "wait-for-websocket": True,
                           "width": 80, "height": 24, "user": 1000, "group": 1000,
                           "cwd": "/tmp"})
    assert (req.interactive, req.width, req.height, req.user, req.group, req.cwd) == (
        True, 80, 24, 1000, 1000, "/tmp")


@pytest.mark.parametrize("body", [
    {},
    {"command": []},
    {"command": "ls -l"},
    {"command": ["ls", 3]},
    {"command": ["ls"], "environment": ["A=1"]},
    {"command": ["ls"], "environment": {"A": 1}},
    {"command": ["ls"], "environment": {"A=B": "1"}},
    {"command": ["ls"], "environment": {"": "1"}},
    {"command": ["ls"], "interactive": "yes"},
    {"command": ["ls"], "wait-for-websocket": 1},
    {"command": ["ls"], "user": -1},
    {"command": ["ls"], "user": "root"},
    {"command": ["ls"], "group": True},
    {"command": ["ls"], "width": 1.5},
    {"command": ["ls"], "cwd": 7},
    {"command": ["ls"], "record-output": True, "wait-for-websocket": True},
    {"command": ["ls"], "record-output": True, "interactive": True},
])
def test_invalid_bodies_are_refused_with_400(body: dict[str, Any]) -> None:
    with pytest.raises(ApiError) as info:
        parse_exec_body(body)
    assert info.value.status == 400


def test_environment_layers_request_over_instance_over_defaults() -> None:
    req = parse_exec_body({"command": ["env"], "environment": {"FOO": "req", "LANG": "fr"}})
    env = exec_environment(req, {"environment.FOO": "inst", "environment.BAR": "inst",
                                 "limits.cpu": "1"})
    assert env == {"FOO": "req", "BAR": "inst", "LANG": "fr", "PATH": DEFAULT_PATH,
                   "HOME": "/root", "USER": "root"}


def test_non_root_gets_no_home_and_interactive_gets_term() -> None:
    req = parse_exec_body({"command": ["sh"], "user": 1000, "interactive": True})
    env = exec_environment(req, {})
    assert "HOME" not in env and "USER" not in env
    assert env["TERM"] == "xterm"
    assert exec_cwd(req, env) == ""  # no HOME: "/" (the driver needs no cd)


def test_cwd_defaults_to_home() -> None:
    req = parse_exec_body({"command": ["pwd"]})
    assert exec_cwd(req, exec_environment(req, {})) == "/root"
    req = parse_exec_body({"command": ["pwd"], "cwd": "/srv"})
    assert exec_cwd(req, exec_environment(req, {})) == "/srv"
