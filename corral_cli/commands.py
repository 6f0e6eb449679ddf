"""The ``corral`` command tree, shaped like ``lxc``'s: verbs, flags and their defaults.

Every leaf command records the handler that runs it as ``handler="module:function"``
(a module of ``corral_cli``), so only the module a command needs is imported.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from corral_cli import VERSION
from corral_cli.client import UsageError
from corral_cli.format import FORMATS


class Parser(argparse.ArgumentParser):
    """argparse that reports mistakes the ``lxc`` way: ``Error: ...`` and exit code 1."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        raise UsageError(message)


def _leaf(subs: argparse._SubParsersAction, name: str, handler: str, help_text: str,
          aliases: Sequence[str] = ()) -> Parser:
    parser: Parser = subs.add_parser(name, help=help_text, description=help_text,
                                     aliases=list(aliases))
    parser.set_defaults(handler=handler)
    return parser


def _group(subs: argparse._SubParsersAction, name: str,
           help_text: str) -> argparse._SubParsersAction:
    parser: Parser = subs.add_parser(name, help=help_text, description=help_text)
    parser.set_defaults(handler=None, group_parser=parser)
    return parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=Parser)


def _format(parser: Parser, default: str = "table", choices: Sequence[str] = FORMATS) -> None:
    parser.add_argument("-f", "--format", default=default, choices=list(choices),
                        help=f"output format (default {default})")


def _create_flags(p: Parser) -> None:
    """Flags shared by ``launch`` and ``init`` (instance creation)."""
    p.add_argument("-c", "--config", action="append", default=[], metavar="KEY=VALUE",
                   help="instance configuration key")
    p.add_argument("-p", "--profile", action="append", default=None, metavar="PROFILE",
                   help="profile to apply (repeatable)")
    p.add_argument("--no-profiles", action="store_true", help="create without any profile")
    p.add_argument("--type", default="container", choices=["container", "virtual-machine"])
    p.add_argument("--vm", action="store_true", help="same as --type virtual-machine")
    p.add_argument("-e", "--ephemeral", action="store_true", help="delete the instance on stop")
    p.add_argument("-d", "--device", action="append", default=[], metavar="DEV,KEY=VALUE",
                   help="override a profile device key")
    p.add_argument("-s", "--storage", help="storage pool for the root disk")
    p.add_argument("--target", help="cluster member (or @group) to create on")
    p.add_argument("--description", default="")
    p.add_argument("--dry-run", action="store_true",
                   help="show where the scheduler would place it, and why; create nothing")


