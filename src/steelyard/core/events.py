"""Operational events (health flips, ejections, drains, reloads): a bounded history and a
fan-out to subscribers (the admin SSE stream, the `steelyard` logger)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class Event:
    type: str  # health | ejection | drain | enable | disable | weight | add | remove | reload
    time: float  # wall clock
    backend: str | None = None
    server: str | None = None
    state: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


Subscriber = Callable[[Event], None]


class EventBus:
    __slots__ = ("history", "subscribers")

    def __init__(self, history: int = 200) -> None:
        self.history: deque[Event] = deque(maxlen=history)
        self.subscribers: list[Subscriber] = []

    def publish(self, event: Event) -> None:
        self.history.append(event)
        for sub in list(self.subscribers):
            sub(event)

    def subscribe(self, sub: Subscriber) -> Callable[[], None]:
        self.subscribers.append(sub)

        def unsubscribe() -> None:
            if sub in self.subscribers:
                self.subscribers.remove(sub)

        return unsubscribe

    def __repr__(self) -> str:
        return f"EventBus(history={len(self.history)}, subscribers={len(self.subscribers)})"
