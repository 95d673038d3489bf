"""bench/soak.py at a small size: every request answered correctly and logged once with the status it
should have, the server's descriptors back where they started, 1,000 streams open at once.

Memory growth is not asserted here: after a few thousand requests the server is still warming up
(the full run in docs/benchmarks.md judges it).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

import bench.soak
from bench.soak import Options, SoakResult, report, run_soak
from patchbay.net.pool import MAX_IDLE_PER_HOST

pytestmark = [pytest.mark.process]  # one soak run (a gateway subprocess) for the whole module

OPTIONS = Options(requests=2000, concurrency=64, burst=1000)


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> SoakResult:
    return run_soak(OPTIONS, tmp_path_factory.mktemp("soak"))


def test_every_answer_is_correct(result: SoakResult) -> None:
    assert result.tally.problems == []
    assert result.tally.sent == Counter(whole=1000, stream=800, cancel=200)
    assert result.tally.ok == result.tally.sent
    assert result.server_log_problems == []


def test_every_request_is_in_the_log_once_with_its_status(result: SoakResult) -> None:
    rows = result.rows
    assert (rows.missing, rows.duplicated, rows.wrong_text) == (0, 0, 0)
    # The upstream holds the cancelled streams after their first chunk: each is certainly a 499.
    assert rows.statuses == Counter({("whole", 200): 1000, ("stream", 200): 800, ("cancel", 499): 200,
                                     ("burst", 200): 1000})
    assert rows.total == 3000 + rows.probes


def test_descriptors_return_to_the_baseline(result: SoakResult) -> None:
    base, settled, final = (result.sample(label) for label in ("baseline", "after burst", "upstream stopped"))
    assert result.in_flight_after == 0
    assert settled.fds.clients == 0
    assert settled.fds.other == base.fds.other
    assert settled.fds.upstream <= MAX_IDLE_PER_HOST  # kept alive in the pool
    assert final.fds.upstream == 0  # the pool let them go when the upstream closed them
    assert final.fds.total == base.fds.total - base.fds.upstream


def test_a_thousand_streams_open_at_once_complete(result: SoakResult) -> None:
    burst = result.burst
    assert burst.tally.problems == []
    assert burst.open_at_once == burst.tally.ok["burst"] == 1000
    assert burst.peak is not None and burst.peak.fds.clients == burst.peak.fds.upstream == 1000
    assert burst.released == 1000  # no upstream request of a cancelled stream was left waiting


def test_the_report_judges_each_goal(result: SoakResult) -> None:
    goals = {goal: met for goal, met, _ in result.goals()}
    assert len(goals) == 5
    assert all(met for goal, met in goals.items() if not goal.startswith("RSS")), result.goals()
    body = report(result, "python -m bench.soak --requests 2000")
    assert body.startswith("## Soak: 2,000 requests, then 1,000 concurrent streams")
    assert body.count("| pass |") + body.count("| **FAIL** |") == 5


def test_main_passes_options_and_leaves_docs_alone_with_no_write(
        result: SoakResult, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[Options] = []

    def fake_run(options: Options, scratch: Path) -> SoakResult:
        seen.append(options)
        return result

    def no_write(*_: object) -> None:
        raise AssertionError("--no-write must not write docs/benchmarks.md")

    monkeypatch.setattr(bench.soak, "run_soak", fake_run)
    monkeypatch.setattr(bench.soak, "write_section", no_write)
    status = bench.soak.main(["--requests", "2000", "--concurrency", "64", "--burst", "1000", "--no-write"])
    assert seen == [OPTIONS]
    assert status == (0 if result.passed else 1)
    assert "Command: `python -m bench.soak --requests 2000 --concurrency 64 --burst 1000 --no-write`" \
        in capsys.readouterr().out
