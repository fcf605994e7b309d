"""Serving test support: tiny exported bundles and a real uvicorn server on 127.0.0.1.

Bundles come from the project's exporter (`components.export.export_model`) applied to a
tiny random BERT classifier, so the served files are exactly what a real export writes.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path


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
    """Export a tiny random classifier with the project's exporter as a bundle at `out`."""
    from transformers import AutoTokenizer

    from components.config import load_params
    from components.export import export_model

    params = load_params(overrides=[f"model.max_length={max_length}", "model.num_threads=1",
                                    "export.latency_repeats=2"])
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    texts = ["the match ended in a draw", "rain is expected tomorrow", "bank stocks rallied"]
    export_model(tiny_classifier(seed, len(labels)), tokenizer, labels, out, params,
                 texts=texts, y_true=[i % len(labels) for i in range(len(texts))],
                 meta={"max_length": max_length, "seed": seed})
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
