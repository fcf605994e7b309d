"""Torch-free inference on an exported bundle: `tokenizers` + ONNX Runtime only.

Used by the gate (re-scoring the champion), by parity checks and by the serving process,
which must not import torch or transformers.

Bundle layout (written by `components.release.export`):
    model.onnx          fp32; inputs input_ids, attention_mask (int64 [batch, seq]);
                        output logits (float32 [batch, num_labels])
    model.int8.onnx     the same graph, dynamically quantized to int8
    tokenizer.json      the `tokenizers` tokenizer
    labels.json         {"labels": [name, ...]}  index = class id
    export_config.json  max_length, opset, quantization settings, how the graph was made,
                        ONNX Runtime optimizers to disable, source model meta
    manifest.json       {"files": {file name: sha256}}
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.io import sha256_file

FP32_MODEL = "model.onnx"
INT8_MODEL = "model.int8.onnx"


class BundleIntegrityError(RuntimeError):
    """A bundle file is missing or its sha256 does not match the manifest."""


def verify_bundle(bundle_dir: str | Path, files: list[str] | None = None) -> dict[str, str]:
    """Check the sha256 of `files` (default: all in the manifest); return the manifest map."""
    bundle_dir = Path(bundle_dir)
    manifest_path = bundle_dir / "manifest.json"
    if not manifest_path.exists():
        raise BundleIntegrityError(f"{bundle_dir}: manifest.json is missing")
    expected = json.loads(manifest_path.read_text())["files"]
    for name in files or list(expected):
        if name not in expected:
            raise BundleIntegrityError(f"{bundle_dir}: {name} is not listed in manifest.json")
        path = bundle_dir / name
        if not path.exists():
            raise BundleIntegrityError(f"{bundle_dir}: {name} is missing")
        actual = sha256_file(path)
        if actual != expected[name]:
            raise BundleIntegrityError(
                f"{bundle_dir}: sha256 mismatch for {name}: manifest {expected[name][:12]}…, "
                f"file {actual[:12]}…"
            )
    return expected


@dataclass
class Prediction:
    label: str
    score: float
    scores: dict[str, float]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class OnnxClassifier:
    """Tokenize with `tokenizers`, run ONNX Runtime, return logits or labelled scores."""

    def __init__(self, bundle_dir: str | Path, model_file: str = INT8_MODEL,
                 threads: int = 2, verify: bool = True,
                 session_config: dict[str, str] | None = None,
                 profile_prefix: str | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.bundle_dir = Path(bundle_dir)
        files = [model_file, "tokenizer.json", "labels.json", "export_config.json"]
        self.sha256 = verify_bundle(self.bundle_dir, files)[model_file] if verify else None
        config = json.loads((self.bundle_dir / "export_config.json").read_text())
        self.max_length = int(config["max_length"])
        self.labels = list(json.loads((self.bundle_dir / "labels.json").read_text())["labels"])
        self.tokenizer = Tokenizer.from_file(str(self.bundle_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_length)
        self.tokenizer.enable_padding(pad_id=int(config.get("pad_token_id", 0)))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        for key, value in (session_config or {}).items():  # e.g. intra-op spinning off
            opts.add_session_config_entry(key, value)
        if profile_prefix:  # ONNX Runtime writes per-node timings; see session.end_profiling()
            opts.enable_profiling = True
            opts.profile_file_prefix = profile_prefix
        # Bundles name the session-time fusions to skip (slower kernels on this runtime).
        disabled = list(config.get("onnxruntime", {}).get("disabled_optimizers", []))
        self.session = ort.InferenceSession(
            str(self.bundle_dir / model_file), opts, providers=["CPUExecutionProvider"],
            disabled_optimizers=disabled)

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        encs = self.tokenizer.encode_batch_fast(list(texts))  # the ids, without offsets
        ids = np.asarray([e.ids for e in encs], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encs], dtype=np.int64)
        return {"input_ids": ids, "attention_mask": mask}

    def logits(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Logits [len(texts), num_labels] as float32."""
        out = []
        for i in range(0, len(texts), batch_size):
            feeds = self.encode(texts[i: i + batch_size])
            out.append(self.session.run(["logits"], feeds)[0])
        if not out:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)

    def predict(self, texts: list[str], batch_size: int = 64) -> list[Prediction]:
        probs = softmax(self.logits(texts, batch_size))
        preds = []
        for row in probs:
            best = int(row.argmax())
            scores = {name: float(p) for name, p in zip(self.labels, row, strict=True)}
            preds.append(Prediction(self.labels[best], float(row[best]), scores))
        return preds
