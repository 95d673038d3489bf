"""bench.gateway_profile's pure parts: self time from py-spy's raw stacks, and the report."""

from __future__ import annotations

from bench.gateway_profile import Profile, by_layer, render, self_time

RAW = """\
<module> (patchbay/__main__.py:3);Server.run (uvicorn/server.py:86);send (uvicorn/h.py:544) 30
<module> (patchbay/__main__.py:3);Server.run (uvicorn/server.py:86);send (uvicorn/h.py:524) 10
<module> (patchbay/__main__.py:3);decode (patchbay/net/decoders.py:90) 50
Thread.run (threading.py:975);Condition.wait 10
not a stack line
"""


def test_self_time_sums_the_lines_of_a_function_and_shares_add_up() -> None:
    top = self_time(RAW, 10)
    assert top[0] == ("decode (decoders.py)", 50 / 90 * 100)
    assert ("send (h.py)", 40 / 90 * 100) in top  # two lines of one function
    assert all(name != "Condition.wait" for name, _ in top)  # an idle thread's wait is not work
    assert round(sum(share for _, share in top), 6) == 100.0
    assert self_time(RAW, 1) == [("decode (decoders.py)", 50 / 90 * 100)]
    assert self_time("", 5) == []


def test_render_puts_each_tree_in_a_column() -> None:
    before = Profile("before", 30.0, 30_000, 600, 1_500, {"streamed": [("send (h.py)", 34.0)], "whole": []})
    after = Profile("after", 20.0, 45_000, 450, 2_000, {"streamed": [("decode (decoders.py)", 8.0)], "whole": []})
    text = render([before, after], "python -m bench.gateway_profile --before x", 8)
    assert "| before | 30,000 | 30.0 µs | 1,500 | 600 µs |" in text
    assert "| 34.0% `send (h.py)` | 8.0% `decode (decoders.py)` |" in text
    assert text.startswith("## Gateway: where the time goes")


def test_by_layer_sums_self_time_by_the_innermost_file() -> None:
    layers = dict(by_layer(RAW + "Thread.run (threading.py:975);RequestLog._run (store.py:384);x 10\n"))
    assert layers["HTTP server (uvicorn, httptools)"] == 40.0
    assert layers["patchbay.net (upstream pool, HTTP/1.1, SSE decoding)"] == 50.0
    assert layers["request log (writer thread)"] == 10.0  # a frame with no file: its caller's layer
