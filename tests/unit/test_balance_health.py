"""Member health: ejection after max_fails in a row, doubling cooldown with a cap, probation, restore."""

from __future__ import annotations

import pytest

from fwdproxy.balance.health import MAX_COOLDOWN, Change, Health

NOW = 1000.0


def fail(
    health: Health, now: float, max_fails: int = 3, cooldown: float = 10.0
) -> tuple[Health, Change | None]:
    return health.failure(now, max_fails=max_fails, cooldown=cooldown)


@pytest.mark.parametrize(
    "max_fails, failures, ejected",
    [
        pytest.param(3, 2, False, id="2 of 3: still in"),
        pytest.param(3, 3, True, id="3 of 3: ejected"),
        pytest.param(1, 1, True, id="max_fails 1"),
    ],
)
def test_ejected_after_max_fails_in_a_row(max_fails: int, failures: int, ejected: bool) -> None:
    health, changes = Health(), []
    for _ in range(failures):
        health, change = fail(health, NOW, max_fails)
        changes.append(change)
    assert health.ejected(NOW) is ejected
    assert changes[-1] is (Change.EJECTED if ejected else None)
    assert changes[:-1] == [None] * (failures - 1)


def test_success_resets_the_streak() -> None:
    health = Health()
    for _ in range(2):
        health, _ = fail(health, NOW)
    health, change = health.success()
    assert change is None
    health, _ = fail(health, NOW)
    health, _ = fail(health, NOW)
    assert health.available(NOW)
    assert health.failures == 4


def test_cooldown_doubles_while_it_keeps_failing_and_is_capped() -> None:
    health, now, cooldowns = Health(), NOW, []
    for _ in range(3):
        health, _ = fail(health, now)
    for _ in range(8):
        cooldowns.append(health.cooldown_left(now))
        assert health.ejected(now + cooldowns[-1] - 0.001)
        now += cooldowns[-1]
        assert health.available(now)  # probation: traffic may flow again
        health, change = fail(health, now)  # ... and one failure there is enough
        assert change is Change.EJECTED
    assert cooldowns == [10, 20, 40, 80, 160, 300, 300, 300]
    assert health.ejections == 9


def test_cooldown_above_the_cap_is_kept() -> None:
    health = Health()
    health, _ = fail(health, NOW, max_fails=1, cooldown=600)
    assert health.cooldown_left(NOW) == 600
    health, _ = fail(health, NOW + 600, max_fails=1, cooldown=600)
    assert health.cooldown_left(NOW + 600) == 600
    assert MAX_COOLDOWN < 600


def test_failures_while_ejected_do_not_extend_the_cooldown() -> None:
    health = Health()
    for _ in range(3):
        health, _ = fail(health, NOW)
    for t in range(1, 6):  # stragglers and failing active checks during the cooldown
        health, change = fail(health, NOW + t)
        assert change is None
    assert health.cooldown_left(NOW) == 10
    assert health.ejections == 1


def test_active_check_pass_during_cooldown_restores_at_once() -> None:
    health = Health()
    for _ in range(3):
        health, _ = fail(health, NOW)
    assert health.ejected(NOW + 1)
    health, change = health.success()
    assert change is Change.RESTORED
    assert health.available(NOW + 1)


def test_success_on_probation_restores_and_resets_the_doubling() -> None:
    health = Health()
    for _ in range(3):
        health, _ = fail(health, NOW)
    health, _ = fail(health, NOW + 10)  # probation failure: 20 s
    assert health.cooldown_left(NOW + 10) == 20
    health, change = health.success()  # at NOW + 30, on probation again
    assert change is Change.RESTORED
    assert health.ejected_until is None
    # Sick again later: max_fails in a row are needed again, and the cooldown starts from the base.
    changes = []
    for _ in range(3):
        health, change = fail(health, NOW + 100)
        changes.append(change)
    assert changes == [None, None, Change.EJECTED]
    assert health.cooldown_left(NOW + 100) == 10


def test_success_when_healthy_is_not_an_event() -> None:
    assert Health().success() == (Health(), None)
