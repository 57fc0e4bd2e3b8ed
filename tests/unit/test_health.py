"""HealthState (active-check hysteresis) and OutlierDetector (passive ejection)."""

from __future__ import annotations

import pytest

from steelyard.core.balancing.base import Health
from steelyard.core.clock import FakeClock
from steelyard.core.health import MAX_EJECTION_TIME, HealthState, OutlierDetector
from steelyard.core.load import Outcome

# -- HealthState ---------------------------------------------------------------------------


def test_starts_unknown_and_first_result_decides_healthy() -> None:
    hs = HealthState(2, 3)
    assert hs.status is Health.UNKNOWN
    assert hs.observe(True, "status 200", 1.0) is True
    assert hs.status is Health.HEALTHY
    assert hs.changed_at == 1.0


def test_first_result_decides_unhealthy() -> None:
    hs = HealthState(2, 3)
    assert hs.observe(False, "connection refused") is True
    assert hs.status is Health.UNHEALTHY
    assert hs.last_reason == "connection refused"


def test_flips_to_unhealthy_only_after_unhealthy_threshold() -> None:
    hs = HealthState(2, 3)
    hs.observe(True)
    assert hs.observe(False) is False
    assert hs.observe(False) is False
    assert hs.status is Health.HEALTHY
    assert hs.observe(False) is True
    assert hs.status is Health.UNHEALTHY


def test_a_pass_resets_the_failure_run() -> None:
    hs = HealthState(2, 3)
    hs.observe(True)
    for ok in (False, False, True, False, False):
        assert hs.observe(ok) is False
    assert hs.status is Health.HEALTHY


def test_flips_back_after_healthy_threshold() -> None:
    hs = HealthState(2, 1)
    hs.observe(True)
    assert hs.observe(False) is True
    assert hs.observe(True) is False
    assert hs.status is Health.UNHEALTHY
    assert hs.observe(True) is True
    assert hs.status is Health.HEALTHY


def test_thresholds_below_one_behave_as_one() -> None:
    hs = HealthState(0, -3)
    hs.observe(True)
    assert hs.observe(False) is True
    assert hs.observe(True) is True


def test_configure_changes_thresholds_and_keeps_runs() -> None:
    hs = HealthState(2, 5)
    hs.observe(True)
    hs.observe(False)
    hs.observe(False)
    hs.configure(2, 3)
    assert hs.observe(False) is True


def test_health_repr_shows_state() -> None:
    hs = HealthState(2, 3)
    hs.observe(True)
    hs.observe(False)
    assert repr(hs) == "HealthState(healthy, ok_run=0/2, fail_run=1/3)"


# -- OutlierDetector -----------------------------------------------------------------------


def fail(d: OutlierDetector, n: int, now: float, outcome: Outcome = Outcome.HTTP_5XX) -> bool:
    ejected = False
    for _ in range(n):
        ejected = d.record(outcome, now) or ejected
    return ejected


@pytest.mark.parametrize(
    "outcome", [Outcome.HTTP_5XX, Outcome.CONNECT_FAILED, Outcome.TIMEOUT, Outcome.RESET]
)
def test_consecutive_failures_eject(outcome: Outcome) -> None:
    d = OutlierDetector(3, 10.0)
    assert d.record(outcome, 0.0) is False
    assert d.record(outcome, 0.0) is False
    assert d.record(outcome, 0.0) is True
    assert d.out(0.0)
    assert d.ejected_until == 10.0
    assert d.ejections_total == 1


def test_ok_resets_the_run() -> None:
    d = OutlierDetector(3, 10.0)
    fail(d, 2, 0.0)
    d.record(Outcome.OK, 0.0)
    assert fail(d, 2, 0.0) is False
    assert not d.out(0.0)


def test_cancelled_does_not_count_or_reset() -> None:
    d = OutlierDetector(3, 10.0)
    fail(d, 2, 0.0)
    assert d.record(Outcome.CANCELLED, 0.0) is False
    assert d.failures == 2
    assert d.record(Outcome.HTTP_5XX, 0.0) is True


def test_stragglers_do_not_extend_an_ejection() -> None:
    d = OutlierDetector(2, 10.0)
    fail(d, 2, 0.0)
    assert fail(d, 10, 5.0) is False
    assert d.ejected_until == 10.0
    assert d.ejections == 1


