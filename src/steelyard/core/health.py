"""Health state machines: active-check hysteresis and passive outlier ejection.

How this works
--------------
HealthState (active checks, SPEC §2): a server starts `unknown` and takes no traffic; the
first check result decides healthy/unhealthy; from then on the state flips only after
`healthy_threshold` (or `unhealthy_threshold`) consecutive results the other way (HAProxy's
rise/fall counters).

OutlierDetector (passive checks on real traffic, Envoy's consecutive-5xx detector): connect
failures, resets, timeouts and 5xx answers *from the server* count; an OK resets the run.
After `consecutive_failures` failures in a row the server is ejected for

    base_ejection_time × 2^(n-1), capped at max_ejection_time (300 s by default),

for its n-th ejection in a row. The run of ejections resets once the server has been back
in rotation for a whole base_ejection_time (checked lazily, at its next outcome).
Failures of requests that were already in flight when the server was ejected do not extend
the ejection. The caller decides whether an ejection is allowed (`may_eject`, from the
backend's max_ejection_percent); a failure that may not eject keeps counting, so the server
is ejected as soon as the cap allows it.

Return: when the ejection time is up the server returns — unless the backend also has
active checks (`require_check`): then it returns only once a check has passed since the
ejection began and no check has failed after that pass. A server whose time is up but
which still waits for a passing check is reported as `awaiting_check`.
"""

from __future__ import annotations

from typing import Final

from steelyard.core.balancing.base import Health
from steelyard.core.load import Outcome

MAX_EJECTION_TIME: Final = 300.0


class HealthState:
    """Active-check hysteresis for one server."""

    __slots__ = (
        "healthy_threshold",
        "unhealthy_threshold",
        "status",
        "ok_run",
        "fail_run",
        "checks",
        "last_reason",
        "changed_at",
    )

    def __init__(
        self,
        healthy_threshold: int = 2,
        unhealthy_threshold: int = 3,
        status: Health = Health.UNKNOWN,
    ) -> None:
        self.healthy_threshold = max(1, healthy_threshold)
        self.unhealthy_threshold = max(1, unhealthy_threshold)
        self.status = status
        self.ok_run = 0  # consecutive passing results
        self.fail_run = 0  # consecutive failing results
        self.checks = 0  # results seen
        self.last_reason = ""
        self.changed_at: float | None = None  # monotonic time of the last flip

    def configure(self, healthy_threshold: int, unhealthy_threshold: int) -> None:
        """New thresholds (reload); the runs so far still count."""
        self.healthy_threshold = max(1, healthy_threshold)
        self.unhealthy_threshold = max(1, unhealthy_threshold)

    def observe(self, ok: bool, reason: str = "", now: float = 0.0) -> bool:
        """Record one check result; True when the status flipped."""
        self.checks += 1
        self.last_reason = reason
        if ok:
            self.ok_run += 1
            self.fail_run = 0
        else:
            self.fail_run += 1
            self.ok_run = 0
        new = self.status
        if self.status is Health.UNKNOWN:
            new = Health.HEALTHY if ok else Health.UNHEALTHY
        elif self.status is Health.UNHEALTHY and self.ok_run >= self.healthy_threshold:
            new = Health.HEALTHY
        elif self.status is Health.HEALTHY and self.fail_run >= self.unhealthy_threshold:
            new = Health.UNHEALTHY
        if new is self.status:
            return False
        self.status = new
        self.changed_at = now
        return True

    def __repr__(self) -> str:
        return (
            f"HealthState({self.status.value}, ok_run={self.ok_run}/{self.healthy_threshold}, "
            f"fail_run={self.fail_run}/{self.unhealthy_threshold})"
        )


