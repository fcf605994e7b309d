"""The Open Inference Protocol (KServe V2) routes on a real uvicorn server."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from components.release.predictor import OnnxClassifier
from deploy.serve import create_app
from tests.conftest import TINY_LABELS
from tests.serve_support import running_server
from tests.test_serve import TEXTS, bundle, serve_params, server, wait_ready  # noqa: F401

pytestmark = pytest.mark.integration

NAME = "tuneline-classifier"  # registry.model_name in params.yaml
INFER = f"/v2/models/{NAME}/infer"


def infer_body(texts: list, **extra) -> dict:
    return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES",
                        "data": texts}], **extra}


def test_health_and_metadata_follow_the_protocol(server):  # noqa: F811
    url, _ = server
    ready = wait_ready(url)
    assert httpx.get(url + "/v2/health/live").json() == {"live": True}
    assert httpx.get(url + "/v2/health/ready").json() == {"ready": True}
    assert httpx.get(url + "/v2").json()["name"] == "tuneline"
    meta = httpx.get(url + f"/v2/models/{NAME}").json()
    assert meta["name"] == NAME and meta["versions"] == [ready["model_version"]]
    assert meta["platform"] == "onnxruntime"
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert [o["name"] for o in meta["outputs"]] == ["label", "score", "scores"]
    assert meta["parameters"]["labels"] == TINY_LABELS
    version = ready["model_version"]
    assert httpx.get(url + f"/v2/models/{NAME}/versions/{version}").status_code == 200
    assert httpx.get(url + f"/v2/models/{NAME}/ready").json()["ready"] is True
    missing = httpx.get(url + "/v2/models/other")
    assert missing.status_code == 404 and "not found" in missing.json()["error"]
    old = httpx.get(url + f"/v2/models/{NAME}/versions/local-0/ready")
    assert old.status_code == 404 and "is not served" in old.json()["error"]


def test_infer_matches_the_bundle_and_v1(server, bundle):  # noqa: F811
    url, _ = server
    ready = wait_ready(url)
    resp = httpx.post(url + INFER, json=infer_body(TEXTS, id="req-7"))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model_name"] == NAME and body["model_version"] == ready["model_version"]
    assert body["id"] == "req-7"
    out = {o["name"]: o for o in body["outputs"]}
    assert out["label"]["datatype"] == "BYTES" and out["label"]["shape"] == [len(TEXTS)]
    assert out["score"]["datatype"] == "FP32" and out["score"]["shape"] == [len(TEXTS)]
    assert out["scores"]["shape"] == [len(TEXTS), len(TINY_LABELS)]
    scores = np.asarray(out["scores"]["data"]).reshape(out["scores"]["shape"])
    direct = OnnxClassifier(bundle, threads=1).predict(TEXTS)
    assert out["label"]["data"] == [d.label for d in direct]
    assert out["score"]["data"] == pytest.approx([d.score for d in direct], abs=1e-5)
    assert scores.sum(axis=1) == pytest.approx(np.ones(len(TEXTS)), abs=1e-5)
    v1 = httpx.post(url + "/v1/predict", json={"texts": TEXTS}).json()["predictions"]
    assert [p["label"] for p in v1] == out["label"]["data"]
    # [n, 1] nested rows, a versioned path, and a subset of the outputs
    nested = {"inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES",
                          "data": [[TEXTS[0]], [TEXTS[1]]]}], "outputs": [{"name": "label"}]}
    resp = httpx.post(url + f"/v2/models/{NAME}/versions/{ready['model_version']}/infer",
                      json=nested)
    assert resp.status_code == 200, resp.text
    assert [o["name"] for o in resp.json()["outputs"]] == ["label"]
    assert resp.json()["outputs"][0]["data"] == out["label"]["data"][:2]


@pytest.mark.parametrize(("path", "payload", "status", "message"), [
    (INFER, {"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": [1.0]}]},
     400, "it takes BYTES"),
    (INFER, {"inputs": [{"name": "txt", "shape": [1], "datatype": "BYTES", "data": ["a"]}]},
     400, "unknown input 'txt'"),
    (INFER, {"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a"]}]},
     400, "has shape [3] but 1 elements"),
    (INFER, {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [7]}]},
     400, "element 0 is not a string"),
    (INFER, {"inputs": []}, 400, "inputs: List should have at least 1 item"),
    (INFER, {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
             "outputs": [{"name": "logits"}]}, 400, "unknown output(s) ['logits']"),
    (INFER, infer_body(["a"] * 9), 413, "too many texts: 9 > serve.max_texts=8"),
    (INFER, infer_body(["y" * 201]), 413, "serve.max_text_chars=200"),
    (INFER, infer_body(["z" * 200_000]), 413, "request body larger than"),
    ("/v2/models/other/infer", infer_body(["a"]), 404, "model 'other' not found"),
])
def test_bad_infer_requests_get_protocol_errors(server, path, payload, status, message):  # noqa: F811
    url, _ = server
    wait_ready(url)
    resp = httpx.post(url + path, json=payload)
    assert resp.status_code == status, resp.text
    assert message in resp.json()["error"]
    assert httpx.post(url + INFER, json=infer_body(["still serving"])).status_code == 200


def test_infer_shares_the_token_batcher_and_metrics_of_v1(tmp_path, bundle, monkeypatch):  # noqa: F811
    monkeypatch.setenv("TUNELINE_API_TOKEN", "s3cret")
    app = create_app(serve_params(tmp_path), bundle_dir=bundle)
    auth = {"Authorization": "Bearer s3cret"}
    with running_server(app) as url:
        wait_ready(url)
        assert httpx.get(url + f"/v2/models/{NAME}").status_code == 200  # metadata stays open
        assert httpx.post(url + INFER, json=infer_body(["a"])).status_code == 401
        texts = [f"{t} {i}" for i in range(4) for t in TEXTS[:3]]
        with httpx.Client(headers=auth) as client, ThreadPoolExecutor(len(texts)) as pool:
            replies = list(pool.map(
                lambda t: client.post(url + INFER, json=infer_body([t])), texts))
        metrics = httpx.get(url + "/metrics").text
    assert all(r.status_code == 200 for r in replies)
    sizes = {s.name: s.value for m in app.state.metrics.batch_size.collect() for s in m.samples}
    assert sizes["tuneline_batch_size_texts_count"] < sizes["tuneline_batch_size_texts_sum"]
    route = 'route="/v2/models/{name}/infer"'
    assert f'tuneline_requests_total{{{route},status="200"}} {len(texts)}.0' in metrics
    assert f'tuneline_requests_total{{{route},status="401"}} 1.0' in metrics
