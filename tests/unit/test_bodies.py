"""The typed body layer (``cluster.api.bodies``): what it refuses, in which words, and
that it keeps what LXD clients send."""

from __future__ import annotations

import json

import pytest

from cluster.api import schemas
from cluster.api.bodies import InvalidBody, decode


def _refusal(raw: bytes, schema: type[schemas.Schema]) -> str:
    with pytest.raises(InvalidBody) as info:
        decode(raw, schema)
    assert info.value.status == 400
    return info.value.message


@pytest.mark.parametrize("raw", [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"config": ' + b'{"a": ' * 100_000 + b'"x"' + b"}" * 100_001,
    b'{"devices": {"d": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
    b'{"unknown": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"unknown": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_001,
])
def test_json_nested_100000_deep_is_a_400(raw: bytes) -> None:
    assert _refusal(raw, schemas.InstancePut)


@pytest.mark.parametrize("body,schema,message", [
    ({"name": 12345}, schemas.InstancesPost,
     "Invalid value for 'name': must be a string, not an integer"),
    ({"source": {"type": "image", "alias": ["busybox"]}}, schemas.InstancesPost,
     "Invalid value for 'source.alias': must be a string, not a list"),
    ({"action": ["stop"]}, schemas.InstanceStatePut,
     "Invalid value for 'action': must be a string, not a list"),
    ({"config": "x"}, schemas.InstancePut,
     "Invalid value for 'config': must be an object, not a string"),
    ({"devices": "x"}, schemas.InstancePut,
     "Invalid value for 'devices': must be an object, not a string"),
    ({"devices": [1]}, schemas.ProfilePut,
     "Invalid value for 'devices': must be an object, not a list"),
    ({"config": {"limits.cpu": 2}}, schemas.InstancePut,
     "Invalid value for 'config[*]': must be a string, not an integer"),
    ({"devices": {"eth0": {"type": "nic", "mtu": 1500}}}, schemas.ProfilePut,
     "Invalid value for 'devices[*][*]': must be a string, not an integer"),
    ({"timeout": "soon"}, schemas.InstanceStatePut,
     "Invalid value for 'timeout': must be a number, not a string"),
    (["stop"], schemas.InstanceStatePut, "The request body must be a JSON object"),
    (None, schemas.Empty, "The request body must be a JSON object"),
])
def test_wrong_types_name_the_field_in_plain_words(body: object, schema: type[schemas.Schema],
                                                   message: str) -> None:
    assert _refusal(json.dumps(body).encode(), schema) == message


@pytest.mark.parametrize("raw", [b"", b"{", b"{} x", b"\xff", b'{"a": "\\ud800"}'])
def test_malformed_json_is_a_400(raw: bytes) -> None:
    assert _refusal(raw, schemas.Empty).startswith("Invalid JSON body")


def test_a_huge_integer_is_refused_not_carried_on() -> None:
    assert "timeout" in _refusal(b'{"timeout": 99999999999999999999999}',
                                 schemas.InstanceStatePut)


def test_what_lxd_clients_send_passes_unknown_fields_and_nulls_included() -> None:
    # As the LXD Go client sends an InstancePut: nil maps as null, fields corral ignores.
    raw = json.dumps({"architecture": "x86_64", "config": {"limits.cpu": "2"},
                      "devices": None, "ephemeral": False, "profiles": ["default"],
                      "stateful": False, "description": "", "project": "default",
                      "expanded_config": {"x": {"deep": [1]}}}).encode()
    assert decode(raw, schemas.InstancePut) == {
        "architecture": "x86_64", "config": {"limits.cpu": "2"}, "ephemeral": False,
        "profiles": ["default"], "stateful": False, "description": ""}


def test_dashed_names_are_read_as_on_the_wire() -> None:
    raw = b'{"command": ["ls"], "wait-for-websocket": true, "record-output": false}'
    assert decode(raw, schemas.Exec) == {"command": ["ls"], "wait-for-websocket": True,
                                         "record-output": False}
