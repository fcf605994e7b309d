"""Distillation into fewer layers: the student keeps the chosen teacher layers, learns from
the teacher's soft targets (labelled and unlabelled rows), and ships through the same
gate as any challenger."""

from __future__ import annotations

import json

import pytest
import torch

from components.model.modeling import load_trained
from components.train.distill import distillation_loss, keep_layers
from tests.conftest import tiny_rows
from tests.model_support import trained_bundle
from tests.test_modeling import _with


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_backbone_dir):
    return trained_bundle(tmp_path_factory, tiny_backbone_dir, "good")


def test_keep_layers_copies_the_chosen_layers(teacher):
    model = load_trained(teacher["model"]).model
    student = keep_layers(model, [1])
    assert student.config.num_hidden_layers == 1 and len(student.bert.encoder.layer) == 1
    kept, source = student.bert.encoder.layer[0], model.bert.encoder.layer[1]
    assert all(torch.equal(a, b) for a, b in zip(kept.state_dict().values(),
                                                  source.state_dict().values(), strict=True))
    assert len(model.bert.encoder.layer) == 2                   # the teacher is untouched
    with pytest.raises(ValueError, match="distinct indices in 0..1"):
        keep_layers(model, [0, 0])


def test_distillation_loss_mixes_soft_and_gold_terms():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    model = type("M", (), {"__call__": lambda self, **kw: type("O", (), {"logits": logits})})()
    batch = {"input_ids": None, "attention_mask": None, "labels": torch.tensor([0, -1]),
             "teacher_logits": logits.clone()}
    same = distillation_loss(2.0, 0.5)(model, batch)
    # The student equals the teacher: the soft term is 0, only row 0's gold term counts.
    assert same == pytest.approx(0.5 * torch.nn.functional.cross_entropy(
        logits[:1], torch.tensor([0])))
    batch["labels"] = torch.tensor([-1, -1])                     # unlabelled rows only
    assert distillation_loss(2.0, 0.5)(model, batch) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.slow
def test_student_is_distilled_saved_and_exported(teacher, tmp_path, tiny_backbone_dir):
    from components.release.bundle import export_bundle
    from components.train.distill import distill
    from tests.model_support import tiny_test_params

    params = _with(tiny_test_params(tmp_path, tiny_backbone_dir), **{
        "compress.enabled": True, "compress.keep_layers": [0], "compress.max_steps": 60,
        "compress.eval_every": 30, "compress.batch_size": 8, "compress.lr": 3e-3})
    unlabeled = [r["text"] for r in tiny_rows(10, seed=3)]
    metrics = distill(params, teacher["model"], teacher["prepared"], tmp_path / "student",
                      unlabeled, checkpoint_dir=tmp_path / "ck")
    assert metrics["distilled_unlabeled_rows"] == len(unlabeled)
    assert metrics["train_loss_final"] < metrics["train_loss_initial"]
    assert metrics["val_accuracy"] >= 0.8          # the teacher's knowledge carried over
    student = load_trained(tmp_path / "student")
    assert student.model.config.num_hidden_layers == 1
    assert metrics["total_params"] < metrics["teacher_params"]
    parity = export_bundle(tmp_path / "student", teacher["prepared"], tmp_path / "bundle",
                           params)
    assert parity["accuracy_fp32"] >= 0.8
    config = json.loads((tmp_path / "bundle" / "export_config.json").read_text())
    assert config["max_length"] == 32


@pytest.mark.slow
@pytest.mark.integration
def test_retrain_with_compression_registers_a_gated_student(tmp_path, tiny_backbone_dir,
                                                             monkeypatch):
    from mlflow import MlflowClient

    from components.config import load_params
    from pipelines.retrain import retrain
    from tests.conftest import tiny_overrides

    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tiny_rows(30)))
    overrides = tiny_overrides(tmp_path, tiny_backbone_dir) + [
        "gate.min_metrics.accuracy=0.0", "gate.min_metrics.macro_f1=0.0",
        "gate.max_latency_p95_ms=5000", "gate.int8_max_accuracy_drop=1.0",
        "gate.int8_confident_probability=1.0", "compress.enabled=true",
        "compress.keep_layers=[1]", "compress.max_steps=10", "compress.eval_every=5",
        "compress.batch_size=8"]
    result = retrain(overrides=overrides)
    params = load_params(overrides=overrides)
    client = MlflowClient(params.registry.tracking_uri)
    version = client.get_model_version(params.registry.model_name, result["version"])
    assert version.tags["shipped_model"] == "distilled student"
    assert version.tags["compress_keep_layers"] == "1"
    history = client.get_metric_history(result["run_id"], "compress/train/loss")
    assert len(history) == 10                      # tracked in the model's run
    exported = load_trained(params.paths.compressed)
    assert exported.model.config.num_hidden_layers == 1
    assert result["gate_decision"].startswith(("PASSED", "REJECTED"))


