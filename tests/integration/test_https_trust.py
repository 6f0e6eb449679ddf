"""HTTPS and the trust store against a real daemon, on loopback only.

An untrusted TLS client sees LXD's reduced ``GET /1.0`` and 403 elsewhere; a trust
token (``corral config trust add``) lets ``corral remote add`` trust a client, which
then drives instances over HTTPS (``REMOTE:NAME``); used, expired and forged tokens
are refused; pylxd works over HTTPS with its own certificate.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pylxd
import pytest
import yaml

from corral_shared import tls
from devtools.harness import DaemonProcess
from tests.integration.api import Api
from tests.integration.conftest import new_daemon, real_prerequisites

pytestmark = [pytest.mark.real,
              pytest.mark.filterwarnings("ignore:Unverified HTTPS request")]  # pylxd, verify=False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def https_port(daemon: DaemonProcess) -> Iterator[int]:
    """The shared daemon listening on HTTPS for this module; its config restored after."""
    api = Api(str(daemon.socket))
    before = api.ok("GET", "/1.0")["config"]
    port = free_port()
    api.ok("PATCH", "/1.0", {"config": {"core.https_address": f"127.0.0.1:{port}"}})
    yield port
    api.ok("PUT", "/1.0", {"config": before})


def tls_call(port: int, method: str, path: str, body: Any = None,
             cert: tuple[Path, Path] | None = None) -> tuple[int, dict[str, Any]]:
    context = tls.client_context(*(cert or (None, None)))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=60)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def free_port_pair() -> int:
    """A port that is free with the next one too: ``init --address HOST:PORT`` puts Raft
    on PORT + 1, and a PORT + 1 already taken kept the replicated state from starting."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two free consecutive ports on 127.0.0.1")


def client_pair(tmp: Path) -> tuple[Path, Path]:
    crt, key = tmp / "client.crt", tmp / "client.key"
    tls.ensure_pair(crt, key, "test-client", [])
    return crt, key


