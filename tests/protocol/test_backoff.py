"""Reconnect backoff: full-jitter delays under a capped exponential ceiling."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.protocol.backoff import backoff_delays


class _Top(random.Random):
    """Always draws the top of the range, so the delays are the ceilings themselves."""

    def uniform(self, a: float, b: float) -> float:
        return b


class _Recording(random.Random):
    """Records every range it is asked to draw from."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.ranges: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.ranges.append((a, b))
        return super().uniform(a, b)


def _take(n: int, **options: object) -> list[float]:
    return list(itertools.islice(backoff_delays(**options), n))  # type: ignore[arg-type]


def test_ceilings_double_up_to_the_cap() -> None:
    assert _take(9, initial=1.0, factor=2.0, cap=60.0, rng=_Top()) == [
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        32.0,
        60.0,
        60.0,
        60.0,
    ]


def test_defaults_are_one_second_doubling_to_a_minute() -> None:
    assert _take(8, rng=_Top()) == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]


def test_jitter_is_full_from_zero() -> None:
    rng = _Recording(1)
    _take(5, initial=0.5, cap=3.0, rng=rng)
    assert rng.ranges == [(0.0, 0.5), (0.0, 1.0), (0.0, 2.0), (0.0, 3.0), (0.0, 3.0)]


@settings(max_examples=200)
@given(
    initial=st.floats(min_value=1e-3, max_value=100.0),
    factor=st.floats(min_value=1.0, max_value=10.0),
    extra=st.floats(min_value=0.0, max_value=1e4),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_delays_stay_within_the_exponential_ceiling(
    initial: float, factor: float, extra: float, seed: int
) -> None:
    cap = initial + extra
    delays = _take(40, initial=initial, factor=factor, cap=cap, rng=random.Random(seed))
    for n, delay in enumerate(delays):
        ceiling = min(cap, initial * factor**n)
        assert 0.0 <= delay <= ceiling * (1 + 1e-9), (n, delay, ceiling)


def test_cap_holds_after_many_steps() -> None:
    delays = _take(10_000, initial=0.1, factor=3.0, cap=45.0, rng=random.Random(5))
    assert all(0.0 <= d <= 45.0 for d in delays)
    assert all(math.isfinite(d) for d in delays)
    # The ceiling stays at the cap: late draws spread over the whole [0, cap] window.
    late = delays[100:]
    assert max(late) > 0.9 * 45.0
    assert min(late) < 0.1 * 45.0
    assert _take(10_000, initial=0.1, factor=3.0, cap=45.0, rng=_Top())[-1] == 45.0


def test_huge_factor_does_not_overflow() -> None:
    delays = _take(2_000, initial=1.0, factor=1e300, cap=1e6, rng=_Top())
    assert delays[0] == 1.0
    assert set(delays[1:]) == {1e6}


def test_factor_one_keeps_a_constant_ceiling() -> None:
    assert _take(5, initial=2.5, factor=1.0, cap=10.0, rng=_Top()) == [2.5] * 5


def test_cap_equal_to_initial_is_allowed() -> None:
    assert _take(4, initial=3.0, cap=3.0, rng=_Top()) == [3.0] * 4


def test_seeded_rng_is_reproducible() -> None:
    first = _take(50, rng=random.Random(1234))
    again = _take(50, rng=random.Random(1234))
    other = _take(50, rng=random.Random(4321))
    assert first == again
    assert first != other


def test_without_rng_the_delays_are_still_bounded() -> None:
    delays = _take(20)
    assert all(0.0 <= d <= 60.0 for d in delays)
    # Two unseeded generators do not march in step (that is the point of jitter).
    assert delays != _take(20)


def test_the_generator_is_endless() -> None:
    gen = backoff_delays(initial=1.0, cap=1.0, rng=random.Random(0))
    for _ in range(100_000):
        next(gen)
    assert 0.0 <= next(gen) <= 1.0


@pytest.mark.parametrize(
    "options",
    [
        {"initial": 0.0},
        {"initial": -1.0},
        {"factor": 0.5},
        {"factor": 0.0},
        {"factor": -2.0},
        {"initial": 10.0, "cap": 5.0},
        {"cap": 0.0},
        {"initial": math.nan},
        {"factor": math.nan},
        {"cap": math.nan},
        {"initial": math.inf},
        {"factor": math.inf},
        {"cap": math.inf},
    ],
    ids=repr,
)
def test_bad_parameters_raise_at_the_call(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="backoff needs"):
        backoff_delays(**options)  # type: ignore[arg-type]  # no next(): fails at the call
