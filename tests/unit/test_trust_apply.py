"""The trust store in the pure state machine: single-use, expiring tokens judged by the
command's own time; a refused command leaves the state exactly as it was."""

from __future__ import annotations

import copy
import hashlib
import pickle
from typing import Any

from cluster.state.apply import apply
from cluster.state.commands import Command
from cluster.state.model import State
from corral_shared import tls

SECRET = "s" * 64
HASH = hashlib.sha256(SECRET.encode()).hexdigest()


def cmd(type_: str, t: float = 100.0, id_: str | None = None, **args: Any) -> Command:
    return Command(id=id_ or f"{type_}-{sorted(args.items())!r}-{t}", type=type_, args=args,
                   time=t)


def client_cert(cn: str = "client") -> dict[str, Any]:
    pem, _ = tls.generate(cn, [])
    return {"fingerprint": tls.fingerprint(tls.pem_to_der(pem)), "certificate": pem.decode(),
            "type": "client", "restricted": False, "projects": []}


def with_token(expires_at: float = 200.0) -> State:
    state = State()
    assert apply(state, cmd("trust_token.add", name="bob", secret_hash=HASH,
                            expires_at=expires_at)).ok
    return state


def unchanged_after(state: State, command: Command) -> Any:
    before = copy.deepcopy((state.certificates, state.trust_tokens, state.config))
    result = apply(state, command)
    assert not result.ok
    assert (state.certificates, state.trust_tokens, state.config) == before
    return result


def test_a_token_adds_the_certificate_under_the_tokens_name_and_is_gone() -> None:
    state = with_token()
    cert = client_cert()
    result = apply(state, cmd("trust_token.use", t=150.0, secret_hash=HASH, certificate=cert))
    assert result.ok and result.value["fingerprint"] == cert["fingerprint"]
    assert state.certificates[cert["fingerprint"]].name == "bob"
    assert state.trust_tokens == {}


def test_a_used_token_is_refused_the_second_time() -> None:
    state = with_token()
    assert apply(state, cmd("trust_token.use", t=150.0, secret_hash=HASH,
                            certificate=client_cert("a"))).ok
    result = unchanged_after(state, cmd("trust_token.use", t=151.0, secret_hash=HASH,
                                        certificate=client_cert("b")))
    assert result.code == 403
    assert len(state.certificates) == 1


def test_expiry_is_judged_by_the_command_time_not_a_clock() -> None:
    state = with_token(expires_at=200.0)
    late = cmd("trust_token.use", t=200.0, secret_hash=HASH, certificate=client_cert())
    assert unchanged_after(state, late).code == 403
    assert apply(state, cmd("trust_token.use", t=199.9, secret_hash=HASH,
                            certificate=client_cert())).ok


def test_a_forged_or_unknown_secret_is_refused_and_changes_nothing() -> None:
    state = with_token()
    forged = hashlib.sha256(b"guess").hexdigest()
    assert unchanged_after(state, cmd("trust_token.use", secret_hash=forged,
                                      certificate=client_cert())).code == 403
    assert unchanged_after(State(), cmd("trust_token.use", secret_hash=HASH,
                                        certificate=client_cert())).code == 403
    assert HASH in state.trust_tokens


def test_a_bad_certificate_does_not_consume_the_token() -> None:
    state = with_token()
    bad = {**client_cert(), "certificate": "not a certificate"}
    assert unchanged_after(state, cmd("trust_token.use", secret_hash=HASH,
                                      certificate=bad)).code == 400
    assert unchanged_after(state, cmd("trust_token.use", secret_hash=HASH,
                                      certificate="x")).code == 400
    assert HASH in state.trust_tokens


def test_a_token_for_an_already_trusted_certificate_is_not_consumed() -> None:
    state = with_token()
    cert = client_cert()
    assert apply(state, cmd("certificate.add", name="old", **cert)).ok
    result = unchanged_after(state, cmd("trust_token.use", secret_hash=HASH, certificate=cert))
    assert result.code == 409


def test_adding_a_token_prunes_expired_ones_and_refuses_a_past_expiry() -> None:
    state = with_token(expires_at=200.0)
    other = hashlib.sha256(b"other").hexdigest()
    assert apply(state, cmd("trust_token.add", t=300.0, name="eve", secret_hash=other,
                            expires_at=400.0)).ok
    assert list(state.trust_tokens) == [other]
    assert unchanged_after(state, cmd("trust_token.add", t=300.0, name="x",
                                      secret_hash="b" * 64, expires_at=250.0)).code == 400


def test_certificates_are_added_updated_and_deleted_once() -> None:
    state = State()
    cert = client_cert()
    fp = cert["fingerprint"]
    assert apply(state, cmd("certificate.add", name="c1", **cert)).ok
    assert unchanged_after(state, cmd("certificate.add", t=2.0, name="c2", **cert)).code == 409
    assert apply(state, cmd("certificate.update", fingerprint=fp, name="renamed",
                            projects=["default"], restricted=True)).ok
    record = state.certificates[fp]
    assert (record.name, record.projects, record.restricted) == ("renamed", ["default"], True)
    assert unchanged_after(state, cmd("certificate.update", t=3.0, fingerprint=fp,
                                      type="bogus")).code == 400
    assert apply(state, cmd("certificate.delete", fingerprint=fp)).ok
    assert unchanged_after(state, cmd("certificate.delete", t=4.0, fingerprint=fp)).code == 404


def test_a_snapshot_from_before_the_trust_store_still_loads() -> None:
    old = State()
    del old.__dict__["certificates"], old.__dict__["trust_tokens"]
    loaded = pickle.loads(pickle.dumps(old))
    assert loaded.certificates == {} and loaded.trust_tokens == {}
