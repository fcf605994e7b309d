"""The served graph is chosen per bundle: export judges int8 candidates, the manifest names
the winner, and every reader (server, gate, registry, pyfunc) opens what it names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from components.config import load_params
from components.io import sha256_file
from components.release.export import write_manifest
from components.release.int8 import BASELINE, STATIC_FILE, choose_served
from components.release.predictor import (
    DEFAULT_SERVED,
    FP32_MODEL,
    INT8_MODEL,
    OnnxClassifier,
    ServedGraph,
    graph_sha256,
    served_graph,
)
from components.release.runtimes import load_classifier
from components.task_types import task_type
from deploy.serve import create_app
from deploy.serve.holder import LocalBundleSource
from tests.model_support import export_candidates, tiny_test_params, trained_bundle
from tests.serve_support import running_server, wait_for

FP32_SERVED = ServedGraph("fp32_for_test", "onnxruntime", (FP32_MODEL,))


@pytest.fixture(scope="module")
def good(tmp_path_factory, tiny_backbone_dir):
    return trained_bundle(tmp_path_factory, tiny_backbone_dir, "good")


def rewrite_served(src: Path, dst: Path, served: ServedGraph | None) -> Path:
    """A copy of bundle `src` whose export_config.json names `served` (None: no `served`
    field, as bundles written before the choice), with its manifest rewritten."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "export_config.json").read_text())
    config.pop("served", None)
    if served is not None:
        config["served"] = served.as_json()
    (dst / "export_config.json").write_text(json.dumps(config))
    write_manifest(dst)
    return dst


def test_export_records_the_served_graph_and_each_candidates_figures(good):
    bundle = good["bundle"]
    config = json.loads((bundle / "export_config.json").read_text())
    assert config["served"] == DEFAULT_SERVED.as_json()  # params.yaml: ort_dynamic only
    assert served_graph(bundle) == DEFAULT_SERVED
    parity = json.loads((bundle / "parity.json").read_text())
    figures = parity["int8_candidates"][BASELINE]
    assert figures["b1_p50_ms"] > 0 and figures["b32_texts_per_s"] > 0
    assert set(figures["int8_rules"]) == {"int8_confident_flips", "int8_accuracy_change"}
    assert parity["served"]["candidate"] == BASELINE


def test_a_bundle_whose_manifest_names_another_graph_is_served_from_it(good, tmp_path):
    """An ONNX Runtime-only way to see the choice honoured: the manifest names the fp32 graph."""
    bundle = rewrite_served(good["bundle"], tmp_path / "b", FP32_SERVED)
    texts = ["football goal referee", "a quiet rainy evening", "bank shares fell"]
    clf = load_classifier(bundle, threads=1)
    fp32 = OnnxClassifier(bundle, FP32_MODEL, threads=1)
    int8 = OnnxClassifier(bundle, INT8_MODEL, threads=1)
    assert clf.graph == FP32_SERVED
    assert np.array_equal(clf.logits(texts), fp32.logits(texts))
    assert not np.array_equal(clf.logits(texts), int8.logits(texts))
    manifest = json.loads((bundle / "manifest.json").read_text())["files"]
    assert clf.sha256 == manifest[FP32_MODEL] == graph_sha256(FP32_SERVED, manifest)
    assert LocalBundleSource(bundle).wanted_version() == f"local-{manifest[FP32_MODEL][:12]}"

    params = load_params(overrides=["serve.threads=1", "serve.reload_interval_s=0.2"])
    app = create_app(params, bundle_dir=bundle, api_token="")
    with running_server(app) as url:
        wait_for(lambda: httpx.get(url + "/readyz").status_code == 200)
        got = httpx.post(url + "/v1/predict", json={"texts": texts}).json()["predictions"]
        ready = httpx.get(url + "/readyz").json()
    probs = np.exp(fp32.logits(texts))
    probs /= probs.sum(1, keepdims=True)
    assert [p["score"] for p in got] == pytest.approx(probs.max(1).tolist(), abs=1e-5)
    assert ready["sha256"] == manifest[FP32_MODEL]
    # The pyfunc / server runtime of the task type, and the gate's re-scoring, read it too.
    runtime = task_type("sequence_classification").load_runtime(bundle, threads=1)
    assert runtime.onnx.graph == FP32_SERVED


def test_a_bundle_from_before_the_choice_loads_as_onnx_runtime_int8(good, tmp_path):
    old = rewrite_served(good["bundle"], tmp_path / "old", None)
    assert "served" not in json.loads((old / "export_config.json").read_text())
    clf = load_classifier(old, threads=1)
    assert clf.graph == DEFAULT_SERVED and clf.platform == "onnxruntime"
    assert clf.sha256 == sha256_file(old / INT8_MODEL)
    assert LocalBundleSource(old).wanted_version() == \
        f"local-{sha256_file(old / INT8_MODEL)[:12]}"
    runtime = task_type("sequence_classification").load_runtime(old, threads=1)
    assert runtime.sha256 == sha256_file(old / INT8_MODEL)


