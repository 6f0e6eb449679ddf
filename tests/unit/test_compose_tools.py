"""The pure parts of the docker-compose test's tooling: the image's content tag, the
private engine's configuration and address pool, the cgroup clean-up, and the shape of
docker-compose.test.yml (tests/deploy/test_compose.py runs it for real)."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

import yaml
from hypothesis import given
from hypothesis import strategies as st

from devtools import dockerd
from devtools.compose_image import content_tag, project_files
from devtools.compose_project import COMPOSE_FILE, MEMBERS

ROOT = Path(__file__).resolve().parents[2]
files = st.lists(st.tuples(st.text(min_size=1, max_size=8), st.binary(max_size=16)),
                 max_size=5, unique_by=lambda f: f[0])


@given(files)
def test_content_tag_ignores_the_order_of_files(found: list[tuple[str, bytes]]) -> None:
    assert content_tag("k", found) == content_tag("k", list(reversed(found)))


@given(files, st.binary(min_size=1, max_size=4))
def test_content_tag_changes_with_any_byte_name_or_the_base(
        found: list[tuple[str, bytes]], extra: bytes) -> None:
    tag = content_tag("k", found)
    assert content_tag("other", found) != tag
    assert content_tag("k", [*found, ("\0new", extra)]) != tag
    if found:
        name, data = found[0]
        assert content_tag("k", [(name, data + extra), *found[1:]]) != tag
        assert content_tag("k", [(name + "x", data), *found[1:]]) != tag


def test_the_wheel_is_made_of_the_packages_and_pyproject_only() -> None:
    names = [str(p) for p in project_files(ROOT)]
    assert "pyproject.toml" in names and "cluster/daemon.py" in names
    assert not any(n.startswith(("tests/", "build/")) or "__pycache__" in n for n in names)


def test_private_engine_touches_neither_iptables_nor_a_default_bridge() -> None:
    config = dockerd.private_config("10.96.3.0/24")
    assert config["bridge"] == "none"
    assert config["iptables"] is False and config["ip-forward"] is False
    assert config["ip-masq"] is False and config["ip6tables"] is False
    assert config["default-address-pools"] == [{"base": "10.96.3.0/24", "size": 26}]
    assert config["hosts"] == [f"unix://{dockerd.SOCKET}"]
    assert config["cgroup-parent"] == dockerd.CGROUP_PARENT


def test_the_address_pool_avoids_every_route_of_the_machine() -> None:
    routes = ["10.96.0.0/23", "10.96.2.0/25", "192.0.2.0/24"]
    pool = ipaddress.ip_network(dockerd.free_pool(routes))
    assert pool == ipaddress.ip_network("10.96.3.0/24")
    assert not any(pool.overlaps(ipaddress.ip_network(r)) for r in routes)


def test_cgroup_parents_are_removed_deepest_first(tmp_path: Path) -> None:
    leaf = tmp_path / "memory" / "job" / dockerd.CGROUP_PARENT / "abc" / "corral-1" / "c1"
    leaf.mkdir(parents=True)
    (tmp_path / "cpu" / dockerd.CGROUP_PARENT).mkdir(parents=True)
    busy = tmp_path / "pids" / dockerd.CGROUP_PARENT
    busy.mkdir(parents=True)
    (busy / "tasks").write_text("1\n")  # a plain file stands for a process still inside
    assert dockerd.remove_cgroup_parents(tmp_path) == [busy]
    assert not (tmp_path / "memory" / "job" / dockerd.CGROUP_PARENT).exists()
    assert (tmp_path / "memory" / "job").is_dir()
    assert not (tmp_path / "cpu" / dockerd.CGROUP_PARENT).exists()


def test_each_member_has_its_own_state_and_the_first_bootstraps_the_others() -> None:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    assert set(MEMBERS) <= set(services)
    states = [next(v for v in services[m]["volumes"] if v.endswith(":/var/lib/corral"))
              for m in MEMBERS]
    assert len(set(states)) == len(MEMBERS)
    assert all("tokens:/run/corral-tokens" in services[m]["volumes"] for m in MEMBERS)
    assert services["m1"]["environment"]["CORRAL_BOOTSTRAP"] == "1"
    assert services["m1"]["environment"]["CORRAL_PEERS"].split() == list(MEMBERS[1:])
    for member in MEMBERS[1:]:
        assert services[member]["depends_on"] == ["m1"]
        assert "CORRAL_BOOTSTRAP" not in services[member]["environment"]
    assert services["extra"]["profiles"] == ["extra"]  # not started by `up`


def test_the_entrypoint_is_valid_posix_shell() -> None:
    script = ROOT / "deploy" / "compose" / "entrypoint.sh"
    subprocess.run(["sh", "-n", str(script)], check=True, timeout=10)
    assert script.stat().st_mode & 0o111
