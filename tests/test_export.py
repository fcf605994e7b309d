"""ONNX export of a tiny TRAINED classifier: layout, dynamic axes, int8 parity, integrity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from components.model.modeling import load_trained
from components.release.bundle import export_bundle
from components.release.export import served_files
from components.release.predictor import (
    FP32_MODEL,
    INT8_MODEL,
    BundleIntegrityError,
    OnnxClassifier,
    verify_bundle,
)
from tests.model_support import tiny_test_params, trained_bundle

PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")


@pytest.fixture(scope="module")
def good(tmp_path_factory, tiny_backbone_dir):
    return trained_bundle(tmp_path_factory, tiny_backbone_dir, "good")


def test_bundle_layout_manifest_and_no_pickle(good):
    bundle = good["bundle"]
    manifest = verify_bundle(bundle)  # every listed file matches its sha256
    assert set(served_files(bundle)) - {"manifest.json"} <= set(manifest)
    assert FP32_MODEL in manifest
    for path in bundle.iterdir():
        # No pickle (and no torch zip archive) anywhere: only ONNX protobufs and JSON.
        assert not path.read_bytes()[:4].startswith(PICKLE_MAGIC), path.name
        if path.suffix == ".onnx":
            onnx.checker.check_model(onnx.load(str(path)))
        else:
            json.loads(path.read_text())
    config = json.loads((bundle / "export_config.json").read_text())
    assert config["max_length"] == 32
    assert config["quantization"]["per_channel"] is True  # params.export.per_channel
    assert json.loads((bundle / "labels.json").read_text())["labels"] == \
        json.loads((good["prepared"] / "labels.json").read_text())["labels"]


def test_int8_graph_is_quantized(good):
    int8 = onnx.load(str(good["bundle"] / INT8_MODEL))
    ops = [node.op_type for node in int8.graph.node]
    # The graph is fused (one Attention op per layer, taking q, k and v) and each of the 2
    # layers quantizes it as QAttention plus the attention-out, intermediate and output
    # linear layers as MatMulInteger.
    assert ops.count("QAttention") == 2
    assert ops.count("MatMulInteger") >= 6
    assert "QEmbedLayerNormalization" in ops
    # The kernels this ONNX Runtime runs slower than their unfused parts are left out.
    assert "SkipLayerNormalization" not in ops and "BiasGelu" not in ops
    config = json.loads((good["bundle"] / "export_config.json").read_text())
    assert config["graph"]["exporter"] == "torchscript+ort_fusion"
    fp32_size = (good["bundle"] / FP32_MODEL).stat().st_size
    assert (good["bundle"] / INT8_MODEL).stat().st_size < 0.5 * fp32_size


def test_dynamic_batch_and_sequence_axes_match_torch(good, tmp_path):
    import torch

    trained = load_trained(good["model"])
    clf = OnnxClassifier(good["bundle"], FP32_MODEL, threads=1)
    texts = ["goal", "rain and storm all week with strong cold wind tonight", "bank loan",
             "stock price profit trade invest dollar market bank", "referee"]
    for batch in (texts[:1], texts):  # batch 1 and 5, different padded lengths
        feeds = clf.encode(batch)
        with torch.inference_mode():
            expected = trained.model(input_ids=torch.from_numpy(feeds["input_ids"]),
                                     attention_mask=torch.from_numpy(feeds["attention_mask"])
                                     ).logits.numpy()
        got = clf.session.run(["logits"], feeds)[0]
        assert got.shape == (len(batch), 3)
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_parity_on_trained_model_is_within_the_gate(good, tmp_path, tiny_backbone_dir):
    gate = tiny_test_params(tmp_path, tiny_backbone_dir).gate
    parity = json.loads((good["bundle"] / "parity.json").read_text())
    assert parity["rows"] == 12
    assert parity["accuracy_fp32"] >= 0.9  # trained: the head separates the classes
    from components.release.gate import int8_rules

    flips, change = int8_rules(parity, gate)
    assert flips["passed"] and flips["value"] == 0       # no confident prediction flipped
    assert change["passed"] and change["value"] == -parity["int8_accuracy_drop"]
    assert parity["int8_agreement_b1"] >= 0.9             # rows run one at a time
    assert parity["max_logit_diff"] <= gate.max_logit_diff
    # The shipped int8 graph reproduces the recorded accuracy through the serving path.
    int8 = OnnxClassifier(good["bundle"], INT8_MODEL, threads=1)
    texts = [json.loads(line)["text"] for line in (good["prepared"] / "test.jsonl").open()]
    labels = [json.loads(line)["label"] for line in (good["prepared"] / "test.jsonl").open()]
    predicted = [p.label for p in int8.predict(texts)]
    assert np.mean([a == b for a, b in zip(predicted, labels, strict=True)]) == \
        pytest.approx(parity["accuracy_int8"])
    for key in ("int8_b1_p95_ms", "int8_b32_texts_per_s", "size_mb_int8", "size_ratio"):
        assert parity[key] > 0


def test_a_broken_int8_graph_is_rejected_by_the_gate(good, tmp_path, tiny_backbone_dir):
    """Scrambled int8 weights (a quantizer bug, a bad kernel) flip confident predictions:
    measured the way export measures, the gate's int8 rule rejects the bundle."""
    import shutil

    from onnx import numpy_helper

    from components.release.export import measure_bundle, write_manifest
    from components.release.gate import run_gate

    params = tiny_test_params(tmp_path, tiny_backbone_dir)
    copy = tmp_path / "bundle"
    shutil.copytree(good["bundle"], copy)
    graph = onnx.load(str(copy / INT8_MODEL))
    rng = np.random.default_rng(0)
    for init in graph.graph.initializer:
        weights = numpy_helper.to_array(init)
        if weights.dtype == np.int8 and weights.ndim == 2:  # the quantized weight matrices
            init.CopyFrom(numpy_helper.from_array(rng.permutation(weights.ravel()).reshape(
                weights.shape), init.name))
    onnx.save(graph, str(copy / INT8_MODEL))
    rows = [json.loads(line) for line in (good["prepared"] / "test.jsonl").open()]
    labels = json.loads((good["prepared"] / "labels.json").read_text())["labels"]
    parity = measure_bundle(load_trained(good["model"]).model.eval(), copy,
                            [r["text"] for r in rows], [labels.index(r["label"]) for r in rows],
                            params)
    (copy / "parity.json").write_text(json.dumps(parity))
    write_manifest(copy)

    verdict = run_gate(copy, good["prepared"], params)
    flips = next(r for r in verdict["rules"] if r["name"] == "int8_confident_flips")
    assert not verdict["passed"] and not flips["passed"] and flips["value"] >= 1
    assert any(r.startswith("int8_confident_flips") for r in verdict["reasons"])
    # The intact bundle, judged the same way, passes that rule.
    intact = run_gate(good["bundle"], good["prepared"], params)
    assert next(r for r in intact["rules"] if r["name"] == "int8_confident_flips")["passed"]