def test_student_layers_are_mapped_evenly_onto_the_teacher():
    from components.train.distill import layer_map

    assert layer_map(3, 6) == [2, 4, 6]       # the last learns the last (the sentence vector)
    assert layer_map(2, 6) == [3, 6]
    assert layer_map(1, 2) == [2]
    assert layer_map(6, 6) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("term", ["soft", "gold", "hidden"])
def test_each_loss_term_lowers_its_own_value(teacher, term):
    from components.train.distill import layer_map, loss_terms, teacher_targets

    trained = load_trained(teacher["model"])
    student = keep_layers(trained.model, [0]).train()
    texts = [r["text"] for r in tiny_rows(16, seed=5)]
    layers = layer_map(1, trained.model.config.num_hidden_layers)
    soft, hidden = teacher_targets(trained.model, trained.tokenizer, texts, 32, 8, layers)
    enc = trained.tokenizer(texts, padding=True, truncation=True, max_length=32,
                            return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
             "labels": torch.tensor([i % len(trained.labels) for i in range(len(texts))]),
             "teacher_logits": soft, "teacher_hidden": hidden}
    # Start the student away from the teacher: its kept layer's weights perturbed.
    torch.manual_seed(0)
    with torch.no_grad():
        for p in student.bert.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    opt = torch.optim.AdamW(student.parameters(), lr=3e-3)

    def value() -> float:
        with torch.no_grad():
            return float(loss_terms(student, batch, 2.0, hidden=True)[term])

    before = value()
    for _ in range(15):
        opt.zero_grad()
        loss_terms(student, batch, 2.0, hidden=True)[term].backward()
        opt.step()
    assert value() < 0.8 * before, (term, before, value())


@pytest.mark.slow
def test_teacher_outputs_are_computed_once_and_distillation_resumes_exactly(
        teacher, tmp_path, tiny_backbone_dir, monkeypatch):
    from safetensors.torch import load_file

    from components.train import distill as distill_module
    from tests.model_support import tiny_test_params

    params = _with(tiny_test_params(tmp_path, tiny_backbone_dir), **{
        "compress.enabled": True, "compress.keep_layers": [1], "compress.max_steps": 20,
        "compress.eval_every": 10, "compress.batch_size": 8, "compress.lr": 3e-3,
        "compress.augment_copies": 1, "model.num_threads": 1})
    calls = []
    real = distill_module.teacher_targets

    def counted(model, tokenizer, texts, *args):
        calls.append(len(texts))
        return real(model, tokenizer, texts, *args)

    monkeypatch.setattr(distill_module, "teacher_targets", counted)
    unlabeled = [r["text"] for r in tiny_rows(6, seed=3)]
    reference = distill_module.distill(params, teacher["model"], teacher["prepared"],
                                       tmp_path / "a", unlabeled, checkpoint_dir=tmp_path / "ck")
    rows = reference["distilled_rows"] + reference["distilled_unlabeled_rows"]
    assert reference["distilled_augmented_rows"] == rows           # one copy of each
    assert calls == [2 * rows]          # every row's teacher outputs, once, before training
    assert reference["layer_map"] == [2]
    # The run left its step-10 checkpoint: resuming from it ends on the same weights.
    resumed = distill_module.distill(params, teacher["model"], teacher["prepared"],
                                     tmp_path / "b", unlabeled, checkpoint_dir=tmp_path / "ck",
                                     resume=True)
    assert resumed["resumed_from"] == 10
    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