def _instances(subs: argparse._SubParsersAction) -> None:
    p = _leaf(subs, "launch", "instances:launch", "Create and start an instance from an image")
    p.add_argument("image")
    p.add_argument("name", nargs="?")
    _create_flags(p)

    p = _leaf(subs, "init", "instances:init",
              "Create an instance from an image, or (--auto/--join) set up this corral member")
    p.add_argument("image", nargs="?")
    p.add_argument("name", nargs="?")
    _create_flags(p)
    p.add_argument("--auto", action="store_true", help="initialise this member non-interactively")
    p.add_argument("--join", metavar="TOKEN",
                   help="join a cluster with a token from `corral cluster add`")
    p.add_argument("--witness", action="store_true",
                   help="with --join: a voter that holds no instances and no storage "
                        "(two hosts and a witness survive the loss of either host)")
    p.add_argument("--network-address",
                   help="the container bridge's own address, e.g. 10.190.72.1/24")
    p.add_argument("--network-port", type=int, help="port of the network API")
    p.add_argument("--address", metavar="ADDR[:PORT]",
                   help="serve the API over HTTPS there (core.https_address; port 8443)")
    p.add_argument("--bridge-name", help="name of the instance bridge")
    p.add_argument("--storage-path", help="directory of the default storage pool (dir), or "
                   "its block device or btrfs directory (btrfs)")
    p.add_argument("--storage-backend", metavar="DRIVER",
                   help="driver of the default storage pool: dir (default) or btrfs")
    p.add_argument("--storage-create-loop", type=int, metavar="SIZE_GB",
                   help="size in GiB of a btrfs pool's loop file (default: 20%% of the free "
                   "space, 5-30 GiB)")
    p.add_argument("--storage-create-device", metavar="DEVICE",
                   help="block device holding the btrfs pool (instead of a loop file)")
    p.add_argument("--member-name", help="name of this cluster member")
    p.add_argument("--token", help="join token")

    for verb, text in (("start", "Start instances"), ("pause", "Pause (freeze) instances")):
        p = _leaf(subs, verb, f"instances:{verb}", text,
                  aliases=["freeze"] if verb == "pause" else ())
        p.add_argument("names", nargs="+", metavar="NAME")
        if verb == "start":
            p.add_argument("--stateless", action="store_true",
                           help="boot afresh, dropping the state a stateful stop saved")
    for verb, text in (("stop", "Stop instances"), ("restart", "Restart instances")):
        p = _leaf(subs, verb, f"instances:{verb}", text)
        p.add_argument("names", nargs="+", metavar="NAME")
        p.add_argument("-f", "--force", action="store_true", help="force the instance to stop")
        p.add_argument("--timeout", type=int, default=-1, help="seconds to wait (default -1)")
        if verb == "stop":
            p.add_argument("--stateful", action="store_true",
                           help="save the running state (CRIU; needs migration.stateful=true)")

    p = _leaf(subs, "delete", "instances:delete", "Delete instances and snapshots",
              aliases=["rm"])
    p.add_argument("names", nargs="+", metavar="NAME[/SNAPSHOT]")
    p.add_argument("-f", "--force", action="store_true", help="stop a running instance first")

    p = _leaf(subs, "rename", "instances:rename",
              "Rename an instance or snapshot, or move an instance to another member",
              aliases=["move", "mv"])
    p.add_argument("old")
    p.add_argument("new", nargs="?", default="")
    p.add_argument("--target", default="",
                   help="member (or @group) to move the instance to; '' lets the scheduler pick")
    p.add_argument("--quiet", action="store_true", help="no progress")

    p = _leaf(subs, "snapshot", "instances:snapshot", "Create an instance snapshot")
    p.add_argument("name")
    p.add_argument("snapshot", nargs="?", default="")
    p.add_argument("--stateful", action="store_true")
    p.add_argument("--reuse", action="store_true", help="replace an existing snapshot")

    p = _leaf(subs, "restore", "instances:restore", "Restore an instance from a snapshot")
    p.add_argument("name")
    p.add_argument("snapshot")
    p.add_argument("--stateful", action="store_true")

    p = _leaf(subs, "list", "listing:list_instances", "List instances", aliases=["ls"])
    p.add_argument("filters", nargs="*", metavar="FILTER")
    _format(p)
    p.add_argument("-c", "--columns", default="ns46tS", help="columns (default ns46tS)")

    p = _leaf(subs, "metrics", "metrics:show", "Print the Prometheus metrics of /1.0/metrics")
    p.add_argument("target_remote", nargs="?", metavar="REMOTE:")
    p.add_argument("--scope", default="member", choices=["member", "cluster"],
                   help="member (this one) or cluster (every member, labelled)")

    p = _leaf(subs, "info", "listing:info", "Show instance or server information")
    p.add_argument("name", nargs="?")
    p.add_argument("--show-log", action="store_true")
    p.add_argument("--resources", action="store_true")


