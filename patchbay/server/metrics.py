"""Prometheus metrics of the gateway, kept and rendered by ``prometheus-client``.

Two modes, chosen by the environment when prometheus-client is first imported:

- **One process** (``PROMETHEUS_MULTIPROC_DIR`` unset, a single worker): every
  :class:`GatewayMetrics` has a registry of its own, so several gateways in one process (the
  tests) never share counts.
- **Multiprocess** (``patchbay serve --workers N`` with N > 1: :func:`patchbay.server.run.serve`
  gives the workers a fresh private ``PROMETHEUS_MULTIPROC_DIR``): each worker writes its values
  into its own memory-mapped files there, and whichever worker answers ``/metrics`` reads every
  worker's files, so the one ``/metrics`` sums counters and histograms across the workers, the
  dead ones included (their counts stay). ``patchbay_requests_in_flight`` is summed over the live
  workers (``livesum``). Labels come out in the same order as in one process.

Per-process values in multiprocess mode: ``process_open_fds``, ``process_resident_memory_bytes``
and ``patchbay_asyncio_tasks`` get a ``pid`` label, one series per live worker (``liveall``; a
dead worker's series go with it: the supervisor in :mod:`patchbay.server.run` marks it dead). A
worker refreshes its own once a second (a daemon thread hands the refresh to its event loop) and
when it answers a scrape. In one process they are read at scrape time; an unknown value (no ``/proc``, no running
loop) has no sample.

The request log's counts (``patchbay_request_log_records_total``) are kept by this process's
writer thread: what they grew by since the last look is added to a real counter at each scrape
(and, in multiprocess mode, at each refresh), so across workers they add up too, at most a
second behind.

Label values that come from clients (the model name through a ``"*"`` route) are bounded by
:class:`LabelCap`: the first ``max_label_values`` distinct names keep their own label sets, every
later one counts as ``other``, so ``/metrics`` stays the same size however many names are sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import prometheus_client
import prometheus_client.values
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["LATENCY_BUCKETS", "MULTIPROC_DIR_ENV", "OTHER", "Counter", "GatewayMetrics", "Histogram", "LabelCap",
           "multiprocess_dir"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""The variable naming the directory of prometheus-client's multiprocess files."""

REFRESH_INTERVAL = 1.0
"""Seconds between a worker's refreshes of its per-process values in multiprocess mode."""

OTHER = "other"
"""The label value every name beyond the cap is counted as."""

Labels = tuple[str, ...]

prometheus_client.disable_created_metrics()  # no *_created series: they were never part of /metrics


def multiprocess_dir() -> str | None:
    """The multiprocess directory this process writes its values to, or None (one process).

    prometheus-client chose when it was imported: a directory named only later is not used."""
    if not getattr(prometheus_client.values.ValueClass, "_multiprocess", False):
        return None
    return os.environ.get(MULTIPROC_DIR_ENV) or None


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


class Counter:
    """A prometheus-client counter addressed by a tuple of label values (in the order of ``labels``).

    Each label set's child is looked up once and kept, so an increment is one dict lookup and the
    library's own ``inc``; the label values are bounded by the callers (:class:`LabelCap`)."""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = (),
                 registry: CollectorRegistry | None = None) -> None:
        self.name, self.labels = name, tuple(labels)
        self.metric = prometheus_client.Counter(name, help_text, self.labels, registry=registry)
        self._children: dict[Labels, Any] = {}

    def child(self, labels: Labels) -> Any:
        """The library's counter of one label set (created, at 0, on first use)."""
        found = self._children.get(labels)
        if found is None:
            found = self._children[labels] = self.metric.labels(*labels) if labels else self.metric
        return found

    def inc(self, labels: Labels = (), amount: float = 1.0) -> None:
        self.child(labels).inc(amount)


class Histogram:
    """A prometheus-client histogram addressed by a tuple of label values, like :class:`Counter`."""

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = (),
                 buckets: Sequence[float] = LATENCY_BUCKETS, registry: CollectorRegistry | None = None) -> None:
        self.name, self.labels = name, tuple(labels)
        self.metric = prometheus_client.Histogram(name, help_text, self.labels, buckets=buckets, registry=registry)
        self._children: dict[Labels, Any] = {}

    def observe(self, labels: Labels, value: float) -> None:
        found = self._children.get(labels)
        if found is None:
            found = self._children[labels] = self.metric.labels(*labels) if labels else self.metric
        found.observe(value)


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


