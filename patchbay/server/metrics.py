"""Prometheus metrics of the gateway, rendered in the text exposition format.

A few counters and histograms keyed by label values, with no client library: recording a request
is a handful of dict and list operations on the request path. Each worker process keeps its own
numbers (scrape every worker, or run one). Process gauges (open file descriptors, resident memory,
asyncio tasks) are read at scrape time, so they cost nothing between scrapes.

Label values that come from clients (the model name through a ``"*"`` route) are bounded by
:class:`LabelCap`: the first ``max_label_values`` distinct names keep their own label sets, every
later one counts as ``other``, so ``/metrics`` stays the same size however many names are sent.
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence

__all__ = ["OTHER", "Counter", "GatewayMetrics", "Histogram", "LabelCap", "ScrapeGauge"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

Labels = tuple[str, ...]

OTHER = "other"
"""The label value every name beyond the cap is counted as."""


class LabelCap:
    """The first ``limit`` distinct values keep their name; later ones become :data:`OTHER`.

    One set lookup per value on the request path; what was admitted stays admitted, so a name
    never moves between its own label set and ``other``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) >= self.limit:
            return OTHER
        self.seen.add(value)
        return value


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _label_text(names: Sequence[str], values: Labels, extra: str = "") -> str:
    parts = [f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Counter:
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.labels = name, help_text, tuple(labels)
        self.values: dict[Labels, float] = {}

    def inc(self, labels: Labels = (), amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def samples(self) -> list[str]:
        return [f"{self.name}{_label_text(self.labels, key)} {_number(value)}" for key, value in self.values.items()]


class Gauge(Counter):
    """A value that goes up and down (e.g. requests in flight)."""

    kind = "gauge"

    def dec(self, labels: Labels = (), amount: float = 1.0) -> None:
        self.inc(labels, -amount)


class ScrapeGauge:
    """A gauge without labels whose value is read when scraped; ``None`` (unknown here) omits the sample."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, read: Callable[[], float | None]) -> None:
        self.name, self.help, self.read = name, help_text, read

    def samples(self) -> list[str]:
        value = self.read()
        return [] if value is None else [f"{self.name} {_number(value)}"]


class ScrapeCounter:
    """A counter per label set whose values are read when scraped (counts kept elsewhere)."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str],
                 read: Callable[[], Mapping[Labels, float]]) -> None:
        self.name, self.help, self.labels, self.read = name, help_text, tuple(labels), read

    def samples(self) -> list[str]:
        return [f"{self.name}{_label_text(self.labels, key)} {_number(value)}" for key, value in self.read().items()]


def open_fds() -> int | None:
    """File descriptors this process has open (Linux ``/proc``; None elsewhere)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


def resident_memory() -> int | None:
    """Resident set size in bytes (Linux ``/proc``; None elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def asyncio_tasks() -> int | None:
    """Unfinished asyncio tasks of the running event loop (None outside one)."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:
        return None


class Histogram:
    """Observations counted into cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = (),
                 buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self.name, self.help, self.labels = name, help_text, tuple(labels)
        self.buckets = tuple(sorted(buckets))
        self.values: dict[Labels, list[float]] = {}  # per bucket counts, then +Inf count, then sum

    def observe(self, labels: Labels, value: float) -> None:
        row = self.values.get(labels)
        if row is None:
            row = self.values[labels] = [0.0] * (len(self.buckets) + 2)
        row[bisect_left(self.buckets, value)] += 1
        row[-1] += value

    def samples(self) -> list[str]:
        lines = []
        for key, row in self.values.items():
            cumulative = 0.0
            for bound, count in zip((*self.buckets, float("inf")), row[:-1], strict=True):
                cumulative += count
                le = 'le="+Inf"' if bound == float("inf") else f'le="{bound!r}"'
                lines.append(f"{self.name}_bucket{_label_text(self.labels, key, le)} {_number(cumulative)}")
            lines.append(f"{self.name}_sum{_label_text(self.labels, key)} {_number(row[-1])}")
            lines.append(f"{self.name}_count{_label_text(self.labels, key)} {_number(cumulative)}")
        return lines


class GatewayMetrics:
    """The gateway's metrics: requests, errors, latency, time to first token and tokens."""

    def __init__(self, max_label_values: int = 100) -> None:
        #: Bounds on the provider and model label values (see :class:`LabelCap`).
        self.providers = LabelCap(max_label_values)
        self.models = LabelCap(max_label_values)
        self.keys = LabelCap(max_label_values)
        by_target = ("provider", "model")
        self.requests = Counter("patchbay_requests_total", "Chat completion requests by outcome.",
                                (*by_target, "status"))
        self.errors = Counter("patchbay_errors_total", "Failed chat completion requests by error code.",
                              (*by_target, "code"))
        self.latency = Histogram("patchbay_request_duration_seconds", "Whole request time.", by_target)
        self.ttft = Histogram("patchbay_time_to_first_token_seconds", "Time to the first token.", by_target)
        self.tokens = Counter("patchbay_tokens_total", "Tokens reported by providers.", (*by_target, "kind"))
        self.cost = Counter("patchbay_cost_usd_total", "US dollars charged, every attempt of a request included.",
                            ("key", *by_target))
        self.cache_results = Counter("patchbay_cache_results_total",
                                     "Response cache lookups by result: hit, miss or bypass (not cacheable).",
                                     ("result",))
        self.in_flight = Gauge("patchbay_requests_in_flight", "Chat completion requests being served.")
        self.in_flight.inc((), 0)
        self.rate_limited = Counter("patchbay_rate_limited_total",
                                    "Chat completion requests refused by the per-key limits.", ("key", "limit"))
        self.process = (
            ScrapeGauge("process_open_fds", "Number of open file descriptors.", open_fds),
            ScrapeGauge("process_resident_memory_bytes", "Resident memory size in bytes.", resident_memory),
            ScrapeGauge("patchbay_asyncio_tasks", "Unfinished asyncio tasks of the event loop.", asyncio_tasks),
        )
        #: What the request log had to drop or cut, by reason (set by the server when the log is on).
        self.request_log_counts: Callable[[], Mapping[str, float]] = dict
        self.request_log = ScrapeCounter(
            "patchbay_request_log_records_total", "Request log records by what happened to them: written, "
            "truncated, or dropped (backlog full, database locked, write error).", ("outcome",),
            lambda: {(outcome,): value for outcome, value in self.request_log_counts().items()})
        self.families = (self.requests, self.errors, self.latency, self.ttft, self.tokens, self.cost, self.cache_results,
                         self.in_flight,
                         self.rate_limited, self.request_log, *self.process)

    def record(self, provider: str, model: str, status: int, duration: float, *, ttft: float | None = None,
               prompt_tokens: int | None = None, completion_tokens: int | None = None,
               error_code: str | None = None, key: str = "anonymous", cost: float = 0.0) -> None:
        """Record one finished request of the API key named ``key`` (names beyond the label cap
        count as ``other``); ``cost`` in US dollars."""
        provider, model = self.providers(provider), self.models(model)
        target = (provider, model)
        self.requests.inc((provider, model, str(status)))
        self.latency.observe(target, duration)
        if ttft is not None:
            self.ttft.observe(target, ttft)
        if error_code is not None:
            self.errors.inc((provider, model, error_code))
        if prompt_tokens:
            self.tokens.inc((provider, model, "prompt"), prompt_tokens)
        if completion_tokens:
            self.tokens.inc((provider, model, "completion"), completion_tokens)
        if cost:
            self.cost.inc((self.keys(key), provider, model), cost)

    def cache_result(self, result: str) -> None:
        """Count one response cache lookup: ``hit``, ``miss`` or ``bypass``."""
        self.cache_results.inc((result,))

    def render(self) -> bytes:
        """All metrics in the Prometheus text exposition format (version 0.0.4)."""
        lines: list[str] = []
        for family in self.families:
            lines.append(f"# HELP {family.name} {family.help}")
            lines.append(f"# TYPE {family.name} {family.kind}")
            lines.extend(family.samples())
        return ("\n".join(lines) + "\n").encode()
