#!/usr/bin/env python3
"""Feasibility probe: move running busybox containers between two lxcpaths with CRIU.

Run as root with the project's venv:  /work/main/.venv/bin/python scripts/criu_probe.py
Options: --count N (default 3), --privileged, --serial, --transfer copy|precopy|move,
--verbose, --keep-logs, --with-console/--with-apparmor (to see those fail); see --help.

What it does, as corral would on an evacuation to another host:
  1. builds the busybox image with node_agent.images.busybox and unpacks one rootfs per
     container with node_agent.images.unpack (uid-shifted unless --privileged);
  2. defines the containers with node_agent.drivers.lxc.LxcDriver in a *source* lxcpath
     (its own cgroup prefix), with one veth NIC on a private bridge and a static address
     (lxc.net.0.ipv4.address via raw.lxc, so the image's rcS starts no DHCP client), no
     console (lxc.console.path = none) and no AppArmor profile (lxc.apparmor.profile =),
     and starts them with lxc-start -d (driver.start);
  3. writes /root/probe.txt and starts a counter (/tmp/count, +1 every 0.1 s) in each, in
     its own session (setsid);
  4. checkpoints them with `lxc-checkpoint -s -D DIR` (liblxc's checkpoint(); the python-lxc
     binding 3.0.4 installed here has no checkpoint/restore/migrate methods);
  5. copies rootfs + checkpoint image to a *destination* lxcpath/rootfs dir (cp -a) and defines
     the containers there with a second LxcDriver (other lxcpath, other cgroup prefix);
  6. restores them with `lxc-checkpoint -r -D DIR -P DST` (daemonised monitor, like lxc-start -d);
  7. checks the counter went on from its checkpointed value and the file is there;
  8. prints the time of each step and the total, then stops and removes everything it made
     (containers, cgroups, bridge, temp dirs), also on failure.

CRIU options that liblxc cannot pass can come from a criu config file named by
CRIU_CONFIG_FILE in the environment of lxc-checkpoint (--criu-option, restore only;
--criu-dump-option): criu 4.1.1 needed `mntns-compat-mode` on restore, 4.2.1 needs none.

Needs criu >= 4.2.1 with the NLM_F_EXCL patch (scripts/build-criu.sh) for unprivileged
containers; --privileged works with plain 4.1.1 too.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, "/work/main")

from node_agent.drivers import lxc_config as cfg  # noqa: E402
from node_agent.drivers.base import InstanceDefinition  # noqa: E402
from node_agent.drivers.lxc import LxcDriver  # noqa: E402
from node_agent.idmap import ensure_root_idmap  # noqa: E402
from node_agent.images.busybox import build_busybox_image  # noqa: E402
from node_agent.images.unpack import extract_tar  # noqa: E402

# setsid: a process left behind by lxc-attach is in lxc-attach's session, whose leader is
# outside the container's pid namespace, and criu refuses to dump it ("A session leader of
# ... is outside of its pid namespace").
COUNTER = ("setsid sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; "
           "done' </dev/null >/dev/null 2>&1 &")
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


def log(msg: str) -> None:
    print(msg, flush=True)


def run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 60,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Output goes to temp files, not pipes: a daemonised monitor (lxc-checkpoint -r -d)
    would hold a pipe open and make us wait for it until the container stops."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                              env=ENV | (env or {}), cwd="/", timeout=timeout,
                              start_new_session=True, check=False, text=True)
        out.seek(0)
        err.seek(0)
        proc.stdout, proc.stderr = out.read(), err.read()
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> exit {proc.returncode}\n"
                           f"{proc.stdout.strip()}\n{proc.stderr.strip()}")
    return proc


class Probe:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tag = secrets.token_hex(3)
        self.base = Path(tempfile.mkdtemp(prefix="corral-criu-", dir="/tmp"))
        self.base.chmod(0o711)  # the mapped root must traverse every dir above a rootfs
        self.idmap = ensure_root_idmap()
        self.bridge = f"crpb{self.tag}"
        self.subnet = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(250)}"
        self.src = LxcDriver(self.base / "src-lxc", self.idmap, f"corral-criu-src-{self.tag}")
        self.dst = LxcDriver(self.base / "dst-lxc", self.idmap, f"corral-criu-dst-{self.tag}")
        self.names = [f"cp{self.tag}-{i}" for i in range(args.count)]
        self.criu_conf = self.base / "criu.conf"
        self.bridge_made = False
        self.copy_parts: dict[str, tuple[float, float, float]] = {}
        self.image = self.base / "busybox.tar.gz"

    # -- helpers ----------------------------------------------------------------------------

    def exec(self, driver: LxcDriver, name: str, script: str) -> str:
        argv = driver.exec_argv(name, ["/bin/sh", "-c", script], {}, "", 0, 0)
        return run(argv, timeout=30).stdout.strip()

    def count(self, driver: LxcDriver, name: str) -> int:
        """/tmp/count, retried: `echo $i > f` truncates before it writes."""
        for _ in range(20):
            text = self.exec(driver, name, "cat /tmp/count")
            if text.isdigit():
                return int(text)
            time.sleep(0.02)
        raise RuntimeError(f"{name}: /tmp/count stays empty")

    def definition(self, name: str, rootfs: Path, index: int) -> InstanceDefinition:
        raw = [f"lxc.net.0.ipv4.address = {self.subnet}.{10 + index}/24",
               f"lxc.net.0.ipv4.gateway = {self.subnet}.1"]
        if not self.args.with_console:
            raw.append("lxc.console.path = none")
        if not self.args.with_apparmor:
            # corral writes lxc.apparmor.profile = unconfined; liblxc then passes
            # --lsm-profile apparmor:unconfined to criu restore, which fails on a kernel
            # without AppArmor ("apparmor LSM specified but apparmor not supported").
            raw.append("lxc.apparmor.profile =")
        raw += self.args.raw
        config = {"raw.lxc": "\n".join(raw)}
        if self.args.privileged:
            config["security.privileged"] = "true"
        devices = {"root": {"type": "disk", "path": "/"},
                   "eth0": {"type": "nic", "nictype": "bridged", "parent": self.bridge,
                            "name": "eth0", "hwaddr": f"00:16:3e:{self.tag[:2]}:{self.tag[2:4]}:"
                                                      f"{index:02x}"}}
        return InstanceDefinition(name, rootfs, config, devices)

    def ckpt_env(self, restore: bool) -> dict[str, str]:
        """criu refuses restore-only options (mntns-compat-mode) on dump: one file each."""
        conf = self.criu_conf.with_suffix(".restore" if restore else ".dump")
        return {"CRIU_CONFIG_FILE": str(conf)} if conf.exists() else {}

    def parallel(self, fn, items):  # type: ignore[no-untyped-def]
        if self.args.serial:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(max_workers=len(items)) as pool:
            return list(pool.map(fn, items))

    # -- steps ------------------------------------------------------------------------------

    def setup(self) -> None:
        run(["ip", "link", "add", self.bridge, "type", "bridge"])
        self.bridge_made = True
        run(["ip", "addr", "add", f"{self.subnet}.1/24", "dev", self.bridge])
        run(["ip", "link", "set", self.bridge, "up"])
        for kind, options in (("dump", self.args.dump_options),
                              ("restore", self.args.criu_options)):
            if options:
                self.criu_conf.with_suffix(f".{kind}").write_text(
                    "".join(f"{o}\n" for o in options))
                log(f"criu {kind} config: {', '.join(options)}")
        build_busybox_image(self.image)
        shift = 0 if self.args.privileged else self.idmap.uid_base
        for index, name in enumerate(self.names):
            rootfs = self.base / "src-rootfs" / name
            rootfs.mkdir(parents=True)
            rootfs.parent.chmod(0o711)
            extract_tar(self.image, rootfs, shift, "rootfs")
            (rootfs / "etc/hostname").write_text(f"{name}\n")
            self.src.define(self.definition(name, rootfs, index))
        t0 = time.monotonic()
        self.parallel(self.src.start, self.names)
        log(f"started {len(self.names)} containers in {time.monotonic() - t0:.2f} s "
            f"({'privileged' if self.args.privileged else 'unprivileged, idmapped'})")
        for name in self.names:
            self.exec(self.src, name, f"echo hello-{name} > /root/probe.txt; {COUNTER}")
        time.sleep(1.0)  # let the counters count
        for name in self.names:
            log(f"  {name}: count={self.count(self.src, name)} "
                f"addr={self.exec(self.src, name, 'ip -4 -o addr show eth0').split()[3]}")

    def checkpoint(self, name: str) -> float:
        directory = self.base / "ckpt-src" / name
        directory.mkdir(parents=True)
        argv = ["lxc-checkpoint", "-n", name, "-P", str(self.src.lxcpath), "-D", str(directory),
                "-s"]
        if self.args.verbose:
            argv.append("-v")
        t0 = time.monotonic()
        proc = run(argv, env=self.ckpt_env(False), timeout=60, check=False)
        took = time.monotonic() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"checkpoint of {name} failed (exit {proc.returncode}): "
                               f"{proc.stderr.strip()}\n{self.criu_log(directory, 'dump.log')}")
        return took

    def copy(self, index_name: tuple[int, str]) -> float:
        """What a cross-host move transfers: the rootfs and the checkpoint image; then the
        destination defines the instance from its definition (new rootfs path, own lxcpath
        and cgroup prefix)."""
        index, name = index_name
        t0 = time.monotonic()
        rootfs = self.base / "dst-rootfs" / name
        rootfs.parent.mkdir(parents=True, exist_ok=True)
        rootfs.parent.chmod(0o711)
        source = self.base / "src-rootfs" / name
        if self.args.transfer == "copy":
            run(["cp", "-a", str(source), str(rootfs)])
        elif self.args.transfer == "precopy":  # delta after a pre-copy made while running
            run(["rsync", "-aH", "--numeric-ids", "--delete", f"{source}/", f"{rootfs}/"])
        else:  # "move": same host, same filesystem
            os.rename(source, rootfs)
        t1 = time.monotonic()
        (self.base / "ckpt-dst").mkdir(exist_ok=True)
        run(["cp", "-a", str(self.base / "ckpt-src" / name), str(self.base / "ckpt-dst" / name)])
        t2 = time.monotonic()
        self.dst.define(self.definition(name, rootfs, index))
        t3 = time.monotonic()
        self.copy_parts[name] = (t1 - t0, t2 - t1, t3 - t2)
        return t3 - t0

    def restore(self, name: str) -> float:
        directory = self.base / "ckpt-dst" / name
        argv = ["lxc-checkpoint", "-r", "-n", name, "-P", str(self.dst.lxcpath), "-D",
                str(directory), "-d"]
        if self.args.strace_restore:  # debugging only: strace follows the daemonised monitor
            argv = ["strace", "-f", "-s", "512", "-e", "trace=execve,sendmsg,recvmsg",
                    "-o", f"{self.args.strace_restore}.{name}", *argv]
        if self.args.verbose:
            argv.append("-v")
        t0 = time.monotonic()
        proc = run(argv, env=self.ckpt_env(True), timeout=60, check=False)
        took = time.monotonic() - t0
        if proc.returncode != 0 or self.dst.status(name) != "Running":
            raise RuntimeError(f"restore of {name} failed (exit {proc.returncode}, "
                               f"{self.dst.status(name)}): {proc.stderr.strip()}\n"
                               f"{self.criu_log(directory, 'restore.log')}\n--- lxc.log ---\n"
                               f"{self.tail(self.dst.lxc_log_path(name), 15)}")
        return took

    @staticmethod
    def tail(path: Path, lines: int) -> str:
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return f"({path} missing)"

    def criu_log(self, directory: Path, name: str) -> str:
        path = directory / name
        try:
            text = path.read_text(errors="replace").splitlines()
        except OSError:
            return f"({path} missing)"
        errors = [line for line in text if "Error" in line or "rror (" in line][:15]
        return f"--- {path} (errors, then tail) ---\n" + "\n".join(errors + ["..."] + text[-8:])

    def main(self) -> int:
        self.setup()
        before: dict[str, int] = {}  # each container's counter at its checkpoint
        if self.args.transfer == "precopy":
            t0 = time.monotonic()
            for name in self.names:  # while the containers run (not part of the downtime)
                target = self.base / "dst-rootfs" / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.parent.chmod(0o711)
                run(["cp", "-a", str(self.base / "src-rootfs" / name), str(target)])
            log(f"pre-copied the rootfs of {len(self.names)} running containers in "
                f"{time.monotonic() - t0:.3f} s (not downtime)")
        t_start = time.monotonic()
        ck = self.parallel(self.checkpoint, self.names)
        t_ck = time.monotonic()
        for name in self.names:  # the counter's last value, read from the stopped rootfs
            before[name] = int((self.base / "src-rootfs" / name / "tmp/count").read_text())
            assert self.src.status(name) == "Stopped", self.src.status(name)
        cp = self.parallel(self.copy, list(enumerate(self.names)))
        t_cp = time.monotonic()
        rs = self.parallel(self.restore, self.names)
        t_rs = time.monotonic()
        time.sleep(0.5)
        ok = True
        for i, name in enumerate(self.names):
            count = self.count(self.dst, name)
            text = self.exec(self.dst, name, "cat /root/probe.txt")
            addr = self.exec(self.dst, name, "ip -4 -o addr show eth0").split()[3]
            ping = run(["busybox", "ping", "-c1", "-W1", f"{self.subnet}.{10 + i}"], check=False)
            pid = self.dst.state(name)["pid"]  # the restored init, as the host sees it
            uid = next(line.split()[1] for line in
                       Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("Uid:"))
            good = count > before[name] and text == f"hello-{name}"
            ok &= good
            log(f"  {name}: counter {before[name]} at checkpoint -> {count} 0.5 s after restore;"
                f" probe.txt={text!r}; eth0 {addr}; ping from host "
                f"{'ok' if ping.returncode == 0 else 'FAILED'}; init host uid {uid}; "
                f"{'OK' if good else 'FAILED'}")
        mode = ("serial" if self.args.serial else "parallel") + f", rootfs {self.args.transfer}"
        log(f"per container (s): checkpoint {', '.join(f'{x:.3f}' for x in ck)}; "
            f"copy+define {', '.join(f'{x:.3f}' for x in cp)}; "
            f"restore {', '.join(f'{x:.3f}' for x in rs)}")
        log("copy parts (rootfs cp, image cp, define) per container (s): " + "; ".join(
            ", ".join(f"{x:.3f}" for x in self.copy_parts[n]) for n in self.names))
        log(f"{len(self.names)} containers, {mode}: checkpoint {t_ck - t_start:.3f} s, "
            f"copy {t_cp - t_ck:.3f} s, restore {t_rs - t_cp:.3f} s, "
            f"TOTAL {t_rs - t_start:.3f} s")
        size = sum(f.stat().st_size for f in (self.base / "ckpt-src").rglob("*") if f.is_file())
        log(f"checkpoint images: {size / len(self.names) / 1024:.0f} KiB per container")
        log("RESULT: " + ("OK, state carried over" if ok else "FAILED"))
        return 0 if ok else 1

    def cleanup(self) -> None:
        for driver in (self.dst, self.src):
            for name in driver.names():
                try:
                    if driver.status(name) != "Stopped":
                        driver.stop(name, force=True, timeout=0)
                except Exception:  # noqa: BLE001
                    run(["lxc-stop", "-k", "-n", name, "-P", str(driver.lxcpath)], check=False)
                try:
                    driver.delete(name)
                except Exception as exc:  # noqa: BLE001
                    log(f"cleanup: {name}: {exc}")
            try:
                driver.remove_cgroup_prefix()
            except Exception as exc:  # noqa: BLE001
                log(f"cleanup: cgroup prefix: {exc}")
        if self.bridge_made:
            run(["ip", "link", "del", self.bridge], check=False)
        if self.args.keep_logs:
            log(f"kept {self.base}")
            return
        shutil.rmtree(self.base, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--privileged", action="store_true")
    parser.add_argument("--serial", action="store_true", help="one container at a time")
    parser.add_argument("--verbose", action="store_true", help="lxc-checkpoint -v")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the temp dir (CRIU logs) after cleanup")
    parser.add_argument("--criu-option", dest="criu_options", action="append",
                        default=None, help="line for criu's config file on restore "
                        "(repeatable), e.g. mntns-compat-mode (4.1.1 needed it, 4.2.1 not)")
    parser.add_argument("--criu-dump-option", dest="dump_options", action="append",
                        default=[], help="line for criu's config file on dump (repeatable)")
    parser.add_argument("--transfer", choices=("copy", "precopy", "move"), default="copy",
                        help="rootfs after the checkpoint: cp -a (default), rsync delta "
                        "after a cp -a made while running, or rename (same host)")
    parser.add_argument("--with-console", action="store_true",
                        help="keep liblxc's console (no lxc.console.path = none)")
    parser.add_argument("--with-apparmor", action="store_true",
                        help="keep corral's lxc.apparmor.profile = unconfined")
    parser.add_argument("--strace-restore", metavar="PREFIX",
                        help="debug: strace lxc-checkpoint -r into PREFIX.<name>")
    parser.add_argument("--raw", action="append", default=[],
                        help="extra raw.lxc line for the containers (repeatable)")
    args = parser.parse_args()
    if args.criu_options is None:
        args.criu_options = []
    args.criu_options = [o for o in args.criu_options if o != "none"]
    if os.geteuid() != 0:
        log("needs root")
        return 2
    if shutil.which("criu", path=ENV["PATH"]) is None:
        log("criu not found: run scripts/build-criu.sh")
        return 2
    cfg.check_name(f"cp{'0' * 6}-{args.count}")
    probe = Probe(args)
    try:
        return probe.main()
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        return 1
    finally:
        probe.cleanup()


if __name__ == "__main__":
    sys.exit(main())
