"""Health state machines: active-check hysteresis and passive outlier ejection.

HealthState (active checks, SPEC §2): a server starts `unknown`; the first check result
decides healthy/unhealthy; from then on the state flips only after `healthy_threshold`
(or `unhealthy_threshold`) consecutive results the other way (HAProxy's rise/fall).

OutlierDetector (passive checks, Envoy's consecutive-5xx detector): real traffic outcomes
count. After `consecutive_failures` failures in a row the server is ejected for
base_ejection_time × 2^(n-1) for its n-th ejection in a row, capped at `max_ejection_time`
(300 s). The run of ejections resets once the server has served successfully for a whole
base_ejection_time after returning. The caller decides whether an ejection is allowed
(`may_eject`, from max_ejection_percent of the backend).
"""

from __future__ import annotations

from steelyard.core.balancing.base import Health
from steelyard.core.load import Outcome

MAX_EJECTION_TIME = 300.0


class HealthState:
    __slots__ = ("healthy_threshold", "unhealthy_threshold", "status", "ok_run", "fail_run")

    def __init__(
        self,
        healthy_threshold: int = 2,
        unhealthy_threshold: int = 3,
        status: Health = Health.UNKNOWN,
    ) -> None:
        self.healthy_threshold = max(1, healthy_threshold)
        self.unhealthy_threshold = max(1, unhealthy_threshold)
        self.status = status
        self.ok_run = 0
        self.fail_run = 0

    def observe(self, ok: bool, reason: str = "", now: float = 0.0) -> bool:
        """Record one check result; True when the status flipped."""
        if ok:
            self.ok_run += 1
            self.fail_run = 0
        else:
            self.fail_run += 1
            self.ok_run = 0
        if self.status is Health.UNKNOWN:
            self.status = Health.HEALTHY if ok else Health.UNHEALTHY
            return True
        if self.status is Health.UNHEALTHY and self.ok_run >= self.healthy_threshold:
            self.status = Health.HEALTHY
            return True
        if self.status is Health.HEALTHY and self.fail_run >= self.unhealthy_threshold:
            self.status = Health.UNHEALTHY
            return True
        return False

    def __repr__(self) -> str:
        return f"HealthState({self.status.value}, ok_run={self.ok_run}, fail_run={self.fail_run})"


class OutlierDetector:
    __slots__ = (
        "consecutive_failures",
        "base_ejection_time",
        "max_ejection_time",
        "failures",
        "ejections",
        "ejected_until",
        "returned_at",
    )

    def __init__(
        self,
        consecutive_failures: int = 5,
        base_ejection_time: float = 30.0,
        max_ejection_time: float = MAX_EJECTION_TIME,
    ) -> None:
        self.consecutive_failures = max(1, consecutive_failures)
        self.base_ejection_time = base_ejection_time
        self.max_ejection_time = max_ejection_time
        self.failures = 0
        self.ejections = 0  # ejections in a row
        self.ejected_until = 0.0
        self.returned_at = 0.0

    def ejection_time(self, n: int) -> float:
        """Duration of the n-th ejection in a row (n >= 1)."""
        return float(min(self.base_ejection_time * (2 ** (n - 1)), self.max_ejection_time))

    def record(self, outcome: Outcome, now: float, may_eject: bool = True) -> bool:
        """Record a request outcome; True when this outcome ejects the server."""
        if outcome is Outcome.OK:
            self.failures = 0
            if (
                self.ejections
                and self.ejected_until <= now
                and now - self.ejected_until >= self.base_ejection_time
            ):
                self.ejections = 0
            return False
        if not outcome.is_failure:
            return False
        if self.ejected_until > now:
            return False  # already out; in-flight stragglers do not extend it
        self.failures += 1
        if self.failures < self.consecutive_failures or not may_eject:
            return False
        self.failures = 0
        self.ejections += 1
        self.ejected_until = now + self.ejection_time(self.ejections)
        return True

    def ejected(self, now: float) -> bool:
        return self.ejected_until > now

    def __repr__(self) -> str:
        return (
            f"OutlierDetector(failures={self.failures}, ejections={self.ejections}, "
            f"until={self.ejected_until:.3f})"
        )
