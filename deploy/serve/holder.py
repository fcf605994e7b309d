"""Which model is served: a source that names the wanted version, and a holder that swaps.

A source answers two questions: which version should be served now (`wanted_version`),
and where its verified bundle is on disk (`fetch`). `ModelHolder.refresh` asks the
source, and when the answer changed it loads the new bundle next to the old one and then
replaces a single attribute. Readers take `holder.current` once per batch, so a batch
that started on the old model finishes on it; a failed load leaves the old model serving.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from components.config import Params
from components.evaluate.drift import REFERENCE_FILE, load_reference
from components.release.predictor import DEFAULT_SERVED, graph_sha256, served_graph
from components.task_types import Runtime, of_bundle

log = logging.getLogger("tuneline.serve")


class ModelSource(Protocol):
    description: str

    def wanted_version(self) -> str | None: ...

    def fetch(self, version: str) -> Path: ...

    # Optional: `created_at(version) -> float | None`, the version's creation time (Unix s).


class LocalBundleSource:
    """A bundle folder on disk; its version is the manifest's sha256 of the served graph.

    Re-exporting into the same folder therefore changes the version and triggers a reload.
    """

    def __init__(self, bundle_dir: str | Path) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.description = f"local:{self.bundle_dir}"

    def wanted_version(self) -> str | None:
        manifest = self.bundle_dir / "manifest.json"
        if not manifest.exists():
            raise FileNotFoundError(f"{manifest} not found: not an exported bundle folder")
        config = self.bundle_dir / "export_config.json"
        graph = served_graph(self.bundle_dir) if config.exists() else DEFAULT_SERVED
        files = json.loads(manifest.read_text())["files"]
        missing = [f for f in graph.files if f not in files]
        if missing:
            raise FileNotFoundError(f"{manifest} does not list {', '.join(missing)}")
        return f"local-{graph_sha256(graph, files)[:12]}"

    def fetch(self, version: str) -> Path:
        return self.bundle_dir

    def created_at(self, version: str) -> float | None:
        manifest = self.bundle_dir / "manifest.json"
        return manifest.stat().st_mtime if manifest.exists() else None


class RegistrySource:
    """`models:/<registry.model_name>@<alias>` in the MLflow registry of `params`.

    Versions are downloaded by number (not by alias) so an alias that moves between the
    check and the download cannot hand back a different version than the one announced.
    """

    def __init__(self, params: Params, cache_dir: str | Path, alias: str = "champion",
                 keep: int = 2) -> None:
        self.params = params
        self.alias = alias
        self.cache_dir = Path(cache_dir)
        self.keep = keep
        self.description = f"models:/{params.registry.model_name}@{alias}"

    def wanted_version(self) -> str | None:
        from components.registry.versions import get_alias_version

        return get_alias_version(self.params, self.alias)

    def fetch(self, version: str) -> Path:
        from components.registry.versions import download_bundle

        got, path = download_bundle(self.params, version, self.cache_dir / f"v{version}")
        if str(got) != str(version):
            raise RuntimeError(f"asked the registry for version {version}, got {got}")
        self._prune(keep_names={f"v{version}"})
        return Path(path)

    def created_at(self, version: str) -> float | None:
        from components.registry.tracking import get_client

        mv = get_client(self.params).get_model_version(self.params.registry.model_name, version)
        return mv.creation_timestamp / 1000 if mv.creation_timestamp else None

    def _prune(self, keep_names: set[str]) -> None:
        """Delete downloaded bundles beyond the newest `keep` (loaded sessions live in RAM)."""
        dirs = sorted((d for d in self.cache_dir.glob("v*") if d.is_dir()),
                      key=lambda d: d.stat().st_mtime, reverse=True)
        for old in dirs[self.keep:]:
            if old.name not in keep_names:
                shutil.rmtree(old, ignore_errors=True)


@dataclass(frozen=True)
class LoadedModel:
    version: str
    runtime: Runtime  # the task type's: answers per text (labels, entities, ...)
    sha256: str | None
    bundle_dir: Path
    loaded_at: float
    created_at: float | None = None
    reference: dict | None = None  # prediction distribution on the version's test split


@dataclass
class ReloadStatus:
    last_check_at: float | None = None
    last_error: str | None = None
    failed_version: str | None = None
    failures_in_row: int = 0
    retry_at: float = 0.0
    reloads: int = 0
    failures: int = 0


class ModelHolder:
    """Holds the served model and swaps it when the source names a new version."""

    def __init__(self, source: ModelSource, threads: int = 2, metrics=None,
                 call_cost_tokens: int = 64, max_rows: int = 32,
                 retry_base_s: float = 10.0, spinning: bool = False, monitor=None) -> None:
        self.source = source
        self.monitor = monitor  # PredictionMonitor: told about each version swapped in
        # Busy-waiting ORT workers cut latency when the process is alone on its cores, but
        # steal CPU from the HTTP event loop when it is not.
        self.session_config = {} if spinning else {"session.intra_op.allow_spinning": "0"}
        self.retry_base_s = retry_base_s
        self.threads = threads
        self.call_cost_tokens = call_cost_tokens
        self.max_rows = max_rows
        self.metrics = metrics
        self.current: LoadedModel | None = None
        self.status = ReloadStatus()
        self._lock = threading.Lock()  # one refresh at a time; readers never take it

    def refresh(self) -> bool:
        """Load the source's wanted version if it differs from the served one.

        Returns True when a new model was swapped in. Never raises: errors are recorded in
        `status` (and metrics) and the current model keeps serving.
        """
        with self._lock:
            self.status.last_check_at = time.time()
            wanted = None
            try:
                wanted = self.source.wanted_version()
                if wanted is None:
                    if self.current is None:
                        self.status.last_error = f"{self.source.description}: no such version yet"
                    return False
                if self.current is not None and wanted == self.current.version:
                    return False
                if wanted == self.status.failed_version and time.time() < self.status.retry_at:
                    return False  # back off: a broken version is retried less and less often
                self._swap_in(wanted)
                return True
            except Exception as exc:  # keep serving the old model whatever went wrong
                self._record_failure(exc, wanted)
                return False

    def _load(self, bundle: Path) -> Runtime:
        """The bundle's runtime, chosen by the task type its export_config.json names."""
        config = json.loads((Path(bundle) / "export_config.json").read_text())
        runtime = of_bundle(config).load_runtime(
            bundle, threads=self.threads, verify=True, session_config=self.session_config,
            call_cost_tokens=self.call_cost_tokens, max_rows=self.max_rows)
        runtime.warm_up()  # first run allocates; keep that off the request path
        return runtime

    def _swap_in(self, version: str) -> None:
        t0 = time.perf_counter()
        bundle = self.source.fetch(version)
        runtime = self._load(Path(bundle))
        reference = (self._reference(Path(bundle), runtime.labels) if runtime.distribution
                     else None)
        created = self._created_at(version)
        loaded = LoadedModel(version, runtime, runtime.sha256, Path(bundle), time.time(),
                             created, reference)
        if self.monitor is not None:
            self.monitor.set_version(version, runtime.labels, reference)
        old = self.current
        self.current = loaded  # the swap: one reference assignment
        self.status.reloads += 1
        self.status.last_error = None
        self.status.failed_version = None
        self.status.failures_in_row = 0
        if self.metrics is not None:
            self.metrics.reloads.labels("success").inc()
            self.metrics.reload_failing.set(0)
            self.metrics.set_model(version, runtime.sha256, self.source.description,
                                   loaded.loaded_at, created)
        log.info("serving version %s (%s) after %.2fs load; previous %s", version,
                 self.source.description, time.perf_counter() - t0,
                 old.version if old else None)

    def _created_at(self, version: str) -> float | None:
        """The source's creation time of `version`; None when it has none or cannot say."""
        created_at = getattr(self.source, "created_at", None)
        if created_at is None:
            return None
        try:
            return created_at(version)
        except Exception as exc:  # an age metric is not worth failing a load for
            log.warning("creation time of version %s unknown: %s", version, exc)
            return None

    @staticmethod
    def _reference(bundle: Path, labels: list[str]) -> dict | None:
        """The version's prediction reference, if it came with a valid one.

        A missing or broken reference costs the drift signal, not the model: it is logged
        (and `tuneline_prediction_reference_loaded` is 0), and the version is served.
        """
        path = bundle / REFERENCE_FILE
        if not path.exists():
            log.warning("%s has no %s: no drift PSI for this version", bundle, REFERENCE_FILE)
            return None
        try:
            return load_reference(path, labels)
        except (ValueError, OSError) as exc:
            log.error("ignoring the prediction reference of %s: %s", bundle, exc)
            return None

    def _record_failure(self, exc: Exception, version: str | None) -> None:
        self.status.failures += 1
        if version != self.status.failed_version:
            self.status.failures_in_row = 0
        self.status.failed_version = version
        self.status.failures_in_row += 1
        # 1, 2, 4 ... 32 reload intervals between attempts at the same broken version
        delay = self.retry_base_s * min(2 ** (self.status.failures_in_row - 1), 32)
        self.status.retry_at = time.time() + delay
        self.status.last_error = f"{type(exc).__name__}: {exc}"
        if self.metrics is not None:
            self.metrics.reloads.labels("failure").inc()
            self.metrics.reload_failing.set(1)
        log.error("model load from %s failed, keeping version %s: %s", self.source.description,
                  self.current.version if self.current else None, self.status.last_error)