def _exec_and_files(subs: argparse._SubParsersAction) -> None:
    p = _leaf(subs, "exec", "exec:run", "Execute a command in an instance")
    p.add_argument("name")
    p.add_argument("command", nargs="*", help="command line, after --")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--cwd", default="")
    p.add_argument("--user", type=int, default=0)
    p.add_argument("--group", type=int, default=0)
    p.add_argument("--mode", default="auto", choices=["auto", "interactive", "non-interactive"])
    p.add_argument("-t", "--force-interactive", action="store_true")
    p.add_argument("-T", "--force-noninteractive", action="store_true")
    p.add_argument("-n", "--disable-stdin", action="store_true")

    p = _leaf(subs, "console", "console:run", "Attach to a virtual machine's console")
    p.add_argument("name")
    p.add_argument("--show-log", action="store_true", help="print the console log and exit")

    files = _group(subs, "file", "Manage files in instances")
    p = _leaf(files, "push", "files:push", "Push files into an instance")
    p.add_argument("paths", nargs="+", metavar="SOURCE... INSTANCE/PATH")
    p.add_argument("--uid", type=int, default=-1)
    p.add_argument("--gid", type=int, default=-1)
    p.add_argument("--mode", default="")
    p.add_argument("-p", "--create-dirs", action="store_true")
    p.add_argument("-r", "--recursive", action="store_true")
    p = _leaf(files, "pull", "files:pull", "Pull files from an instance")
    p.add_argument("paths", nargs="+", metavar="INSTANCE/PATH... TARGET")
    p.add_argument("-p", "--create-dirs", action="store_true")
    p.add_argument("-r", "--recursive", action="store_true")
    p = _leaf(files, "delete", "files:delete", "Delete files in an instance", aliases=["rm"])
    p.add_argument("paths", nargs="+", metavar="INSTANCE/PATH")


def _devices(subs: argparse._SubParsersAction, owner: str, module: str) -> None:
    devices = _group(subs, "device", f"Manage {owner} devices")
    p = _leaf(devices, "add", f"{module}:device_add", "Add a device")
    p.add_argument("name")
    p.add_argument("device")
    p.add_argument("type")
    p.add_argument("settings", nargs="*", metavar="KEY=VALUE")
    p = _leaf(devices, "remove", f"{module}:device_remove", "Remove devices", aliases=["rm"])
    p.add_argument("name")
    p.add_argument("devices", nargs="+", metavar="DEVICE")
    p = _leaf(devices, "list", f"{module}:device_list", "List devices", aliases=["ls"])
    p.add_argument("name")
    p = _leaf(devices, "show", f"{module}:device_show", "Show full device configuration")
    p.add_argument("name")
    p = _leaf(devices, "set", f"{module}:device_set", "Set device configuration keys")
    p.add_argument("name")
    p.add_argument("device")
    p.add_argument("settings", nargs="+", metavar="KEY=VALUE")


def _config(subs: argparse._SubParsersAction) -> None:
    config = _group(subs, "config", "Manage instance and server configuration")
    p = _leaf(config, "get", "config:get", "Get an instance or server configuration key")
    p.add_argument("args", nargs="+", metavar="[INSTANCE] KEY")
    p.add_argument("-e", "--expanded", action="store_true")
    p = _leaf(config, "set", "config:set_", "Set instance or server configuration keys")
    p.add_argument("args", nargs="+", metavar="[INSTANCE] KEY=VALUE...")
    p = _leaf(config, "unset", "config:unset", "Unset an instance or server configuration key")
    p.add_argument("args", nargs="+", metavar="[INSTANCE] KEY")
    p = _leaf(config, "show", "config:show", "Show instance or server configuration")
    p.add_argument("name", nargs="?")
    p.add_argument("-e", "--expanded", action="store_true")
    _devices(config, "instance", "config")
    _trust(config)


def _images(subs: argparse._SubParsersAction) -> None:
    images = _group(subs, "image", "Manage images")
    p = _leaf(images, "build", "images:build", "Build a built-in image and import it")
    p.add_argument("kind", choices=["busybox"])
    p.add_argument("--vm", action="store_true",
                   help="a virtual-machine image (Debian cloud kernel + busybox initramfs)")
    p.add_argument("--uefi", action="store_true",
                   help="a virtual-machine image that boots through UEFI, as LXD's do "
                        "(implies --vm)")
    p.add_argument("--alias", action="append", default=None)
    p.add_argument("--public", action="store_true")
    p = _leaf(images, "import", "images:import_", "Import an image tarball")
    p.add_argument("file")
    p.add_argument("rootfs", nargs="?")
    p.add_argument("--alias", action="append", default=[])
    p.add_argument("--public", action="store_true")
    p = _leaf(images, "list", "images:list_", "List images", aliases=["ls"])
    p.add_argument("filters", nargs="*", metavar="FILTER")
    _format(p)
    p = _leaf(images, "delete", "images:delete", "Delete images", aliases=["rm"])
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p = _leaf(images, "export", "images:export", "Export an image to files")
    p.add_argument("image")
    p.add_argument("target", nargs="?", default=".")
    p = _leaf(images, "show", "images:show", "Show image properties")
    p.add_argument("image")
    aliases = _group(images, "alias", "Manage image aliases")
    p = _leaf(aliases, "create", "images:alias_create", "Create an alias")
    p.add_argument("alias")
    p.add_argument("fingerprint")
    p.add_argument("--description", default="")
    p = _leaf(aliases, "delete", "images:alias_delete", "Delete an alias", aliases=["rm"])
    p.add_argument("alias")
    p = _leaf(aliases, "list", "images:alias_list", "List aliases", aliases=["ls"])
    p.add_argument("filters", nargs="*", metavar="FILTER")
    _format(p)


