"""Serving test support: tiny exported bundles and a real uvicorn server on 127.0.0.1.

Uses the project's exporter (`components.export.export_model`) when it is available and
otherwise exports a tiny random BERT directly with torch.onnx + onnxruntime quantization,
writing the bundle layout documented in components/predictor.py.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from components.io import atomic_dir, sha256_file

BUNDLE_FILES = ("model.onnx", "model.int8.onnx", "tokenizer.json", "labels.json",
                "export_config.json")


def tiny_classifier(seed: int, num_labels: int):
    """A random 2-layer BERT classifier (hidden 32); different seeds give different models."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                     num_labels=num_labels)
    model = BertForSequenceClassification(cfg).eval()
    with torch.no_grad():  # a spread-out head so the labels differ between seeds
        model.classifier.weight.mul_(50.0)
    return model


def export_tiny_bundle(out: Path, tokenizer_dir: Path, labels: list[str], seed: int,
                       max_length: int = 32) -> Path:
    """Export a tiny random classifier as a complete bundle folder at `out`."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = tiny_classifier(seed, len(labels))
    ids = torch.ones(2, 8, dtype=torch.long)
    with atomic_dir(out) as tmp:
        torch.onnx.export(model, (ids, torch.ones_like(ids)), str(tmp / "model.onnx"),
                          input_names=["input_ids", "attention_mask"], output_names=["logits"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "seq"},
                                        "attention_mask": {0: "batch", 1: "seq"},
                                        "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
        quantize_dynamic(str(tmp / "model.onnx"), str(tmp / "model.int8.onnx"),
                         weight_type=QuantType.QInt8)
        (tmp / "tokenizer.json").write_bytes((tokenizer_dir / "tokenizer.json").read_bytes())
        (tmp / "labels.json").write_text(json.dumps({"labels": labels}))
        (tmp / "export_config.json").write_text(json.dumps(
            {"max_length": max_length, "pad_token_id": 0, "opset": 17, "seed": seed}))
        manifest = {name: sha256_file(tmp / name) for name in BUNDLE_FILES}
        (tmp / "manifest.json").write_text(json.dumps({"files": manifest}))
    return out


@contextlib.contextmanager
def running_server(app, timeout: float = 20.0) -> Iterator[str]:
    """Run `app` under a real uvicorn server on 127.0.0.1 (free port); yield its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05):
    """Poll `predicate()` until it returns a truthy value; return it or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")
