"""The test-only clock offset (CORRAL_TEST_CLOCK_OFFSET) shifts what a daemon stamps."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from cluster.state import clock
from cluster.state.commands import command


@pytest.fixture
def fresh_offset() -> Iterator[None]:
    clock.offset.cache_clear()
    yield
    clock.offset.cache_clear()


@pytest.mark.parametrize("raw, expected", [("-30", -30.0), ("30.5", 30.5), ("", 0.0),
                                           ("junk", 0.0)])
def test_commands_are_stamped_with_the_offset(monkeypatch: pytest.MonkeyPatch,
                                              fresh_offset: None, raw: str,
                                              expected: float) -> None:
    monkeypatch.setenv(clock.TEST_CLOCK_OFFSET_ENV, raw)
    assert clock.TEST_CLOCK_OFFSET_ENV == "CORRAL_TEST_CLOCK_OFFSET"  # the chaos suite's name
    before = time.time()
    stamped = command("member.heartbeat", name="m1").time
    after = time.time()
    assert before + expected <= stamped <= after + expected