def _profiles(subs: argparse._SubParsersAction) -> None:
    profiles = _group(subs, "profile", "Manage profiles")
    p = _leaf(profiles, "list", "profiles:list_", "List profiles", aliases=["ls"])
    _format(p)
    for verb, text in (("show", "Show profile configuration"), ("delete", "Delete a profile")):
        p = _leaf(profiles, verb, f"profiles:{verb}", text,
                  aliases=["rm"] if verb == "delete" else ())
        p.add_argument("name")
    p = _leaf(profiles, "create", "profiles:create", "Create a profile")
    p.add_argument("name")
    p.add_argument("--description", default="")
    p = _leaf(profiles, "get", "profiles:get", "Get a profile configuration key")
    p.add_argument("name")
    p.add_argument("key")
    p = _leaf(profiles, "set", "profiles:set_", "Set profile configuration keys")
    p.add_argument("name")
    p.add_argument("settings", nargs="+", metavar="KEY=VALUE")
    p = _leaf(profiles, "unset", "profiles:unset", "Unset a profile configuration key")
    p.add_argument("name")
    p.add_argument("key")
    for verb, text in (("add", "Add a profile to an instance"),
                       ("remove", "Remove a profile from an instance")):
        p = _leaf(profiles, verb, f"profiles:{verb}", text)
        p.add_argument("instance")
        p.add_argument("profile")
    _devices(profiles, "profile", "profiles")


def _operations_and_server(subs: argparse._SubParsersAction) -> None:
    ops = _group(subs, "operation", "List, show and delete background operations")
    p = _leaf(ops, "list", "operations:list_", "List operations", aliases=["ls"])
    _format(p)
    p = _leaf(ops, "show", "operations:show", "Show an operation")
    p.add_argument("id")
    p = _leaf(ops, "delete", "operations:delete", "Cancel an operation", aliases=["rm"])
    p.add_argument("id")

    p = _leaf(subs, "monitor", "operations:monitor", "Print the daemon's event stream")
    p.add_argument("--type", action="append", default=[],
                   choices=["lifecycle", "operation", "logging"])
    p.add_argument("-f", "--format", default="yaml", choices=["yaml", "json"])

    p = _leaf(subs, "daemon", "server:daemon", "Run the corral daemon in the foreground")
    p.add_argument("--group", default="", help="group owning the unix socket")
    p.add_argument("--logfile", default="")
    p.add_argument("--debug", action="store_true")
    p.add_argument("--verbose", action="store_true")

    p = _leaf(subs, "waitready", "server:waitready", "Wait until the daemon answers")
    p.add_argument("--timeout", type=float, default=60.0)

    _leaf(subs, "version", "server:version", "Show client and server versions")


