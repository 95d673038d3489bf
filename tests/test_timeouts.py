from __future__ import annotations

import pytest

from patchbay.errors import InvalidRequest
from patchbay.timeouts import UNSET, Timeout


def test_defaults_and_unset() -> None:
    assert Timeout.of(UNSET) == Timeout()
    assert Timeout.of(None) == Timeout()


def test_one_number_bounds_everything() -> None:
    t = Timeout.of(3)
    assert (t.first_byte, t.idle, t.total) == (3.0, 3.0, 3.0)
    assert t.connect == 3.0


@pytest.mark.parametrize("bad", ["fast", True, [1]])
def test_bad_timeout_values_are_named(bad: object) -> None:
    with pytest.raises(InvalidRequest, match="timeout must be a number of seconds"):
        Timeout.of(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, 0])
def test_non_positive_limits_are_named(bad: float) -> None:
    with pytest.raises(InvalidRequest, match="timeout total must be a positive number"):
        Timeout(total=bad)
