"""The LXC instance driver: system containers through liblxc.

::

    define ----> lxc_config.build_config (pure) ---> <lxcpath>/<name>/config (+ corral.json)
    start -----> exec `lxc-start -d`  (its small C process stays as the `[lxc monitor]`)
    stop/freeze/state/limits ---> `lxc` binding (talks to the monitor's command socket)
    state -----> cgroup files + /proc/<init>/net/* (lxc_state, pure parsers; no fork)
    metrics ---> the same files, statvfs of its disks (lxc_metrics: LXD's metric samples)
    exec ------> argv for `lxc-attach`, run by the agent with pipes or a pty

Containers are never started with ``lxc.Container.start()``: that forks this (big Python)
process, and the fork would live on as the container's monitor. ``lxc-start`` costs ~3 MB RSS.
Unprivileged containers need every directory above their rootfs to be traversable (0711)
by the mapped root; ``start`` checks this and says which directory is not.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, replace
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

import lxc  # type: ignore[import-not-found]

from corral_shared.instance_metrics import Sample
from node_agent.drivers import lxc_checkpoint as ckpt
from node_agent.drivers import lxc_config as cfg
from node_agent.drivers import lxc_metrics as mx
from node_agent.drivers import lxc_state as st
from node_agent.drivers.base import (
    DriverError,
    DriverInfo,
    InstanceDefinition,
    InvalidState,
    NotFound,
)
from node_agent.idmap import IdMap

DEFINITION_FILE = "corral.json"
# lxc-attach proxies a terminal only if the pty is its *controlling* terminal; without one it
# hangs silently. Prefix exec_argv with this when stdin/stdout are a pty (exit codes pass).
PTY_WRAPPER = ("setsid", "--ctty", "--wait")
# How long busybox init must be a stopping container's only process before the stop is
# done (it forks its shutdown actions within milliseconds of the halt signal).
LONE_INIT_GRACE = 0.2


class InvalidConfig(DriverError):
    """The instance's config or devices cannot be applied to a container."""

    code = 400


def _item(container: Any, key: str, running: bool = False) -> str:
    """A config item as text; "" when unset or unknown (liblxc raises KeyError for an
    ``lxc.net.N`` beyond the last NIC)."""
    try:
        value = (container.get_running_config_item(key) if running
                 else container.get_config_item(key))
    except KeyError:
        return ""
    return "" if value is None else value if isinstance(value, str) else " ".join(value)


def _signal_number(name: str) -> int:
    """``SIGPWR``, ``SIGRTMIN+4``, ``30``: liblxc's spellings of a signal."""
    text = name.strip().upper()
    if text.isdigit():
        return int(text)
    if text.startswith("SIGRTMIN+"):
        return int(signal.SIGRTMIN) + int(text.removeprefix("SIGRTMIN+"))
    return int(getattr(signal, text if text.startswith("SIG") else f"SIG{text}"))


def _wait_for(container: Any, state: str, seconds: float) -> bool:
    """Poll until the container is in ``state``; sleeps release the GIL (liblxc's own
    ``wait()`` keeps it). ``seconds < 0`` waits forever."""
    deadline = None if seconds < 0 else time.monotonic() + seconds
    while True:
        if str(container.state) == state:
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _init_is_systemd(rootfs: Path) -> bool:
    """Whether the image's /sbin/init is a link to systemd (read, never followed)."""
    try:
        return "systemd" in os.readlink(rootfs / "sbin" / "init")
    except OSError:
        return False


def _log_excerpt(path: Path, errors: int = 12, tail: int = 4) -> str:
    """The log's ERROR lines (where the cause is) and its last lines, in order: a plain
    tail can be all teardown warnings that bury the first error."""
    lines = st.read_text(path).splitlines()
    wanted = [i for i, line in enumerate(lines) if " ERROR " in line][:errors]
    wanted += range(max(0, len(lines) - tail), len(lines))
    return "\n".join(lines[i] for i in sorted(set(wanted)))


