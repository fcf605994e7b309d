"""Serving test support: tiny exported bundles and a real uvicorn server on 127.0.0.1.

Bundles come from the project's exporter (`components.release.export.export_model`) applied to a
tiny random BERT classifier, so the served files are exactly what a real export writes.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
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
    from components.release.export import export_model

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


ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m tests.serve_faults` (the container entry point with faults on cue, see
    tests/serve_faults.py) in its own process; its log goes to `<control>/server.log`."""

    def __init__(self, bundle: Path, control: Path, *args: str, host: str = "127.0.0.1",
                 env: dict[str, str] | None = None) -> None:
        control.mkdir(parents=True, exist_ok=True)
        self.control, self.port = control, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = control / "server.log"
        full_env = {k: v for k, v in os.environ.items() if k != "TUNELINE_API_TOKEN"}
        full_env.update({"TUNELINE_TEST_FAULTS": str(control), **(env or {})})
        self._log_file = open(self.log_path, "w")  # noqa: SIM115  (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.serve_faults", "--bundle", str(bundle), "--host", host,
             "--port", str(self.port), "--log-level", "warning", *args],
            cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=self._log_file)

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_ready(self, timeout: float = 90.0) -> dict:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                resp = httpx.get(self.url + "/readyz", timeout=5)
                if resp.status_code == 200:
                    return resp.json()
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server not ready within {timeout}s:\n{self.log()[-3000:]}")

    def stop(self) -> None:
        (self.control / "release").touch()  # a stalled batch must end for a clean stop
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log_file.close()


@contextlib.contextmanager
def server_process(bundle: Path, control: Path, *args: str, **kwargs) -> Iterator[ServerProcess]:
    """A ready `ServerProcess`, stopped on exit."""
    server = ServerProcess(bundle, control, *args, **kwargs)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
