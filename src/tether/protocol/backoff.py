"""Reconnect backoff: capped exponential delays with full jitter, as plain generators.

The policy is data, not I/O: callers iterate delays and do their own sleeping. Full jitter
(AWS Architecture Blog, "Exponential Backoff And Jitter") spreads a reconnect storm of thousands
of gateways over the whole window instead of synchronising them on each step.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator

__all__ = ["backoff_delays"]


def backoff_delays(
    *,
    initial: float = 1.0,
    factor: float = 2.0,
    cap: float = 60.0,
    rng: random.Random | None = None,
) -> Iterator[float]:
    """Yield endless full-jitter delays: uniform in ``[0, min(cap, initial * factor**n)]``.

    Bad parameters raise :class:`ValueError` here, at the call, not at the first ``next()``.
    """
    finite = all(math.isfinite(x) for x in (initial, factor, cap))
    if not finite or initial <= 0 or factor < 1 or cap < initial:
        raise ValueError("backoff needs finite initial > 0, factor >= 1 and cap >= initial")
    return _delays(initial, factor, cap, rng if rng is not None else random.Random())


def _delays(initial: float, factor: float, cap: float, draw: random.Random) -> Iterator[float]:
    ceiling = initial
    while True:
        yield draw.uniform(0.0, ceiling)
        ceiling = min(cap, ceiling * factor)