PROCESS_GAUGES: tuple[tuple[str, str, Callable[[], int | None]], ...] = (
    ("process_open_fds", "Number of open file descriptors.", open_fds),
    ("process_resident_memory_bytes", "Resident memory size in bytes.", resident_memory),
    ("patchbay_asyncio_tasks", "Unfinished asyncio tasks of the event loop.", asyncio_tasks),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else floatToGoString(value)


def exposition(families: Iterable[Metric]) -> bytes:
    """``families`` in the Prometheus text format 0.0.4, as ``generate_latest`` writes it except
    that each sample's labels keep their declared order (``provider,model,status``) where it sorts
    them, and whole numbers have no ``.0``: the lines patchbay wrote before prometheus-client, which
    dashboards and tests match."""
    lines: list[str] = []
    for family in families:
        name = f"{family.name}_total" if family.type == "counter" else family.name
        help_text = family.documentation.replace("\\", "\\\\").replace("\n", "\\n")
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {family.type}")
        for sample in family.samples:
            labels = ",".join(f'{key}="{_escape(value)}"' for key, value in sample.labels.items())
            lines.append(f"{sample.name}{{{labels}}} {_number(sample.value)}" if labels
                         else f"{sample.name} {_number(sample.value)}")
    return ("\n".join(lines) + "\n").encode() if lines else b""


class _InLabelOrder(Collector):
    """The multiprocess files' families with each sample's labels in the order they were declared
    (the files keep them sorted by name), so both modes write the same lines."""

    def __init__(self, inner: MultiProcessCollector, order: Mapping[str, Sequence[str]]) -> None:
        self.inner = inner
        self.order = {name: {label: index for index, label in enumerate((*labels, "le", "pid"))}
                      for name, labels in order.items()}

    def collect(self) -> Iterable[Any]:
        for family in self.inner.collect():
            rank = self.order.get(family.name)
            if rank is not None:
                family.samples = [sample._replace(labels={key: sample.labels[key] for key in
                                                          sorted(sample.labels, key=lambda k: rank.get(k, len(rank)))})
                                  for sample in family.samples]
            yield family


class GatewayMetrics:
    """The gateway's metrics: requests, errors, latency, time to first token, tokens, cost, cache
    lookups, requests in flight, rate-limit refusals, the request log and the process."""

    def __init__(self, max_label_values: int = 100) -> None:
        #: Bounds on the provider, model and key label values (see :class:`LabelCap`).
        self.providers = LabelCap(max_label_values)
        self.models = LabelCap(max_label_values)
        self.keys = LabelCap(max_label_values)
        self.directory = multiprocess_dir()
        # One process: a registry of this instance's own. Multiprocess: the values live in the
        # files; the registry scraped reads every worker's.
        own = None if self.directory else CollectorRegistry(auto_describe=False)
        by_target = ("provider", "model")
        self.requests = Counter("patchbay_requests_total", "Chat completion requests by outcome.",
                                (*by_target, "status"), own)
        self.errors = Counter("patchbay_errors_total", "Failed chat completion requests by error code.",
                              (*by_target, "code"), own)
        self.latency = Histogram("patchbay_request_duration_seconds", "Whole request time.", by_target,
                                 registry=own)
        self.ttft = Histogram("patchbay_time_to_first_token_seconds", "Time to the first token.", by_target,
                              registry=own)
        self.tokens = Counter("patchbay_tokens_total", "Tokens reported by providers.", (*by_target, "kind"), own)
        self.cost = Counter("patchbay_cost_usd_total", "US dollars charged, every attempt of a request included.",
                            ("key", *by_target), own)
        self.cache_results = Counter("patchbay_cache_results_total",
                                     "Response cache lookups by result: hit, miss or bypass (not cacheable).",
                                     ("result",), own)
        self.in_flight = prometheus_client.Gauge(
            "patchbay_requests_in_flight", "Chat completion requests being served.", registry=own,
            multiprocess_mode="livesum")
        self.rate_limited = Counter("patchbay_rate_limited_total",
                                    "Chat completion requests refused by the per-key limits.", ("key", "limit"), own)
        #: What the request log wrote, cut or dropped, by outcome (set by the server when the log
        #: is on): cumulative counts of this process, read at each scrape or refresh.
        self.request_log_counts: Callable[[], Mapping[str, float]] = dict
        self.request_log = Counter(
            "patchbay_request_log_records_total", "Request log records by what happened to them: written, "
            "truncated, or dropped (backlog full, database locked, write error).", ("outcome",), own)
        self._request_log_seen: dict[str, float] = {}
        self._own = own
        self._process: dict[str, prometheus_client.Gauge] = {}
        if own is not None:
            self.registry = own
        else:
            self.registry = CollectorRegistry(auto_describe=False)
            families = (self.requests, self.errors, self.latency, self.ttft, self.tokens, self.cost,
                        self.cache_results, self.rate_limited, self.request_log)
            order = {family.name.removesuffix("_total"): family.labels for family in families}
            self.registry.register(_InLabelOrder(MultiProcessCollector(None, self.directory), order))
            self._loop: asyncio.AbstractEventLoop | None = None
            with contextlib.suppress(RuntimeError):
                self._loop = asyncio.get_running_loop()
            threading.Thread(target=self._tick, name="patchbay-metrics", daemon=True).start()

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

    def refresh(self) -> None:
        """Bring this process's scrape-time values up to date: the per-process gauges and what the
        request log counted since the last refresh."""
        for outcome, value in self.request_log_counts().items():
            seen = self._request_log_seen.get(outcome, 0.0)
            self._request_log_seen[outcome] = value
            self.request_log.inc((outcome,), value - seen if value >= seen else value)  # less: a new log
        for name, help_text, read in PROCESS_GAUGES:
            reading = read()
            if reading is not None:
                self._process_gauge(name, help_text).set(reading)

    def _process_gauge(self, name: str, help_text: str) -> prometheus_client.Gauge:
        gauge = self._process.get(name)
        if gauge is None:  # on the event loop only (refreshes are handed to it): no race
            gauge = self._process[name] = prometheus_client.Gauge(
                name, help_text, registry=self._own, multiprocess_mode="liveall")
        return gauge

    def _tick(self) -> None:
        """Multiprocess mode: have the event loop :meth:`refresh` once a second, until it closes."""
        pause = threading.Event()  # never set: a wait that ends after the interval
        while not pause.wait(REFRESH_INTERVAL):
            loop = self._loop
            if loop is None:
                continue
            try:
                loop.call_soon_threadsafe(self.refresh)
            except RuntimeError:  # the loop is closed: the worker is stopping
                return

    def render(self) -> bytes:
        """All metrics in the Prometheus text exposition format (version 0.0.4)."""
        if self._own is None and self._loop is None:
            with contextlib.suppress(RuntimeError):
                self._loop = asyncio.get_running_loop()
        self.refresh()
        return exposition(self.registry.collect())
