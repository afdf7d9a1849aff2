from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from saga.errors import PolicyError
from saga.retry import RetryPolicy


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be >= 1"),
        ({"initial_delay": -1}, "initial_delay must be >= 0"),
        ({"multiplier": 0.5}, "multiplier must be >= 1"),
        ({"initial_delay": 2, "max_delay": 1}, "max_delay must be >= initial_delay"),
        ({"jitter": 1.5}, "jitter must be within 0.0..1.0"),
    ],
)
def test_invalid_policies_are_refused_with_the_field_named(
    kwargs: dict[str, float], message: str
) -> None:
    # PolicyError is also a ValueError, for callers that caught that before.
    with pytest.raises(PolicyError, match=message):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_first_attempt_never_waits() -> None:
    assert RetryPolicy().delay_before(1) == 0.0


def test_without_jitter_delays_double_up_to_the_cap() -> None:
    policy = RetryPolicy(initial_delay=0.01, multiplier=2, max_delay=0.05, jitter=0)
    assert [policy.delay_before(n) for n in range(2, 7)] == pytest.approx(
        [0.01, 0.02, 0.04, 0.05, 0.05]
    )


@given(
    attempt=st.integers(min_value=2, max_value=60),
    initial=st.floats(min_value=0, max_value=1),
    extra=st.floats(min_value=0, max_value=10),
    jitter=st.floats(min_value=0, max_value=1),
    seed=st.integers(),
)
def test_delay_stays_within_its_jitter_band(
    attempt: int, initial: float, extra: float, jitter: float, seed: int
) -> None:
    policy = RetryPolicy(initial_delay=initial, max_delay=initial + extra, jitter=jitter)
    ceiling = min(policy.max_delay, initial * policy.multiplier ** (attempt - 2))
    delay = policy.delay_before(attempt, rng=random.Random(seed))
    assert ceiling * (1 - jitter) - 1e-12 <= delay <= ceiling + 1e-12