def test_an_unknown_runtime_is_refused_by_name(good, tmp_path):
    bundle = rewrite_served(good["bundle"], tmp_path / "b",
                            ServedGraph("x", "tensorrt", (INT8_MODEL,)))
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        load_classifier(bundle)


def test_each_candidate_is_judged_by_the_gate_and_only_a_passing_one_served(
        good, tmp_path, tiny_backbone_dir):
    """Static QDQ beside dynamic int8: both measured, both judged by the gate's int8 rules."""
    params = tiny_test_params(tmp_path, tiny_backbone_dir)
    result = export_candidates(good, tmp_path / "b", params, ["ort_dynamic", "ort_static"])
    figures = result["int8_candidates"]
    assert set(figures) == {"ort_dynamic", "ort_static"}
    for name, row in figures.items():
        assert row["passes_int8_rules"] in (True, False), name
        assert row["quantization"]["method"] in ("dynamic", "static_qdq")
    assert figures["ort_static"]["quantization"]["calibration_rows"] == 64
    served = served_graph(tmp_path / "b")
    assert served.candidate == result["served"]["candidate"]
    assert (tmp_path / "b" / served.file).exists()
    assert (tmp_path / "b" / STATIC_FILE).exists() == (served.candidate == "ort_static")
    # Without calibration texts the calibrated candidate is skipped, with the reason.
    again = export_candidates(good, tmp_path / "c", params, ["ort_dynamic", "ort_static"],
                              calibrate=False)
    assert "calibration" in again["int8_candidates"]["ort_static"]["skipped"]
    assert again["served"]["candidate"] == BASELINE


def figures(b1: float, b32: float, passes: bool = True) -> dict:
    return {"b1_p50_ms": b1, "b32_texts_per_s": b32, "passes_int8_rules": passes}


@pytest.mark.parametrize(("other", "chosen", "why"), [
    (figures(2.0, 150.0), "openvino_int8", "1.50x at batch 32"),
    (figures(2.0, 150.0, passes=False), BASELINE, "fails the gate's int8 rules"),
    (figures(2.0, 105.0), BASELINE, "throughput 1.05x < export.min_speedup=1.1"),
    (figures(4.0, 150.0), BASELINE, "one-text latency 2.00x > export.max_b1_latency_ratio=1"),
])
def test_the_served_candidate_is_faster_batched_and_no_slower_alone(other, chosen, why):
    cfg = load_params().export
    name, because = choose_served({BASELINE: figures(2.0, 100.0), "openvino_int8": other}, cfg)
    assert name == chosen
    assert why in because


@pytest.mark.integration
def test_the_registry_and_the_pyfunc_follow_the_served_graph(good, tmp_path, tiny_backbone_dir):
    """Registered as @champion: the version's sha256 tag, the download's check and the
    MLflow pyfunc (in a fresh process) are those of the graph the manifest names."""
    import subprocess
    import sys

    from components.registry.tracking import start_run, tracking_uri
    from components.registry.versions import download_bundle, publish
    from tests.test_mlflow_model import LOAD_AND_PREDICT

    bundle = rewrite_served(good["bundle"], tmp_path / "b", FP32_SERVED)
    params = tiny_test_params(tmp_path, tiny_backbone_dir, ["serve.threads=1"])
    run_id = start_run(params, good["prepared"])
    published = publish(params, run_id, bundle, {"passed": True, "reasons": []},
                        prepared_dir=good["prepared"])
    assert published["sha256"] == sha256_file(bundle / FP32_MODEL)
    _, local = download_bundle(params, "champion", tmp_path / "served")
    assert served_graph(local) == FP32_SERVED and (local / FP32_MODEL).exists()
    assert not (local / INT8_MODEL).exists()  # a version carries only its served graph
    texts = ["football goal referee", "bank shares fell"]
    proc = subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, tracking_uri(params),
                           params.registry.model_name, json.dumps(texts)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    want = OnnxClassifier(bundle, FP32_MODEL, threads=1).predict(texts)
    assert got["labels"] == [w.label for w in want]
    assert got["scores"] == pytest.approx([w.score for w in want], abs=1e-5)


def test_the_gate_scores_sizes_and_rescores_the_served_graph(good, tmp_path, tiny_backbone_dir):
    from components.release.gate import run_gate

    bundle = rewrite_served(good["bundle"], tmp_path / "b", FP32_SERVED)
    params = tiny_test_params(tmp_path, tiny_backbone_dir, ["export.latency_repeats=2"])
    kind = task_type("sequence_classification")
    scores = kind.score_bundle(bundle, good["prepared"], params)
    assert scores.timer.graph == FP32_SERVED
    champion = kind.rescore(bundle, kind.score_bundle(good["bundle"], good["prepared"], params),
                            params)
    assert champion.timer.graph == FP32_SERVED
    verdict = run_gate(bundle, good["prepared"], params, champion_bundle_dir=good["bundle"])
    size = next(r for r in verdict["rules"] if r["name"] == "size_mb")
    assert size["value"] == pytest.approx((bundle / FP32_MODEL).stat().st_size / 2**20)
