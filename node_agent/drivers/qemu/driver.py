"""The QEMU driver: one daemonised QEMU process per VM, driven through QMP.

::

    define --> cmdline.build_spec (pure) --> <vmpath>/<name>/config.json (running.json:
               the spec the running QEMU was started with, for its stop and state)
               qemu-img create -b <image>/rootfs.img --> <volume>/root.qcow2 (once)
    start ---> ip tuntap (per NIC) + `qemu-system-x86_64 -daemonize -pidfile qemu.pid`
    stop ----> QMP system_powerdown (ACPI), then QMP quit, then SIGKILL; taps removed
    freeze/unfreeze ---> QMP stop / cont          status ---> pid file + QMP query-status
    state ---> /proc/<pid> (RSS, CPU) and the taps' counters (no fork, one QMP call)
    metric_samples ---> guest_metrics.SCRIPT through the agent, else host_metrics (QMP,
               /proc, taps)
    exec ----> agent.exec_in_vm over agent.sock (virtio-serial), see agent.py
    snapshot/restore/... ---> qcow2 internal snapshots of root.qcow2, see snapshots.py
    replica_backup ---> QMP backup job + dirty bitmaps (HA replicas), see backup.py

A VM has two directories, as in LXD. Its runtime directory ``<vmpath>/<name>/``
(``$CORRAL_DIR/vms``) holds its specs, the QMP, agent and console sockets (kept short: a
unix socket's path must stay under 108 bytes), the pid file and the console log. Its
volume, on the storage pool of its root disk (``<pool>/virtual-machines/<name>/``, from
``InstanceDefinition.volume``), holds the disk ``root.qcow2`` (a copy-on-write overlay on
the image's disk, internal snapshots included) and ``snapshots.json``: what a cold move
streams; a VM booting through UEFI keeps its variable store ``OVMF_VARS.fd`` there too.
Without a volume in the definition the disk stays in the runtime directory; a VM
defined so (before disks lived on pools) has its disk moved to its volume by the first
``define`` that names one while it is stopped.

Nothing is kept in memory: a new driver instance (a restarted daemon) finds a running VM
by its pid file (checked against /proc/<pid>/cmdline) and its QMP socket. Every method
blocks and is safe to run in worker threads; lifecycle calls on one VM are serialised.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import yaml

from corral_shared.codes import status_pair
from corral_shared.instance_metrics import Sample
from node_agent.drivers.base import (
    DriverError,
    DriverInfo,
    InstanceDefinition,
    InvalidState,
    NotFound,
)
from node_agent.drivers.lxc_state import read_text, stopped_state
from node_agent.drivers.qemu import accel as accel_probe
from node_agent.drivers.qemu import backup, guest_metrics, host, host_metrics, qcow2, qmp
from node_agent.drivers.qemu import cmdline as cl
from node_agent.drivers.qemu import snapshots as snaps
from node_agent.drivers.qemu.accel_choice import AcceleratorChoice, GuestFinder
from node_agent.drivers.qemu.agent import ExecResult, exec_in_vm
from node_agent.drivers.qemu.cmdline import InvalidConfig, VmSpec

QEMU = "qemu-system-x86_64"
# QMP run states -> (LXD status, status code)
STATUS: dict[str, tuple[str, int]] = {
    "running": status_pair("Running"),
    "paused": status_pair("Frozen"),
    "suspended": status_pair("Frozen"),
    "prelaunch": status_pair("Starting"),
    "inmigrate": status_pair("Starting"),
    "postmigrate": status_pair("Frozen"),
    "finish-migrate": status_pair("Frozen"),
    "shutdown": status_pair("Stopping"),
}
STOPPED = status_pair("Stopped")
ERROR = status_pair("Error")
# How long a metrics scrape waits for the guest's agent before it reports the host's view
# instead: for another exec to finish, for the agent's hello (an idle agent polls its port
# once a second), and for the script (well under a second even under TCG), plus the time
# its result may take to come back.
METRICS_LOCK_WAIT, METRICS_HELLO, METRICS_RUN, METRICS_SLACK = 1.0, 2.0, 5.0, 2.0


def _wait_gone(pid: int, seconds: float) -> bool:
    """Poll until ``pid`` is gone (or a zombie); ``seconds < 0`` waits forever."""
    deadline = None if seconds < 0 else time.monotonic() + seconds
    while host.is_alive(pid):
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


class QemuDriver:
    """One daemon's VMs, each run from ``<vmpath>/<name>/``, its disk in its volume."""

    name: ClassVar[str] = "qemu"
    instance_type: ClassVar[str] = "virtual-machine"
    supports_live_migration: ClassVar[bool] = True  # migration/, cluster/controllers/live_moves.py

    def __init__(self, vmpath: Path, accel: str | None = None, qemu: str = QEMU,
                 start_timeout: float = 30.0, find_guest: GuestFinder | None = None) -> None:
        """``accel``: a mode that pins the accelerator ("kvm", "tcg"; None: the member's
        setting or $CORRAL_VM_ACCELERATOR, else the probe); ``find_guest``: a kernel of
        this member's to prove KVM on (see accel_choice)."""
        self.vmpath = Path(vmpath)
        self.qemu = qemu
        self.choice = AcceleratorChoice(self.vmpath, qemu, accel, find_guest)
        self.start_timeout = start_timeout
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # -- host facts ----------------------------------------------------------------------

    def accelerator(self) -> str:
        """"kvm" if it really runs guests here, else "tcg" (probed once per process)."""
        return self.choice.current().name

    def probe(self) -> DriverInfo:
        """Name, QEMU version, and why VMs cannot run here (empty if they can)."""
        binary = shutil.which(self.qemu)
        if binary is None:
            return DriverInfo(self.name, "", f"{self.qemu} not found "
                                             f"(apt-get install qemu-system-x86)")
        problems = [] if shutil.which("qemu-img") else ["qemu-img not found (qemu-utils)"]
        try:
            out = subprocess.run([binary, "--version"], capture_output=True, text=True,
                                 timeout=10, check=False).stdout
            version = out.split("version", 1)[1].split()[0] if "version" in out else ""
        except (OSError, subprocess.TimeoutExpired) as exc:
            return DriverInfo(self.name, "", f"{binary} --version failed: {exc}")
        return DriverInfo(self.name, version, "; ".join(problems))

    # -- paths and locks -----------------------------------------------------------------

    def _dir(self, name: str) -> Path:
        try:
            return self.vmpath / cl.check_name(name)
        except InvalidConfig as exc:
            raise NotFound(str(exc)) from exc

    def log_path(self, name: str) -> Path:
        """The serial console's log (kernel and init output)."""
        return self._dir(name) / cl.CONSOLE_LOG

    def vm_dir(self, name: str) -> Path:
        """The VM's runtime directory (sockets, pid file, console log, specs)."""
        return self._dir(name)

    def volume_dir(self, name: str) -> Path:
        """The directory of the VM's disk and snapshot names (its volume)."""
        return Path(self._spec(name).volume)

    def _lock(self, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(name, threading.Lock())

    def names(self) -> list[str]:
        if not self.vmpath.is_dir():
            return []
        return sorted(p.name for p in self.vmpath.iterdir() if (p / cl.CONFIG).is_file())

    def _spec(self, name: str, running: bool = False) -> VmSpec:
        """The saved spec; ``running``: the one the VM was started with (``define`` may
        have changed config.json since), falling back to config.json."""
        directory = self._dir(name)
        path = directory / cl.CONFIG
        if running and (directory / cl.RUNNING_CONFIG).is_file():
            path = directory / cl.RUNNING_CONFIG
        try:
            return VmSpec.from_json(json.loads(path.read_text()))
        except FileNotFoundError as exc:
            raise NotFound(f"VM {name!r} is not defined in {self.vmpath}") from exc
        except (OSError, ValueError, TypeError) as exc:
            raise DriverError(f"VM {name!r}: unreadable {cl.CONFIG}: {exc}") from exc

    def _pid(self, name: str) -> int:
        """The pid of the VM's QEMU, or 0 when it does not run."""
        directory = self._dir(name)
        pid = host.read_pid(directory / cl.PIDFILE)
        return pid if host.owns(pid, str(directory / cl.QMP)) else 0

    def _qmp(self, name: str, command: str, arguments: dict[str, Any] | None = None,
             timeout: float = qmp.TIMEOUT) -> Any:
        return qmp.execute(self._dir(name) / cl.QMP, command, arguments, timeout)

    # -- define ----------------------------------------------------------------------------

    def define(self, definition: InstanceDefinition) -> None:
        """(Re)write the VM's spec (effective at the next start) and create its disk overlay
        in its volume on first definition; a disk already there (moved from another
        member) is repointed at this member's image, unless it has no backing file (an
        HA replica promoted here: the whole disk in one file). ``definition.rootfs`` is an unpacked
        VM image directory: ``rootfs.img`` (qcow2), optionally ``metadata.yaml``, and
        ``kernel`` and ``initrd`` (direct kernel boot) or neither (UEFI boot, through
        OVMF: its VARS template is copied into the volume once). A first definition
        that fails removes the directories it made.
        Raises InvalidConfig, DriverError."""
        directory = self.vmpath / cl.check_name(definition.name)
        spec = cl.build_spec(definition, directory, _host_memory(),
                             _image_files(Path(definition.rootfs)))
        with self._lock(definition.name):
            made = [] if (directory / cl.CONFIG).exists() else [
                path for path in (directory, Path(spec.volume)) if not path.exists()]
            try:
                self._define(spec)
            except BaseException:
                for path in made:
                    shutil.rmtree(path, ignore_errors=True)
                raise

    def _define(self, spec: VmSpec) -> None:
        directory = Path(spec.directory)
        try:
            for path in (directory, Path(spec.volume)):
                path.mkdir(parents=True, exist_ok=True)
                path.chmod(0o700)
            spec = self._settle_disk(spec)
            disk = Path(spec.volume) / cl.DISK
            if not disk.exists():
                _create_overlay(Path(spec.backing), disk)
            elif qcow2.backing_file(disk) is not None:  # moved here from another member:
                qcow2.repoint(disk, Path(spec.backing))  # its image copy is ours now
            # (a disk without one, an HA replica promoted here, is whole and stays so)
            nvram = Path(spec.volume) / cl.VARS
            if spec.firmware == cl.UEFI_BOOT and not nvram.exists():  # kept once there
                shutil.copyfile(spec.ovmf_vars, nvram.with_name(f".{cl.VARS}.new"))
                os.replace(nvram.with_name(f".{cl.VARS}.new"), nvram)
            fd, tmp = tempfile.mkstemp(prefix=".config.", dir=directory)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(spec.to_json(), handle, indent=1, sort_keys=True)
            os.replace(tmp, directory / cl.CONFIG)
        except OSError as exc:
            raise DriverError(f"VM {spec.name!r}: cannot write its files: {exc}") from exc

    def _settle_disk(self, spec: VmSpec) -> VmSpec:
        """``spec`` once its volume holds the disk: a disk still where the saved spec keeps
        it (the VM's directory, before disks lived on storage pools) is moved there, unless
        the VM runs: then it stays, and so does the saved spec's volume."""
        try:
            old = Path(self._spec(spec.name).volume)
        except DriverError:  # a first definition (or an unreadable spec, replaced now)
            return spec
        new = Path(spec.volume)
        if old == new or (new / cl.DISK).exists() or not (old / cl.DISK).exists():
            return spec
        if self._pid(spec.name):
            return dataclasses.replace(spec, volume=str(old))
        # the names first, the disk last: a crash between loses none
        for file in (snaps.NAMES, cl.VARS, cl.DISK):
            if (old / file).exists():  # (a copy if the pool is another filesystem)
                shutil.move(old / file, new / f".{file}.moving")
                os.replace(new / f".{file}.moving", new / file)
        return spec

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, name: str) -> None:
        """Create the taps and start QEMU daemonised; return once QMP answers. Raises
        InvalidState if running, DriverError (with QEMU's message) if it fails."""
        with self._lock(name):
            self._start(name)

    def _start(self, name: str, incoming: bool = False) -> None:
        """start() with the VM's lock held; ``incoming``: paused, to receive a live
        migration (see migration/)."""
        spec = self._spec(name)
        if self._pid(name):
            raise InvalidState(f"cannot start VM {name!r}: it is running")
        directory = self._dir(name)
        self._cleanup(self._spec(name, running=True))
        (directory / cl.OUTGOING_MARK).unlink(missing_ok=True)  # a new QEMU migrates nothing
        log = directory / cl.CONSOLE_LOG  # QEMU appends to it: rotate it past 4 MiB
        if log.exists() and log.stat().st_size > 4 << 20:
            os.replace(log, directory / f"{cl.CONSOLE_LOG}.old")
        try:
            shutil.copyfile(directory / cl.CONFIG, directory / cl.RUNNING_CONFIG)
            for nic in spec.nics:
                host.create_tap(nic.tap, nic.bridge)
            self._launch(spec, incoming)
        except BaseException:
            self._kill(name)
            self._cleanup(spec)
            raise

    def _launch(self, spec: VmSpec, incoming: bool = False) -> None:
        """Start QEMU under the chosen accelerator; a QEMU that fails under KVM marks KVM
        broken on this member and is started again under TCG (a live migration's
        target is not: the source's state was made under KVM, so it fails cleanly)."""
        chosen = self.choice.current(_guest_kernel(spec)).name
        try:
            self._launch_under(spec, chosen, incoming)
        except DriverError as exc:
            if chosen != "kvm" or incoming:
                raise
            self.choice.mark_broken(f"VM {spec.name!r} failed to start under KVM: {exc}")
            self._kill(spec.name)
            self._launch_under(spec, "tcg", incoming)

    def _launch_under(self, spec: VmSpec, accel: str, incoming: bool) -> None:
        directory = Path(spec.directory)
        (directory / cl.QEMU_LOG).unlink(missing_ok=True)  # what it says is about this run
        argv = cl.qemu_argv(self.qemu, spec, accel, incoming)
        with tempfile.TemporaryFile() as err:  # a file: the daemon must not hold our pipe
            try:
                done = subprocess.run(argv, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=err, cwd=directory,
                                      start_new_session=True, timeout=self.start_timeout,
                                      check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise DriverError(f"VM {spec.name!r}: {self.qemu} failed: {exc}") from exc
            err.seek(0)
            message = err.read().decode(errors="replace").strip() or read_text(
                directory / cl.QEMU_LOG).strip()
        if done.returncode != 0:
            raise DriverError(f"VM {spec.name!r} failed to start (exit {done.returncode}): "
                              f"{message[-2000:]}")
        try:
            self._qmp(spec.name, "query-status")
        except qmp.QmpUnavailable as exc:
            raise DriverError(f"VM {spec.name!r} started but QMP does not answer: "
                              f"{exc}") from exc
        (directory / cl.ACCEL).write_text(accel + "\n")

    # -- a broken accelerator at run time (accel_choice) -----------------------------------

    def running_under(self, name: str) -> str:
        """The accelerator the VM's QEMU was started under ("" when stopped)."""
        return read_text(self._dir(name) / cl.ACCEL).strip()

    def accelerator_failure(self, name: str) -> str:
        """Why the VM, started under KVM, met a broken KVM ("" if it did not): QEMU in
        run state ``internal-error``, or gone with a KVM error in its log."""
        if self.running_under(name) != "kvm":
            return ""
        if self._pid(name):
            try:
                status = self._qmp(name, "query-status", timeout=2).get("status")
            except (qmp.QmpError, qmp.QmpUnavailable):
                return ""  # busy or slow: the next look decides
            return f"the guest stopped in run state {status}" if status == "internal-error" else ""
        said = read_text(self._dir(name) / cl.QEMU_LOG)
        return f"QEMU died: {kvm_error(said)}" if kvm_error(said) else ""

    def restart_under_tcg(self, name: str, reason: str) -> None:
        """Mark KVM broken, then run the VM again under TCG with the same disk."""
        self.choice.mark_broken(f"VM {name!r}: {reason}")
        with self._lock(name):
            if self.running_under(name) != "kvm":
                return  # restarted already, or stopped meanwhile
            self._kill(name)
            self._cleanup(self._spec(name, running=True))
            self._start(name)

    def stop(self, name: str, force: bool, timeout: float) -> None:
        """Force: ``quit`` now (SIGKILL if QMP does not answer). Else ACPI power button and
        wait ``timeout`` s (< 0: forever; 0: force) before forcing. Raises InvalidState if
        not running."""
        with self._lock(name):
            spec = self._spec(name, running=True)
            pid = self._pid(name)
            if not pid:
                raise InvalidState(f"cannot stop VM {name!r}: it is stopped")
            if force or timeout == 0 or not self._powerdown(name, pid, timeout):
                self._kill(name)
            self._cleanup(spec)

    def _powerdown(self, name: str, pid: int, timeout: float) -> bool:
        """ACPI shutdown; True if QEMU exited in time (a paused guest is resumed first)."""
        try:
            if self._qmp(name, "query-status").get("status") != "running":
                self._qmp(name, "cont")
            self._qmp(name, "system_powerdown")
        except (qmp.QmpError, qmp.QmpUnavailable):
            return False
        return _wait_gone(pid, timeout)

    def _kill(self, name: str) -> None:
        """QMP quit, then SIGKILL (at once if QMP fails); returns once QEMU is gone."""
        pid = self._pid(name)
        if not pid:
            return
        try:
            self._qmp(name, "quit", timeout=3)
            if _wait_gone(pid, 5):
                return
        except (qmp.QmpError, qmp.QmpUnavailable):
            pass  # deaf or hung: no point in waiting
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        if not _wait_gone(pid, 10):
            raise DriverError(f"VM {name!r}: QEMU (pid {pid}) survived SIGKILL")

    def _cleanup(self, spec: VmSpec) -> None:
        """What a stopped VM must not leave: taps, sockets, the pid file."""
        for nic in spec.nics:
            host.remove_tap(nic.tap)
        directory = Path(spec.directory)
        for leftover in (cl.PIDFILE, cl.QMP, cl.AGENT, cl.CONSOLE, cl.RUNNING_CONFIG, cl.ACCEL):
            try:
                (directory / leftover).unlink()
            except FileNotFoundError:
                pass

    def freeze(self, name: str) -> None:
        """Pause the vCPUs (QMP stop)."""
        self._require(name, "running", "freeze")
        self._qmp(name, "stop")

    def unfreeze(self, name: str) -> None:
        """Resume the vCPUs (QMP cont)."""
        self._require(name, "paused", "unfreeze")
        self._qmp(name, "cont")

    def _require(self, name: str, run_state: str, doing: str) -> None:
        status = self.status(name)
        if STATUS.get(run_state, ERROR)[0] != status:
            raise InvalidState(f"cannot {doing} VM {name!r}: it is {status}")

    def delete(self, name: str) -> None:
        """Remove a stopped VM: its volume (disk, snapshots), then its directory (spec,
        logs), so that a delete that fails half-way can be retried."""
        with self._lock(name):
            spec = self._spec(name, running=True)
            if self._pid(name):
                raise InvalidState(f"cannot delete VM {name!r}: it is running")
            volume = self.volume_dir(name)
            self._cleanup(spec)
            remove_trees(name, (volume, self._dir(name)))

    def rename(self, old: str, new: str) -> None:
        """Move a stopped VM's directory and its volume (named after the VM, renamed where
        it is); its spec follows (new tap names). Raises InvalidState if the VM runs or
        ``new`` exists in either place, DriverError (then nothing moved)."""
        with self._lock(old):
            spec = self._spec(old)
            if self._pid(old):
                raise InvalidState(f"cannot rename VM {old!r}: it is running")
            directory, volume = self._dir(old), Path(spec.volume)
            target = self.vmpath / cl.check_name(new)
            moved_volume = target if volume == directory else volume.with_name(new)
            if target.exists() or moved_volume.exists():
                raise InvalidState(f"VM {new!r} already exists")
            self._cleanup(self._spec(old, running=True))  # taps are named after the dir
            try:
                os.rename(directory, target)
                if moved_volume != target:
                    try:
                        os.rename(volume, moved_volume)
                    except OSError:
                        os.rename(target, directory)
                        raise
            except OSError as exc:
                raise DriverError(f"cannot rename VM {old!r} to {new!r}: {exc}") from exc
            nics = tuple(cl.Nic(nic.device, nic.bridge, cl.tap_name(target, index), nic.hwaddr)
                         for index, nic in enumerate(spec.nics))
            moved = dataclasses.replace(spec, name=new, directory=str(target),
                                        volume=str(moved_volume), nics=nics)
            (target / cl.CONFIG).write_text(json.dumps(moved.to_json(), indent=1,
                                                       sort_keys=True))

    # -- snapshots (qcow2 internal snapshots of the overlay, see snapshots.py) --------------

    def _live(self, name: str) -> snaps.Qmp | None:
        """QMP of the VM if it runs (or is frozen), None if it is stopped."""
        if not self._pid(name):
            return None
        return lambda command, arguments: self._qmp(name, command, arguments)

    def list_snapshots(self, name: str) -> list[str]:
        """The VM's snapshot names, sorted."""
        return sorted(snaps.read_names(self.volume_dir(name)))

    def snapshot(self, name: str, snap: str) -> None:
        """Snapshot the disk, stopped or running (then crash-consistent at worst, see
        snapshots.create). Raises NotFound, SnapshotExists, SnapshotError."""
        with self._lock(name):
            snaps.create(self.volume_dir(name), snap, self._live(name), self._dir(name))

    def delete_snapshot(self, name: str, snap: str) -> None:
        """Raises NotFound (also for an unknown snapshot: nothing changes), SnapshotError."""
        with self._lock(name):
            snaps.delete(self.volume_dir(name), snap, self._live(name))

    def rename_snapshot(self, name: str, old: str, new: str) -> None:
        """Rename a snapshot (its name only). Raises NotFound, SnapshotExists."""
        with self._lock(name):
            snaps.rename(self.volume_dir(name), old, new)

    def restore_snapshot(self, name: str, snap: str) -> None:
        """Revert the disk to ``snap``. A running (or frozen) VM is stopped by force first
        and started again afterwards, also when the revert fails. Raises NotFound (an
        unknown snapshot: the VM is left alone), SnapshotError, DriverError."""
        with self._lock(name):
            spec = self._spec(name, running=True)
            volume = self.volume_dir(name)
            snaps.tag_of(volume, snap)
            running = bool(self._pid(name))
            if running:
                self._kill(name)
                self._cleanup(spec)
            try:
                snaps.apply(volume, snap)
            finally:
                if running:
                    self._start(name)

    # -- HA replicas of the disk (backup.py; the store is replication/vm.py) -------------

    @contextlib.contextmanager
    def while_stopped(self, name: str) -> Iterator[bool]:
        """Whether the VM is stopped; if it is, it stays so (its lifecycle calls wait)
        until the block ends: a copy of its disk made then is consistent."""
        with self._lock(name):
            self._spec(name)
            yield not self._pid(name)

    def disk_job_lock(self, name: str) -> threading.Lock:
        """Held by a replica backup and by an outgoing live migration of the VM: neither
        starts its block job while the other's runs (QEMU would refuse it)."""
        return backup.lock_for(str(self._dir(name) / cl.QMP))

    def replica_snapshots(self, name: str) -> list[str]:
        """The replica snapshots the running VM has a dirty bitmap of ([] if stopped)."""
        if not self._pid(name):
            return []
        return backup.snapshots_held(self._run_qmp(name))

    def replica_backup(self, name: str, target: Path, snapshot: str, since: str | None,
                       stop: threading.Event | None = None) -> bool:
        """Copy the running VM's disk now into the new qcow2 file ``target`` (all of it,
        or what changed since replica snapshot ``since`` if its bitmap is here: see
        backup.py); whether it was all of it. Raises InvalidState if the VM is stopped,
        BackupError."""
        if not self._pid(name):
            raise InvalidState(f"cannot back up VM {name!r} live: it is stopped")
        return backup.backup(self._run_qmp(name), self.disk_job_lock(name), target,
                             snapshot, since, stop)

    def drop_replica_snapshots(self, name: str, snapshots: Iterable[str]) -> None:
        """Forget the bitmaps of ``snapshots`` (nothing to do if the VM is stopped)."""
        if self._pid(name):
            backup.drop_bitmaps(self._run_qmp(name), snapshots)

    def _run_qmp(self, name: str) -> backup.Qmp:
        return lambda command, arguments: self._qmp(name, command, arguments)

    # -- observation ---------------------------------------------------------------------

    def _status(self, name: str) -> tuple[tuple[str, int], int]:
        pid = self._pid(name)
        if not pid:
            return STOPPED, 0
        try:
            run_state = str(self._qmp(name, "query-status", timeout=5).get("status"))
        except (qmp.QmpError, qmp.QmpUnavailable):
            return (STOPPED, 0) if not host.is_alive(pid) else (ERROR, pid)
        return STATUS.get(run_state, ERROR), pid

    def status(self, name: str) -> str:
        """LXD's status string: Running, Stopped, Frozen, ... (Error if QMP fails)."""
        self._spec(name)
        return self._status(name)[0][0]

    def metric_samples(self, name: str) -> list[Sample]:
        """LXD's metrics of a running (or frozen) VM, [] if it is stopped: what its guest
        reports through the agent (guest_metrics.py), or, if the agent does not answer
        within seconds, what the host sees of it (host_metrics.py). Either way
        ``lxd_cpu_effective_total`` is its vCPU count. Raises NotFound."""
        spec = self._spec(name, running=True)
        (status, _), pid = self._status(name)
        if not pid:
            return []
        samples = [Sample("lxd_cpu_effective_total", float(spec.cpus))]
        output = self._guest_metrics(name) if status == STATUS["running"][0] else None
        if output is not None:
            return samples + guest_metrics.guest_samples(output)
        return samples + host_metrics.host_samples(self._run_qmp(name), pid, spec.nics)

    def _guest_metrics(self, name: str) -> str | None:
        """What guest_metrics.SCRIPT printed in the guest; None if the agent did not
        answer in time (no agent in the image, not booted yet, busy) or the script
        failed."""
        try:
            result = exec_in_vm(self._dir(name), guest_metrics.ARGV, timeout=METRICS_RUN,
                                hello_timeout=METRICS_HELLO, lock_timeout=METRICS_LOCK_WAIT,
                                slack=METRICS_SLACK)
        except DriverError:
            return None
        return result.stdout.decode("utf-8", errors="replace") if result.exit_code == 0 \
            else None

    def pid(self, name: str) -> int:
        """The pid of the VM's QEMU (the process a fence kills), 0 when it does not run."""
        return self._pid(name)

    def state(self, name: str) -> dict[str, Any]:
        """LXD's InstanceState: memory is QEMU's resident set, CPU its CPU time, network
        the taps' counters (seen from the guest)."""
        spec = self._spec(name, running=True)
        (status, code), pid = self._status(name)
        if not pid:
            return stopped_state(status, code)
        return {"status": status, "status_code": code, "pid": pid, "processes": -1,
                "cpu": {"usage": host.cpu_ns(pid)}, "memory": host.memory(pid),
                "network": {nic.device: host.tap_network(nic.device, nic.tap, nic.hwaddr)
                            for nic in spec.nics},
                "disk": {"root": {"usage": _disk_usage(Path(spec.volume))}}}

    # -- exec and limits -----------------------------------------------------------------

    def exec(self, name: str, command: list[str], timeout: float = 60.0) -> ExecResult:
        """Run ``command`` in the guest through the agent (see agent.exec_in_vm)."""
        self._spec(name)
        return exec_in_vm(self._dir(name), command, timeout)

    def exec_argv(self, name: str, command: list[str], env: dict[str, str], cwd: str,
                  uid: int, gid: int) -> list[str]:
        """argv of a host process that runs ``command`` in the guest and passes its output
        and exit code through. As root, without a pty; ``env`` and ``cwd`` are applied
        in the guest by ``env`` and a ``cd`` before the command."""
        self._spec(name)
        if uid != 0 or gid != 0:
            raise InvalidConfig(f"VM {name!r}: exec runs commands as root only (for now)")
        return [sys.executable, "-m", "node_agent.drivers.qemu.vm_exec", str(self._dir(name)),
                "--", *guest_command(command, env, cwd)]

    def apply_limits(self, name: str, config: dict[str, str]) -> None:
        """Check ``limits.*``; they apply at the next start (define rewrites the spec).
        No memory or CPU hotplug yet."""
        cl.parse_memory(config.get("limits.memory", ""), _host_memory())
        cl.parse_cpus(config.get("limits.cpu", ""))


KVM_ERRORS = ("KVM internal error", "kvm_buf_set_msrs", "KVM_RUN failed", "kvm run failed",
              "failed to set MSR", "KVM: entry failed")


def kvm_error(log: str) -> str:
    """The first line of QEMU's log that tells of a broken KVM ("" if none)."""
    for line in log.splitlines():
        if any(marker in line for marker in KVM_ERRORS):
            return line.strip()
    return ""


def _guest_kernel(spec: VmSpec) -> accel_probe.GuestKernel | None:
    """The VM's own kernel, to prove KVM on when the probe had none (direct boot only)."""
    if spec.firmware != cl.KERNEL_BOOT or not spec.kernel or not spec.initrd:
        return None
    return accel_probe.GuestKernel(Path(spec.kernel), Path(spec.initrd), spec.cmdline)


def remove_trees(name: str, paths: Iterable[Path],
                 error: type[DriverError] = DriverError) -> None:
    """Remove a VM's directories in order; one already gone is fine (a retried delete)."""
    for path in paths:
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise error(f"VM {name!r}: cannot remove {path}: {exc}") from exc


def guest_command(command: list[str], env: dict[str, str], cwd: str) -> list[str]:
    """``command`` wrapped so that the guest runs it with ``env`` in ``cwd``."""
    if any("=" in key or not key for key in env):
        raise InvalidConfig(f"invalid environment variable name in {sorted(env)!r}")
    wrapped = ["env", *(f"{k}={v}" for k, v in sorted(env.items())), *command] if env \
        else list(command)
    if cwd in ("", "/"):
        return wrapped
    return ["sh", "-c", 'cd "$1" || exit 1; shift; exec "$@"', "sh", cwd, *wrapped]


def _disk_usage(volume: Path) -> int:
    """Bytes the VM's overlay takes on the host (what it wrote, its snapshots), as LXD
    reports a VM's root disk usage."""
    try:
        return (volume / cl.DISK).stat().st_blocks * 512
    except OSError:
        return 0


def _host_memory() -> int:
    for line in read_text("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def probe_guest(images: Path) -> accel_probe.GuestKernel | None:
    """A kernel and initramfs with the corral agent on this member (a VM image unpacked
    for QEMU under ``images``), for the accelerator probe; None if there is none yet."""
    for unpacked in sorted(images.glob("*.vm")):
        if (guest := guest_of_image(unpacked)) is not None:
            return guest
    return None


def guest_of_image(unpacked: Path) -> accel_probe.GuestKernel | None:
    """The kernel, initramfs and command line of an unpacked VM image (None for an
    image that boots through UEFI, or an unreadable one)."""
    try:
        files = _image_files(unpacked)
    except InvalidConfig:
        return None
    if "kernel" not in files:
        return None
    return accel_probe.GuestKernel(Path(files["kernel"]), Path(files["initrd"]),
                                   files.get("cmdline") or cl.DEFAULT_CMDLINE)


def _image_files(image: Path) -> dict[str, str]:
    """Paths of an unpacked VM image and its kernel command line (metadata.yaml); an
    image without ``kernel`` and ``initrd`` (an LXD VM image) boots through UEFI."""
    files = {"rootfs": image / "rootfs.img", "kernel": image / "kernel",
             "initrd": image / "initrd"}
    if not files["rootfs"].is_file():
        raise InvalidConfig(f"VM image {image} has no rootfs.img")
    present = {key for key in ("kernel", "initrd") if files[key].is_file()}
    if len(present) == 1:
        (has,) = present
        raise InvalidConfig(f"VM image {image} has a {has} but no "
                            f"{'initrd' if has == 'kernel' else 'kernel'}")
    if not present:  # UEFI: the disk carries its own boot loader
        return {"rootfs": str(files["rootfs"])}
    result = {key: str(path) for key, path in files.items()}
    try:
        meta = yaml.safe_load((image / "metadata.yaml").read_text())
    except (OSError, yaml.YAMLError):
        meta = None
    corral = meta.get("corral") if isinstance(meta, dict) else None
    if isinstance(corral, dict) and isinstance(corral.get("cmdline"), str):
        result["cmdline"] = corral["cmdline"]
    return result


def _create_overlay(backing: Path, target: Path) -> None:
    try:
        done = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(backing),
                               "-F", "qcow2", str(target)], capture_output=True, text=True,
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DriverError(f"qemu-img create failed: {exc}") from exc
    if done.returncode != 0:
        raise DriverError(f"qemu-img create {target} failed: {done.stderr.strip()}")
