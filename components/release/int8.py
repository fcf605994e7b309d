"""int8 candidates built from the bundle's fp32 graph, and the rule that picks the served one.

Each candidate is a graph file set, the runtime that runs it, and a builder:

    ort_dynamic     ONNX Runtime dynamic int8 (weights int8, activations scaled per batch):
                    always built; the reference and the fallback
    ort_static      ONNX Runtime static QDQ int8 of the MatMuls, activation scales
                    calibrated (percentile) on training texts
    openvino_int8   NNCF post-training int8 (transformer preset) calibrated on the same
                    texts, run by OpenVINO (the optional `.[openvino]` extra)

Export builds those `export.int8_candidates` lists, measures each like the shipped graph
(parity on the test split, batch-1 and batch-32 latency) and judges it with the gate's int8
rules. `choose_served` keeps ort_dynamic unless another candidate passes those rules, is
faster at batch 32 by `export.min_speedup`, and is no slower one text at a time than
`export.max_b1_latency_ratio` times ort_dynamic: the server batches under load, but a
lone request must not pay for it.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.config import ExportConfig
from components.release.predictor import (
    DEFAULT_SERVED,
    FP32_MODEL,
    INT8_MODEL,
    OnnxClassifier,
    ServedGraph,
)

log = logging.getLogger(__name__)
BASELINE = "ort_dynamic"
STATIC_FILE = "model.int8.static.onnx"
OPENVINO_FILES = ("openvino_int8.xml", "openvino_int8.bin")
CALIBRATION_BATCH = 16


@dataclass(frozen=True)
class Int8Candidate:
    """One int8 graph export can serve: what it is, what it needs, how to build it."""

    graph: ServedGraph
    # build(fp32 graph, folder to write the graph's files in, calibration feeds, config)
    build: Callable[[Path, Path, list[dict[str, np.ndarray]] | None, ExportConfig],
                    dict[str, Any]]
    calibrated: bool = False            # needs calibration feeds (training texts)
    modules: tuple[str, ...] = ()       # optional packages it needs (an extra)

    @property
    def name(self) -> str:
        return self.graph.candidate

    def missing(self) -> list[str]:
        return [m for m in self.modules if importlib.util.find_spec(m) is None]


def quantize_int8(fp32_path: Path, int8_path: Path, per_channel: bool) -> dict[str, Any]:
    """Dynamic int8 quantization of the MatMul / Attention / embedding weights (activations
    are quantized at run time, one scale per tensor)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # DefaultTensorType: the fused contrib ops carry no type information for the quantizer.
    quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8,
                     per_channel=per_channel,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return {"method": "dynamic", "weight_type": "QInt8", "per_channel": per_channel}


def _build_ort_dynamic(fp32: Path, out: Path, feeds: Any, cfg: ExportConfig) -> dict[str, Any]:
    return quantize_int8(fp32, out / INT8_MODEL, cfg.per_channel)


def _build_ort_static(fp32: Path, out: Path, feeds: list[dict[str, np.ndarray]],
                      cfg: ExportConfig) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    # MatMul only: the fused Attention / EmbedLayerNormalization ops have no QDQ kernels.
    quantize_static(str(fp32), str(out / STATIC_FILE), Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.Percentile,
                    op_types_to_quantize=["MatMul"],
                    extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT,
                                   "ActivationSymmetric": True})
    return {"method": "static_qdq", "weight_type": "QInt8", "activation_type": "QInt8",
            "calibration": "percentile", "calibration_rows": _rows(feeds)}


def _build_openvino_int8(fp32: Path, out: Path, feeds: list[dict[str, np.ndarray]],
                         cfg: ExportConfig) -> dict[str, Any]:
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp32))
    quantized = nncf.quantize(model, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(feeds))
    ov.save_model(quantized, str(out / OPENVINO_FILES[0]))
    return {"method": "nncf_ptq", "preset": "transformer", "calibration_rows": _rows(feeds),
            "openvino": ov.__version__, "nncf": nncf.__version__}


def _rows(feeds: list[dict[str, np.ndarray]]) -> int:
    return int(sum(f["input_ids"].shape[0] for f in feeds))


