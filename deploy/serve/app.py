"""The serving app: FastAPI over ONNX Runtime + `tokenizers`. Never imports torch.

Routes: POST /v1/predict, GET /healthz (alive: no batch stuck), GET /readyz (a model is
loaded and no batch stuck, plus reload details), GET /metrics (Prometheus), and the Open
Inference Protocol (KServe V2) routes under /v2 (`deploy.serve.v2`). Limits come from the
`serve:` params section; a bearer token is required on /v1/predict and /v2/.../infer when
`TUNELINE_API_TOKEN` is set (probes, metadata and metrics stay open so the cluster can
reach them).

A batch running longer than `serve.stuck_batch_s` fails both probes: ONNX Runtime cannot
be interrupted from Python, so a hung run holds its worker thread until the process
ends, and only a restart gives the capacity back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from components.config import Params
from components.release.inference import StageTimes
from deploy.serve.auth import token_from_env
from deploy.serve.batcher import MicroBatcher
from deploy.serve.holder import LocalBundleSource, ModelHolder, ModelSource, RegistrySource
from deploy.serve.metrics import ServeMetrics
from deploy.serve.middleware import ObserveMiddleware
from deploy.serve.monitor import PredictionMonitor
from deploy.serve.predict import (
    ModelNotReady,
    PredictEndpoint,
    RequestError,
    describe_validation,
    internal_error,
)
from deploy.serve.v2 import InferEndpoint, check_model, model_metadata

log = logging.getLogger("tuneline.serve")


def build_source(params: Params, bundle_dir: str | Path | None = None, alias: str = "champion",
                 cache_dir: str | Path | None = None) -> ModelSource:
    """A local bundle folder when given, otherwise `models:/<name>@<alias>` from MLflow."""
    if bundle_dir is not None:
        return LocalBundleSource(bundle_dir)
    cache = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="tuneline-serve-"))
    return RegistrySource(params, cache, alias=alias)


def create_app(params: Params, *, bundle_dir: str | Path | None = None, alias: str = "champion",
               cache_dir: str | Path | None = None, api_token: str | None = None,
               source: ModelSource | None = None) -> FastAPI:
    """Build the serving app.

    Args:
        params: project params; the `serve:` section sets limits, batching, threads and the
            reload interval, `registry:` says where @alias lives.
        bundle_dir: serve this exported bundle folder instead of the registry.
        alias: registry alias to follow (default @champion).
        cache_dir: where registry versions are downloaded (default: a new temp folder).
        api_token: bearer token required on /v1/predict (default: $TUNELINE_API_TOKEN;
            empty means no auth).
        source: a ready-made model source (overrides bundle_dir/alias/cache_dir).
    """
    cfg = params.serve
    token = api_token if api_token is not None else token_from_env()
    metrics = ServeMetrics()
    monitor = PredictionMonitor(params.monitoring)
    metrics.registry.register(monitor)
    holder = ModelHolder(source or build_source(params, bundle_dir, alias, cache_dir),
                         threads=cfg.threads, metrics=metrics,
                         call_cost_tokens=cfg.bucket_call_cost_tokens, max_rows=cfg.max_batch,
                         retry_base_s=cfg.reload_interval_s, spinning=cfg.ort_spinning,
                         monitor=monitor)
    batcher = MicroBatcher(_infer_fn(holder, metrics, monitor), cfg.max_batch, cfg.max_wait_ms,
                           workers=cfg.workers, join_gap_ms=cfg.join_gap_ms,
                           max_queued_texts=cfg.max_queued_texts)
    metrics.watch_batcher(batcher)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        await batcher.start()
        poller = asyncio.create_task(_poll(holder, cfg.reload_interval_s), name="tuneline-reload")
        try:
            yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            await batcher.stop()

    app = FastAPI(title="tuneline classifier", lifespan=lifespan)
    app.state.holder, app.state.batcher, app.state.metrics = holder, batcher, metrics
    app.state.monitor = monitor
    max_body = cfg.max_body_bytes
    limits = dict(token=token or None, max_body=max_body, max_texts=cfg.max_texts,
                  max_chars=cfg.max_text_chars, timeout_s=cfg.request_timeout_s,
                  retry_after_s=cfg.retry_after_s)
    is_ready = lambda: holder.current is not None  # noqa: E731
    predict = PredictEndpoint(batcher, is_ready, **limits)
    infer = InferEndpoint(batcher, is_ready, model_name=params.registry.model_name,
                          current=lambda: holder.current, **limits)
    app.add_middleware(ObserveMiddleware, metrics=metrics, batcher=batcher, max_body=max_body,
                       predict=predict, infer=infer)
    _add_error_handlers(app)
    _add_routes(app, cfg.stuck_batch_s)
    _add_v2_routes(app, params.registry.model_name, cfg.stuck_batch_s)
    return app


def _infer_fn(holder: ModelHolder, metrics: ServeMetrics, monitor: PredictionMonitor
              ) -> Callable:
    def infer(texts: list[str]):
        model = holder.current  # one snapshot per batch: a swap mid-batch does not affect it
        if model is None:
            raise ModelNotReady("no model loaded yet")
        t0 = time.perf_counter()
        times = StageTimes()
        answers = model.runtime.answer(texts, times)
        if model.runtime.distribution:  # class probabilities: watched for drift
            monitor.observe(model.version, answers)
        metrics.observe_batch(len(texts), time.perf_counter() - t0, times)
        return (model.version, model.runtime), answers

    return infer


async def _poll(holder: ModelHolder, interval_s: float) -> None:
    """Check the source now and every `interval_s`; loads run off the event loop."""
    while True:
        await asyncio.to_thread(holder.refresh)
        await asyncio.sleep(interval_s)


def _add_routes(app: FastAPI, stuck_batch_s: float) -> None:
    holder: ModelHolder = app.state.holder
    batcher: MicroBatcher = app.state.batcher

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        if stuck_for(batcher, stuck_batch_s):
            return JSONResponse({"status": "stuck",
                                 "batch_running_s": round(batcher.running_for(), 3)},
                                status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        body = readiness(holder, batcher, stuck_batch_s)
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(app.state.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)


def stuck_for(batcher: MicroBatcher, stuck_batch_s: float) -> bool:
    """Whether a batch has run past `stuck_batch_s` (logged: only a restart frees it)."""
    running = batcher.running_for()
    if running > stuck_batch_s:
        log.error("liveness: a batch has been running %.1f s (serve.stuck_batch_s=%g)",
                  running, stuck_batch_s)
    return running > stuck_batch_s


def _add_v2_routes(app: FastAPI, model_name: str, stuck_batch_s: float) -> None:
    """The Open Inference Protocol's health and metadata routes (its /infer is in the
    middleware, beside /v1/predict)."""
    holder: ModelHolder = app.state.holder
    batcher: MicroBatcher = app.state.batcher

    def answer(body: dict, ok: bool) -> JSONResponse:
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/v2")
    async def server_metadata() -> JSONResponse:
        return JSONResponse({"name": "tuneline", "version": _package_version(),
                             "extensions": []})

    @app.get("/v2/health/live")
    async def live() -> JSONResponse:
        ok = not stuck_for(batcher, stuck_batch_s)
        return answer({"live": ok}, ok)

    @app.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        ok = readiness(holder, batcher, stuck_batch_s)["ready"]
        return answer({"ready": ok}, ok)

    def named_model(request: Request) -> tuple[Any, JSONResponse | None]:
        """The loaded model, or the 404 for a path naming another model or version."""
        loaded = holder.current
        try:
            check_model(request.url.path, model_name, loaded.version if loaded else None)
        except RequestError as exc:
            return loaded, JSONResponse({"error": exc.message}, status_code=exc.status)
        return loaded, None

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def metadata(request: Request, name: str, version: str | None = None
                       ) -> JSONResponse:
        loaded, refused = named_model(request)
        if refused is not None:
            return refused
        if loaded is None:
            return JSONResponse({"error": "no model loaded yet; see /v2/health/ready"},
                                status_code=503)
        return JSONResponse(model_metadata(model_name, loaded))

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(request: Request, name: str, version: str | None = None
                          ) -> JSONResponse:
        _, refused = named_model(request)
        if refused is not None:
            return refused
        ok = readiness(holder, batcher, stuck_batch_s)["ready"]
        return answer({"name": model_name, "ready": ok}, ok)


def _package_version() -> str:
    try:
        return package_version("tuneline")
    except PackageNotFoundError:
        return "unknown"


def readiness(holder: ModelHolder, batcher: MicroBatcher | None = None,
              stuck_batch_s: float | None = None) -> dict:
    """The /readyz body: served model, the latest reload attempt, and whether a batch is
    stuck (running longer than `stuck_batch_s`)."""
    model, status = holder.current, holder.status
    running = batcher.running_for() if batcher is not None else 0.0
    stuck = stuck_batch_s is not None and running > stuck_batch_s
    return {
        "ready": model is not None and not stuck,
        "batch_stuck": stuck,
        "batch_running_s": round(running, 3),
        "source": holder.source.description,
        "model_version": model.version if model else None,
        "sha256": model.sha256 if model else None,
        "loaded_at": model.loaded_at if model else None,
        "last_check_at": status.last_check_at,
        "last_reload_error": status.last_error,
        "failed_version": status.failed_version,
        "next_retry_at": status.retry_at if status.failed_version else None,
        "reloads": status.reloads,
        "reload_failures": status.failures,
    }


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = describe_validation(list(exc.errors()))
        return JSONResponse({"error": "invalid request: " + "; ".join(problems),
                             "problems": problems}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, _: Exception) -> JSONResponse:
        return JSONResponse(internal_error(f"{request.method} {request.url.path} failed"),
                            status_code=500)
