"""deploy/systemd: the unit says what the issue asks (notify readiness, state directory,
descriptor limit, delegated cgroups, instances that outlive the daemon), ``make
install-systemd`` stages it with real paths and ``systemd-analyze verify`` accepts that
without a warning, and ``corral-stop`` (its ExecStop) sends SIGPWR only when the host
shuts down, SIGTERM otherwise, and returns once the daemon has exited.

``systemd-analyze verify`` needs the unit's executables to exist, so it checks the unit
as ``make install-systemd DESTDIR=...`` writes it with this checkout's venv and helper.
It exits 0 even on an unknown key or a bad value (it only prints a warning), so any
output fails the test. Without systemd-analyze that test skips, which
``CORRAL_REQUIRE_REAL=1`` turns into a failure."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "systemd"
STOP = DEPLOY / "corral-stop"


def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read(DEPLOY / "corral.service")
    return parser


def test_the_unit_has_what_the_daemon_needs() -> None:
    service = unit()["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["ExecStart"] == "/opt/corral/venv/bin/corral daemon"
    assert service["ExecStop"] == "/usr/local/lib/corral/corral-stop $MAINPID"
    assert service["Environment"] == "CORRAL_DIR=/var/lib/corral"
    assert service["StateDirectory"] == "corral"  # that is /var/lib/corral
    assert service["LimitNOFILE"] == "1048576"
    assert service["Delegate"] == "yes"
    assert service["KillMode"] == "process"  # instances survive a daemon restart
    assert service["Restart"] == "on-failure"
    assert int(service["TimeoutStopSec"].removesuffix("s")) > 300  # host_shutdown's total
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def test_the_sysusers_file_makes_the_socket_group() -> None:
    lines = [line.split() for line in (DEPLOY / "corral.sysusers.conf").read_text()
             .splitlines() if line.strip() and not line.startswith("#")]
    assert lines == [["g", "corral", "-"]]


@pytest.mark.real
def test_the_installed_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("needs systemd-analyze (the systemd package)")
    venv = Path(sys.prefix)
    assert (venv / "bin" / "corral").exists(), "this test runs from the project's venv"
    stage = tmp_path / "stage"
    make = subprocess.run(["make", "-s", "install-systemd", f"DESTDIR={stage}",
                           f"CORRAL_VENV={venv}", f"CORRAL_LIBEXEC={DEPLOY}"],
                          cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert make.returncode == 0, make.stdout + make.stderr
    installed = stage / "etc/systemd/system/corral.service"
    text = installed.read_text()
    assert f"ExecStart={venv}/bin/corral daemon" in text
    assert f"ExecStop={DEPLOY}/corral-stop $MAINPID" in text
    assert os.access(stage / DEPLOY.relative_to("/") / "corral-stop", os.X_OK)
    assert (stage / "etc/sysusers.d/corral.conf").read_text() == (
        DEPLOY / "corral.sysusers.conf").read_text()
    result = subprocess.run([analyze, "verify", str(installed)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr)
    broken = tmp_path / "broken.service"  # the check sees a wrong value, as asserted above
    broken.write_text(text.replace("KillMode=process", "KillMode=proces"))
    result = subprocess.run([analyze, "verify", str(broken)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert "kill mode" in result.stderr


SIGNAL_CATCHER = textwrap.dedent("""
    import signal, sys, time
    def caught(number, frame):
        time.sleep(0.5)  # stopping takes a while: corral-stop must wait for it
        print(signal.Signals(number).name, flush=True)
        sys.exit(0)
    for sig in (signal.SIGTERM, signal.SIGPWR):
        signal.signal(sig, caught)
    print("ready", flush=True)
    time.sleep(60)
""")


def stop_with(tmp_path: Path, path_dirs: list[Path]) -> str:
    """Run corral-stop on a process that prints the signal it gets; that name. Asserts
    corral-stop returned only once the process had exited."""
    daemon = subprocess.Popen([sys.executable, "-c", SIGNAL_CATCHER], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert daemon.stdout is not None and daemon.stdout.readline() == "ready\n"
        env = {**os.environ,
               "PATH": os.pathsep.join([*map(str, path_dirs), os.environ["PATH"]])}
        stopper = subprocess.Popen(["sh", str(STOP), str(daemon.pid)], env=env,
                                   stderr=subprocess.PIPE, text=True)
        # corral-stop's loop sees an unreaped zombie as exited; reap it as systemd does
        got = daemon.stdout.readline().strip()
        daemon.wait(10)
        exited = time.monotonic()
        _, err = stopper.communicate(timeout=10)
        assert stopper.returncode == 0, err
        assert time.monotonic() - exited < 5
        assert f"sending {got} to {daemon.pid}" in err
        return got
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


def test_an_ordinary_stop_sends_sigterm(tmp_path: Path) -> None:
    """Not booted with systemd here: systemctl fails, which is never a host shutdown."""
    assert stop_with(tmp_path, []) == "SIGTERM"


@pytest.mark.parametrize(("jobs", "system", "expected"), [
    ("1234 reboot.target start waiting\n1301 corral.service stop running", "running",
     "SIGPWR"),
    ("1301 corral.service stop running", "stopping", "SIGPWR"),
    ("1301 corral.service restart running", "running", "SIGTERM"),
])
def test_a_host_shutdown_sends_sigpwr(tmp_path: Path, jobs: str, system: str,
                                      expected: str) -> None:
    """systemd is not PID 1 here, so ``systemctl`` is played by a script that prints what
    systemd 252 prints: the jobs queued (a reboot under way, or only a restart of corral)
    and the system's state."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "systemctl"
    fake.write_text("#!/bin/sh\n"
                    f"case \"$1\" in list-jobs) printf '%s\\n' '{jobs}' ;;\n"
                    f"is-system-running) echo {system} ;; esac\n")
    fake.chmod(0o755)
    assert stop_with(tmp_path, [bin_dir]) == expected


def test_a_stop_after_the_daemon_exited_does_nothing() -> None:
    """$MAINPID is empty once the main process is gone."""
    for args in ([], [""]):
        assert subprocess.run(["sh", str(STOP), *args], timeout=10, check=False,
                              capture_output=True).returncode == 0


def test_the_helper_is_executable() -> None:
    assert os.access(STOP, os.X_OK)
