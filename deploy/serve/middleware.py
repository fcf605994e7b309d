"""Plain ASGI middleware: per-request metrics, the body-size cap, in-flight counting.

Written against raw ASGI rather than Starlette's BaseHTTPMiddleware because it sits on
every request of a latency-sensitive path and only needs to see the response status.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from deploy.serve.batcher import MicroBatcher
from deploy.serve.metrics import ServeMetrics
from deploy.serve.predict import REASON_KEY, respond
from deploy.serve.v2 import INFER_ROUTE, infer_path

PREDICT_PATH = "/v1/predict"
_ROUTES = {PREDICT_PATH, "/healthz", "/readyz", "/metrics", "/v2", "/v2/health/live",
           "/v2/health/ready"}
# The reason of a status unless the handler names another (a full queue: 503 "overloaded").
_REASONS = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
            408: "request_timeout", 413: "too_large", 422: "invalid_request", 500: "internal",
            503: "not_ready", 504: "deadline_exceeded"}


class ObserveMiddleware:
    """Time and count requests; reject oversized predict bodies before they are read."""

    def __init__(self, app, metrics: ServeMetrics, batcher: MicroBatcher, max_body: int,
                 predict, infer) -> None:
        self.app = app
        self.metrics = metrics
        self.batcher = batcher
        self.max_body = max_body
        # The ASGI handlers of the two inference routes: POST /v1/predict
        # (deploy.serve.predict) and the Open Inference Protocol's /infer (deploy.serve.v2).
        self.handlers = {PREDICT_PATH: predict, INFER_ROUTE: infer}
        self._children: dict[tuple[str, int, str | None], tuple] = {}

    async def __call__(self, scope: dict[str, Any], receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self._route(scope["path"])
        t0 = time.perf_counter()
        status = 500  # what the client sees if the app raises before responding

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            handler = self.handlers.get(route)
            if handler is not None and self._too_large(scope):
                await self._reject_size(send_status)
            elif handler is not None:
                await self._predict(handler, scope, receive, send_status)
            else:
                await self.app(scope, receive, send_status)
        finally:
            self._observe(route, status, scope.get(REASON_KEY), time.perf_counter() - t0)

    @staticmethod
    def _route(path: str) -> str:
        """The metrics label of `path`: the route, every model's /infer as one label."""
        if path in _ROUTES:
            return path
        return INFER_ROUTE if infer_path(path) else "other"

    async def _predict(self, handler, scope: dict[str, Any], receive, send) -> None:
        # The batcher holds a batch open only while other predict requests are in flight.
        self.batcher.enter()
        try:
            await handler(scope, receive, send)
        finally:
            self.batcher.leave()

    def _too_large(self, scope: dict[str, Any]) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    return int(value) > self.max_body
                except ValueError:
                    return False
        return False

    async def _reject_size(self, send) -> None:
        await respond(send, 413, orjson.dumps({
            "error": f"request body larger than {self.max_body} bytes "
                     "(serve.max_body_bytes)"}))

    def _observe(self, route: str, status: int, reason: str | None, seconds: float) -> None:
        # Metric children per (route, status, reason), looked up once: labels() takes a
        # lock and builds tuples, on every request of the hot path otherwise.
        children = self._children.get((route, status, reason))
        if children is None:
            children = self._children[(route, status, reason)] = (
                self.metrics.requests.labels(route, str(status)),
                self.metrics.latency.labels(route),
                self.metrics.errors.labels(reason or _REASONS.get(status, f"http_{status}"))
                if status >= 400 else None)
        requests, latency, errors = children
        requests.inc()
        latency.observe(seconds)
        if errors is not None:
            errors.inc()
