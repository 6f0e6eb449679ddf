"""The ``corral`` CLI against a real LXD 5.0 daemon: the reference server for every request.

Runs only when ``CORRAL_LXD_ANCHOR_SOCKET`` names LXD's unix socket, e.g. after
``/work/shared/anchors/lxd/start_lxd.sh``::

    CORRAL_LXD_ANCHOR_SOCKET=/var/tmp/lxd-anchor/data/unix.socket \
        .venv/bin/pytest tests/integration/test_cli_lxd_anchor.py

The same file can be pointed at corral's own socket to check the server against the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

SOCKET = os.environ.get("CORRAL_LXD_ANCHOR_SOCKET", "")
IMAGE = os.environ.get("CORRAL_LXD_ANCHOR_IMAGE", "busybox")

pytestmark = pytest.mark.skipif(not SOCKET, reason="CORRAL_LXD_ANCHOR_SOCKET is not set")


def corral(*args: str, stdin: str | bytes | None = None,
           check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI as a user would, talking to the anchor socket."""
    env = dict(os.environ, CORRAL_SOCKET=SOCKET)
    env.pop("TERM", None)
    data = stdin.encode() if isinstance(stdin, str) else stdin
    proc = subprocess.run([sys.executable, "-m", "corral_cli.main", *args], env=env,
                          input=data if data is not None else b"", capture_output=True,
                          timeout=180)
    if check and proc.returncode != 0:
        raise AssertionError(f"corral {' '.join(args)} -> {proc.returncode}\n"
                             f"stdout: {proc.stdout.decode()}\nstderr: {proc.stderr.decode()}")
    return proc


def out(*args: str, stdin: str | None = None) -> str:
    return corral(*args, stdin=stdin).stdout.decode()


@pytest.fixture(scope="module")
def instance() -> Iterator[str]:
    """One running busybox container shared by the tests of this module, in order."""
    name = f"cli-{uuid.uuid4().hex[:8]}"
    launched = corral("launch", IMAGE, name)
    assert launched.stdout.decode() == f"Creating {name}\nStarting {name}\n"
    yield name
    corral("delete", "--force", name, check=False)


def test_list_shows_the_instance_in_every_format(instance: str) -> None:
    table = out("list")
    assert table.startswith("+-") and " NAME " in table.splitlines()[1]
    assert f"| {instance} " in table and "| RUNNING |" in table

    csv_line = next(line for line in out("list", "--format", "csv").splitlines()
                    if line.startswith(instance + ","))
    assert csv_line.split(",")[1:2] == ["RUNNING"]
    assert csv_line.split(",")[4] == "CONTAINER"

    listed = json.loads(out("list", "--format", "json"))
    mine = next(i for i in listed if i["name"] == instance)
    assert mine["status"] == "Running" and mine["state"]["pid"] > 0

    listed_yaml = yaml.safe_load(out("list", "--format", "yaml"))
    assert instance in [i["name"] for i in listed_yaml]

    assert out("list", instance, "-c", "ns", "--format", "csv") == f"{instance},RUNNING\n"
    assert out("list", instance, "-c", "n,s", "--format", "csv") == f"{instance},RUNNING\n"
    assert out("list", "status=stopped", "-c", "n", "--format", "csv").find(instance) == -1


def test_info_describes_the_running_instance(instance: str) -> None:
    text = out("info", instance)
    assert text.startswith(f"Name: {instance}\nStatus: RUNNING\nType: container\n")
    assert "\nPID: " in text and "Resources:\n  Processes: " in text


def test_exec_passes_output_and_exit_code_through(instance: str) -> None:
    proc = corral("exec", instance, "--", "sh", "-c", "echo out; echo err >&2; exit 7",
                  check=False)
    assert proc.returncode == 7
    assert proc.stdout == b"out\n" and proc.stderr == b"err\n"
    assert out("exec", instance, "--", "cat", stdin="hello\n") == "hello\n"
    assert out("exec", instance, "--env", "FOO=bar", "--cwd", "/tmp", "--", "sh", "-c",
               'echo "$FOO $(pwd)"') == "bar /tmp\n"
    missing = corral("exec", instance, "--", "no-such-command", check=False)
    assert missing.returncode == 127


