from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from patchbay.chat.stops import StopSequenceFilter


def run(stops: list[str], parts: list[str]) -> tuple[str, bool]:
    f = StopSequenceFilter(stops)
    out = "".join(f.feed(p) for p in parts) + f.flush()
    return out, f.stopped


def test_stop_split_across_chunks() -> None:
    assert run(["Paris"], ["The capital is Par", "is, of course"]) == ("The capital is ", True)


def test_partial_prefix_that_is_not_a_stop_is_released() -> None:
    assert run(["Paris"], ["Par", "k"]) == ("Park", False)
    assert run(["Paris"], ["ends with Par"]) == ("ends with Par", False)


def test_earliest_of_several_stops_wins() -> None:
    assert run(["\n\n", "END"], ["a END b\n\nc"]) == ("a ", True)


def test_no_stops_passes_through() -> None:
    assert run([], ["a", "b"]) == ("ab", False)


@settings(max_examples=200)
@given(st.text(alphabet="abcP世🌍", max_size=40), st.lists(st.integers(0, 40), max_size=8))
def test_any_chunking_gives_the_same_result(text: str, cuts: list[int]) -> None:
    stops = ["Pa", "世🌍"]
    whole = run(stops, [text])
    bounds = sorted({0, len(text), *[min(c, len(text)) for c in cuts]})
    parts = [text[a:b] for a, b in itertools.pairwise(bounds)]
    assert run(stops, parts) == whole
    expected_cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    assert whole[0] == (text if expected_cut < 0 else text[:expected_cut])