CANDIDATES: dict[str, Int8Candidate] = {c.name: c for c in (
    Int8Candidate(DEFAULT_SERVED, _build_ort_dynamic),
    Int8Candidate(ServedGraph("ort_static", "onnxruntime", (STATIC_FILE,)), _build_ort_static,
                  calibrated=True),
    Int8Candidate(ServedGraph("openvino_int8", "openvino", OPENVINO_FILES), _build_openvino_int8,
                  calibrated=True, modules=("openvino", "nncf")),
)}


def calibration_feeds(bundle: Path, texts: list[str], rows: int
                      ) -> list[dict[str, np.ndarray]]:
    """Equal batches of (at most) the first `rows` texts, padded to the bundle's max_length
    (static activation scales must cover every length the model will see)."""
    clf = OnnxClassifier(bundle, FP32_MODEL, threads=1, verify=False)
    clf.tokenizer.enable_padding(pad_id=int((clf.tokenizer.padding or {}).get("pad_id", 0)),
                                 length=clf.max_length)
    texts = texts[:rows]
    # Whole batches only: ONNX Runtime's percentile calibrator stacks every batch's outputs.
    batch = min(CALIBRATION_BATCH, len(texts))
    return [clf.encode(texts[i: i + batch])
            for i in range(0, len(texts) - batch + 1, batch)]


def build_candidates(bundle: Path, cfg: ExportConfig, calibration_texts: list[str] | None
                     ) -> tuple[dict[str, Int8Candidate], dict[str, dict[str, Any]]]:
    """Build every candidate of `export.int8_candidates` that can be built here.

    Returns:
        (built candidates by name, {name: how it was built, or why it was skipped}).
    """
    built: dict[str, Int8Candidate] = {}
    notes: dict[str, dict[str, Any]] = {}
    feeds = None
    for name in dict.fromkeys([BASELINE, *cfg.int8_candidates]):
        candidate = CANDIDATES[name]
        if missing := candidate.missing():
            notes[name] = {"skipped": f"needs {', '.join(missing)} (pip install "
                                      "'tuneline[openvino]')"}
        elif candidate.calibrated and not calibration_texts:
            notes[name] = {"skipped": "needs calibration texts (the training split)"}
        else:
            if candidate.calibrated and feeds is None:
                feeds = calibration_feeds(bundle, calibration_texts, cfg.calibration_texts)
            notes[name] = candidate.build(bundle / FP32_MODEL, bundle, feeds, cfg)
            built[name] = candidate
            continue
        log.warning("int8 candidate %s skipped: %s", name, notes[name]["skipped"])
    return built, notes


def summarize(result: dict[str, Any], rules: list[dict[str, Any]], size_mb: float
              ) -> dict[str, Any]:
    """The figures a candidate is chosen on (from the task's parity measurement)."""
    return {"b1_p50_ms": result["int8_b1_p50_ms"],
            "b32_texts_per_s": result["int8_b32_texts_per_s"],
            "accuracy": result["accuracy_int8"], "agreement": result["int8_agreement"],
            "size_mb": size_mb,
            "passes_int8_rules": all(r["passed"] for r in rules),
            "int8_rules": {r["name"]: r["value"] for r in rules}}


def choose_served(figures: dict[str, dict[str, Any]], cfg: ExportConfig) -> tuple[str, str]:
    """The candidate to serve and why (see the module docstring for the rule)."""
    base = figures[BASELINE]
    eligible, reasons = [], []
    for name, f in figures.items():
        if name == BASELINE:
            continue
        speed = f["b32_texts_per_s"] / base["b32_texts_per_s"]
        b1 = f["b1_p50_ms"] / base["b1_p50_ms"]
        if not f["passes_int8_rules"]:
            reasons.append(f"{name} fails the gate's int8 rules")
        elif speed < cfg.min_speedup:
            reasons.append(f"{name} batch-32 throughput {speed:.2f}x < "
                           f"export.min_speedup={cfg.min_speedup:g}")
        elif b1 > cfg.max_b1_latency_ratio:
            reasons.append(f"{name} one-text latency {b1:.2f}x > "
                           f"export.max_b1_latency_ratio={cfg.max_b1_latency_ratio:g}")
        else:
            eligible.append((f["b32_texts_per_s"], name))
            reasons.append(f"{name} {speed:.2f}x at batch 32, {b1:.2f}x one text at a time")
    if not eligible:
        return BASELINE, "; ".join(reasons) or "the only candidate"
    return max(eligible)[1], "; ".join(reasons)