def _cluster(subs: argparse._SubParsersAction) -> None:
    group = _group(subs, "cluster", "Manage the cluster's members")
    p = _leaf(group, "list", "cluster_cmds:list_", "List the cluster's members", aliases=["ls"])
    _format(p)
    p = _leaf(group, "show", "cluster_cmds:show", "Show one member")
    p.add_argument("name", metavar="MEMBER")
    p = _leaf(group, "add", "cluster_cmds:add", "Print a join token for a new member NAME")
    p.add_argument("name", metavar="NAME")
    p = _leaf(group, "remove", "cluster_cmds:remove", "Remove a member", aliases=["rm"])
    p.add_argument("name", metavar="MEMBER")
    p.add_argument("--force", action="store_true", help="even the last voter or a busy member")
    roles = _group(group, "role", "Add or remove roles of a member (database = Raft voter)")
    for verb in ("add", "remove"):
        p = _leaf(roles, verb, f"cluster_cmds:role_{verb}", f"{verb.capitalize()} roles")
        p.add_argument("name", metavar="MEMBER")
        p.add_argument("roles", metavar="ROLES", help="comma-separated, e.g. database")
    for verb, text in (("evacuate", "Move every instance off a member (cluster.evacuate)"),
                       ("restore", "Bring an evacuated member's instances back")):
        p = _leaf(group, verb, f"cluster_cmds:{verb}", text)
        p.add_argument("name", metavar="MEMBER")
        p.add_argument("--force", action="store_true", help="do not ask (corral never asks)")
        p.add_argument("--action", default="", choices=["", "stop", "migrate", "auto"],
                       help="override every instance's cluster.evacuate")
    groups = _group(group, "group", "Cluster groups of members (--target @GROUP)")
    p = _leaf(groups, "assign", "cluster_cmds:group_assign",
              "Set the cluster groups of a member (comma-separated; '' for none)")
    p.add_argument("name", metavar="MEMBER")
    p.add_argument("groups", metavar="GROUPS")
    p = _leaf(group, "set", "cluster_cmds:set_", "Set a member's configuration key")
    p.add_argument("name", metavar="MEMBER")
    p.add_argument("key", metavar="KEY")
    p.add_argument("value", metavar="VALUE")
    p = _leaf(group, "unset", "cluster_cmds:unset", "Unset a member's configuration key")
    p.add_argument("name", metavar="MEMBER")
    p.add_argument("key", metavar="KEY")
    p = _leaf(group, "get", "cluster_cmds:get", "Print a member's configuration key")
    p.add_argument("name", metavar="MEMBER")
    p.add_argument("key", metavar="KEY")
    p = _leaf(group, "check", "cluster_cmds:check",
              "Compare every member's replica at one Raft index (exit 1 if they differ)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds a member may take to catch up (default 10)")
    _format(p, choices=("table", "json"))


def _dev_cluster(subs: argparse._SubParsersAction) -> None:
    dev = _group(subs, "dev-cluster", "Run several members on this machine, in namespaces")
    p = _leaf(dev, "up", "devcluster:up", "Start N members, each in a network namespace")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--witness", action="store_true",
                   help="the last of the --nodes members joins as a witness")
    p.add_argument("--dir", default="/var/lib/corral-dev", help="state of all members")
    p = _leaf(dev, "down", "devcluster:down", "Remove every member and namespace of --dir")
    p.add_argument("--dir", default="/var/lib/corral-dev")
    p = _leaf(dev, "kill", "devcluster:kill", "Send a signal to one member's daemon")
    p.add_argument("member", metavar="MEMBER")
    p.add_argument("--signal", default="KILL", type=str.upper,
                   choices=["KILL", "STOP", "CONT", "TERM"], help="default KILL")
    p.add_argument("--host", action="store_true",
                   help="kill the whole host: the daemon and every container and VM it runs")
    p.add_argument("--dir", default="/var/lib/corral-dev")
    p = _leaf(dev, "start", "devcluster:start", "Start a member's daemon on its existing state")
    p.add_argument("member", metavar="MEMBER")
    p.add_argument("--clock-offset", type=float, default=None, metavar="SECONDS",
                   help="shift that daemon's wall clock (CORRAL_TEST_CLOCK_OFFSET)")
    p.add_argument("--dir", default="/var/lib/corral-dev")
    p = _leaf(dev, "partition", "devcluster:partition",
              "Cut members off from the rest (iptables DROP in their namespaces)")
    p.add_argument("members", metavar="MEMBER[,MEMBER...]", nargs="?", default="")
    p.add_argument("--side", choices=["minority", "majority"],
                   help="cut off a minority or a majority (holding MEMBER if given)")
    p.add_argument("--one-way", action="store_true",
                   help="drop only what the rest sends to them")
    p.add_argument("--dir", default="/var/lib/corral-dev")
    p = _leaf(dev, "corrupt", "devcluster:corrupt",
              "Damage a stopped member's Raft journal or snapshot")
    p.add_argument("member", metavar="MEMBER")
    p.add_argument("--file", choices=["journal", "snapshot"], default="journal")
    p.add_argument("--how", choices=["flip", "truncate"], default="flip",
                   help="flip: invert up to 4 KiB in the middle; truncate: cut at the middle")
    p.add_argument("--dir", default="/var/lib/corral-dev")
    p = _leaf(dev, "disk", "devcluster:disk",
              "A small loop file system under a member's Raft directory, to fill and free")
    p.add_argument("member", metavar="MEMBER")
    p.add_argument("action", choices=["attach", "fill", "free", "detach"],
                   help="attach/detach need the member stopped")
    p.add_argument("--size", type=int, default=32, help="MiB (attach; default 32)")
    p.add_argument("--dir", default="/var/lib/corral-dev")
    p = _leaf(dev, "heal", "devcluster:heal", "Remove every partition rule")
    p.add_argument("--dir", default="/var/lib/corral-dev")


