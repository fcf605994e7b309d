"""Live prediction distributions per model version, and their PSI against the reference.

Each batch adds its predicted labels and top-1 confidences (numpy counts, one lock, no
per-text Python work). At scrape time a Prometheus collector exports, per version:

    tuneline_predictions_total{version,label}            counter
    tuneline_prediction_confidence{version}              histogram (le = the reference's bin edges)
    tuneline_prediction_psi{version,kind}                gauge, kind = label | confidence
    tuneline_prediction_psi_window{version}              predictions the PSI is computed on
    tuneline_prediction_reference_share{version,kind,bin}  the reference itself
    tuneline_prediction_reference_loaded{version}        1 when the version came with one

The PSI is computed in the server over the latest `monitoring.psi_window` predictions of
the served version, against the distribution that version measured on its own test split
(loaded with the version). Computing it here, not in a PromQL recording rule, keeps the
window a number of predictions (so quiet hours do not inflate it), keeps the reference
matched to the exact version in memory, and leaves the alert a plain threshold. It is
absent until the window holds `monitoring.psi_min_predictions` predictions.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from components.config import MonitoringConfig
from components.evaluate.drift import check_edges, confidence_bins, psi


class VersionStats:
    """Counts since load plus a ring buffer of the latest bin indices, for one version."""

    def __init__(self, labels: Sequence[str], reference: dict[str, Any] | None,
                 edges: Sequence[float], window: int) -> None:
        self.labels = list(labels)
        self.reference = reference
        self.edges = check_edges(reference["confidence"]["edges"] if reference else edges)
        bins = len(self.edges) - 1
        self.label_counts = np.zeros(len(self.labels), np.int64)
        self.conf_counts = np.zeros(bins, np.int64)
        self.conf_sum = 0.0
        self.ring_label = np.zeros(window, np.int32)
        self.ring_conf = np.zeros(window, np.int32)
        self.filled = 0
        self.pos = 0

    def add(self, label_ids: np.ndarray, confidence: np.ndarray) -> None:
        conf_bins = confidence_bins(confidence, self.edges)
        self.label_counts += np.bincount(label_ids, minlength=len(self.labels))
        self.conf_counts += np.bincount(conf_bins, minlength=len(self.conf_counts))
        self.conf_sum += float(confidence.sum())
        window = len(self.ring_label)
        label_ids, conf_bins = label_ids[-window:], conf_bins[-window:]
        idx = (self.pos + np.arange(len(label_ids))) % window
        self.ring_label[idx] = label_ids
        self.ring_conf[idx] = conf_bins
        self.pos = (self.pos + len(label_ids)) % window
        self.filled = min(window, self.filled + len(label_ids))

    def window_psi(self, epsilon: float) -> dict[str, float]:
        """{"label": PSI, "confidence": PSI} over the ring buffer (needs a reference)."""
        ref = self.reference
        labels = np.bincount(self.ring_label[: self.filled], minlength=len(self.labels))
        conf = np.bincount(self.ring_conf[: self.filled], minlength=len(self.conf_counts))
        return {"label": psi(labels, ref["labels"]["fractions"], epsilon),
                "confidence": psi(conf, ref["confidence"]["fractions"], epsilon)}


class PredictionMonitor:
    """Prediction distributions of the versions this process served (the latest `keep`)."""

    def __init__(self, cfg: MonitoringConfig, keep: int = 2) -> None:
        self.cfg = cfg
        self.keep = keep
        self.current: str | None = None
        self._stats: OrderedDict[str, VersionStats] = OrderedDict()
        self._lock = threading.Lock()

    def set_version(self, version: str, labels: Sequence[str],
                    reference: dict[str, Any] | None) -> None:
        """A version is now served; its counts start at zero unless it was served before."""
        with self._lock:
            if version not in self._stats:
                self._stats[version] = VersionStats(labels, reference, self.cfg.confidence_bins,
                                                    self.cfg.psi_window)
            self._stats.move_to_end(version)
            while len(self._stats) > self.keep:
                self._stats.popitem(last=False)
            self.current = version

    def observe(self, version: str, probs: np.ndarray) -> None:
        """Add one batch of class probabilities [texts, classes] served by `version`."""
        if len(probs) == 0:
            return
        best = probs.argmax(axis=1)
        confidence = probs[np.arange(len(best)), best]
        with self._lock:
            stats = self._stats.get(version)
            if stats is not None:
                stats.add(best, confidence)

    def psi(self, version: str) -> dict[str, float] | None:
        """Window PSI of `version` now, or None (no reference or too few predictions)."""
        with self._lock:
            stats = self._stats.get(version)
            if stats is None or stats.reference is None \
                    or stats.filled < self.cfg.psi_min_predictions:
                return None
            return stats.window_psi(self.cfg.psi_epsilon)

    def collect(self) -> Iterator[Any]:
        """prometheus_client collector protocol."""
        preds = CounterMetricFamily("tuneline_predictions", "Predictions by version and label",
                                    labels=["version", "label"])
        conf = HistogramMetricFamily("tuneline_prediction_confidence",
                                     "Top-1 probability of each prediction", labels=["version"])
        psi_g = GaugeMetricFamily("tuneline_prediction_psi", "PSI of the latest predictions "
                                  "vs the version's test-split distribution",
                                  labels=["version", "kind"])
        window = GaugeMetricFamily("tuneline_prediction_psi_window",
                                   "Predictions in the PSI window", labels=["version"])
        ref_share = GaugeMetricFamily("tuneline_prediction_reference_share",
                                      "Share per bin on the version's test split",
                                      labels=["version", "kind", "bin"])
        loaded = GaugeMetricFamily("tuneline_prediction_reference_loaded",
                                   "1 when the served version came with a reference",
                                   labels=["version"])
        with self._lock:
            snapshot = [(v, s) for v, s in self._stats.items()]
            current = self.current
            for version, s in snapshot:
                self._collect_counts(version, s, preds, conf)
                if version != current:
                    continue
                loaded.add_metric([version], float(s.reference is not None))
                window.add_metric([version], float(s.filled))
                if s.reference is not None:
                    self._collect_reference(version, s, ref_share)
                    if s.filled >= self.cfg.psi_min_predictions:
                        for kind, value in s.window_psi(self.cfg.psi_epsilon).items():
                            psi_g.add_metric([version, kind], value)
        yield from (preds, conf, psi_g, window, ref_share, loaded)

    @staticmethod
    def _collect_counts(version: str, s: VersionStats, preds, conf) -> None:
        for name, count in zip(s.labels, s.label_counts.tolist(), strict=True):
            preds.add_metric([version, name], float(count))
        cumulative = np.cumsum(s.conf_counts).tolist()
        buckets = [(_edge(e), float(c)) for e, c in zip(s.edges[1:], cumulative, strict=True)]
        buckets.append(("+Inf", float(cumulative[-1])))
        conf.add_metric([version], buckets, s.conf_sum)

    @staticmethod
    def _collect_reference(version: str, s: VersionStats, ref_share) -> None:
        ref = s.reference
        for name, share in zip(ref["labels"]["names"], ref["labels"]["fractions"], strict=True):
            ref_share.add_metric([version, "label", name], float(share))
        for edge, share in zip(s.edges[1:], ref["confidence"]["fractions"], strict=True):
            ref_share.add_metric([version, "confidence", _edge(edge)], float(share))


def _edge(value: float) -> str:
    return "1.0" if value == 1.0 else repr(float(value))
