"""Shared test policy: real-component tests may not silently skip under CI.

A test marked ``real`` needs root, LXC and network namespaces. When
``CORRAL_REQUIRE_REAL=1`` (set by ``.ci/run``) a skip of such a test is turned
into a failure, so CI can never pass by skipping the real thing.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_REAL = os.environ.get("CORRAL_REQUIRE_REAL") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_REAL and report.skipped and item.get_closest_marker("real") is not None:
        report.outcome = "failed"
        report.longrepr = ("real-component test skipped under CORRAL_REQUIRE_REAL=1: "
                           f"{report.longrepr}")
