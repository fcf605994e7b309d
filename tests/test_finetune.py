"""The training loop with the adamw strategy on a tiny random BERT: the strategy x PEFT
matrix, early stopping, logging, checkpoints and the divergence guard."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from components.config import AdamWConfig, load_params
from components.data.files import data_version, load_split
from components.model.encoding import encode
from components.model.modeling import build_classifier, load_trained
from components.train.finetune import STRATEGIES, JsonlLogger, TrainingDiverged, train
from components.train.finetune import checkpoint as ckpt
from components.train.finetune.batching import ShuffledLoader
from components.train.finetune.gradient import param_groups, warmup_linear
from components.train.finetune.loggers import read_jsonl
from components.train.finetune.validation import EarlyStopper, evaluate_split
from tests.conftest import TINY_LABELS, tiny_overrides
from tests.test_modeling import _with

# Adapters and prompts move far less per step than full weights, so they get a larger lr.
MATRIX = {"none": {"finetune.adamw.lr": 3e-3},
          "lora": {"finetune.adamw.lr": 3e-2},
          "ia3": {"finetune.adamw.lr": 3e-2},
          "prompt_tuning": {"finetune.adamw.lr": 3e-2}}


@pytest.fixture(scope="module")
def tuned_backbone_dir(tmp_path_factory, tiny_backbone_dir):
    """The tiny BERT after a short full fine-tune, saved as a plain backbone.

    PEFT methods adapt a backbone whose features already mean something; on purely random
    weights the frozen features carry no signal and only the head's bias can move.
    """
    from components.config import load_params
    from tests.conftest import TINY_HEAD, tiny_rows, write_prepared

    root = tmp_path_factory.mktemp("tuned")
    prepared = write_prepared(root / "prepared", tiny_rows(seed=1))
    params = load_params(overrides=[f"model.name_or_path={tiny_backbone_dir}", *TINY_HEAD,
                                    "model.max_length=32", "finetune.batch_size=8",
                                    "finetune.max_steps=60", "finetune.adamw.lr=3e-3"])
    train(params, prepared, root / "model", checkpoint_dir=root / "ck")
    trained = load_trained(root / "model")
    trained.model.bert.save_pretrained(root / "backbone")
    trained.tokenizer.save_pretrained(root / "backbone")
    return root / "backbone"


def _train_loss(model, tokenizer, prepared, params) -> float:
    texts, ids = load_split(prepared, "train")
    data = encode(tokenizer, texts, ids, params.model.max_length)
    return evaluate_split(model, data, 32, len(TINY_LABELS))["loss"]


@pytest.mark.parametrize("method", sorted(MATRIX))
def test_adamw_by_peft_matrix(tiny_params, tiny_prepared, tuned_backbone_dir, tmp_path, method):
    # One evaluation, at the end: the saved weights are then the final ones.
    params = _with(tiny_params, **{"peft.method": method, "finetune.max_steps": 40,
                                   "finetune.eval_every": 40, "finetune.checkpoint_every": 20,
                                   "model.name_or_path": str(tuned_backbone_dir),
                                   **MATRIX[method]})
    start, tokenizer = build_classifier(params, TINY_LABELS)  # same seed -> same start as train
    loss_before = _train_loss(start, tokenizer, tiny_prepared, params)
    metrics = train(params, tiny_prepared, tmp_path / "model", checkpoint_dir=tmp_path / "ck")
    assert metrics["steps"] == 40 and metrics["strategy"] == "adamw"
    reloaded = load_trained(tmp_path / "model")
    loss_after = _train_loss(reloaded.model, tokenizer, tiny_prepared, params)
    assert loss_after < 0.8 * loss_before, (method, loss_before, loss_after)
    # The reloaded weights are exactly the ones validated during training.
    texts, ids = load_split(tiny_prepared, "validation")
    val = evaluate_split(reloaded.model, encode(tokenizer, texts, ids, params.model.max_length),
                         params.finetune.eval_batch_size, len(TINY_LABELS))
    assert val["loss"] == metrics["val_loss"] and val["accuracy"] == metrics["val_accuracy"]
    assert reloaded.meta["strategy"] == "adamw" and reloaded.meta["peft_method"] == method
    assert reloaded.meta["data_version"] == data_version(tiny_prepared)
    assert reloaded.meta["params"]["peft"]["method"] == method


def test_early_stopping_and_jsonl_logger(tiny_params, tiny_prepared, tmp_path):
    # min_delta larger than any possible gain: every evaluation after the first is "no gain".
    params = _with(tiny_params, **{"finetune.early_stopping.patience": 1,
                                   "finetune.early_stopping.min_delta": 10.0,
                                   "finetune.early_stopping.metric": "loss"})
    logger = JsonlLogger(tmp_path / "log.jsonl")
    metrics = train(params, tiny_prepared, tmp_path / "model", checkpoint_dir=tmp_path / "ck",
                    logger=logger)
    logger.close()
    assert metrics["stopped_early"] and metrics["steps"] == 20 and metrics["best_step"] == 10
    records = read_jsonl(tmp_path / "log.jsonl")
    assert [r["step"] for r in records if "train/loss" in r] == list(range(1, 21))
    assert [r["step"] for r in records if "val/accuracy" in r] == [10, 20]
    assert all(math.isfinite(r["train/lr"]) for r in records if "train/lr" in r)


def test_checkpoints_keep_the_newest(tiny_params, tiny_prepared, tmp_path):
    params = _with(tiny_params, **{"finetune.max_steps": 20, "finetune.checkpoint_every": 5,
                                   "finetune.keep_checkpoints": 2})
    train(params, tiny_prepared, tmp_path / "model", checkpoint_dir=tmp_path / "ck")
    names = [p.name for p in ckpt.list_checkpoints(tmp_path / "ck")]
    assert names == ["step-0000010", "step-0000015"]
    weights, state, best = ckpt.load_checkpoint(tmp_path / "ck" / names[-1])
    assert state["run"]["step"] == 15 and state["params_hash"] == params.hash()
    assert state["strategy"]["scheduler"]["last_epoch"] == 15 and best is not None
    assert isinstance(state["rng"]["python"], tuple)


def test_nan_loss_stops_and_restores_last_good_checkpoint(tiny_params, tiny_prepared, tmp_path):
    # A learning rate this large really blows the weights up within a few steps.
    params = _with(tiny_params, **{"finetune.adamw.lr": 1e4, "finetune.adamw.warmup_ratio": 0,
                                   "finetune.adamw.max_grad_norm": 0,
                                   "finetune.checkpoint_every": 1, "finetune.eval_every": 1})
    with pytest.raises(TrainingDiverged, match="restored the last good checkpoint") as err:
        train(params, tiny_prepared, tmp_path / "model", checkpoint_dir=tmp_path / "ck")
    assert "lower finetune.adamw.lr" in str(err.value)
    assert not (tmp_path / "model").exists()  # nothing half-written
    saved = ckpt.list_checkpoints(tmp_path / "ck")
    assert saved and str(saved[-1]) in str(err.value)
    for path in saved:
        weights = load_file(str(path / "weights.safetensors"))
        assert all(torch.isfinite(w).all() for w in weights.values())


def test_unknown_strategy_names_the_known_ones(tmp_path, tiny_backbone_dir):
    from components.config import ConfigError, strategy_names

    with pytest.raises(ConfigError, match=r"finetune.strategy: unknown strategy 'sgd-magic'; "
                                          r"valid: adamw, cem, es, mezo, zo_sign$"):
        load_params(overrides=tiny_overrides(tmp_path, tiny_backbone_dir)
                    + ["finetune.strategy=sgd-magic"])
    assert sorted(STRATEGIES) == strategy_names()     # every section has its strategy


def test_checkpoint_state_round_trip_without_pickle():
    layer = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(layer.parameters(), lr=0.1)
    layer(torch.ones(1, 3)).sum().backward()
    opt.step()
    tensors: dict[str, torch.Tensor] = {}
    state = {"opt": opt.state_dict(), "rng": ckpt.rng_state(), "t": (1, 2.5, None)}
    back = ckpt.unflatten_state(ckpt.flatten_state(state, tensors), tensors)
    assert back["t"] == (1, 2.5, None)
    assert torch.equal(back["opt"]["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    opt2 = torch.optim.AdamW(layer.parameters(), lr=0.1)
    opt2.load_state_dict(back["opt"])
    ckpt.set_rng_state(back["rng"])
    a = torch.rand(3)
    ckpt.set_rng_state(state["rng"])
    assert torch.equal(a, torch.rand(3))


def test_loader_position_resumes_the_same_batches(tiny_params, tiny_prepared):
    _, tokenizer = build_classifier(tiny_params, TINY_LABELS)
    texts, ids = load_split(tiny_prepared, "train")
    data = encode(tokenizer, texts, ids, 32)
    a = ShuffledLoader(data, 8, seed=3)
    for _ in range(17):  # crosses an epoch boundary (96 rows / 8 = 12 batches per epoch)
        a.next_batch()
    b = ShuffledLoader(data, 8, seed=3)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.next_batch()["input_ids"], b.next_batch()["input_ids"])


def test_warmup_then_linear_decay():
    assert warmup_linear(0, 100, 10) == pytest.approx(0.1)
    assert warmup_linear(9, 100, 10) == pytest.approx(1.0)
    assert warmup_linear(55, 100, 10) == pytest.approx(0.5)
    assert warmup_linear(100, 100, 10) == 0.0


def test_early_stopper_direction():
    s = EarlyStopper(metric="loss", patience=2, min_delta=0.0)
    assert s.update({"loss": 1.0}, 1) and s.update({"loss": 0.5}, 2)
    assert not s.update({"loss": 0.7}, 3) and not s.should_stop
    assert not s.update({"loss": 0.6}, 4) and s.should_stop and s.best_step == 2


def test_adamw_decays_feature_weights_but_not_biases_or_norms(tiny_params):
    model, _ = build_classifier(tiny_params, TINY_LABELS)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay_of = {}
    for group in param_groups(named, AdamWConfig(lr=1e-3)):
        assert group["lr"] == pytest.approx(1e-3)
        for p in group["params"]:
            decay_of[id(p)] = group["weight_decay"]
    by_name = {n: decay_of[id(p)] for n, p in named}
    assert by_name["classifier.weight"] == 0.01
    assert by_name["bert.encoder.layer.0.output.dense.bias"] == 0.0
    assert by_name["bert.encoder.layer.0.output.LayerNorm.weight"] == 0.0

