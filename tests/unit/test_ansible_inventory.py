"""The playbook's inventory checks (``ansible/filter_plugins/corral_inventory.py``), the
recap parser of its real test and the pure parts of the wheels archive and the ssh hosts."""

from __future__ import annotations

import importlib.util
import io
import ipaddress
import tarfile
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devtools.sshhosts import cgroup_mounts, host_files, start_argv
from devtools.wheels import tar_bytes
from tests.deploy.ansible_run import parse_recap

PLUGIN = Path(__file__).resolve().parents[2] / "ansible" / "filter_plugins" / \
    "corral_inventory.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("corral_inventory", PLUGIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


inv = _load()


@pytest.fixture
def archive(tmp_path: Path) -> str:
    path = tmp_path / "corral-wheels.tar"
    path.write_bytes(tar_bytes([("corral-0.1.0-py3-none-any.whl", b"x"),
                                ("pyyaml-6.0-cp311.whl", b"y")]))
    return str(path)


def host(archive: str, name: str = "h1", address: str = "10.0.0.2",
         **overrides: Any) -> dict[str, Any]:
    """One host's settings as the playbook's first play gathers them (the defaults)."""
    return {"host": name, "member_name": name, "address": address, "api_port": 8443,
            "witness": False, "storage_backend": "dir", "storage_size": "",
            "bridge_name": "corralbr0", "bridge_address": "10.190.72.1/24", "max_voters": 3,
            "metrics_certificate": "", "wheels_archive": archive,
            "service_manager": "auto", "dir": "/var/lib/corral", "venv": "/opt/corral/venv",
            **overrides}


def three(archive: str, **overrides: Any) -> list[dict[str, Any]]:
    return [host(archive, f"h{i}", f"10.0.0.{i + 1}", **overrides) for i in (1, 2, 3)]


def test_the_defaults_pass(archive: str) -> None:
    assert inv.inventory_problems(three(archive)) == []


@pytest.mark.parametrize(("overrides", "expected"), [
    ({"storage_backend": "zfs"}, "corral_storage_backend 'zfs' must be one of dir, btrfs"),
    ({"storage_size": 5}, "corral_storage_size applies to a btrfs pool"),
    ({"storage_backend": "btrfs", "storage_size": "0"}, "corral_storage_size '0' must be"),
    ({"max_voters": 0}, "corral_max_voters 0 must be an integer of at least 1"),
    ({"max_voters": "three"}, "corral_max_voters 'three'"),
    ({"bridge_address": "10.1.1.0/24"}, "corral_bridge_address '10.1.1.0/24' must be"),
    ({"bridge_address": "10.1.1.1"}, "corral_bridge_address '10.1.1.1' must be"),
    ({"bridge_address": "fd00::1/64"}, "corral_bridge_address 'fd00::1/64' must be"),
    ({"bridge_name": "a-name-too-long-for-linux"}, "corral_bridge_name"),
    ({"api_port": 65535}, "corral_api_port 65535 must be an integer from 1 to 65534"),
    ({"witness": "yes"}, "corral_witness 'yes' must be true or false"),
    ({"service_manager": "runit"}, "corral_service_manager 'runit'"),
    ({"dir": "var/lib/corral"}, "corral_dir 'var/lib/corral' must be an absolute path"),
    ({"wheels_archive": "/nonexistent.tar"}, "make wheels"),
    ({"metrics_certificate": "/nonexistent.crt"}, "corral_metrics_certificate"),
])
def test_a_bad_variable_is_named_once_with_its_hosts(archive: str, overrides: dict[str, Any],
                                                      expected: str) -> None:
    problems = inv.inventory_problems(three(archive, **overrides))
    matching = [p for p in problems if expected in p]
    assert len(matching) == 1, problems
    assert matching[0].startswith("h1, h2, h3: ")


def test_names_and_addresses_must_be_unique(archive: str) -> None:
    hosts = three(archive)
    hosts[2]["address"] = hosts[0]["address"]
    hosts[1]["member_name"] = "h1"
    problems = inv.inventory_problems(hosts)
    assert "h3 and h1 have the same corral_address '10.0.0.2'" in problems
    assert "h2 and h1 have the same corral_member_name 'h1'" in problems


@pytest.mark.parametrize("address", ["node1", "0.0.0.0", "::", "10.0.0.300", ""])
def test_the_cluster_address_is_an_ip_of_the_host(archive: str, address: str) -> None:
    problems = inv.inventory_problems([host(archive, address=address)])
    assert any(p.startswith(f"h1: corral_address {address!r}") for p in problems), problems


