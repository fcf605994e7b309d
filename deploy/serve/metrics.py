"""Prometheus metrics of one serving app (own registry, so several apps can share a process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

# Latency buckets in seconds: sub-millisecond to a few seconds covers batch-1 through an
# overloaded queue on a small CPU box.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1,
                    0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 128)


class ServeMetrics:
    """Request, batch and model metrics exposed at GET /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tuneline_requests_total", "HTTP requests by route and status",
                                ["route", "status"], registry=r)
        self.errors = Counter("tuneline_request_errors_total",
                              "Rejected or failed requests by reason", ["reason"], registry=r)
        self.latency = Histogram("tuneline_request_latency_seconds",
                                 "HTTP request latency by route", ["route"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.texts = Counter("tuneline_texts_total", "Texts classified", registry=r)
        self.batch_size = Histogram("tuneline_batch_size_texts", "Texts per inference batch",
                                    buckets=_BATCH_BUCKETS, registry=r)
        self.inference = Histogram("tuneline_inference_seconds",
                                   "Tokenize + ONNX Runtime time per batch",
                                   buckets=_LATENCY_BUCKETS, registry=r)
        stages = Counter("tuneline_inference_stage_seconds",
                         "Inference time by stage (worker threads)", ["stage"], registry=r)
        # Children bound once: labels() per batch would cost a dict lookup and a lock each.
        self.stage_seconds = {s: stages.labels(s) for s in ("tokenize", "assemble",
                                                             "onnxruntime", "postprocess")}
        tokens = Counter("tuneline_tokens", "Tokens run through ONNX Runtime: real ones and "
                         "with the padding of their group", ["kind"], registry=r)
        self.tokens = tokens.labels("text")
        self.padded_tokens = tokens.labels("padded")
        self.model = Info("tuneline_model", "The model being served", registry=r)
        self.model_ready = Gauge("tuneline_model_ready", "1 when a model is loaded", registry=r)
        self.reloads = Counter("tuneline_model_reloads_total",
                               "Model load attempts by result", ["result"], registry=r)
        self.reload_failing = Gauge("tuneline_model_reload_failing",
                                    "1 while the latest load attempt failed", registry=r)
        self.model_loaded_at = Gauge("tuneline_model_loaded_timestamp_seconds",
                                     "When the served model was loaded (Unix time)", registry=r)
        self.model_created_at = Gauge(
            "tuneline_model_created_timestamp_seconds",
            "When the served version was registered (local bundle: exported)", registry=r)

    def watch_batcher(self, batcher) -> None:
        """Gauges read from the batcher at scrape time: its queue and its oldest batch."""
        Gauge("tuneline_queued_texts", "Texts waiting for a batch worker",
              registry=self.registry).set_function(lambda: batcher.queued_texts)
        Gauge("tuneline_batch_running_seconds",
              "How long the oldest running batch has been running (0: none runs)",
              registry=self.registry).set_function(batcher.running_for)

    def observe_batch(self, texts: int, seconds: float, times) -> None:
        """One inference batch: its size, its time and where the time went (StageTimes)."""
        self.inference.observe(seconds)
        self.batch_size.observe(texts)
        self.texts.inc(texts)
        self.stage_seconds["tokenize"].inc(times.tokenize)
        self.stage_seconds["assemble"].inc(times.assemble)
        self.stage_seconds["onnxruntime"].inc(times.onnxruntime)
        self.stage_seconds["postprocess"].inc(
            max(0.0, seconds - times.tokenize - times.assemble - times.onnxruntime))
        self.tokens.inc(times.tokens)
        self.padded_tokens.inc(times.padded_tokens)

    def set_model(self, version: str, sha256: str | None, source: str,
                  loaded_at: float | None = None, created_at: float | None = None) -> None:
        self.model.info({"version": version, "sha256": sha256 or "", "source": source})
        self.model_ready.set(1)
        if loaded_at is not None:
            self.model_loaded_at.set(loaded_at)
        if created_at is not None:
            self.model_created_at.set(created_at)
