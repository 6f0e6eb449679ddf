"""LXD's status codes are written once (corral_shared.codes) and every table agrees with it."""

from __future__ import annotations

from cluster.api import op_registry, views
from corral_shared import codes
from node_agent.drivers import lxc_state
from node_agent.drivers.qemu import driver as qemu_driver


def test_codes_are_lxds() -> None:
    # LXD shared/api/status_code.go
    assert codes.CODES == {
        "Operation created": 100, "Started": 101, "Stopped": 102, "Running": 103,
        "Cancelling": 104, "Pending": 105, "Starting": 106, "Stopping": 107,
        "Aborting": 108, "Freezing": 109, "Frozen": 110, "Thawed": 111, "Error": 112,
        "Ready": 113, "Success": 200, "Failure": 400, "Cancelled": 401}
    assert codes.code_of("no such status") == 112


def test_driver_tables_pair_each_status_with_its_code() -> None:
    pairs = [*lxc_state.STATUS.values(), lxc_state.ERROR_STATUS,
             *qemu_driver.STATUS.values(), qemu_driver.STOPPED, qemu_driver.ERROR]
    for status, code in pairs:
        assert codes.CODES[status] == code, status
    assert lxc_state.STATUS["THAWED"] == ("Running", 103)  # liblxc's thawed is Running


def test_api_renders_the_shared_codes() -> None:
    assert op_registry.STATUS_CODES is codes.CODES
    assert views.code_of("Frozen") == 110 and views.code_of("Bogus") == 112