def test_exec_streams_binary_stdin_and_stdout(instance: str) -> None:
    blob = os.urandom(300_000)
    proc = corral("exec", instance, "--", "sh", "-c", "cat > /tmp/blob && cat /tmp/blob",
                  stdin=blob)
    assert proc.stdout == blob


def test_file_push_and_pull_round_trip(instance: str, tmp_path: Path) -> None:
    source = tmp_path / "hello.txt"
    source.write_text("hello from the host\n")
    corral("file", "push", str(source), f"{instance}/root/hello.txt", "--mode", "0640")
    assert out("exec", instance, "--", "stat", "-c", "%a %u", "/root/hello.txt") == "640 0\n"
    pulled = tmp_path / "pulled.txt"
    corral("file", "pull", f"{instance}/root/hello.txt", str(pulled))
    assert pulled.read_text() == "hello from the host\n"
    assert pulled.stat().st_mode & 0o777 == 0o640
    assert out("file", "pull", f"{instance}/root/hello.txt", "-") == "hello from the host\n"
    corral("file", "push", "-p", str(source), f"{instance}/new/dir/")
    assert out("exec", instance, "--", "cat", "/new/dir/hello.txt") == "hello from the host\n"
    corral("file", "delete", f"{instance}/new/dir/hello.txt")
    assert corral("file", "pull", f"{instance}/new/dir/hello.txt", str(tmp_path / "x"),
                  check=False).returncode == 1


def test_config_set_get_unset(instance: str) -> None:
    corral("config", "set", instance, "user.color=blue", "user.size=10")
    assert out("config", "get", instance, "user.color") == "blue\n"
    corral("config", "set", instance, "user.color", "two words")
    assert out("config", "get", instance, "user.color") == "two words\n"
    shown = yaml.safe_load(out("config", "show", instance))
    assert shown["config"]["user.size"] == "10" and shown["profiles"] == ["default"]
    corral("config", "unset", instance, "user.color")
    assert out("config", "get", instance, "user.color") == "\n"
    bad = corral("config", "set", instance, "no.such.key=1", check=False)
    assert bad.returncode == 1 and bad.stderr.decode().startswith("Error: ")


def test_snapshot_and_restore(instance: str) -> None:
    corral("exec", instance, "--", "sh", "-c", "echo before > /root/state")
    corral("snapshot", instance)  # the server names it snap0
    corral("snapshot", instance, "named")
    info = out("info", instance)
    assert "Snapshots:" in info and "| snap0 " in info and "| named " in info
    corral("exec", instance, "--", "sh", "-c", "echo after > /root/state")
    corral("restore", instance, "snap0")
    assert out("exec", instance, "--", "cat", "/root/state") == "before\n"
    corral("delete", f"{instance}/named")
    assert "| named " not in out("info", instance)


def test_stop_start_and_delete(instance: str) -> None:
    corral("stop", instance, "--force")
    assert out("list", instance, "-c", "s", "--format", "csv") == "STOPPED\n"
    corral("start", instance)
    assert out("list", instance, "-c", "s", "--format", "csv") == "RUNNING\n"
    refused = corral("delete", instance, check=False)
    assert refused.returncode == 1
    assert refused.stderr.decode() == (
        "Error: The instance is currently running, stop it first or pass --force\n")
    corral("delete", "--force", instance)
    assert instance not in out("list", "-c", "n", "--format", "csv").split()


def test_errors_are_reported_like_lxc() -> None:
    proc = corral("info", "no-such-instance", check=False)
    assert proc.returncode == 1
    assert proc.stderr.decode() == "Error: Instance not found\n"


def test_images_and_version() -> None:
    rows = out("image", "list", "--format", "csv").splitlines()
    assert any(row.startswith(f"{IMAGE},") for row in rows)
    lines = out("version").splitlines()
    assert lines[0].startswith("Client version: ")
    assert lines[1].startswith("Server version: ") and lines[1] != "Server version: unreachable"
