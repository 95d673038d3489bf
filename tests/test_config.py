from __future__ import annotations

import pytest

from patchbay.config import UNSET, Timeout
from patchbay.errors import InvalidRequest


def test_defaults_and_unset() -> None:
    assert Timeout.of(UNSET) == Timeout()
    assert Timeout.of(None) == Timeout()


def test_one_number_bounds_everything() -> None:
    t = Timeout.of(3)
    assert (t.first_byte, t.idle, t.total) == (3.0, 3.0, 3.0)
    assert t.connect == 3.0


@pytest.mark.parametrize("bad", [-1, 0, "fast", True])
def test_bad_timeouts_are_named(bad: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        Timeout.of(bad) if not isinstance(bad, int | float) or isinstance(bad, bool) else Timeout(total=bad)
    assert "timeout" in str(info.value)