def test_cluster_wide_settings_must_agree(archive: str) -> None:
    hosts = three(archive)
    hosts[1]["storage_backend"] = "btrfs"
    problems = inv.inventory_problems(hosts)
    assert any(p.startswith("corral_storage_backend differs between hosts") for p in problems)


def test_witness_rules(archive: str) -> None:
    hosts = three(archive)
    hosts[0]["witness"] = True
    assert any("cannot be a witness" in p for p in inv.inventory_problems(hosts))
    hosts = three(archive, max_voters=1)
    hosts[1]["witness"] = hosts[2]["witness"] = True
    assert any("2 witnesses but corral_max_voters is 1" in p
               for p in inv.inventory_problems(hosts))


def test_an_empty_group_is_refused() -> None:
    assert inv.inventory_problems([]) == ["the inventory has no host in group corral"]


def test_an_archive_without_corral_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.tar"
    path.write_bytes(tar_bytes([("pyyaml-6.0-cp311.whl", b"y")]))
    assert "holds no corral-*.whl" in inv.wheels_problem(str(path))


@given(st.ip_addresses(), st.integers(min_value=1, max_value=65534))
def test_join_address_parses_back(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
                                  port: int) -> None:
    text = inv.join_address(str(address), port)
    host, _, port_text = text.rpartition(":")
    assert ipaddress.ip_address(host.strip("[]")) == address and int(port_text) == port


def test_certificate_fingerprint_is_the_der_sha256(tmp_path: Path) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    path = tmp_path / "c.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    assert inv.certificate_fingerprint(str(path)) == cert.fingerprint(hashes.SHA256()).hex()


# ---- the real test's helpers -----------------------------------------------------------

RECAP = """
TASK [trust : Trust it for metrics only] ***************************************
skipping: [h1]

PLAY RECAP *********************************************************************
h1                         : ok=25   changed=0    unreachable=0    failed=0    skipped=14   rescued=0    ignored=0
h9                         : ok=1    changed=0    unreachable=1    failed=0    skipped=0    rescued=0    ignored=0
"""  # noqa: E501 - Ansible's own line


def test_parse_recap() -> None:
    recap = parse_recap(RECAP)
    assert recap["h1"]["changed"] == 0 and recap["h1"]["ok"] == 25
    assert recap["h9"]["unreachable"] == 1
    assert parse_recap("no recap here") == {}


@given(st.lists(st.tuples(st.text("abc.-_", min_size=1, max_size=12), st.binary(max_size=64)),
                unique_by=lambda f: f[0], max_size=6))
def test_wheel_archive_is_reproducible(files: list[tuple[str, bytes]]) -> None:
    """The same wheels give the same bytes in any order, and the archive holds them."""
    data = tar_bytes(files)
    assert data == tar_bytes(reversed(files))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    assert got == dict(files)


MOUNTINFO = """\
25 30 0:23 / /sys rw - sysfs sysfs rw
29 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
31 29 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
32 29 0:29 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
33 29 0:30 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd
40 30 0:31 / /srv/other/cgroup rw - cgroup cgroup rw,memory
41 29 0:28 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
"""


def test_cgroup_mounts_are_the_hierarchies_under_sys_fs_cgroup() -> None:
    assert cgroup_mounts(MOUNTINFO) == ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/unified",
                                        "/sys/fs/cgroup/systemd"]


def test_host_files_trust_only_the_test_key_and_name_the_host() -> None:
    files = host_files("h1", "10.77.1.2", "ssh-ed25519 AAA test", "PRIVATE", "ssh-ed25519 B")
    assert files["root/.ssh/authorized_keys"] == ("ssh-ed25519 AAA test", 0o600)
    assert files["etc/ssh/ssh_host_ed25519_key"][1] == 0o600
    assert "10.77.1.2 h1" in files["etc/hosts"][0]
    config = files["etc/ssh/corral_test_sshd_config"][0]
    assert "PasswordAuthentication no" in config and "ListenAddress 10.77.1.2" in config


def test_start_argv_enters_the_cgroups_before_the_namespaces() -> None:
    argv = start_argv("p-h1", Path("/base"), Path("/u"), Path("/w"), Path("/r"), "h1",
                      "p-h1", ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/unified"])
    assert argv[:2] == ["sh", "-c"]
    nsenter = argv.index("nsenter")
    assert argv[4:nsenter] == ["p-h1", "2", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/unified"]
    assert argv[nsenter + 1] == "--net=/run/netns/p-h1"
    assert "--cgroup" in argv and "--kill-child" in argv
    assert argv[-2:] == ["/sys/fs/cgroup/cpu", "/sys/fs/cgroup/unified"]
