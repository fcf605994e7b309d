"""Torch-free inference on an exported bundle: `tokenizers` + ONNX Runtime only.

Used by the gate (re-scoring the champion), by parity checks and by the serving process,
which must not import torch or transformers.

Bundle layout (written by `components.release.export`):
    model.onnx          fp32; inputs input_ids, attention_mask (int64 [batch, seq]);
                        output logits (float32 [batch, num_labels])
    model.int8.onnx     the same graph, dynamically quantized to int8 (ONNX Runtime)
    ...                 the served int8 graph's files when export chose another candidate
                        (`components.release.int8`), e.g. openvino_int8.xml + .bin
    tokenizer.json      the `tokenizers` tokenizer
    labels.json         {"labels": [name, ...]}  index = class id
    export_config.json  max_length, opset, quantization settings, how the graph was made,
                        ONNX Runtime optimizers to disable, source model meta, and
                        `served`: {"candidate", "runtime", "files"}, the graph served and the
                        runtime that runs it (`served_graph`; absent in bundles written
                        before the choice existed: ONNX Runtime on model.int8.onnx)
    manifest.json       {"files": {file name: sha256}}

Every reader of "the served graph" (server, pyfunc, gate, registry) asks `served_graph`;
`components.release.runtimes.load_classifier` opens it with the runtime it names.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.io import sha256_file

FP32_MODEL = "model.onnx"
INT8_MODEL = "model.int8.onnx"
PARITY_FILE = "parity.json"  # export's measurements, read by the gate


@dataclass(frozen=True)
class ServedGraph:
    """The graph a bundle serves: the candidate it came from, the runtime that runs it, and
    its files (the first is the one the runtime opens; the others travel with it)."""

    candidate: str
    runtime: str
    files: tuple[str, ...]

    @property
    def file(self) -> str:
        return self.files[0]

    def as_json(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "runtime": self.runtime, "files": list(self.files)}


# What a bundle written before the runtime was chosen per bundle serves.
DEFAULT_SERVED = ServedGraph("ort_dynamic", "onnxruntime", (INT8_MODEL,))


def served_graph(bundle: str | Path | dict[str, Any]) -> ServedGraph:
    """The served graph of a bundle folder (or of its parsed export_config.json)."""
    config = (bundle if isinstance(bundle, dict)
              else json.loads((Path(bundle) / "export_config.json").read_text()))
    served = config.get("served")
    if not served:
        return DEFAULT_SERVED
    return ServedGraph(str(served["candidate"]), str(served["runtime"]),
                       tuple(str(f) for f in served["files"]))


def graph_sha256(graph: ServedGraph, shas: dict[str, str]) -> str:
    """One sha256 for the served graph from its files' sha256 (`shas`: a manifest's map).

    A one-file graph's is that file's sha256, as registered versions have always recorded.
    """
    if len(graph.files) == 1:
        return shas[graph.file]
    joined = "".join(f"{name} {shas[name]}\n" for name in graph.files)
    return hashlib.sha256(joined.encode()).hexdigest()


def graph_sha256_on_disk(bundle_dir: str | Path, graph: ServedGraph | None = None) -> str:
    """`graph_sha256` of the served graph's files as they are in `bundle_dir` (read, not
    taken from the manifest: what a registration or a download actually holds)."""
    bundle_dir = Path(bundle_dir)
    graph = graph or served_graph(bundle_dir)
    return graph_sha256(graph, {f: sha256_file(bundle_dir / f) for f in graph.files})


def graph_size_mb(bundle_dir: str | Path, graph: ServedGraph) -> float:
    return sum((Path(bundle_dir) / f).stat().st_size for f in graph.files) / 2**20


def bundle_files(graph: ServedGraph) -> list[str]:
    """The files a loader of `graph` reads (and checks against the manifest)."""
    return [*graph.files, "tokenizer.json", "labels.json", "export_config.json"]


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


class BundleClassifier:
    """Tokenize with `tokenizers`, run one graph of the bundle, return logits or labelled
    scores. A runtime subclass opens the graph (`_open`) and runs it (`run`)."""

    platform = ""  # the runtime's name, as export_config.json's `served.runtime` says it

    def __init__(self, bundle_dir: str | Path, graph: ServedGraph, threads: int = 2,
                 verify: bool = True, session_config: dict[str, str] | None = None) -> None:
        from tokenizers import Tokenizer

        self.bundle_dir = Path(bundle_dir)
        self.graph = graph
        manifest = verify_bundle(self.bundle_dir, bundle_files(graph)) if verify else None
        self.sha256 = graph_sha256(graph, manifest) if manifest is not None else None
        config = json.loads((self.bundle_dir / "export_config.json").read_text())
        self.max_length = int(config["max_length"])
        self.labels = list(json.loads((self.bundle_dir / "labels.json").read_text())["labels"])
        self.tokenizer = Tokenizer.from_file(str(self.bundle_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_length)
        self.tokenizer.enable_padding(pad_id=int(config.get("pad_token_id", 0)))
        self._open(self.bundle_dir / graph.file, threads, session_config or {}, config)

    def _open(self, path: Path, threads: int, session_config: dict[str, str],
              config: dict[str, Any]) -> None:
        raise NotImplementedError

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Logits of one batch of token ids (input_ids, attention_mask)."""
        raise NotImplementedError

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        encs = self.tokenizer.encode_batch_fast(list(texts))  # the ids, without offsets
        ids = np.asarray([e.ids for e in encs], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encs], dtype=np.int64)
        return {"input_ids": ids, "attention_mask": mask}

    def logits(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Logits [len(texts), num_labels] as float32."""
        out = []
        for i in range(0, len(texts), batch_size):
            out.append(self.run(self.encode(texts[i: i + batch_size])))
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


class OnnxClassifier(BundleClassifier):
    """A graph of the bundle on ONNX Runtime: by default the served one; or `model_file`,
    a file name (e.g. FP32_MODEL for parity) or a ServedGraph."""

    platform = "onnxruntime"

    def __init__(self, bundle_dir: str | Path, model_file: str | ServedGraph | None = None,
                 threads: int = 2, verify: bool = True,
                 session_config: dict[str, str] | None = None,
                 profile_prefix: str | None = None) -> None:
        if isinstance(model_file, ServedGraph):
            graph = model_file
        elif model_file is None:
            graph = served_graph(bundle_dir)
        else:
            graph = ServedGraph(model_file, self.platform, (model_file,))
        if graph.runtime != self.platform:
            raise ValueError(f"{bundle_dir} serves a {graph.runtime} graph; open it with "
                             "components.release.runtimes.load_classifier")
        self.profile_prefix = profile_prefix
        super().__init__(bundle_dir, graph, threads, verify, session_config)

    def _open(self, path: Path, threads: int, session_config: dict[str, str],
              config: dict[str, Any]) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        for key, value in session_config.items():  # e.g. intra-op spinning off
            opts.add_session_config_entry(key, value)
        if self.profile_prefix:  # ONNX Runtime writes per-node timings: session.end_profiling()
            opts.enable_profiling = True
            opts.profile_file_prefix = self.profile_prefix
        # Bundles name the session-time fusions to skip (slower kernels on this runtime).
        disabled = list(config.get("onnxruntime", {}).get("disabled_optimizers", []))
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"],
                                            disabled_optimizers=disabled)

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(["logits"], feeds)[0]


def latency_ms(clf: Any, texts: list[str], batch_size: int,
               repeats: int) -> dict[str, float]:
    """End-to-end (tokenize + run) latency of `clf` on batches cycled from `texts`.

    Returns median and p95 in milliseconds and throughput in texts per second.
    """
    if not texts:
        raise ValueError("latency needs at least one text")
    batches = [[texts[(i * batch_size + j) % len(texts)] for j in range(batch_size)]
               for i in range(repeats)]
    clf.logits(batches[0], batch_size)  # warm-up: first run allocates arenas
    samples = []
    for batch in batches:
        t0 = time.perf_counter()
        clf.logits(batch, batch_size)
        samples.append((time.perf_counter() - t0) * 1e3)
    ordered = np.sort(samples)
    p50 = float(np.median(ordered))
    return {"p50_ms": p50, "p95_ms": float(np.percentile(ordered, 95)),
            "texts_per_s": batch_size * 1e3 / p50}
