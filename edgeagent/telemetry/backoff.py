"""Reconnect delays with jitter, so a fleet that lost its broker does not return all at once.

paho's own back-off doubles without jitter (research/edge-agent-mqtt.md §2.2): after a broker
restart every site would knock in lock-step. "Decorrelated jitter" (each delay drawn between the
minimum and three times the previous one, capped) spreads them while still growing to the cap.
"""

from __future__ import annotations

import random


def next_delay(previous: float | None, low: float, high: float, rng: random.Random) -> float:
    """The wait before the next attempt, in [low, high]; ``previous`` is None after a success."""
    if previous is None:
        previous = low
    return min(high, rng.uniform(low, max(low, previous * 3)))