def remote_cli(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``corral`` with its own $CORRAL_CONF and no usable unix socket: HTTPS or nothing."""
    env = {**os.environ, "CORRAL_CONF": str(conf), "CORRAL_DIR": str(conf / "no-daemon")}
    return subprocess.run([sys.executable, "-m", "corral_cli.main", *args], env=env,
                          capture_output=True, text=True, timeout=180, check=False)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args[3:]}: {result.stderr}"
    return result.stdout


def new_token(daemon: DaemonProcess, name: str) -> str:
    out = daemon.corral("config", "trust", "add", name).stdout.decode()
    assert f"Client {name} certificate add token:" in out
    return out.strip().splitlines()[-1]


def test_an_untrusted_client_sees_only_the_reduced_view(daemon: DaemonProcess, https_port: int,
                                                        tmp_path: Path) -> None:
    for cert in (None, client_pair(tmp_path)):
        status, doc = tls_call(https_port, "GET", "/1.0", cert=cert)
        assert status == 200
        assert doc["metadata"] == {
            "api_extensions": doc["metadata"]["api_extensions"], "api_status": "stable",
            "api_version": "1.0", "auth": "untrusted", "public": False, "auth_methods": ["tls"]}
        status, doc = tls_call(https_port, "GET", "/1.0/instances", cert=cert)
        assert (status, doc["type"], doc["error_code"]) == (403, "error", 403)
        status, _ = tls_call(https_port, "POST", "/1.0/certificates",
                             {"token": True, "name": "x"}, cert=cert)
        assert status == 403
        status, _ = tls_call(https_port, "POST", "/1.0/certificates",
                             {"type": "client", "password": "wrong"}, cert=cert)
        assert status == 403


def test_token_then_remote_add_drives_instances_over_https(daemon: DaemonProcess,
                                                           https_port: int,
                                                           tmp_path: Path) -> None:
    token = new_token(daemon, "alice")
    fields = json.loads(base64.b64decode(token))
    assert fields["addresses"] == [f"127.0.0.1:{https_port}"]
    ok(remote_cli(tmp_path, "remote", "add", "r", token))
    assert "https://127.0.0.1:" in ok(remote_cli(tmp_path, "remote", "list"))
    status, doc = tls_call(https_port, "GET", "/1.0",
                           cert=(tmp_path / "client.crt", tmp_path / "client.key"))
    env = doc["metadata"]["environment"]
    assert doc["metadata"]["auth"] == "trusted"
    assert env["certificate_fingerprint"] == fields["fingerprint"]
    assert env["addresses"] == [f"127.0.0.1:{https_port}"]
    assert tls.fingerprint(tls.pem_to_der(env["certificate"])) == fields["fingerprint"]

    name = f"h{secrets.token_hex(3)}"
    ok(remote_cli(tmp_path, "launch", "busybox", f"r:{name}"))
    try:
        assert f"{name},RUNNING" in ok(remote_cli(tmp_path, "list", "r:", "-f", "csv"))
        assert ok(remote_cli(tmp_path, "exec", f"r:{name}", "--", "echo", "over-tls")) == \
            "over-tls\n"
        assert remote_cli(tmp_path, "exec", f"r:{name}", "--", "sh", "-c", "exit 3"
                          ).returncode == 3
    finally:
        ok(remote_cli(tmp_path, "delete", "--force", f"r:{name}"))
    assert name not in ok(remote_cli(tmp_path, "list", "r:", "-f", "csv"))
    assert "alice" in ok(remote_cli(tmp_path, "config", "trust", "list", "r:"))

    # Removing the certificate revokes the client at once.
    fingerprint = tls.fingerprint(tls.pem_to_der((tmp_path / "client.crt").read_text()))
    daemon.corral("config", "trust", "remove", fingerprint)
    result = remote_cli(tmp_path, "list", "r:")
    assert result.returncode == 1 and "not authorized" in result.stderr


def test_used_expired_and_forged_tokens_are_refused(daemon: DaemonProcess, https_port: int,
                                                    tmp_path: Path) -> None:
    token = new_token(daemon, "once")
    ok(remote_cli(tmp_path / "first", "remote", "add", "r", token))
    again = remote_cli(tmp_path / "second", "remote", "add", "r", token)
    assert again.returncode == 1 and "Error:" in again.stderr
    assert not (tmp_path / "second" / "servercerts" / "r.crt").exists()

    fields = json.loads(base64.b64decode(new_token(daemon, "forged")))
    forged = base64.b64encode(json.dumps({**fields, "secret": secrets.token_hex(32)}).encode())
    result = remote_cli(tmp_path / "third", "remote", "add", "r", forged.decode())
    assert result.returncode == 1 and "Error:" in result.stderr
    impostor = base64.b64encode(json.dumps({**fields, "fingerprint": "0" * 64}).encode())
    result = remote_cli(tmp_path / "third", "remote", "add", "r", impostor.decode())
    assert result.returncode == 1 and "fingerprint mismatch" in result.stderr

    api = Api(str(daemon.socket))
    api.ok("PATCH", "/1.0", {"config": {"core.remote_token_expiry": "1S"}})
    try:
        expiring = new_token(daemon, "late")
    finally:
        config = api.ok("GET", "/1.0")["config"]
        config.pop("core.remote_token_expiry", None)
        api.ok("PUT", "/1.0", {"config": config})
    time.sleep(1.5)
    result = remote_cli(tmp_path / "fourth", "remote", "add", "r", expiring)
    assert result.returncode == 1 and "Error:" in result.stderr
    names = [c["name"] for c in api.ok("GET", "/1.0/certificates?recursion=1")]
    assert "once" in names and "forged" not in names and "late" not in names


def test_remote_add_by_url_pins_the_presented_certificate(daemon: DaemonProcess,
                                                           https_port: int,
                                                           tmp_path: Path) -> None:
    url = f"https://127.0.0.1:{https_port}"
    refused = remote_cli(tmp_path, "remote", "add", "u", url)
    assert refused.returncode == 1 and "--accept-certificate" in refused.stderr
    ok(remote_cli(tmp_path, "remote", "add", "u", url, "--accept-certificate",
                  "--password", new_token(daemon, "byurl")))
    pinned = tls.pem_to_der((tmp_path / "servercerts" / "u.crt").read_text())
    assert pinned == tls.pem_to_der((daemon.root / "server.crt").read_text())
    assert "auth: trusted" in ok(remote_cli(tmp_path, "info", "u:"))
    ok(remote_cli(tmp_path, "remote", "switch", "u"))  # no prefix now means u, over HTTPS
    assert ok(remote_cli(tmp_path, "remote", "get-default")).strip() == "u"
    assert "auth: trusted" in ok(remote_cli(tmp_path, "info"))
    ok(remote_cli(tmp_path, "remote", "switch", "local"))
    ok(remote_cli(tmp_path, "remote", "remove", "u"))
    assert not (tmp_path / "servercerts" / "u.crt").exists()


def test_a_token_is_revoked_by_cancelling_its_operation(daemon: DaemonProcess,
                                                        https_port: int,
                                                        tmp_path: Path) -> None:
    token = new_token(daemon, "revoked")
    assert "revoked" in daemon.corral("config", "trust", "list-tokens").stdout.decode()
    daemon.corral("config", "trust", "revoke-token", "revoked")
    result = remote_cli(tmp_path, "remote", "add", "r", token)
    assert result.returncode == 1


def test_pylxd_over_https_with_its_own_certificate(daemon: DaemonProcess, https_port: int,
                                                   tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # requests lets these variables override verify=False; the server cert is self-signed.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    cert = client_pair(tmp_path)
    client = pylxd.Client(endpoint=f"https://127.0.0.1:{https_port}",
                          cert=(str(cert[0]), str(cert[1])), verify=False)
    assert not client.trusted
    client.authenticate(new_token(daemon, "pylxd"))
    assert client.trusted
    name = f"p{secrets.token_hex(3)}"
    inst = client.instances.create(
        {"name": name, "source": {"type": "image", "alias": "busybox"}}, wait=True)
    try:
        assert name in [i.name for i in client.instances.all()]
    finally:
        inst.delete(wait=True)
    assert name not in [i.name for i in client.instances.all()]


def test_init_auto_address_serves_https_from_the_start(tmp_path: Path) -> None:
    if real_prerequisites():
        pytest.skip(real_prerequisites())
    base = Path("/tmp") / f"corral-tests-{secrets.token_hex(3)}"
    base.mkdir(mode=0o711)
    proc = new_daemon(base)
    try:
        proc.start()
        port = free_port_pair()
        proc.corral("init", "--auto", "--bridge-name", proc.bridge, "--network-address",
                    proc.address, "--address", f"127.0.0.1:{port}")
        status, doc = tls_call(port, "GET", "/1.0")
        assert status == 200 and doc["metadata"]["auth"] == "untrusted"
        assert (proc.root / "server.key").stat().st_mode & 0o777 == 0o600
        proc.stop()
        proc.start()  # the listener comes back with the daemon
        assert tls_call(port, "GET", "/1.0")[0] == 200
    finally:
        proc.destroy()
        shutil.rmtree(base, ignore_errors=True)


def test_https_address_is_member_local_and_a_failed_bind_changes_nothing(
        daemon: DaemonProcess, https_port: int) -> None:
    api = Api(str(daemon.socket))
    before = api.ok("GET", "/1.0")["config"]
    assert before["core.https_address"] == f"127.0.0.1:{https_port}"
    # The address lives in this member's cluster.yaml, not in the replicated config.
    local = yaml.safe_load((daemon.root / "cluster.yaml").read_text())
    assert local["config"]["core.https_address"] == f"127.0.0.1:{https_port}"
    status, doc = api.call("PATCH", "/1.0", {"config": {
        "core.https_address": "192.0.2.1:8443", "user.note": "not applied"}})
    assert status == 400 and "Cannot listen" in doc["error"]
    assert api.ok("GET", "/1.0")["config"] == before
    assert tls_call(https_port, "GET", "/1.0")[0] == 200  # still listening where it was