def test_tampered_model_is_refused(good, tmp_path):
    import shutil

    copy = tmp_path / "bundle"
    shutil.copytree(good["bundle"], copy)
    data = bytearray((copy / INT8_MODEL).read_bytes())
    data[-1] ^= 0xFF
    (copy / INT8_MODEL).write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match="sha256 mismatch"):
        OnnxClassifier(copy, INT8_MODEL)


def test_export_bad_inputs_leave_nothing_behind(good, tmp_path, tiny_backbone_dir):
    params = tiny_test_params(tmp_path, tiny_backbone_dir)
    with pytest.raises(FileNotFoundError, match="not a trained model folder"):
        export_bundle(tmp_path / "missing", good["prepared"], tmp_path / "out", params)
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / "labels.json").write_text(json.dumps({"labels": ["x", "y", "z"]}))
    with pytest.raises(ValueError, match="differ from the prepared label map"):
        export_bundle(good["model"], prepared, tmp_path / "out", params)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("method", ["lora", "prompt_tuning"])
def test_peft_models_export_with_exact_fp32_parity(method, tmp_path, tiny_backbone_dir):
    from components.model.modeling import build_classifier
    from components.release.export import export_model

    params = tiny_test_params(tmp_path, tiny_backbone_dir,
                              [f"peft.method={method}", "export.latency_repeats=2"])
    labels = ["a", "b", "c"]
    model, tokenizer = build_classifier(params, labels)
    texts = ["goal scored late", "a storm is coming in from the west", "bank", "x y"]
    result = export_model(model.eval(), tokenizer, labels, tmp_path / "bundle", params,
                          texts=texts, y_true=[0, 1, 2, 0], meta={"max_length": 32})
    # Parity of the fp32 graph only: this head is untrained, so int8 agreement is noise.
    assert result["max_logit_diff"] <= params.gate.max_logit_diff
    graph = onnx.load(str(tmp_path / "bundle" / FP32_MODEL)).graph
    ops = [node.op_type for node in graph.node]
    # Per layer, the plain BERT graph fused: one Attention op (q, k, v and both attention
    # products) + 3 linear layers; an unmerged LoRA export would add 2 MatMuls per adapted
    # module (query and value: 8 more here) and keep attention from fusing.
    assert (ops.count("Attention"), ops.count("MatMul")) == (2, 3 * 2), method


