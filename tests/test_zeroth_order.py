"""Zeroth-order strategies: exact perturbation, estimator direction, training, resume."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional as F

from components.config import LinearProbeConfig
from components.model.modeling import build_classifier, load_trained, trainable_parameters
from components.train.finetune import STRATEGIES, train
from components.train.finetune.base import build_strategy
from components.train.finetune.checkpoint import flatten_state, unflatten_state
from components.train.finetune.linear_probe import fit_linear_probe
from components.train.finetune.zeroth_order import centered_ranks, replay_history
from components.train.finetune.zo_noise import NoiseTable, ParamNoise
from tests.conftest import TINY_LABELS, tiny_rows
from tests.test_finetune import _train_loss, tuned_backbone_dir  # noqa: F401 (fixture)
from tests.test_modeling import _with


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models on a shared 2-core machine run faster, and far more steadily, on one thread.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def loss_fn(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits, batch["labels"])


def make_batch(tokenizer, rows, max_length=32):
    enc = tokenizer([r["text"] for r in rows], padding=True, truncation=True,
                    max_length=max_length, return_tensors="pt")
    labels = torch.tensor([TINY_LABELS.index(r["label"]) for r in rows])
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "labels": labels}


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bit_identical(model, snap):
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap[k]), f"{k} changed"


def tiny_model(tiny_params, method):
    tiny_params.peft.method = method
    tiny_params.peft.prompt_tuning.num_virtual_tokens = 4
    model, tok = build_classifier(tiny_params, TINY_LABELS)
    return model.eval(), tok


@pytest.mark.parametrize("method", ["none", "lora", "ia3", "prompt_tuning"])
def test_perturbed_forward_is_exact_and_leaves_weights_bit_identical(tiny_params, method):
    model, tok = tiny_model(tiny_params, method)
    batch = make_batch(tok, tiny_rows(4)[:8])
    tiny_params.finetune.strategy = "mezo"
    strategy = build_strategy(tiny_params.finetune, trainable_parameters(model), 10)
    before = snapshot(model)
    with torch.inference_mode():
        clean = model(input_ids=batch["input_ids"]).logits
        seed = strategy.sample_seed(3, 0)
        with strategy.perturbation(model).applied(seed, 0.05):
            hooked = model(input_ids=batch["input_ids"]).logits
        plus, minus = strategy.sample_losses(model, batch, loss_fn, seed, 1e-2)
    assert_bit_identical(model, before)
    assert plus != minus
    assert not torch.allclose(hooked, clean, atol=1e-4)

    # Reference: the same direction applied densely, in place, to a copy of the model.
    ref = copy.deepcopy(model)
    noise = ParamNoise([p for _, p in trainable_parameters(ref)], strategy.table)
    pads = {m: m.weight[m.padding_idx].clone() for m in ref.modules()
            if isinstance(m, torch.nn.Embedding) and m.padding_idx is not None}
    with torch.no_grad():
        for i in range(len(noise.params)):
            noise.add_(i, seed, 0.05)
        for m, row in pads.items():  # padding rows are never trained, so never perturbed
            m.weight[m.padding_idx] = row
        expected = ref(input_ids=batch["input_ids"]).logits
    torch.testing.assert_close(hooked, expected, atol=1e-5, rtol=1e-5)


def test_noise_table_is_centred_and_rows_match_dense_direction():
    table = NoiseTable(4096, seed=1)
    values = table.values[: table.size].double()
    assert abs(float(values.mean())) < 1e-6
    assert abs(float(values.pow(2).mean()) - 1.0) < 1e-5
    weight = torch.nn.Parameter(torch.zeros(37, 150))  # 5550 values: spans two chunks
    noise = ParamNoise([weight], table)
    dense = noise.perturbed(0, seed=99, scale=1.0)
    rows = torch.tensor([0, 13, 14, 36])
    assert torch.equal(noise.rows(0, 99, rows), dense[rows])
    assert not torch.equal(noise.perturbed(0, 100, 1.0), dense)


def micro_model():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=16, max_position_embeddings=16, num_labels=3,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(cfg).eval()


def averaged_update(strategy, model, batch, steps, loss=loss_fn):
    """Mean parameter change of `steps` updates, each from the same starting weights."""
    params = strategy.params
    start = [p.detach().clone() for _, p in params]
    total = torch.zeros(sum(p.numel() for p in start))
    for step in range(steps):
        with torch.inference_mode():
            strategy.step(model, batch, loss, step)
        with torch.no_grad():
            total += torch.cat([(p - p0).reshape(-1)
                                for (_, p), p0 in zip(params, start, strict=True)])
            for (_, p), p0 in zip(params, start, strict=True):
                p.copy_(p0)  # every sample starts from the same weights
    return total / steps


def micro_batch():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 30, (8, 10), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "labels": torch.randint(0, 3, (8,), generator=gen)}


# (n_samples, target, steps): SPSA and n-SPSA over the whole model, n-SPSA over the BitFit
# target (compared with the gradient of the targeted values only).
ESTIMATES = [(1, "all", 1000), (4, "all", 300), (8, "bitfit", 150)]


@pytest.mark.parametrize(("n_samples", "target", "steps"), ESTIMATES)
def test_mezo_update_follows_the_true_gradient_direction(tiny_params, n_samples, target,
                                                         steps):
    """Averaged over many seeds, the update is aligned with -grad (cosine >> 0)."""
    model, batch = micro_model(), micro_batch()
    loss_fn(model, batch).backward()
    cfg = tiny_params.finetune.mezo.model_copy(update={
        "lr": 1e-3, "eps": 1e-4, "n_samples": n_samples, "target": target})
    strategy = STRATEGIES["mezo"](cfg, trainable_parameters(model), 2000, seed=5)
    true_grad = torch.cat([p.grad.reshape(-1) for _, p in strategy.params])
    estimate = -averaged_update(strategy, model, batch, steps)
    cosine = float(F.cosine_similarity(estimate, true_grad, dim=0))
    # A random direction would give |cosine| ~ 1/sqrt(#values) ~ 0.03.
    assert cosine > 0.5, cosine
    # Unused embedding rows get exactly zero update: their gradient is zero too.
    unused = true_grad == 0
    assert torch.all(estimate[unused] == 0)


def test_centered_ranks_are_scale_free():
    assert centered_ranks([3.0, 1.0, 2.0]) == [0.5, -0.5, 0.0]
    assert centered_ranks([30.0, 10.0, 20.0]) == centered_ranks([3.0, 1.0, 2.0])


def test_replay_history_rebuilds_the_run_from_seeds_and_scalars(tiny_params):
    model, tok = tiny_model(tiny_params, "none")
    rows = tiny_rows(14)
    batches = [make_batch(tok, rows[i: i + 8]) for i in range(0, 40, 8)]
    tiny_params.finetune.strategy = "mezo"
    tiny_params.finetune.mezo.lr = 1e-3
    tiny_params.finetune.mezo.weight_decay = 0.1
    tiny_params.finetune.mezo.n_samples = 2
    strategy = build_strategy(tiny_params.finetune, trainable_parameters(model), 10)
    start = snapshot(model)
    with torch.inference_mode():
        for step, batch in enumerate(batches * 2):
            strategy.step(model, batch, loss_fn, step)
    final = snapshot(model)
    key = "bert.embeddings.word_embeddings.weight"
    assert not torch.equal(final[key], start[key])
    assert torch.equal(final[key][0], start[key][0])  # the padding row is never trained

    model.load_state_dict(start)
    fresh = build_strategy(tiny_params.finetune, trainable_parameters(model), 10)
    # Through the checkpoint format (JSON + tensors), as a resumed run would see it.
    tensors: dict[str, torch.Tensor] = {}
    saved = json.loads(json.dumps(flatten_state(strategy.state_dict(), tensors)))
    fresh.load_state_dict(unflatten_state(saved, tensors))
    replay_history(fresh, model)
    assert_bit_identical(model, final)
    assert len(fresh.history) == 2 * len(batches) * 2


def test_linear_probe_fits_only_the_head(tiny_params):
    model, tok = tiny_model(tiny_params, "lora")
    rows = tiny_rows(30)
    batches = [make_batch(tok, rows[i: i + 16]) for i in range(0, len(rows), 16)]
    before = snapshot(model)
    metrics = fit_linear_probe(model, batches, LinearProbeConfig(l2=1e-4, max_iter=100))
    assert metrics["examples"] == len(rows)
    assert metrics["loss"] < metrics["loss_before"]
    assert metrics["accuracy"] > max(metrics["accuracy_before"], 0.5)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all("classifier" in k for k in changed), changed
    # The fitted head is the one the model uses: its accuracy shows in the real logits.
    with torch.inference_mode():
        preds = torch.cat([model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
                           .logits.argmax(-1) for b in batches])
    labels = torch.cat([b["labels"] for b in batches])
    assert abs(float((preds == labels).double().mean()) - metrics["accuracy"]) < 1e-9


# Per strategy x PEFT method: step sizes that move a tiny model within 40 steps. ZO-sign
# steps have a fixed length, and ES's rank-shaped steps too, so they need smaller values.
# The gradient-estimating strategies train every trainable parameter here (target all);
# CEM searches the BitFit values of the full model and the LoRA adapters.
ZO_MATRIX = {
    ("mezo", "none"): {"finetune.mezo.lr": 5e-3, "finetune.mezo.eps": 1e-3},
    ("mezo", "lora"): {"finetune.mezo.lr": 1e-2, "finetune.mezo.eps": 1e-3},
    ("zo_sign", "none"): {"finetune.zo_sign.lr": 2e-3, "finetune.zo_sign.eps": 1e-3},
    ("zo_sign", "lora"): {"finetune.zo_sign.lr": 3e-3, "finetune.zo_sign.eps": 1e-3},
    ("es", "none"): {"finetune.es.lr": 5e-3, "finetune.es.sigma": 1e-2,
                     "finetune.es.population": 4},
    ("es", "lora"): {"finetune.es.lr": 1e-2, "finetune.es.sigma": 1e-2,
                     "finetune.es.population": 4},
    ("cem", "none"): {"finetune.cem.target": "bitfit", "finetune.cem.sigma": 3e-2,
                      "finetune.cem.sigma_min": 1e-2},
    ("cem", "lora"): {"finetune.cem.target": "all", "finetune.cem.sigma": 3e-2,
                      "finetune.cem.sigma_min": 1e-2},
}


@pytest.mark.parametrize(("strategy", "method"), sorted(ZO_MATRIX))
def test_zeroth_order_training_lowers_the_loss(tiny_params, tiny_prepared, tuned_backbone_dir,  # noqa: F811
                                               tmp_path, strategy, method):
    params = _with(tiny_params, **{
        "finetune.strategy": strategy, "peft.method": method, "model.num_threads": 1,
        "model.name_or_path": str(tuned_backbone_dir), "finetune.max_steps": 40,
        "finetune.eval_every": 40, "finetune.checkpoint_every": 40,
        f"finetune.{strategy}.target": "all", **ZO_MATRIX[(strategy, method)]})
    start, tokenizer = build_classifier(params, TINY_LABELS)  # same seed -> same start
    loss_before = _train_loss(start, tokenizer, tiny_prepared, params)
    metrics = train(params, tiny_prepared, tmp_path / "model", checkpoint_dir=tmp_path / "ck")
    assert metrics["steps"] == 40 and metrics["strategy"] == strategy
    trained = load_trained(tmp_path / "model")
    loss_after = _train_loss(trained.model, tokenizer, tiny_prepared, params)
    assert loss_after < 0.95 * loss_before, (loss_before, loss_after)


@pytest.mark.parametrize(("strategy", "settings"), [
    ("mezo", {"finetune.mezo.lr": 1e-2, "finetune.mezo.target": "all"}),
    ("mezo", {"finetune.mezo.lr": 1e-2, "finetune.mezo.target": "top_layers",
              "finetune.mezo.top_layers": 1, "finetune.mezo.n_samples": 3}),
    ("cem", {"finetune.cem.sigma": 1e-2, "finetune.cem.sigma_min": 1e-3,
             "finetune.cem.smoothing": 0.5, "finetune.cem.population": 4}),
])
def test_zeroth_order_with_linear_probe_resumes_bit_identically(tiny_params, tiny_prepared,
                                                                tmp_path, strategy, settings):
    params = _with(tiny_params, **{
        "finetune.strategy": strategy, "finetune.head_init": "linear_probe",
        "model.num_threads": 1, "finetune.max_steps": 20, "finetune.eval_every": 20,
        "finetune.checkpoint_every": 10, **settings})
    logged = []
    reference = train(params, tiny_prepared, tmp_path / "ref", checkpoint_dir=tmp_path / "ck",
                      logger=lambda m, step: logged.append(m))
    probe = next(m for m in logged if "probe/accuracy" in m)
    assert probe["probe/accuracy"] > probe["probe/accuracy_before"]
    cpu = [m["train/cpu_seconds"] for m in logged if "train/cpu_seconds" in m]
    assert len(cpu) == 20 and cpu == sorted(cpu) and cpu[-1] > 0
    # The uninterrupted run left its step-10 checkpoint: resuming from it must end the same.
    resumed = train(params, tiny_prepared, tmp_path / "resumed", checkpoint_dir=tmp_path / "ck",
                    resume=True)
    assert resumed["resumed_from"] == 10 and resumed["steps"] == reference["steps"] == 20
    ref_w = load_file(str(tmp_path / "ref" / "model.safetensors"))
    new_w = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert ref_w.keys() == new_w.keys()
    assert all(torch.equal(ref_w[k], new_w[k]) for k in ref_w)
    assert resumed["val_loss"] == reference["val_loss"]


@pytest.mark.parametrize(("method", "target"), [("none", "top_layers"), ("none", "bitfit"),
                                                ("lora", "all")])
def test_frozen_modules_run_once_per_step_with_identical_losses(tiny_params, method, target):
    model, tok = tiny_model(tiny_params, method)
    batch = make_batch(tok, tiny_rows(4)[:8])
    tiny_params.finetune.strategy = "mezo"
    tiny_params.finetune.mezo.target = target
    tiny_params.finetune.mezo.top_layers = 1
    strategy = build_strategy(tiny_params.finetune, trainable_parameters(model), 10)
    seeds = [strategy.sample_seed(0, k) for k in range(3)]
    # A child of a reused module runs only when its parent really computes.
    bottom = model.get_submodule("base_model.model.bert.embeddings.word_embeddings"
                                 if method == "lora" else "bert.encoder.layer.0.output.dense")
    calls = []
    bottom.register_forward_hook(lambda *a: calls.append(1))
    with torch.inference_mode():
        plain = [strategy.perturbed_loss(model, batch, loss_fn, s, e)
                 for s in seeds for e in (1e-2, -1e-2)]
        n_plain = len(calls)
        with strategy.reuse(model).active():
            reused = [strategy.perturbed_loss(model, batch, loss_fn, s, e)
                      for s in seeds for e in (1e-2, -1e-2)]
    assert reused == plain  # bit-identical: reuse is exact
    assert n_plain == 6
    # Below the target (the embeddings under LoRA, the first layer under top_layers), the
    # 6 forwards of the block computed once; under bitfit every layer has targeted biases.
    assert len(calls) - n_plain == (6 if target == "bitfit" else 1)
