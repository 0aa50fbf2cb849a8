"""What a served model reports about itself (notebook 13): Prometheus metrics of ``bertlab serve``
and the drift test behind its ``bertlab_drift_*`` gauges.

Drift before labels: the calibration's ``reference`` holds the top probabilities of
in-distribution reports; :class:`Metrics` keeps the last ``window`` served top probabilities and,
at each scrape, compares the two with a two-sample Kolmogorov-Smirnov test. The alarm is raised when
its p-value is under ``alpha``; nothing is computed until the window is full.
"""
import math
import threading
from collections import deque

import numpy as np

#: Latency buckets (seconds): fine below 50 ms, the case study's target.
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The service's Prometheus metrics, in a registry of their own, and the drift window."""

    def __init__(self, reference: list[float], window: int, alpha: float):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("bertlab_http_requests", "HTTP requests by path and status", ["path", "status"], registry=r)
        self.latency = Histogram("bertlab_http_request_duration_seconds", "Time from request to the end of the "
                                 "response", ["path"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch = Histogram("bertlab_batch_size", "Reports per model call", buckets=BATCH_BUCKETS, registry=r)
        self.reports = Counter("bertlab_reports", "Reports predicted", registry=r)
        self.abstentions = Counter("bertlab_abstentions", "Reports below the threshold (sent to an engineer)", registry=r)
        self.truncated = Counter("bertlab_truncated", "Reports longer than the model's window", registry=r)
        self.in_flight = Gauge("bertlab_predict_in_flight", "/predict requests waiting for the model", registry=r)
        self.ready = Gauge("bertlab_ready", "1 once the model is loaded and warmed up", registry=r)
        self.info = Gauge("bertlab_model_info", "The served model (value 1)", ["version"], registry=r)
        self.drift_stat = Gauge("bertlab_drift_ks_statistic", "Two-sample KS statistic: reference vs the last "
                                "drift_window top probabilities (NaN until the window is full)", registry=r)
        self.drift_p = Gauge("bertlab_drift_p_value", "p-value of that KS test (NaN until the window is full)", registry=r)
        self.drift_alarm = Gauge("bertlab_drift_alarm", "1 when the drift p-value is under alpha", registry=r)
        self.drift_seen = Gauge("bertlab_drift_window_reports", "Top probabilities in the drift window", registry=r)
        self.reference = np.asarray(reference, dtype=float)
        self.alpha = alpha
        self._window: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()
        self.drift_stat.set(math.nan)
        self.drift_p.set(math.nan)

    def served(self, top: np.ndarray, automated: np.ndarray, truncated: int) -> None:
        """Record one model call's reports (from the worker thread)."""
        self.batch.observe(len(top))
        self.reports.inc(len(top))
        self.abstentions.inc(int((~automated).sum()))
        self.truncated.inc(truncated)
        if self.reference.size:
            with self._lock:
                self._window.extend(top.tolist())

    def drift(self) -> tuple[float, float]:
        """(KS statistic, p-value) of the window against the reference; NaN until the window is full."""
        from scipy.stats import ks_2samp

        with self._lock:
            window = np.array(self._window)
        self.drift_seen.set(len(window))
        if not self.reference.size or len(window) < self._window.maxlen:
            return math.nan, math.nan
        test = ks_2samp(self.reference, window)
        return float(test.statistic), float(test.pvalue)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        stat, p = self.drift()
        self.drift_stat.set(stat)
        self.drift_p.set(p)
        self.drift_alarm.set(1.0 if p < self.alpha else 0.0)  # NaN < alpha is False: no alarm before the window fills
        return generate_latest(self.registry)
