"""The OpenVINO int8 candidate: NNCF builds it from the fp32 graph, the gate's int8 rules
judge it, and a bundle that names it is served by OpenVINO through the same interface.

Needs the `.[openvino]` extra, which `make install` (and so CI) installs.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from components.data.files import load_split
from components.model.modeling import load_trained
from components.release.export import measure_bundle, write_manifest
from components.release.int8 import CANDIDATES, OPENVINO_FILES, build_candidates
from components.release.openvino_runtime import OpenVinoClassifier, pad_to_multiple
from components.release.predictor import FP32_MODEL, OnnxClassifier, served_graph
from components.release.rules import int8_rules
from components.release.runtimes import load_classifier
from deploy.serve import create_app
from tests.model_support import export_candidates, tiny_test_params, trained_bundle
from tests.serve_support import running_server, wait_for

OPENVINO = CANDIDATES["openvino_int8"].graph


@pytest.fixture(scope="module")
def good(tmp_path_factory, tiny_backbone_dir):
    return trained_bundle(tmp_path_factory, tiny_backbone_dir, "good")


@pytest.fixture(scope="module")
def openvino_bundle(good, tmp_path_factory, tiny_backbone_dir):
    """A copy of the good bundle with the OpenVINO candidate built and named as served."""
    root = tmp_path_factory.mktemp("openvino")
    bundle = root / "bundle"
    shutil.copytree(good["bundle"], bundle)
    params = tiny_test_params(root, tiny_backbone_dir, ["export.int8_candidates=[openvino_int8]",
                                                        "export.calibration_texts=64"])
    train_texts, _ = load_split(good["prepared"], "train")
    built, notes = build_candidates(bundle, params.export, train_texts)
    assert "openvino_int8" in built, notes
    config = json.loads((bundle / "export_config.json").read_text())
    config["served"] = OPENVINO.as_json()
    (bundle / "export_config.json").write_text(json.dumps(config))
    write_manifest(bundle)
    return bundle, params


def test_the_openvino_candidate_passes_the_gates_int8_rules(good, openvino_bundle):
    bundle, params = openvino_bundle
    texts, y = load_split(good["prepared"], "test")
    trained = load_trained(good["model"])
    parity = measure_bundle(trained.model, bundle, texts, y, params, OPENVINO)
    rules = int8_rules(parity, params.gate)
    assert all(r["passed"] for r in rules), rules
    assert parity["int8_agreement"] >= 0.95
    assert parity["size_mb_int8"] < 0.5 * parity["size_mb_fp32"]


def test_export_measures_and_judges_the_openvino_candidate(good, tmp_path, tiny_backbone_dir):
    result = export_candidates(good, tmp_path / "b",
                               tiny_test_params(tmp_path, tiny_backbone_dir),
                               ["ort_dynamic", "openvino_int8"])
    row = result["int8_candidates"]["openvino_int8"]
    assert row["quantization"]["method"] == "nncf_ptq"
    assert row["b1_p50_ms"] > 0 and row["b32_texts_per_s"] > 0
    assert set(row["int8_rules"]) == {"int8_confident_flips", "int8_accuracy_change"}
    served = served_graph(tmp_path / "b")
    kept = {p.name for p in (tmp_path / "b").iterdir()}
    assert set(OPENVINO_FILES) <= kept if served == OPENVINO else not set(OPENVINO_FILES) & kept


def test_a_bundle_naming_openvino_is_served_by_it(openvino_bundle):
    bundle, _ = openvino_bundle
    texts = ["football goal referee", "a quiet rainy evening", "bank shares fell", "x"]
    clf = load_classifier(bundle, threads=1)
    assert isinstance(clf, OpenVinoClassifier) and clf.platform == "openvino"
    fp32 = OnnxClassifier(bundle, FP32_MODEL, threads=1)
    assert (clf.logits(texts).argmax(1) == fp32.logits(texts).argmax(1)).mean() >= 0.75
    with pytest.raises(ValueError, match="serves a openvino graph"):
        OnnxClassifier(bundle)
    params = tiny_test_params(bundle.parent, bundle.parent, ["serve.threads=1",
                                                             "serve.max_batch=4"])
    app = create_app(params, bundle_dir=bundle, api_token="")
    with running_server(app) as url:
        wait_for(lambda: httpx.get(url + "/readyz").status_code == 200)
        meta = httpx.get(url + f"/v2/models/{params.registry.model_name}").json()
        with httpx.Client() as client, ThreadPoolExecutor(8) as pool:  # two batch workers
            replies = list(pool.map(lambda t: client.post(
                url + "/v1/predict", json={"texts": [t]}), texts * 4))
    assert meta["platform"] == "openvino"
    assert all(r.status_code == 200 for r in replies)
    want = [p.label for p in clf.predict(texts, batch_size=1)] * 4
    assert [r.json()["predictions"][0]["label"] for r in replies] == want


def test_padding_to_a_multiple_keeps_the_logits():
    feeds = {"input_ids": np.array([[101, 7, 102]]), "attention_mask": np.array([[1, 1, 1]])}
    padded = pad_to_multiple(feeds, 16, pad_id=0)
    assert padded["input_ids"].shape == (1, 16) and padded["attention_mask"][0, 3:].sum() == 0
    assert pad_to_multiple(feeds, 3, 0) is feeds
