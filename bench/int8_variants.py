"""int8 graphs beside the shipped dynamic one, built from the bundle's fp32 graph.

    ort_dynamic     the bundle's model.int8.onnx (what export ships today)
    ort_static      ONNX Runtime static QDQ int8: MatMul weights per channel, activations
                    with scales calibrated (percentile) on training texts
    openvino_fp32   the bundle's fp32 graph run by OpenVINO
    openvino_int8   NNCF post-training int8 of that graph (transformer preset), calibrated
                    on the same training texts, run by OpenVINO

OpenVINO and NNCF are optional (`pip install -e '.[openvino]'`); without them only the
ONNX Runtime variants are built. Every variant is read through the bundle's tokenizer, so
token ids are identical across variants.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np


def openvino_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("openvino", "nncf"))


def variant_names() -> list[str]:
    names = ["ort_dynamic", "ort_static"]
    return names + (["openvino_fp32", "openvino_int8"] if openvino_available() else [])


def build(bundle: Path, out: Path, train_texts: list[str]) -> dict[str, float]:
    """Write the calibrated variants into `out` with export's own candidate builders
    (`components.release.int8`); return each one's build seconds."""
    import time

    from components.config import load_params
    from components.release.int8 import CANDIDATES, calibration_feeds
    from components.release.predictor import FP32_MODEL

    out.mkdir(parents=True, exist_ok=True)
    cfg = load_params().export
    feeds = calibration_feeds(bundle, train_texts, cfg.calibration_texts)
    seconds = {}
    for name in ["ort_static"] + (["openvino_int8"] if openvino_available() else []):
        t0 = time.perf_counter()
        CANDIDATES[name].build(bundle / FP32_MODEL, out, feeds, cfg)
        seconds[name] = time.perf_counter() - t0
    return seconds


class Runner:
    """`logits(texts, batch_size)` of one variant, tokenized by the bundle's tokenizer."""

    def __init__(self, bundle: Path, variants_dir: Path, name: str, threads: int) -> None:
        from components.release.int8 import OPENVINO_FILES, STATIC_FILE
        from components.release.predictor import FP32_MODEL, INT8_MODEL, OnnxClassifier

        files = {"ort_fp32": bundle / FP32_MODEL, "ort_dynamic": bundle / INT8_MODEL,
                 "ort_static": variants_dir / STATIC_FILE,
                 "openvino_fp32": bundle / FP32_MODEL,
                 "openvino_int8": variants_dir / OPENVINO_FILES[0]}
        self.path = files[name]
        # The tokenizer (and, for the two shipped graphs, the session) of the bundle.
        self.clf = OnnxClassifier(bundle, INT8_MODEL if name == "ort_dynamic" else FP32_MODEL,
                                  threads=threads, verify=False)
        if name == "ort_static":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            session = ort.InferenceSession(str(self.path), opts,
                                           providers=["CPUExecutionProvider"])
            self.run = lambda feeds: session.run(["logits"], feeds)[0]
        elif name.startswith("openvino"):
            import openvino as ov

            compiled = ov.Core().compile_model(
                str(self.path), "CPU",
                {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
            self.run = lambda feeds: compiled(feeds)[0]
        else:
            self.run = lambda feeds: self.clf.session.run(["logits"], feeds)[0]

    def logits(self, texts: list[str], batch_size: int) -> np.ndarray:
        return np.concatenate([np.asarray(self.run(self.clf.encode(texts[i: i + batch_size])),
                                          dtype=np.float32)
                               for i in range(0, len(texts), batch_size)])

    def size_mb(self) -> float:
        files = [self.path, self.path.with_suffix(".bin")]
        return sum(p.stat().st_size for p in files if p.exists()) / 2**20


def parity(reference: np.ndarray, logits: np.ndarray, y_true: list[int],
           gate: Any) -> dict[str, Any]:
    """The gate's int8 rules applied to a variant against the ONNX Runtime fp32 logits."""
    from components.release.export import parity_report
    from components.release.gate import int8_rules

    report = parity_report(reference, reference, logits, y_true)
    flips, change = int8_rules(report, gate)
    return {"accuracy": report["accuracy_int8"], "agreement": report["int8_agreement"],
            "disagreements": report["int8_disagreements"],
            "flip_max_fp32_probability": report["int8_flip_max_fp32_probability"],
            "confident_flips": flips["value"], "accuracy_change": change["value"],
            "accuracy_change_ci": [change["ci_low"], change["ci_high"]],
            "passes_gate_int8_rules": bool(flips["passed"] and change["passed"])}
