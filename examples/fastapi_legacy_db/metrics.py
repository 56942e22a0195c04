"""``/metrics``: each offload pool's ``stats()`` and the monitor's events, for Prometheus.

The collector reads the pools and the monitor at each scrape, so nothing runs between
scrapes and the figures are never stale.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

import offload

GAUGES = ("max_workers", "workers", "busy", "pending", "abandoned")
COUNTERS = ("submitted", "rejected", "completed", "failed", "cancelled", "timed_out", "crashed")
KINDS = ("blocking", "cpu", "saturation", "starvation")


class OffloadCollector(Collector):
    """Exports ``pool.stats()`` of each pool and the count of blocking events per kind."""

    def __init__(
        self,
        pools: Iterable[offload.ThreadPool | offload.ProcessPool],
        monitor: offload.Monitor | None,
    ) -> None:
        self.pools = list(pools)
        self.monitor = monitor

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        snapshots = [(pool.name, pool.stats()) for pool in self.pools]
        for field in GAUGES:
            gauge = GaugeMetricFamily(f"offload_{field}", f"pool {field}", labels=["pool"])
            for name, stats in snapshots:
                gauge.add_metric([name], getattr(stats, field))

            yield gauge

        for field in COUNTERS:
            counter = CounterMetricFamily(f"offload_calls_{field}", field, labels=["pool"])
            for name, stats in snapshots:
                counter.add_metric([name], getattr(stats, field))

            yield counter

        for field in ("wait_time", "run_time"):
            metric = f"offload_{field}_seconds"
            gauge = GaugeMetricFamily(metric, f"call {field}", labels=["pool", "quantile"])
            for name, stats in snapshots:
                timing = getattr(stats, field)
                gauge.add_metric([name, "0.5"], timing.p50)
                gauge.add_metric([name, "0.99"], timing.p99)

            yield gauge

        # Counts the events the monitor keeps: its latest 10,000 (a service that stalls more
        # often than that between restarts knows it already).
        kinds = Counter(event.kind for event in self.monitor.events) if self.monitor else {}
        events = CounterMetricFamily(
            "offload_blocking_events", "event-loop stalls", labels=["kind"]
        )
        for kind in KINDS:
            events.add_metric([kind], kinds.get(kind, 0))

        yield events
