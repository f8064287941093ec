"""θ schedules: exactly 0 at the last step and after, the paper's triangle, clear errors."""

import math

import pytest

from relaxgnn.relax import Constant, CosineDecay, LinearDecay, Step, Triangle

ALL = [Constant(0.5, 11), LinearDecay(1.0, 11), CosineDecay(2.0, 11), Triangle(1.0, 11),
       Step(1.0, 11, milestones=[3, 6], gamma=0.5)]


@pytest.mark.parametrize("schedule", ALL, ids=lambda s: type(s).__name__)
def test_every_schedule_ends_at_exactly_zero(schedule):
    assert schedule(10) == 0.0
    assert schedule(11) == 0.0 and schedule(10_000) == 0.0
    assert all(schedule(i) >= 0 for i in range(12))
    if not isinstance(schedule, Triangle):
        assert schedule(0) > 0


def test_values():
    assert [LinearDecay(1.0, 5)(i) for i in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert CosineDecay(2.0, 3)(1) == pytest.approx(1.0)
    assert [Constant(0.3, 3)(i) for i in range(3)] == [0.3, 0.3, 0.0]
    assert [Step(1.0, 8, [2, 4], 0.5)(i) for i in range(8)] == [1, 1, .5, .5, .25, .25, .25, 0]
    assert Constant(1.0, 1)(0) == 0.0  # a one-step schedule has only its last step


def test_triangle_is_the_papers_formula():
    """The released code's mix_coef (2e/E, then 1 - 2(e - E/2)/E) with E the last step."""
    total = 101
    E = total - 1

    def paper(e):
        return 2 * e / E if e < E / 2.0 else 1 - 2 * (e - E / 2.0) / E

    schedule = Triangle(0.7, total)
    for e in range(total):
        assert schedule(e) == pytest.approx(0.7 * paper(e), abs=1e-15)
    assert schedule(50) == pytest.approx(0.7)
    # the released code evaluated with E = number of epochs never reaches 0:
    released_last = 1 - 2 * ((total - 1) - total / 2.0) / total
    assert released_last == pytest.approx(2 / total) and released_last > 0


@pytest.mark.parametrize("bad", [
    lambda: LinearDecay(-1.0, 10), lambda: Constant(math.nan, 10), lambda: Triangle(1.0, 0),
    lambda: CosineDecay(1.0, -3), lambda: Step(1.0, 10, [0]), lambda: LinearDecay(1.0, 2.5),
])
def test_bad_schedules(bad):
    with pytest.raises(ValueError):
        bad()


def test_negative_step():
    with pytest.raises(ValueError, match="step must be >= 0"):
        LinearDecay(1.0, 10)(-1)