class OutlierDetector:
    """Passive health for one server: consecutive failures -> ejection with back-off."""

    __slots__ = (
        "consecutive_failures",
        "base_ejection_time",
        "max_ejection_time",
        "require_check",
        "failures",
        "ejections",
        "ejections_total",
        "ejected_at",
        "ejected_until",
        "returned_at",
        "awaiting_check",
        "check_passed",
    )

    def __init__(
        self,
        consecutive_failures: int = 5,
        base_ejection_time: float = 30.0,
        max_ejection_time: float = MAX_EJECTION_TIME,
        require_check: bool = False,
    ) -> None:
        self.consecutive_failures = max(1, consecutive_failures)
        self.base_ejection_time = max(0.0, base_ejection_time)
        self.max_ejection_time = max(self.base_ejection_time, max_ejection_time)
        self.require_check = require_check  # active checks exist: return only after a pass
        self.failures = 0  # consecutive failures seen while in rotation
        self.ejections = 0  # ejections in a row (the back-off exponent)
        self.ejections_total = 0  # for steelyard_ejections_total
        self.ejected_at: float | None = None
        self.ejected_until = 0.0
        self.returned_at: float | None = None
        self.awaiting_check = False  # time is up, but no check has passed yet
        self.check_passed = False  # a check passed since the ejection (and none failed after)

    def configure(
        self,
        consecutive_failures: int,
        base_ejection_time: float,
        max_ejection_time: float,
        require_check: bool,
    ) -> None:
        """New settings (reload); the ejection in progress and the run so far are kept."""
        self.consecutive_failures = max(1, consecutive_failures)
        self.base_ejection_time = max(0.0, base_ejection_time)
        self.max_ejection_time = max(self.base_ejection_time, max_ejection_time)
        self.require_check = require_check
        if not require_check:
            self.awaiting_check = False

    def ejection_time(self, n: int) -> float:
        """Duration of the n-th ejection in a row (n >= 1)."""
        if n < 1:
            return 0.0
        # 2**(n-1) grows without bound; cap the exponent before multiplying
        factor = 2.0 ** min(n - 1, 64)
        return float(min(self.base_ejection_time * factor, self.max_ejection_time))

    def out(self, now: float) -> bool:
        """Ejected: the ejection time runs, or it is up but `try_return` has not let the
        server back yet (no tick since, or waiting for a passing check)."""
        return self.ejected_at is not None and self.returned_at is None

    def ejected(self, now: float) -> bool:
        return self.out(now)

    def record(self, outcome: Outcome, now: float, may_eject: bool = True) -> bool:
        """Record a request outcome; True when this outcome ejects the server."""
        if self.out(now):
            return False  # already out; stragglers that were in flight do not extend it
        if (
            self.ejections
            and self.returned_at is not None
            and now - self.returned_at >= self.base_ejection_time
        ):
            self.ejections = 0  # served for a whole base_ejection_time: the run is over
        if outcome is Outcome.OK:
            self.failures = 0
            return False
        if not outcome.is_failure:
            return False  # CANCELLED says nothing about the server
        self.failures += 1
        if self.failures < self.consecutive_failures or not may_eject:
            return False
        self.eject(now)
        return True

    def eject(self, now: float) -> None:
        self.failures = 0
        self.ejections += 1
        self.ejections_total += 1
        self.ejected_at = now
        self.ejected_until = now + self.ejection_time(self.ejections)
        self.returned_at = None
        self.awaiting_check = False
        self.check_passed = False

    def observe_check(self, ok: bool) -> None:
        """An active check result (only matters while ejected)."""
        if self.ejected_at is not None and self.returned_at is None:
            self.check_passed = ok

    def try_return(self, now: float) -> bool:
        """Called when the ejection time may be up (tick) or a check passed. True when the
        server returns to rotation now."""
        if self.ejected_at is None or self.returned_at is not None:
            return False
        if self.ejected_until > now:
            return False
        if self.require_check and not self.check_passed:
            self.awaiting_check = True
            return False
        self.awaiting_check = False
        self.returned_at = now
        self.failures = 0
        return True

    def __repr__(self) -> str:
        if self.awaiting_check:
            where = "awaiting check"
        elif self.ejected_at is not None and self.returned_at is None:
            where = f"ejected until {self.ejected_until:.3f}"
        else:
            where = "in rotation"
        return (
            f"OutlierDetector({where}, failures={self.failures}/{self.consecutive_failures}, "
            f"ejections={self.ejections}, total={self.ejections_total})"
        )
