"""Open a bundle's served graph with the runtime its export_config.json names.

`load_classifier` is the one way to open "the served graph of a bundle": the server's task
runtimes, the MLflow pyfunc, the gate (challenger and champion re-scoring) and the
registry's checks all go through it or through `served_graph`. A runtime is a
`BundleClassifier` subclass (same tokenizer, `encode`, `logits`, `predict`; its own
`run(feeds)`), registered here by the name `served.runtime` uses. ONNX Runtime is always
there; OpenVINO is an optional extra (`pip install -e '.[openvino]'`), imported only when a
bundle names it, so a server of ONNX Runtime bundles neither needs nor loads it.
"""

from __future__ import annotations

from pathlib import Path

from components.release.openvino_runtime import OpenVinoClassifier
from components.release.predictor import BundleClassifier, OnnxClassifier, ServedGraph, served_graph

RUNTIMES: dict[str, type[BundleClassifier]] = {
    OnnxClassifier.platform: OnnxClassifier,
    OpenVinoClassifier.platform: OpenVinoClassifier,
}


def load_classifier(bundle_dir: str | Path, graph: ServedGraph | None = None, *,
                    threads: int = 2, verify: bool = True,
                    session_config: dict[str, str] | None = None) -> BundleClassifier:
    """The bundle's served graph (or `graph`) opened with its runtime.

    Raises:
        ValueError: the runtime is unknown.
        BundleIntegrityError: with `verify`, a file differs from the manifest.
    """
    graph = graph or served_graph(bundle_dir)
    try:
        cls = RUNTIMES[graph.runtime]
    except KeyError:
        raise ValueError(f"{bundle_dir}: unknown runtime {graph.runtime!r} for "
                         f"{graph.file}; known: {', '.join(sorted(RUNTIMES))}") from None
    return cls(bundle_dir, graph, threads=threads, verify=verify, session_config=session_config)
