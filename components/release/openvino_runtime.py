"""A bundle graph run by OpenVINO (the optional `.[openvino]` extra), behind the same
interface as `OnnxClassifier`.

`openvino` is imported when such a graph is opened, never at import time: the server and
the MLflow pyfunc import this module whatever they serve, and need the package only for a
bundle whose export_config.json says `served.runtime: openvino`. That file's `openvino`
section holds how export measured the graph and how it must run:
    performance_hint      OpenVINO's LATENCY or THROUGHPUT hint
    pad_to_multiple_of    sequence lengths are padded up to a multiple of this (0: as
                          tokenized). OpenVINO's CPU plugin prepares its kernels per input
                          shape; fewer distinct shapes means it prepares them once and
                          reuses them (padding is masked out, so logits do not change).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from components.release.predictor import BundleClassifier


def pad_to_multiple(feeds: dict[str, np.ndarray], multiple: int, pad_id: int
                    ) -> dict[str, np.ndarray]:
    """input_ids / attention_mask padded on the right to a multiple of `multiple` tokens."""
    width = feeds["input_ids"].shape[1]
    extra = -width % multiple if multiple > 1 else 0
    if not extra:
        return feeds
    return {"input_ids": np.pad(feeds["input_ids"], ((0, 0), (0, extra)),
                                constant_values=pad_id),
            "attention_mask": np.pad(feeds["attention_mask"], ((0, 0), (0, extra)))}


class OpenVinoClassifier(BundleClassifier):
    """A bundle's OpenVINO IR (or ONNX) graph on the CPU plugin."""

    platform = "openvino"

    def _open(self, path: Path, threads: int, session_config: dict[str, str],
              config: dict[str, Any]) -> None:
        # session_config holds ONNX Runtime session entries: nothing here reads them.
        try:
            import openvino as ov
        except ImportError as exc:
            raise ImportError(f"{self.bundle_dir} serves an OpenVINO graph: install the "
                              "extra (pip install 'tuneline[openvino]')") from exc
        settings = config.get("openvino", {})
        self.pad_multiple = int(settings.get("pad_to_multiple_of", 0))
        self.pad_id = int(config.get("pad_token_id", 0))
        self.compiled = ov.Core().compile_model(
            str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                               "PERFORMANCE_HINT": settings.get("performance_hint", "LATENCY")})
        # An infer request runs one batch at a time; the server runs several batches at
        # once (serve.workers), so each thread gets its own request on the shared model.
        self._local = threading.local()

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        width = feeds["input_ids"].shape[1]
        if self.pad_multiple:
            feeds = pad_to_multiple(feeds, self.pad_multiple, self.pad_id)
        request.infer(feeds)
        out = np.array(request.get_output_tensor(0).data, dtype=np.float32)  # a copy
        return out[:, :width] if out.ndim == 3 else out  # per-token logits: drop the padding