def test_may_eject_false_keeps_counting_then_ejects_when_allowed() -> None:
    d = OutlierDetector(2, 10.0)
    assert d.record(Outcome.RESET, 0.0, may_eject=False) is False
    assert d.record(Outcome.RESET, 0.0, may_eject=False) is False
    assert not d.out(0.0)
    assert d.record(Outcome.RESET, 0.0, may_eject=True) is True


def test_return_needs_time_up() -> None:
    d = OutlierDetector(1, 10.0)
    d.record(Outcome.TIMEOUT, 0.0)
    assert d.try_return(9.99) is False
    assert d.out(9.99)
    assert d.try_return(10.0) is True
    assert not d.out(10.0)
    assert d.returned_at == 10.0


def test_ejection_time_doubles_and_caps() -> None:
    clock = FakeClock()
    d = OutlierDetector(1, 30.0)
    durations = []
    for _ in range(6):
        assert d.record(Outcome.HTTP_5XX, clock())
        durations.append(d.ejected_until - clock())
        clock.advance(d.ejected_until - clock())
        assert d.try_return(clock())
        clock.advance(0.5)  # fails again right after returning
    assert durations == [30.0, 60.0, 120.0, 240.0, 300.0, 300.0]
    assert d.ejections_total == 6


def test_ejection_time_cap_configurable_and_huge_n_safe() -> None:
    d = OutlierDetector(1, 1.0, 5.0)
    assert [d.ejection_time(n) for n in range(0, 6)] == [0.0, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert d.ejection_time(10_000) == 5.0
    assert OutlierDetector(1, 30.0).ejection_time(10_000) == MAX_EJECTION_TIME


def test_run_of_ejections_resets_after_base_time_back_in_rotation() -> None:
    d = OutlierDetector(1, 10.0)
    d.record(Outcome.HTTP_5XX, 0.0)
    assert d.try_return(10.0)
    d.record(Outcome.HTTP_5XX, 11.0)  # soon after: doubles
    assert d.ejected_until == 31.0
    assert d.try_return(31.0)
    d.record(Outcome.OK, 45.0)  # a whole base time back: run over
    d.record(Outcome.HTTP_5XX, 46.0)
    assert d.ejections == 1
    assert d.ejected_until == 56.0


def test_require_check_waits_for_a_passing_check() -> None:
    d = OutlierDetector(1, 10.0, require_check=True)
    d.record(Outcome.HTTP_5XX, 0.0)
    assert d.try_return(10.0) is False
    assert d.awaiting_check
    assert d.out(11.0)
    d.observe_check(False)
    assert d.try_return(12.0) is False
    d.observe_check(True)
    assert d.try_return(13.0) is True
    assert not d.awaiting_check
    assert not d.out(13.0)


def test_require_check_pass_during_ejection_counts_but_a_later_fail_cancels_it() -> None:
    d = OutlierDetector(1, 10.0, require_check=True)
    d.record(Outcome.HTTP_5XX, 0.0)
    d.observe_check(True)
    assert d.try_return(5.0) is False  # time not up
    assert d.try_return(10.0) is True  # passed after the ejection began
    d.record(Outcome.HTTP_5XX, 11.0)
    d.observe_check(True)
    d.observe_check(False)  # the latest check failed
    assert d.try_return(40.0) is False


def test_check_results_outside_an_ejection_do_nothing() -> None:
    d = OutlierDetector(1, 10.0, require_check=True)
    d.observe_check(True)
    d.record(Outcome.HTTP_5XX, 0.0)
    assert d.try_return(10.0) is False  # the pass before the ejection does not count


def test_configure_without_checks_releases_a_waiting_server() -> None:
    d = OutlierDetector(1, 10.0, require_check=True)
    d.record(Outcome.HTTP_5XX, 0.0)
    d.try_return(10.0)
    assert d.awaiting_check
    d.configure(1, 10.0, 300.0, require_check=False)
    assert d.try_return(10.5) is True


def test_detector_repr_shows_state() -> None:
    d = OutlierDetector(2, 10.0)
    assert repr(d) == "OutlierDetector(in rotation, failures=0/2, ejections=0, total=0)"
    fail(d, 2, 0.0)
    assert repr(d) == ("OutlierDetector(ejected until 10.000, failures=0/2, ejections=1, total=1)")