def _trust(config: argparse._SubParsersAction) -> None:
    trust = _group(config, "trust", "Manage trusted clients (certificates and trust tokens)")
    p = _leaf(trust, "add", "trust:add",
              "Issue a trust token for client NAME, or trust a certificate FILE")
    p.add_argument("name", metavar="[REMOTE:]NAME|FILE")
    p.add_argument("--name", dest="cert_name", default="", help="name for a certificate FILE")
    p.add_argument("--type", dest="cert_type", default="client", choices=["client", "metrics"],
                   help="client (the whole API) or metrics (reads /1.0/metrics only; a "
                        "certificate FILE)")
    p = _leaf(trust, "list", "trust:list_", "List trusted certificates", aliases=["ls"])
    p.add_argument("target_remote", nargs="?", metavar="REMOTE:")
    _format(p)
    p = _leaf(trust, "remove", "trust:remove", "Remove a trusted certificate", aliases=["rm"])
    p.add_argument("name", metavar="[REMOTE:]FINGERPRINT")
    p = _leaf(trust, "list-tokens", "trust:list_tokens", "List pending trust tokens")
    p.add_argument("target_remote", nargs="?", metavar="REMOTE:")
    _format(p)
    p = _leaf(trust, "revoke-token", "trust:revoke_token", "Revoke the trust tokens of NAME")
    p.add_argument("name", metavar="[REMOTE:]NAME")


def _remote(subs: argparse._SubParsersAction) -> None:
    remote = _group(subs, "remote", "Manage remote corral (or LXD) servers reached over HTTPS")
    p = _leaf(remote, "add", "remote_cmds:add", "Add a remote from a trust token or an https URL")
    p.add_argument("remote_name", metavar="NAME")
    p.add_argument("address", metavar="TOKEN|https://ADDR[:PORT]")
    p.add_argument("--accept-certificate", action="store_true",
                   help="trust the server certificate presented at the URL")
    p.add_argument("--password", default="", help="trust password or token secret")
    p = _leaf(remote, "list", "remote_cmds:list_", "List remotes", aliases=["ls"])
    _format(p)
    p = _leaf(remote, "remove", "remote_cmds:remove", "Remove a remote", aliases=["rm"])
    p.add_argument("remote_name", metavar="NAME")
    p = _leaf(remote, "switch", "remote_cmds:switch", "Set the default remote")
    p.add_argument("remote_name", metavar="NAME")
    _leaf(remote, "get-default", "remote_cmds:get_default", "Show the default remote")


def build_parser() -> Parser:
    """The whole command tree (cheap: about a millisecond)."""
    parser = Parser(prog="corral", description="Manage corral (LXD-compatible) instances")
    parser.add_argument("-q", "--quiet", action="store_true", help="don't show progress")
    parser.add_argument("--version", action="version", version=VERSION)
    parser.set_defaults(handler=None, group_parser=parser)
    subs = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=Parser)
    _instances(subs)
    _exec_and_files(subs)
    _config(subs)
    _images(subs)
    _profiles(subs)
    _operations_and_server(subs)
    _remote(subs)
    _dev_cluster(subs)
    _cluster(subs)
    return parser


