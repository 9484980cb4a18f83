"""The shared tier's circuit breaker as a state table (the clock is a parameter)."""

from __future__ import annotations

import pytest

from fwdproxy.store.shared_breaker import FAILURES, RETRY, Breaker, Event, State

NOW = 1000.0


def run(events: list[Event]) -> Breaker:
    b = Breaker()
    for e in events:
        b = b.after(e, NOW)
    return b


@pytest.mark.parametrize(
    "events, state",
    [
        pytest.param([], State.CONNECTED, id="starts connected"),
        pytest.param([Event.FAILED] * (FAILURES - 1), State.CONNECTED, id="a few failures are tolerated"),
        pytest.param([Event.FAILED] * FAILURES, State.DEGRADED, id="a run of failures opens"),
        pytest.param([Event.FAILED, Event.OK] * FAILURES, State.CONNECTED, id="a success resets the run"),
        pytest.param([Event.REFUSED], State.FULL, id="a refused write marks it full"),
        pytest.param([Event.REFUSED, Event.OK], State.FULL, id="reads do not clear full"),
        pytest.param([Event.REFUSED, Event.WRITE_OK], State.CONNECTED, id="a stored write does"),
        pytest.param([Event.REFUSED] + [Event.FAILED] * FAILURES, State.DEGRADED, id="full then down"),
    ],
)
def test_states(events: list[Event], state: State) -> None:
    assert run(events).state is state


def test_open_breaker_refuses_work_and_probes_after_retry() -> None:
    b = run([Event.FAILED] * FAILURES)
    assert not b.allows(NOW)
    assert not b.probe_due(NOW)
    assert b.probe_due(NOW + RETRY)
    assert b.after(Event.OK, NOW + RETRY).allows(NOW + RETRY)


def test_a_failed_probe_waits_another_retry() -> None:
    b = run([Event.FAILED] * FAILURES).after(Event.FAILED, NOW + RETRY)
    assert b.state is State.DEGRADED
    assert not b.probe_due(NOW + RETRY)
    assert b.probe_due(NOW + 2 * RETRY)
