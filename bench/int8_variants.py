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

STATIC_FILE = "model.int8.static.onnx"
OPENVINO_INT8_FILE = "openvino_int8.xml"
CALIBRATION_TEXTS = 512
CALIBRATION_BATCH = 16


def openvino_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("openvino", "nncf"))


def variant_names() -> list[str]:
    names = ["ort_dynamic", "ort_static"]
    return names + (["openvino_fp32", "openvino_int8"] if openvino_available() else [])


def _calibration_feeds(bundle: Path, texts: list[str]) -> list[dict[str, np.ndarray]]:
    """Calibration batches padded to the bundle's max_length (static scales must cover it)."""
    from components.release.predictor import FP32_MODEL, OnnxClassifier

    clf = OnnxClassifier(bundle, FP32_MODEL, threads=1, verify=False)
    clf.tokenizer.enable_padding(pad_id=0, length=clf.max_length)
    texts = texts[:CALIBRATION_TEXTS]
    return [clf.encode(texts[i: i + CALIBRATION_BATCH])
            for i in range(0, len(texts), CALIBRATION_BATCH)]


def build(bundle: Path, out: Path, train_texts: list[str]) -> dict[str, float]:
    """Write the calibrated variants into `out`; return each one's build seconds."""
    import time

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from components.release.predictor import FP32_MODEL

    out.mkdir(parents=True, exist_ok=True)
    feeds = _calibration_feeds(bundle, train_texts)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    seconds = {}
    t0 = time.perf_counter()
    # MatMul only: the fused Attention / EmbedLayerNormalization ops have no QDQ kernels.
    quantize_static(str(bundle / FP32_MODEL), str(out / STATIC_FILE), Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.Percentile,
                    op_types_to_quantize=["MatMul"],
                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT,
                                   "ActivationSymmetric": True})
    seconds["ort_static"] = time.perf_counter() - t0
    if openvino_available():
        import nncf
        import openvino as ov

        t0 = time.perf_counter()
        model = ov.Core().read_model(str(bundle / FP32_MODEL))
        quantized = nncf.quantize(model, nncf.Dataset(feeds),
                                  model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=len(feeds) * CALIBRATION_BATCH)
        ov.save_model(quantized, str(out / OPENVINO_INT8_FILE))
        seconds["openvino_int8"] = time.perf_counter() - t0
    return seconds


class Runner:
    """`logits(texts, batch_size)` of one variant, tokenized by the bundle's tokenizer."""

    def __init__(self, bundle: Path, variants_dir: Path, name: str, threads: int) -> None:
        from components.release.predictor import FP32_MODEL, INT8_MODEL, OnnxClassifier

        files = {"ort_fp32": bundle / FP32_MODEL, "ort_dynamic": bundle / INT8_MODEL,
                 "ort_static": variants_dir / STATIC_FILE,
                 "openvino_fp32": bundle / FP32_MODEL,
                 "openvino_int8": variants_dir / OPENVINO_INT8_FILE}
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