class LxcDriver:
    """One daemon's containers: its own ``lxcpath`` and its own cgroup ``prefix``."""

    name: ClassVar[str] = "lxc"
    instance_type: ClassVar[str] = "container"
    supports_live_migration: ClassVar[bool] = False

    def __init__(self, lxcpath: Path, idmap: IdMap, cgroup_prefix: str,
                 start_timeout: float = 10.0) -> None:
        self.lxcpath = Path(lxcpath)
        self.idmap = idmap
        self.cgroup_prefix = cfg.check_prefix(cgroup_prefix)
        self.start_timeout = start_timeout
        # Read-only handles for status/state: building one parses the config (~0.5 ms).
        # Dropped whenever the config changes; mutations always use a fresh handle.
        self._readers: dict[str, Any] = {}
        self._nic_layouts: dict[tuple[str, int], dict[str, tuple[str, str]]] = {}

    # -- host facts -------------------------------------------------------------------------

    @cached_property
    def mounts(self) -> st.CgroupMounts:
        return st.parse_cgroup_mounts(st.read_text("/proc/self/mountinfo"))

    @cached_property
    def host(self) -> cfg.HostFacts:
        return st.detect_host(self.mounts)

    def probe(self) -> DriverInfo:
        """Name, liblxc version, and why containers cannot run here (empty if they can)."""
        problems = [f"{tool} not found" for tool in ("lxc-start", "lxc-attach")
                    if shutil.which(tool) is None]
        if missing := st.missing_controllers(self.mounts):
            problems.append(f"cgroup controllers unavailable: {', '.join(missing)}")
        return DriverInfo(self.name, str(lxc.version), "; ".join(problems))

    # -- paths ------------------------------------------------------------------------------

    def _dir(self, name: str) -> Path:
        try:
            return self.lxcpath / cfg.check_name(name)
        except cfg.ConfigError as exc:
            raise NotFound(str(exc)) from exc

    def log_path(self, name: str) -> Path:
        """The console log (what the container's init wrote), for ``/logs``."""
        return self._dir(name) / "console.log"

    def lxc_log_path(self, name: str) -> Path:
        """liblxc's own log (warnings and errors of start, stop and attach)."""
        return self._dir(name) / "lxc.log"

    def _payload_rel(self, name: str) -> str:
        """The payload cgroup below each hierarchy's root (liblxc's layout with a cgroup dir)."""
        return f"{self.cgroup_prefix}/{name}/lxc.payload.{name}"

    def _remove_cgroups(self, name: str) -> None:
        st.remove_cgroup_dirs(self.mounts.hierarchies, f"{self.cgroup_prefix}/{name}")

    def remove_cgroup_prefix(self) -> None:
        """Best effort, when no container runs: remove this daemon's prefix (and its empty
        parents, without descending into them: they may hold other daemons' prefixes)."""
        st.remove_cgroup_dirs(self.mounts.hierarchies, self.cgroup_prefix, wait=0)
        st.remove_empty_parents(self.mounts.hierarchies, self.cgroup_prefix)

    # -- liblxc handles ----------------------------------------------------------------------

    def _container(self, name: str) -> Any:
        directory = self._dir(name)
        container = lxc.Container(name, config_path=str(self.lxcpath))
        if not container.defined:
            raise NotFound(f"container {name!r} is not defined in {directory.parent}")
        return container

    def _lxc_state(self, name: str) -> tuple[Any, str]:
        container = self._container(name)
        return container, str(container.state)

    def _require(self, name: str, states: tuple[str, ...], doing: str) -> Any:
        """A fresh handle, if the container is in one of ``states``; else InvalidState."""
        container, state = self._lxc_state(name)
        if state not in states:
            status = st.STATUS.get(state, st.ERROR_STATUS)[0]
            raise InvalidState(f"cannot {doing} container {name!r}: it is {status}")
        return container

    def _reader(self, name: str) -> tuple[Any, str]:
        """A cached handle and the liblxc state, for observation only."""
        container = self._readers.get(name)
        if container is None or not container.defined:
            container = self._readers[name] = self._container(name)
        return container, str(container.state)

    def names(self) -> list[str]:
        """The containers defined under this driver's lxcpath."""
        if not self.lxcpath.is_dir():
            return []
        return sorted(p.name for p in self.lxcpath.iterdir() if (p / "config").is_file())

    # -- lifecycle ---------------------------------------------------------------------------

    def define(self, definition: InstanceDefinition) -> None:
        """(Re)write the container's config; it takes effect at the next start.

        Raises InvalidConfig if the config, devices or limits cannot be expressed."""
        try:
            lines = cfg.build_config(definition, lxcpath=self.lxcpath,
                                     cgroup_prefix=self.cgroup_prefix, idmap=self.idmap,
                                     host=self.host, is_file=os.path.isfile,
                                     systemd=_init_is_systemd(Path(definition.rootfs)))
            text = cfg.render(lines)
        except cfg.ConfigError as exc:
            raise InvalidConfig(f"container {definition.name!r}: {exc}") from exc
        try:
            self._write_config(definition, text)
        except OSError as exc:
            raise DriverError(f"container {definition.name!r}: cannot write its config: "
                              f"{exc}") from exc
        self._readers.pop(definition.name, None)

    def _write_config(self, definition: InstanceDefinition, text: str) -> None:
        """Atomically replace the config once liblxc has parsed it; save the definition."""
        directory = self.lxcpath / definition.name
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o711)
        fd, tmp = tempfile.mkstemp(prefix=".config.", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        if not lxc.Container(definition.name, config_path=str(self.lxcpath)).load_config(tmp):
            os.unlink(tmp)
            raise InvalidConfig(f"container {definition.name!r}: liblxc rejected the config "
                                f"(check raw.lxc)")
        os.replace(tmp, directory / "config")
        saved = asdict(definition) | {"rootfs": str(definition.rootfs)}
        (directory / DEFINITION_FILE).write_text(json.dumps(saved, indent=1, sort_keys=True))

    def _preflight(self, name: str, container: Any) -> None:
        """Clear errors for what lxc-start reports badly: rootfs access, missing bridges."""
        rootfs = Path(_item(container, "lxc.rootfs.path").removeprefix("dir:"))
        if not rootfs.is_dir():
            raise InvalidConfig(f"container {name!r}: rootfs {rootfs} does not exist")
        if _item(container, "lxc.idmap"):
            for parent in rootfs.parents:
                if not parent.stat().st_mode & 0o001:
                    raise InvalidConfig(f"container {name!r}: {parent} is not traversable by "
                                        f"the container's mapped root (needs mode 0711)")
        index = 0
        while kind := _item(container, f"lxc.net.{index}.type"):
            link = _item(container, f"lxc.net.{index}.link")
            if kind == "veth" and link and not Path("/sys/class/net", link).exists():
                raise InvalidConfig(f"container {name!r}: bridge {link!r} does not exist")
            index += 1

    def start(self, name: str) -> None:
        """Start with ``lxc-start -d`` (or restore the checkpoint of a stateful stop) and
        wait for RUNNING. Raises InvalidState if not stopped, DriverError (with the tail
        of lxc.log, or CRIU's errors) if it does not come up."""
        container = self._require(name, ("STOPPED",), "start")
        self._preflight(name, container)
        self._remove_cgroups(name)
        directory = self._dir(name)
        for log in ("lxc.log", "console.log"):
            if (directory / log).exists():
                os.replace(directory / log, directory / f"{log}.old")
        saved = self.checkpoint_dir(name)
        if ckpt.has_checkpoint(saved):
            ckpt.restore(self.lxcpath, name, saved)
            if not _wait_for(container, "RUNNING", self.start_timeout):
                raise DriverError(f"container {name!r}: its restored processes did not "
                                  f"come up\n--- lxc.log ---\n"
                                  f"{_log_excerpt(directory / 'lxc.log')}")
            shutil.rmtree(saved, ignore_errors=True)
            return
        # stderr to a file, not a pipe: the daemonised monitor must not hold our pipe open
        with tempfile.TemporaryFile() as err:
            try:
                done = subprocess.run(["lxc-start", "-n", name, "-P", str(self.lxcpath), "-d"],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=err, env={"PATH": cfg.DEFAULT_PATH},
                                      start_new_session=True, timeout=self.start_timeout,
                                      check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                container.stop()
                raise DriverError(f"container {name!r}: lxc-start failed: {exc}") from exc
            err.seek(0)  # its first line is the cause; the rest says "run in foreground"
            stderr = err.read().decode(errors="replace").strip().split("\n", 1)[0]
        if done.returncode != 0 or not _wait_for(container, "RUNNING", self.start_timeout):
            raise DriverError(f"container {name!r} failed to start (lxc-start exit "
                              f"{done.returncode}): {stderr}\n--- lxc.log ---\n"
                              f"{_log_excerpt(directory / 'lxc.log')}")

    def stop(self, name: str, force: bool, timeout: float) -> None:
        """Force: kill now. Else send the halt signal (SIGPWR: busybox and systemd halt on
        it) and kill after ``timeout`` s; ``timeout < 0`` waits forever, ``0`` kills now."""
        container = self._require(name, ("RUNNING", "FROZEN", "STARTING", "STOPPING"), "stop")
        if container.state == "FROZEN" and not force:
            container.unfreeze()
        if not force and timeout != 0:
            seconds = -1 if timeout < 0 else max(1, math.ceil(timeout))
            if self._shutdown(container, seconds):
                return
        container.stop()
        if not _wait_for(container, "STOPPED", 10):
            container.unfreeze()  # a frozen cgroup holds the SIGKILL back on some kernels
            if not _wait_for(container, "STOPPED", 10):
                raise DriverError(f"container {name!r} did not stop after SIGKILL")

    def _shutdown(self, container: Any, seconds: float) -> bool:
        """Send init its halt signal and wait up to ``seconds`` (< 0: forever) for it to
        stop. Not liblxc's ``shutdown()``: the binding holds the GIL while it waits, which
        stalls the whole daemon and serialises concurrent stops.

        busybox init (busybox and Alpine images) runs its shutdown actions, sends TERM to
        every process, then sleeps a second, sends KILL and sleeps another second before it
        exits. Once it has taken the signal and been the container's only process for
        ``LONE_INIT_GRACE``, the shutdown is over (nothing is left to finish or to kill)
        and the container is stopped then: a clean stop in ~0.25 s instead of ~2.1 s."""
        pid = container.init_pid
        if pid <= 0:
            return True
        configured = _item(container, "lxc.signal.halt")  # "0" when unset
        halt = _signal_number(configured if configured not in ("", "0") else "SIGPWR")
        try:
            os.kill(pid, halt)
        except ProcessLookupError:
            return True
        if not st.is_busybox(pid):
            return _wait_for(container, "STOPPED", seconds)
        payload = self._payload_rel(str(container.name))
        deadline = None if seconds < 0 else time.monotonic() + seconds
        alone_since: float | None = None
        while str(container.state) != "STOPPED":
            now = time.monotonic()
            # Alone, and init has taken the signal (it forks its shutdown actions next).
            if (st.payload_pids(self.mounts, payload) != [pid]
                    or st.signal_pending(pid, halt)):
                alone_since = None
            elif alone_since is None:
                alone_since = now
            elif now - alone_since >= LONE_INIT_GRACE:
                container.stop()
                return _wait_for(container, "STOPPED", 10)
            if deadline is not None and now >= deadline:
                return False
            time.sleep(0.02)
        return True

    def checkpoint_dir(self, name: str) -> Path:
        """``state/`` beside the rootfs on the pool: LXD's place for a stateful stop."""
        rootfs = _item(self._container(name), "lxc.rootfs.path").removeprefix("dir:")
        return Path(rootfs).parent / "state"

    def has_checkpoint(self, name: str) -> bool:
        return ckpt.has_checkpoint(self.checkpoint_dir(name))

    def discard_checkpoint(self, name: str) -> None:
        shutil.rmtree(self.checkpoint_dir(name), ignore_errors=True)

    def checkpoint(self, name: str) -> None:
        """Stateful stop: dump the processes with CRIU, then stop; the next ``start``
        restores them. Raises InvalidState for a container started without
        ``migration.stateful=true`` (its console pty cannot be dumped), DriverError if
        CRIU fails (the container then runs on)."""
        container = self._require(name, ("RUNNING", "FROZEN"), "checkpoint")
        if _item(container, "lxc.console.path", running=True) != "none":
            raise InvalidState(f"container {name!r} was started without "
                               f"{cfg.STATEFUL_KEY}=true: restart it after setting the key "
                               f"to make it checkpointable")
        if container.state == "FROZEN":
            container.unfreeze()
        group = self.idmap.gid_base if _item(container, "lxc.idmap") else 0
        ckpt.checkpoint(self.lxcpath, name, self.checkpoint_dir(name), group)
        if not _wait_for(container, "STOPPED", 10):
            raise DriverError(f"container {name!r}: still running after its checkpoint")

    def freeze(self, name: str) -> None:
        if not self._require(name, ("RUNNING",), "freeze").freeze():
            raise DriverError(f"container {name!r}: freeze failed")

    def unfreeze(self, name: str) -> None:
        if not self._require(name, ("FROZEN",), "unfreeze").unfreeze():
            raise DriverError(f"container {name!r}: unfreeze failed")

    def delete(self, name: str) -> None:
        """Remove ``<lxcpath>/<name>`` (config and logs; the rootfs belongs to storage)."""
        self._require(name, ("STOPPED",), "delete")
        try:
            shutil.rmtree(self._dir(name))
        except OSError as exc:
            raise DriverError(f"container {name!r}: cannot remove its directory: {exc}") from exc
        finally:
            self._readers.pop(name, None)
        self._remove_cgroups(name)

    def rename(self, old: str, new: str) -> None:
        """Move a stopped container's directory and rewrite its config under ``new``."""
        self._require(old, ("STOPPED",), "rename")
        try:
            target = self.lxcpath / cfg.check_name(new)
        except cfg.ConfigError as exc:
            raise InvalidConfig(str(exc)) from exc
        if target.exists():
            raise InvalidState(f"container {new!r} already exists")
        source = self._dir(old)
        try:
            saved = json.loads((source / DEFINITION_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise DriverError(f"container {old!r}: no readable {DEFINITION_FILE}") from exc
        definition = InstanceDefinition(**saved)
        rootfs = Path(definition.rootfs)
        if rootfs.is_relative_to(source):
            rootfs = target / rootfs.relative_to(source)
        try:
            os.rename(source, target)
        except OSError as exc:
            raise DriverError(f"cannot rename {source} to {target}: {exc}") from exc
        try:
            self.define(replace(definition, name=new, rootfs=rootfs))
        except DriverError:
            os.rename(target, source)  # undo: the old config still names the old paths
            raise
        self._readers.pop(old, None)
        self._remove_cgroups(old)

    # -- observation -------------------------------------------------------------------------

    def status(self, name: str) -> str:
        """LXD's status string: Running, Stopped, Frozen, ... (Error if unknown)."""
        return st.STATUS.get(self._reader(name)[1], st.ERROR_STATUS)[0]

    def metric_samples(self, name: str) -> list[Sample]:
        """LXD's instance metrics of a running container, from cgroup, /proc and statvfs
        (no fork); [] when it does not run. NotFound if it is not defined."""
        container, _ = self._reader(name)
        pid = int(container.init_pid)
        if pid <= 0:
            return []
        return mx.container_samples(self.mounts, self._payload_rel(name), pid,
                                    self.host.memory, len(self.host.cpus),
                                    self._disks(name, container))

    def _disks(self, name: str, container: Any) -> list[mx.Disk]:
        """The root disk (the rootfs liblxc runs) and the host-path disks of the saved
        definition."""
        rootfs = _item(container, "lxc.rootfs.path").removeprefix("dir:")
        try:
            devices = json.loads((self._dir(name) / DEFINITION_FILE).read_text())["devices"]
        except (OSError, ValueError, KeyError, TypeError):
            devices = {}
        return mx.filesystem_disks(rootfs, devices if isinstance(devices, dict) else {})

    def pid(self, name: str) -> int:
        """The host pid of the container's init (killing it ends the container), 0 when
        it does not run."""
        return max(0, int(self._reader(name)[0].init_pid))

    def state(self, name: str) -> dict[str, Any]:
        """LXD's InstanceState, from cgroup and /proc files (no fork, well under 1 ms)."""
        container, lxc_state = self._reader(name)
        status, code = st.STATUS.get(lxc_state, st.ERROR_STATUS)
        pid = int(container.init_pid)
        if pid <= 0:
            return st.stopped_state(status, code)
        processes, cpu, memory = st.cgroup_usage(self.mounts, self._payload_rel(name))
        return {"status": status, "status_code": code, "pid": pid, "processes": processes,
                "cpu": {"usage": cpu}, "memory": memory,
                "network": self._network(container, pid), "disk": {}}

    def _network(self, container: Any, pid: int) -> dict[str, dict[str, Any]]:
        """NICs from the loaded config; the host veth names need a round trip to the
        monitor, so the NIC layout is kept for as long as the same init runs."""
        key = (str(container.name), pid)
        layout = self._nic_layouts.get(key)
        if layout is None:
            layout = self._nic_layouts[key] = self._nic_layout(container)
            for stale in [k for k in self._nic_layouts if k[0] == key[0] and k != key]:
                del self._nic_layouts[stale]
        nics = {iface: st.host_side(host, hwaddr) for iface, (host, hwaddr) in layout.items()}
        return st.read_network(pid, nics)

    def _nic_layout(self, container: Any) -> dict[str, tuple[str, str]]:
        """``{container ifname: (host veth, hwaddr)}`` of the running container."""
        nics: dict[str, tuple[str, str]] = {}
        index = 0
        while kind := _item(container, f"lxc.net.{index}.type"):
            item = f"lxc.net.{index}."
            if kind == "veth":
                nics[_item(container, item + "name")] = (
                    _item(container, item + "veth.pair", running=True),
                    _item(container, item + "hwaddr"))
            index += 1
        return nics

    # -- exec and limits ---------------------------------------------------------------------

    def exec_argv(self, name: str, command: list[str], env: dict[str, str], cwd: str,
                  uid: int, gid: int) -> list[str]:
        """argv of ``lxc-attach`` running ``command`` in the container (exit codes pass
        through). Run it with cwd ``/``: lxc-attach keeps the caller's cwd if it exists
        inside. PATH, LANG and HOME (for root) default as in LXD. On a pty, prefix
        :data:`PTY_WRAPPER`."""
        self._container(name)
        try:
            return cfg.attach_argv(self.lxcpath, name, command, env, cwd, uid, gid)
        except cfg.ConfigError as exc:
            raise InvalidConfig(f"container {name!r}: {exc}") from exc

    def apply_limits(self, name: str, config: dict[str, str]) -> None:
        """Apply ``limits.*`` to a running container now; removed limits are lifted.
        A stopped container gets them from its config (``define``) at the next start."""
        try:
            items = cfg.cgroup_limits(config, self.host, reset=True)
        except cfg.ConfigError as exc:
            raise InvalidConfig(f"container {name!r}: {exc}") from exc
        container, state = self._lxc_state(name)
        if state not in ("RUNNING", "FROZEN"):
            return
        for item, value in items:
            if not container.set_cgroup_item(item, value):
                raise DriverError(f"container {name!r}: cannot set {item} = {value} "
                                  f"(below current usage, or a CPU in use by a sub-cgroup?)")
