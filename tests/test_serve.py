"""The serving app over a real uvicorn server on 127.0.0.1 with a tiny exported bundle."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from components.config import load_params
from components.release.predictor import OnnxClassifier
from deploy.serve import create_app
from tests.conftest import TINY_LABELS
from tests.serve_support import export_tiny_bundle, running_server, wait_for

pytestmark = pytest.mark.integration

TEXTS = ["the team scored a late goal", "heavy rain and wind tonight",
         "stock prices fell after the bank report", "x"]


@pytest.fixture(scope="session")
def bundle(tmp_path_factory, tokenizer_dir) -> Path:
    return export_tiny_bundle(tmp_path_factory.mktemp("serve") / "bundle", tokenizer_dir,
                              TINY_LABELS, seed=1)


def serve_params(tmp_path: Path, *extra: str):
    return load_params(overrides=[
        "serve.max_texts=8", "serve.max_text_chars=200", "serve.max_body_bytes=100000",
        "serve.reload_interval_s=0.2",
        "serve.max_batch=4", "serve.max_wait_ms=20", "serve.threads=1",
        f"registry.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"registry.artifact_root={tmp_path}/mlartifacts", *extra])


@pytest.fixture()
def server(tmp_path, bundle):
    app = create_app(serve_params(tmp_path), bundle_dir=bundle, api_token="")
    with running_server(app) as url:
        wait_ready(url)
        yield url, app


def wait_ready(url: str) -> dict:
    return wait_for(lambda: (r := httpx.get(url + "/readyz")).status_code == 200 and r.json())


def test_serving_never_imports_torch_or_transformers():
    code = ("import importlib.util, sys, deploy.serve, deploy.serve.__main__\n"
            "if importlib.util.find_spec('components.registry.versions'):\n"
            "    import components.registry.versions\n"
            "bad = [m for m in ('torch', 'transformers', 'openvino') if m in sys.modules]\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_predict_matches_the_bundle(server, bundle):
    url, _ = server
    ready = wait_ready(url)
    resp = httpx.post(url + "/v1/predict", json={"texts": TEXTS})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model_version"] == ready["model_version"]
    assert body["model_version"].startswith("local-")
    direct = OnnxClassifier(bundle, threads=1).predict(TEXTS)
    assert len(body["predictions"]) == len(TEXTS)
    for got, want in zip(body["predictions"], direct, strict=True):
        assert got["label"] == want.label
        assert set(got["scores"]) == set(TINY_LABELS)
        assert got["score"] == pytest.approx(max(got["scores"].values()))
        assert got["score"] == pytest.approx(want.score, abs=1e-5)
        assert sum(got["scores"].values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(("payload", "status", "message"), [
    (b'{"texts": ["a", ', 422, "malformed JSON"),
    (b"not json at all", 422, "malformed JSON"),
    (json.dumps({"texts": "just a string"}).encode(), 422, "texts: Input should be a valid list"),
    (json.dumps({"texts": ["ok", 3]}).encode(), 422, "texts.1: Input should be a valid string"),
    (json.dumps({"texts": []}).encode(), 422, "texts: List should have at least 1 item"),
    (json.dumps({"text": ["typo"]}).encode(), 422, "texts: Field required"),
    (json.dumps(["a list"]).encode(), 422, "valid dictionary"),
    (json.dumps({"texts": ["a"] * 9}).encode(), 413, "too many texts: 9 > serve.max_texts=8"),
    (json.dumps({"texts": ["ok", "y" * 201]}).encode(), 413,
     "texts[1] is too long: 201 characters > serve.max_text_chars=200"),
    (json.dumps({"texts": ["z" * 200_000]}).encode(), 413, "request body larger than"),
])
def test_bad_input_is_rejected_clearly_and_the_server_stays_up(server, payload, status, message):
    url, _ = server
    wait_ready(url)
    resp = httpx.post(url + "/v1/predict", content=payload,
                      headers={"content-type": "application/json"})
    assert resp.status_code == status, resp.text
    assert message in resp.json()["error"]
    assert httpx.get(url + "/healthz").status_code == 200
    ok = httpx.post(url + "/v1/predict", json={"texts": ["still serving"]})
    assert ok.status_code == 200


def test_a_long_text_is_truncated_as_in_training_and_only_a_huge_body_refused(tmp_path, bundle):
    """Real documents run past model.max_length tokens: served like their kept prefix."""
    sentence = ("the committee reviewed quarterly rainfall figures before markets opened while "
                "the striker signed a new contract and analysts revised bank forecasts ")
    text = (sentence * 200)[:20_000]
    clf = OnnxClassifier(bundle, threads=1)
    kept = clf.tokenizer.encode(text)
    end = max(stop for start, stop in kept.offsets if stop > start)
    prefix = text[: text.find(" ", end)]  # the whole words the model reads, and no more
    assert len(text) == 20_000 and len(prefix) < 1_000
    assert clf.tokenizer.encode(prefix).ids == kept.ids  # truncation keeps exactly this prefix
    want = clf.predict([prefix])[0]
    params = load_params(overrides=[  # the serve defaults, bar the registry and threads
        "serve.threads=1", f"registry.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        f"registry.artifact_root={tmp_path}/mlartifacts"])
    app = create_app(params, bundle_dir=bundle, api_token="")
    with running_server(app) as url:
        wait_ready(url)
        resp = httpx.post(url + "/v1/predict", json={"texts": [text, prefix]})
        too_long = httpx.post(url + "/v1/predict", json={"texts": ["w " * 50_001]})
        huge = httpx.post(url + "/v1/predict", json={"texts": ["w " * 40_000] * 30})
    assert resp.status_code == 200, resp.text
    got, got_prefix = resp.json()["predictions"]
    assert got["label"] == got_prefix["label"] == want.label
    assert got["score"] == pytest.approx(want.score, abs=1e-5)
    assert got["scores"] == pytest.approx(got_prefix["scores"], abs=1e-6)
    assert too_long.status_code == 413 and "serve.max_text_chars=100000" in too_long.json()["error"]
    assert huge.status_code == 413, huge.text  # 2.4 MB: past serve.max_body_bytes
    assert "serve.max_body_bytes" in huge.json()["error"]


def test_predict_wants_post_and_answers_json_errors(server):
    url, _ = server
    resp = httpx.get(url + "/v1/predict")
    assert resp.status_code == 405 and resp.headers["allow"] == "POST"
    assert "use POST" in resp.json()["error"]
    problems = httpx.post(url + "/v1/predict", json={"texts": ["ok", 1], "x": 2}).json()
    assert problems["problems"] == ["texts.1: Input should be a valid string",
                                    "x: Extra inputs are not permitted"]


def test_bearer_token_is_required_when_set(tmp_path, bundle, monkeypatch):
    monkeypatch.setenv("TUNELINE_API_TOKEN", "s3cret")
    app = create_app(serve_params(tmp_path), bundle_dir=bundle)
    with running_server(app) as url:
        wait_ready(url)  # probes stay open
        body = {"texts": ["hello"]}
        missing = httpx.post(url + "/v1/predict", json=body)
        wrong = httpx.post(url + "/v1/predict", json=body, headers={"Authorization": "Bearer no"})
        basic = httpx.post(url + "/v1/predict", json=body, headers={"Authorization": "Basic xx"})
        good = httpx.post(url + "/v1/predict", json=body,
                          headers={"Authorization": "Bearer s3cret"})
        # auth is checked before the body: an unauthenticated bad body is still a 401
        bad_body = httpx.post(url + "/v1/predict", content=b"{", headers={})
    assert [missing.status_code, wrong.status_code, basic.status_code] == [401, 401, 401]
    assert "missing bearer token" in missing.json()["error"]
    assert "invalid bearer token" in wrong.json()["error"]
    assert missing.headers["www-authenticate"] == "Bearer"
    assert good.status_code == 200 and len(good.json()["predictions"]) == 1
    assert bad_body.status_code == 401


def test_concurrent_requests_share_batches_and_metrics_count_them(server, bundle):
    url, app = server
    wait_ready(url)
    texts = [f"{t} {i}" for i in range(6) for t in TEXTS[:3]]  # 18 single-text requests
    with httpx.Client() as client, ThreadPoolExecutor(len(texts)) as pool:
        replies = list(pool.map(
            lambda t: client.post(url + "/v1/predict", json={"texts": [t]}), texts))
    assert all(r.status_code == 200 for r in replies)
    direct = OnnxClassifier(bundle, threads=1).predict(texts, batch_size=1)
    # int8 activations are quantized per batch, so padding may move scores a little;
    # labels must not change
    assert [r.json()["predictions"][0]["label"] for r in replies] == [d.label for d in direct]

    batches = app.state.metrics.batch_size
    sizes = {s.name: s.value for m in batches.collect() for s in m.samples}
    n_batches, n_texts = sizes["tuneline_batch_size_texts_count"], sizes[
        "tuneline_batch_size_texts_sum"]
    assert n_texts >= len(texts)
    assert n_batches < n_texts, "concurrent requests should have shared batches"
    text = httpx.get(url + "/metrics").text
    for needle in ('tuneline_requests_total{route="/v1/predict",status="200"}',
                   "tuneline_request_latency_seconds_bucket", "tuneline_batch_size_texts_count",
                   'tuneline_model_info{sha256="', "tuneline_model_ready 1.0"):
        assert needle in text, needle


def test_an_unexpected_error_outside_predict_is_a_generic_500(tmp_path, bundle, caplog):
    app = create_app(serve_params(tmp_path), bundle_dir=bundle, api_token="")

    @app.get("/broken")
    async def broken() -> dict:
        raise RuntimeError("db password is hunter2")

    with running_server(app) as url:
        resp = httpx.get(url + "/broken")
    assert resp.status_code == 500
    assert resp.json() == {"error": "internal error", "error_id": resp.json()["error_id"]}
    assert "hunter2" not in resp.text and "RuntimeError" not in resp.text
    logged = [r for r in caplog.records if resp.json()["error_id"] in r.getMessage()]
    assert logged and "hunter2" in str(logged[0].exc_info[1])


def test_no_model_yet_means_not_ready_but_alive(tmp_path):
    app = create_app(serve_params(tmp_path), bundle_dir=tmp_path / "nothing-exported-yet")
    with running_server(app) as url:
        assert httpx.get(url + "/healthz").status_code == 200
        ready = httpx.get(url + "/readyz")
        predict = httpx.post(url + "/v1/predict", json={"texts": ["hello"]})
    assert ready.status_code == 503 and ready.json()["ready"] is False
    assert predict.status_code == 503 and "no model loaded" in predict.json()["error"]


def test_predict_command_in_process_and_against_the_server(server, bundle, tmp_path):
    from typer.testing import CliRunner

    from pipelines.cli import app as cli

    url, _ = server
    runner = CliRunner()
    local = runner.invoke(cli, ["predict", "--bundle", str(bundle), *TEXTS[:2]])
    assert local.exit_code == 0, local.output
    remote = runner.invoke(cli, ["predict", "--url", url, *TEXTS[:2]])
    assert remote.exit_code == 0, remote.output
    local_labels = [p["label"] for p in json.loads(local.stdout)["predictions"]]
    assert local_labels == [p["label"] for p in json.loads(remote.stdout)["predictions"]]
    lines = runner.invoke(cli, ["predict", "--url", url, "-i", "-"], input="\n".join(TEXTS[:2]))
    assert [json.loads(line)["label"] for line in lines.stdout.splitlines()] == local_labels
    missing = runner.invoke(cli, ["predict", "--bundle", str(tmp_path / "nope"), "x"])
    assert missing.exit_code != 0 and "cannot load the model" in missing.output
