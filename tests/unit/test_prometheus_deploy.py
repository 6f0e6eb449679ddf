"""deploy/prometheus is valid for Prometheus itself, and its alerts fire as documented.

``promtool`` (Debian's ``prometheus`` package) checks the rules, runs their unit tests
(alerts_test.yml) and checks the scrape configuration. ``check config`` requires the TLS
files to exist, so it runs on a copy whose paths point at certificates made in tmp. Without
promtool these tests skip, which ``CORRAL_REQUIRE_REAL=1`` turns into a failure.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from corral_shared import tls
from devtools.prometheus import ScrapeJob, TlsFiles, render_config, scrape_config

pytestmark = pytest.mark.real

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
REQUIRED_ALERTS = {"CorralMemberOffline", "CorralNoLeader", "CorralNoQuorum",
                   "CorralLeaderFlapping", "CorralReplicaLagging", "CorralFailover"}


def promtool(*args: str, cwd: Path = DEPLOY) -> str:
    """Run promtool; returns its output, fails the test with it on a non-zero exit."""
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("needs promtool (apt-get install --no-install-recommends prometheus)")
    result = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True,
                            timeout=120, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((DEPLOY / name).read_text())
    assert isinstance(data, dict)
    return data


def fake_tls_files(directory: Path) -> dict[str, Path]:
    """Real certificates standing in for /etc/prometheus/corral/*, by file name."""
    tls.ensure_pair(directory / "metrics.crt", directory / "metrics.key", "prometheus", [])
    tls.ensure_pair(directory / "server.crt", directory / "server.key", "corral",
                    ["localhost"])
    return {path.name: path for path in directory.iterdir()}


def test_alert_rules_are_valid() -> None:
    assert "SUCCESS" in promtool("check", "rules", "alerts.yml")


def test_each_alert_fires_in_its_unit_test() -> None:
    promtool("test", "rules", "alerts_test.yml")
    rules = [rule["alert"] for group in load("alerts.yml")["groups"] for rule in group["rules"]]
    assert REQUIRED_ALERTS <= set(rules)
    fired = {case["alertname"] for test in load("alerts_test.yml")["tests"]
             for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert set(rules) <= fired, f"alerts never shown to fire: {set(rules) - fired}"


def test_scrape_config_is_valid_with_its_certificates_in_place(tmp_path: Path) -> None:
    files = fake_tls_files(tmp_path / "certs")
    config = load("prometheus.yml")
    for job in config["scrape_configs"]:
        for key in ("cert_file", "key_file", "ca_file"):
            job["tls_config"][key] = str(files[Path(job["tls_config"][key]).name])
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    shutil.copy(DEPLOY / "alerts.yml", tmp_path / "alerts.yml")
    output = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert "SUCCESS: 1 rule files found" in output


def test_both_ways_of_scraping_use_https_and_a_pinned_metrics_certificate() -> None:
    jobs = {job["job_name"]: job for job in load("prometheus.yml")["scrape_configs"]}
    assert set(jobs) == {"corral", "corral-cluster"}
    for job in jobs.values():
        assert job["scheme"] == "https" and job["metrics_path"] == "/1.0/metrics"
        assert {"cert_file", "key_file", "ca_file", "server_name"} <= set(job["tls_config"])
        assert not job["tls_config"].get("insecure_skip_verify")
    assert len(jobs["corral"]["static_configs"][0]["targets"]) > 1
    assert jobs["corral-cluster"]["params"] == {"scope": ["cluster"]}
    assert "params" not in jobs["corral"]


def test_the_harness_scrapes_as_the_deployed_configuration_does() -> None:
    """devtools.prometheus renders the same job the example holds, so the integration tests
    prove the configuration users deploy."""
    for deployed in load("prometheus.yml")["scrape_configs"]:
        conf = deployed["tls_config"]
        job = ScrapeJob(deployed["job_name"], deployed["static_configs"][0]["targets"],
                        metrics_path=deployed["metrics_path"],
                        params=deployed.get("params", {}), scheme=deployed["scheme"],
                        tls=TlsFiles(Path(conf["cert_file"]), Path(conf["key_file"]),
                                     Path(conf["ca_file"]), conf["server_name"]),
                        honor_labels=deployed.get("honor_labels", False))
        assert scrape_config(job) == deployed


def test_the_harness_configuration_is_valid(tmp_path: Path) -> None:
    files = fake_tls_files(tmp_path)
    pinned = TlsFiles(files["metrics.crt"], files["metrics.key"], files["server.crt"],
                      "localhost")
    jobs = [ScrapeJob("a", ["127.0.0.1:8443"], params={"scope": ["cluster"]}, tls=pinned),
            ScrapeJob("b", ["127.0.0.1:8444"], tls=TlsFiles(insecure_skip_verify=True)),
            ScrapeJob("c", ["127.0.0.1:9100"], scheme="http", metrics_path="/metrics")]
    config = render_config(jobs, interval=0.5, rule_files=[DEPLOY / "alerts.yml"])
    assert config["global"]["scrape_interval"] == "500ms"
    (tmp_path / "rendered.yml").write_text(yaml.safe_dump(config))
    assert "SUCCESS" in promtool("check", "config", "rendered.yml", cwd=tmp_path)


def test_duplicate_job_names_are_refused() -> None:
    with pytest.raises(ValueError):
        render_config([ScrapeJob("a", ["x:1"]), ScrapeJob("a", ["y:1"])])