def test_export_from_a_single_row_keeps_axes_dynamic(tmp_path, tiny_backbone_dir):
    from components.model.modeling import build_classifier
    from components.release.export import export_model

    params = tiny_test_params(tmp_path, tiny_backbone_dir, ["export.latency_repeats=2"])
    model, tokenizer = build_classifier(params, ["a", "b"])
    export_model(model.eval(), tokenizer, ["a", "b"], tmp_path / "bundle", params,
                 texts=["one row"], y_true=[0], meta={"max_length": 32})
    clf = OnnxClassifier(tmp_path / "bundle", FP32_MODEL, threads=1)
    assert clf.logits(["x", "a much longer text than the only parity row", "y"]).shape == (3, 2)


def test_parity_report_counts_flips_and_how_sure_fp32_was():
    from components.release.export import parity_report

    fp32 = np.array([[2.0, 0.0], [0.1, 0.0], [0.0, 3.0]])
    int8 = np.array([[1.9, 0.0], [0.0, 0.1], [0.0, 2.9]])  # only the near-tie row flips
    r = parity_report(fp32 + 1e-7, fp32, int8, [0, 0, 1])
    assert r["int8_disagreements"] == 1 and r["int8_agreement"] == pytest.approx(2 / 3)
    assert r["int8_accuracy_drop"] == pytest.approx(1 / 3)
    sure = [1 / (1 + np.exp(-m)) for m in (2.0, 0.1, 3.0)]  # two classes: softmax = sigmoid
    assert r["int8_flip_max_fp32_probability"] == pytest.approx(sure[1], abs=1e-9)
    assert r["max_logit_diff"] == pytest.approx(1e-7)
    assert r["per_row"]["fp32_probability"] == pytest.approx(sure, abs=1e-5)
    assert {k: r["per_row"][k] for k in ("y", "fp32_pred", "int8_pred")} == {
        "y": [0, 0, 1], "fp32_pred": [0, 0, 1], "int8_pred": [0, 1, 1]}


def test_profile_shares_name_the_quantized_kernels(good, tmp_path):
    from bench.profile_ort import op_shares

    clf = OnnxClassifier(good["bundle"], INT8_MODEL, threads=1,
                         profile_prefix=str(tmp_path / "ort"))
    feeds = clf.encode(["a short text", "a somewhat longer text about sockets and files"])
    for _ in range(3):
        clf.session.run(["logits"], feeds)
    trace = json.loads(Path(clf.session.end_profiling()).read_text())
    shares, total_ms = op_shares(trace)
    assert total_ms > 0
    assert sum(shares.values()) == pytest.approx(1.0)
    assert {"QAttention", "QEmbedLayerNormalization"} <= set(shares)
    with pytest.raises(ValueError, match="no node kernel timings"):
        op_shares([{"cat": "Session", "name": "model_run", "dur": 5}])
