"""ONNX fp32 export, int8 candidates, and parity / size / latency checks.

`export_model` works on an in-memory torch classifier; `export_bundle` is the stage entry
point that reloads a trained model folder first. The bundle layout is described in
`components.release.predictor`. Parity is measured on the test split:
    max |logit difference| torch vs ONNX Runtime fp32 (same token ids fed to both),
    argmax agreement and accuracy of int8 vs fp32.
Every int8 candidate (`components.release.int8`) is measured so and judged by the gate's
int8 rules; the one `choose_served` keeps is recorded as the bundle's served graph. The
numbers of the served graph, and every candidate's figures, are written to `parity.json`
inside the bundle (listed in the manifest) and returned, so the gate and the MLflow run
can read them.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from components.config import Params
from components.io import atomic_dir, atomic_write_json, read_json, sha256_file
from components.release.int8 import (
    BASELINE,
    CANDIDATES,
    build_candidates,
    choose_served,
    summarize,
)
from components.release.predictor import (
    FP32_MODEL,
    PARITY_FILE,
    OnnxClassifier,
    ServedGraph,
    graph_size_mb,
    latency_ms,
    served_graph,
    softmax,
)
from components.release.rules import int8_rules
from components.release.runtimes import load_classifier

log = logging.getLogger(__name__)

# Session-time fusions that would put back the kernels the exporter leaves out (see
# `_export_fused`); recorded in export_config.json for every loader of the bundle.
DISABLED_ORT_OPTIMIZERS = ["SkipLayerNormFusion", "BiasGeluFusion"]
INPUT_NAMES = ["input_ids", "attention_mask"]
# Files a registered model version carries beside its served graph (no fp32 graph:
# serving runs int8 only).
BUNDLE_FILES = ["tokenizer.json", "labels.json", "export_config.json", PARITY_FILE,
                "manifest.json"]


def served_files(bundle_dir: str | Path) -> list[str]:
    """The files a registered version of the bundle carries: its served graph's and the rest."""
    return [*served_graph(bundle_dir).files, *BUNDLE_FILES]


def _logits_only(model: Any) -> Any:
    """`model` as a module returning the logits tensor: ONNX needs a plain tensor output,
    and HF models return a ModelOutput. Built here so importing this module needs no torch."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits

    return LogitsOnly(model).eval()


def _export_dynamo(model: Any, args: tuple, path: Path, opset: int) -> None:
    """The dynamo exporter: exact on any length, but ORT's transformer fusions do not match
    its graph. It writes weights to a side file, folded back into one file here."""
    import onnx
    import torch

    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    raw = path.with_name(path.name + ".raw.onnx")
    torch.onnx.export(_logits_only(model), args, str(raw), dynamo=True,
                      opset_version=opset, input_names=INPUT_NAMES, output_names=["logits"],
                      dynamic_shapes={"input_ids": {0: batch, 1: seq},
                                      "attention_mask": {0: batch, 1: seq}})
    proto = onnx.load(str(raw))  # pulls in the external weight file
    onnx.save(proto, str(path), save_as_external_data=False)
    for leftover in raw.parent.glob(raw.name + "*"):
        leftover.unlink()


def _export_fused(model: Any, args: tuple, path: Path, opset: int) -> dict[str, int]:
    """TorchScript export with eager attention, then ONNX Runtime's transformer fusions.

    Eager attention is what the fusion patterns match (and, unlike SDPA, it does not bake
    the example's length into the mask arithmetic). Returns the fused-operator counts.
    """
    import torch
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    from components.model.unwrap import base_model_of

    base = base_model_of(model)
    before = base.config._attn_implementation
    raw = path.with_name(path.name + ".raw.onnx")
    base.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            per_token = _logits_only(model)(*args).dim() == 3  # token classification
        dynamic = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                   "logits": {0: "batch", 1: "seq"} if per_token else {0: "batch"}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on shape arithmetic it records
            torch.onnx.export(_logits_only(model), args, str(raw), dynamo=False,
                              opset_version=opset, input_names=INPUT_NAMES,
                              output_names=["logits"], dynamic_axes=dynamic)
    finally:
        base.set_attn_implementation(before)
    config = base.config
    model_type = config.model_type if config.model_type in optimizer.MODEL_TYPES else "bert"
    options = FusionOptions(model_type)
    # ONNX Runtime 1.32's CPU SkipLayerNormalization and BiasGelu kernels are slower than
    # Add + LayerNormalization and Gelu with the bias folded into the MatMul (measured: 12
    # SkipLayerNorms took 15 ms of a 70 ms MiniLM batch, the plain pair 2 ms).
    options.enable_skip_layer_norm = False
    options.enable_bias_gelu = False
    fused = optimizer.optimize_model(
        str(raw), model_type=model_type, num_heads=getattr(config, "num_attention_heads", 0),
        hidden_size=getattr(config, "hidden_size", 0), optimization_options=options,
        opt_level=0)
    fused.save_model_to_file(str(path))
    raw.unlink()
    return {k: v for k, v in fused.get_fused_operator_statistics().items() if v}


def export_onnx_fp32(model: Any, example: dict[str, Any], path: Path,
                     opset: int) -> dict[str, Any]:
    """Export `model` to one self-contained ONNX file with dynamic batch and sequence axes.

    The graph is fused for ONNX Runtime (one Attention op per layer, embeddings + LayerNorm
    in one op), which int8 then quantizes as QAttention: ~1.5x the throughput of the
    unfused graph. A model the fusing path cannot export falls back to the dynamo exporter.

    Returns:
        How the graph was made: exporter, fused-operator counts, the fallback reason.
    """
    args = (example["input_ids"], example["attention_mask"])
    try:
        fused = _export_fused(model, args, path, opset)
        return {"exporter": "torchscript+ort_fusion", "fused_ops": fused}
    except Exception as exc:  # any architecture the tracer or the fusions do not handle
        log.warning("fused ONNX export failed (%s); using the dynamo exporter", exc)
        _export_dynamo(model, args, path, opset)
        return {"exporter": "dynamo", "fused_ops": {}, "fallback_reason": repr(exc)[:300]}


def parity_report(torch_logits: np.ndarray, fp32_logits: np.ndarray,
                  int8_logits: np.ndarray, y_true: list[int]) -> dict[str, Any]:
    """Compare torch, ORT fp32 and ORT int8 logits computed on the same rows.

    Besides the summary numbers, `per_row` keeps each row's gold label, fp32 and int8
    predictions and fp32 top probability, so the gate can tell a flipped near-tie from a
    flipped confident prediction and bootstrap the int8 accuracy change.
    """
    y = np.asarray(y_true)
    fp32_pred, int8_pred = fp32_logits.argmax(1), int8_logits.argmax(1)
    acc_torch = float(np.mean(torch_logits.argmax(1) == y))
    acc_fp32, acc_int8 = float(np.mean(fp32_pred == y)), float(np.mean(int8_pred == y))
    confidence = softmax(fp32_logits.astype(np.float64)).max(axis=1)  # how sure fp32 was
    flipped = fp32_pred != int8_pred
    return {"int8_disagreements": int(flipped.sum()),
            "int8_flip_max_fp32_probability": (float(confidence[flipped].max())
                                               if flipped.any() else 0.0),
            "rows": int(len(y)), "max_logit_diff": float(np.abs(torch_logits - fp32_logits).max()),
            "int8_max_logit_diff": float(np.abs(int8_logits - fp32_logits).max()),
            "accuracy_torch": acc_torch, "accuracy_fp32": acc_fp32, "accuracy_int8": acc_int8,
            "int8_agreement": float(np.mean(fp32_pred == int8_pred)),
            "int8_accuracy_drop": acc_fp32 - acc_int8,
            "per_row": {"y": y.tolist(), "fp32_pred": fp32_pred.tolist(),
                        "int8_pred": int8_pred.tolist(),
                        "fp32_probability": [round(float(p), 5) for p in confidence]}}


def _torch_logits_on(model: Any, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        return np.concatenate([
            model(input_ids=torch.from_numpy(f["input_ids"]),
                  attention_mask=torch.from_numpy(f["attention_mask"])).logits.float().numpy()
            for f in feeds])


def measure_bundle(model: Any, bundle: Path, texts: list[str], y_true: list[int],
                   params: Params, graph: ServedGraph | None = None) -> dict[str, Any]:
    """Parity on (texts, y_true), then sizes and batch-1 / batch-32 latency of the fp32 graph
    and of the int8 `graph` (default: the bundle's served graph)."""
    threads = params.model.num_threads
    graph = graph or served_graph(bundle)
    fp32 = OnnxClassifier(bundle, FP32_MODEL, threads=threads, verify=False)
    int8 = load_classifier(bundle, graph, threads=threads, verify=False)
    bs = params.evaluate.batch_size
    # Tokenize once with the bundle's tokenizer so torch and ORT see identical token ids.
    feeds = [fp32.encode(texts[i: i + bs]) for i in range(0, len(texts), bs)]
    torch_out = _torch_logits_on(model, feeds)
    fp32_out = np.concatenate([fp32.run(f) for f in feeds])
    int8_out = np.concatenate([int8.run(f) for f in feeds])
    result: dict[str, Any] = parity_report(torch_out, fp32_out, int8_out, y_true)
    # Dynamic int8 scales activations per batch (padding included), so a row's int8 output
    # depends on its batch-mates; also report each row run alone, as at batch 1.
    alone = np.concatenate([int8.run(int8.encode([t])) for t in texts])
    result["int8_agreement_b1"] = float(np.mean(alone.argmax(1) == fp32_out.argmax(1)))
    result["accuracy_int8_b1"] = float(np.mean(alone.argmax(1) == np.asarray(y_true)))
    fp32_mb = (bundle / FP32_MODEL).stat().st_size / 2**20
    int8_mb = graph_size_mb(bundle, graph)
    result.update(size_mb_fp32=fp32_mb, size_mb_int8=int8_mb, size_ratio=int8_mb / fp32_mb)
    repeats = params.export.latency_repeats
    for name, clf in (("fp32", fp32), ("int8", int8)):
        for batch_size in (1, 32):
            lat = latency_ms(clf, texts, batch_size, repeats)
            for key, value in lat.items():
                result[f"{name}_b{batch_size}_{key}"] = value
    return result


def export_model(model: Any, tokenizer: Any, labels: list[str], out_dir: str | Path,
                 params: Params, *, texts: list[str], y_true: list[Any],
                 meta: dict[str, Any] | None = None,
                 measure: Callable[..., dict[str, Any]] | None = None,
                 calibration_texts: list[str] | None = None) -> dict[str, Any]:
    """Write the ONNX bundle for an in-memory classifier and measure it on (texts, y_true).

    Args:
        model: torch classifier in eval mode (`model(input_ids=, attention_mask=).logits`).
        tokenizer: its Hugging Face fast tokenizer (the `tokenizers` JSON is shipped).
        labels: class names, index = class id.
        out_dir: bundle folder; replaced atomically.
        params: `export`, `model.max_length`, `model.num_threads` are used.
        texts, y_true: parity rows (usually the test split), capped at
            `export.parity_max_rows`.
        meta: source model metadata copied into export_config.json (its task and window
            stride decide how the bundle is read).
        measure: `measure(model, bundle, texts, y_true, params, graph)` -> parity numbers
            of the int8 `graph`; the task type's measurement (default: `measure_bundle`,
            one label per text).
        calibration_texts: texts the calibrated int8 candidates are calibrated on (the
            training split; without them those candidates are skipped).

    Returns:
        The parity / size / latency numbers of the served graph, with every candidate's
        figures under `int8_candidates` (also in the bundle's parity.json).
    """
    from components.model.unwrap import merge_for_export

    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("export needs a fast tokenizer (tokenizer.json); got a slow one")
    if cap := params.export.parity_max_rows:
        texts, y_true = texts[:cap], y_true[:cap]
    if not texts:
        raise ValueError("export needs at least one parity row (the test split is empty)")
    model = merge_for_export(model).eval()
    max_length = (meta or {}).get("max_length", params.model.max_length)
    if not isinstance(max_length, int):
        raise ValueError("export needs the model's max_length (its folder's metadata, or a "
                         "number in model.max_length)")
    task = (meta or {}).get("task", "sequence_classification")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        # Two rows of different lengths, so neither axis gets specialised to 1 at trace time.
        example = tokenizer([texts[0], f"{texts[0]} {texts[-1]}"], padding=True,
                            truncation=True, max_length=max_length, return_tensors="pt")
        graph = export_onnx_fp32(model, example, tmp / FP32_MODEL, params.export.opset)
        tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
        atomic_write_json(tmp / "labels.json", {"labels": list(labels)})
        atomic_write_json(tmp / "export_config.json", {
            "task": task, "stride": int((meta or {}).get("stride", params.task.stride)),
            "max_length": max_length, "opset": params.export.opset,
            "pad_token_id": int(tokenizer.pad_token_id or 0),
            "graph": graph,
            # Read by OnnxClassifier: keep ONNX Runtime from re-fusing the slow kernels.
            "onnxruntime": {"disabled_optimizers": DISABLED_ORT_OPTIMIZERS},
            # Read by OpenVinoClassifier when an OpenVINO graph is served.
            "openvino": params.export.openvino.model_dump(mode="json"),
            "source": meta or {}})
        result = serve_best_int8(tmp, params, calibration_texts, lambda g: (
            measure or measure_bundle)(model, tmp, texts, y_true, params, g))
        atomic_write_json(tmp / PARITY_FILE, result)
        write_manifest(tmp)
    return result


def serve_best_int8(bundle: Path, params: Params, calibration_texts: list[str] | None,
                    measure: Callable[[ServedGraph], dict[str, Any]]) -> dict[str, Any]:
    """Build and measure the int8 candidates, judge each with the gate's int8 rules, and
    record the chosen one as the bundle's served graph (export_config.json `served`);
    the other candidates' files are removed (ort_dynamic's stays: the reference).

    Returns:
        The served graph's parity numbers, plus `int8_candidates` (every candidate's
        figures, or why it was skipped) and `served` / `served_because`.
    """
    built, notes = build_candidates(bundle, params.export, calibration_texts)
    results, figures = {}, {}
    for name, candidate in built.items():
        results[name] = measure(candidate.graph)
        rules = int8_rules(results[name], params.gate)
        figures[name] = {**summarize(results[name], rules, results[name]["size_mb_int8"]),
                         "quantization": notes[name]}
    chosen, because = choose_served(figures, params.export)
    graph = CANDIDATES[chosen].graph
    log.info("serving int8 candidate %s: %s", chosen, because)
    for name, candidate in built.items():
        if name not in (chosen, BASELINE):
            for file in candidate.graph.files:
                (bundle / file).unlink(missing_ok=True)
    config = read_json(bundle / "export_config.json")
    atomic_write_json(bundle / "export_config.json", {
        **config, "served": graph.as_json(), "quantization": notes[chosen]})
    skipped = {name: note for name, note in notes.items() if name not in built}
    return {**results[chosen], "served": graph.as_json(), "served_because": because,
            "int8_candidates": {**figures, **skipped}}


def write_manifest(bundle: Path) -> Path:
    """manifest.json: sha256 of every other file in the bundle folder."""
    files = {p.name: sha256_file(p) for p in sorted(bundle.iterdir())
             if p.is_file() and p.name != "manifest.json"}
    return atomic_write_json(bundle / "manifest.json", {"files": files})
