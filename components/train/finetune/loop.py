"""The one training loop. Strategies (finetune/gradient.py, finetune/zeroth_order.py) only
decide how parameters move in a step; everything else lives here: batching, validation
every `eval_every` steps, early stopping, checkpoints + resume, the divergence guard, the
progress bar and the metrics logger.

Resuming is exact: a checkpoint holds the trainable weights, the strategy's state, the
loader position, the early-stopping state and every RNG state, so a killed-and-resumed run
produces the same weights as an uninterrupted one.

Under torchrun (distributed.py) every rank runs this loop on its share of each global
batch; rank 0 alone evaluates, logs, checkpoints (with every rank's RNG state) and saves,
and the other ranks follow its early-stopping decision.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from components.config import Params
from components.data.files import data_version, load_label_map
from components.model.encoding import Encoded
from components.model.modeling import build_classifier, save_trained, trainable_parameters
from components.model.unwrap import base_model_of
from components.task_types import task_type
from components.train import auto
from components.train.finetune import checkpoint as ckpt
from components.train.finetune import distributed
from components.train.finetune.base import LossFn, Strategy, build_strategy
from components.train.finetune.batching import ShuffledLoader, sequential_batches
from components.train.finetune.distributed import Dist
from components.train.finetune.loggers import MetricsLogger, null_logger
from components.train.finetune.validation import EarlyStopper, classification_loss, evaluate_split
from components.train.finetune.zo_noise import mix_seed

progress_log = logging.getLogger("tuneline.train")


class TrainingDiverged(RuntimeError):
    """The loss (or a weight) became NaN/inf; the model was reset to the last good checkpoint."""


@dataclass
class RunState:
    """What the loop itself must carry across a resume (besides weights and strategy)."""

    step: int = 0
    train_seconds: float = 0.0
    train_cpu_seconds: float = 0.0  # process CPU time of the steps (all threads)
    losses: list[float] = field(default_factory=list)
    last_eval: dict[str, float] = field(default_factory=dict)
    best_eval: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False
    stopped_by_budget: bool = False
    resumed_from: int = 0
    started_at: float = field(default_factory=time.perf_counter)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Prebuilt:
    """A model, its training rows and its loss made by the caller (distillation builds a
    student and soft targets); the loop does everything else the same way."""

    model: nn.Module
    tokenizer: Any
    train_data: Encoded
    loss_fn: LossFn


@dataclass
class RunContext:
    """One training run as its helpers share it: the inputs, then the moving parts."""

    params: Params
    prepared_dir: Path
    out_dir: Path
    init_dir: Path | None
    root: Path                 # checkpoint folder
    log: MetricsLogger
    d: Dist
    model: nn.Module | None = None
    tokenizer: Any = None
    labels: list[str] = field(default_factory=list)
    strategy: Strategy | None = None
    loader: ShuffledLoader | None = None
    stopper: EarlyStopper | None = None
    run: RunState = field(default_factory=RunState)
    best: dict | None = None   # trainable weights of the evaluation to ship so far
    chosen: dict[str, Any] = field(default_factory=dict)  # what `auto` settings became


def train(params: Params, prepared_dir: str | Path, out_dir: str | Path, *,
          init_dir: str | Path | None = None, checkpoint_dir: str | Path | None = None,
          resume: bool = False, logger: MetricsLogger | None = None,
          prebuilt: Prebuilt | None = None, dist: Dist | None = None) -> dict[str, Any]:
    """Fine-tune a classifier on `prepared_dir` and save it to `out_dir`.

    Args:
        params: validated params; `finetune.*` drives the loop, `peft.*` the wrapping.
        prepared_dir: prepared data folder (train/validation splits + labels.json).
        out_dir: model folder to write (see components/model/modeling.py).
        init_dir: MLM-adapted backbone folder from `pretrain_mlm`, or None for the backbone.
        checkpoint_dir: where checkpoints go (default `paths.checkpoints`).
        resume: continue from the latest checkpoint there; without it old ones are cleared.
        logger: called as `logger(metrics, step)` for train and validation metrics.
        prebuilt: train this model on these rows with this loss instead of building the
            classifier from params (validation is still the prepared validation split).
        dist: this process's rank, device and precision (default: from torchrun's
            environment, one CPU/GPU process when not under torchrun).

    Returns:
        Final metrics: val_loss / val_accuracy / val_macro_f1 (of the best evaluation, whose
        weights are the ones saved), steps, train_seconds, train_loss_initial / _final, ...

    Raises:
        TrainingDiverged: a NaN/inf loss or weight; the message names the restored checkpoint.
    """
    own = dist is None
    d = distributed.init(params) if own else dist
    ctx = RunContext(params, Path(prepared_dir), Path(out_dir),
                     Path(init_dir) if init_dir else None,
                     Path(checkpoint_dir or params.paths.checkpoints),
                     (logger if d.is_main else None) or null_logger, d)
    try:
        return _train(ctx, resume, prebuilt)
    finally:
        if own:
            distributed.shutdown(d)


def _train(ctx: RunContext, resume: bool, prebuilt: Prebuilt | None) -> dict[str, Any]:
    d, log, root = ctx.d, ctx.log, ctx.root
    # The ranks of one machine share its cores.
    threads = ctx.params.model.num_threads
    torch.set_num_threads(max(1, threads // d.local_world) if d.device.type == "cpu"
                          else threads)
    seed_everything(ctx.params.finetune.seed)
    ctx.labels = load_label_map(ctx.prepared_dir)
    if prebuilt is None:
        ctx.model, ctx.tokenizer = build_classifier(ctx.params, ctx.labels, ctx.init_dir)
    else:
        ctx.model, ctx.tokenizer = prebuilt.model, prebuilt.tokenizer
    # `auto` lengths and step counts become numbers for this data (the same on every rank).
    ctx.params, ctx.chosen = auto.resolve(ctx.params, ctx.prepared_dir, ctx.tokenizer, d.world,
                                          base_model_of(ctx.model).config)
    params = ctx.params
    cfg = params.finetune
    if prebuilt is None:
        train_data = _encode_split(ctx.tokenizer, ctx.prepared_dir, "train", params)
    else:
        train_data = prebuilt.train_data
    if d.is_main:
        progress_log.debug("max_length %d (%.1f%% of training texts truncated), %d steps",
                          ctx.chosen["max_length"], 100 * ctx.chosen["truncated_share"],
                          cfg.max_steps)
    model = ctx.model
    val_data = _encode_split(ctx.tokenizer, ctx.prepared_dir, "validation", params)
    model.to(d.device)
    strategy = ctx.strategy = build_strategy(cfg, trainable_parameters(model), cfg.max_steps, d)
    # Every rank draws the same global batch (per-rank batch x ranks) and takes its share.
    loader = ctx.loader = ShuffledLoader(train_data, cfg.batch_size * d.world, cfg.seed,
                                         cfg.sort_window)
    stopper = ctx.stopper = EarlyStopper.from_config(cfg.early_stopping, cfg.max_steps)
    run = ctx.run
    latest = d.broadcast(ckpt.latest_checkpoint(root) if resume and d.is_main else None)
    if latest is not None:
        _restore(ctx, latest)
    else:
        if d.is_main:
            ckpt.clear_checkpoints(root)
        if cfg.head_init == "linear_probe":
            _init_head_linear_probe(model, train_data, params, log, d)
        if d.active:
            # Dropout masks differ between ranks as they would between rows of one batch.
            torch.manual_seed(mix_seed(cfg.seed, d.rank))
    _same_start(model, d)
    model.train(strategy.uses_grad)  # forward-only strategies run without dropout noise
    # Gradient strategies run forwards through DDP (gradients averaged over the ranks);
    # zeroth-order ones through the model itself (they exchange losses only).
    forward_model = d.wrap(model) if strategy.uses_grad else model

    loss_fn = prebuilt.loss_fn if prebuilt is not None else classification_loss
    loss_fn = _with_precision(loss_fn, d)
    bar = tqdm(total=cfg.max_steps, initial=run.step, desc="finetune",
               disable=None if d.is_main else True)
    while run.step < cfg.max_steps and not run.stopped_early and not _over_budget(ctx):
        t0, cpu0 = time.perf_counter(), time.process_time()
        out = _one_step(forward_model, strategy, loader.next_batch(), run.step, loss_fn)
        run.train_seconds += time.perf_counter() - t0
        run.train_cpu_seconds += time.process_time() - cpu0
        _guard_finite(out["loss"], run.step, model, root, strategy)
        run.step += 1
        run.losses.append(out["loss"])
        log({**{f"train/{k}": v for k, v in out.items()},
             "train/cpu_seconds": run.train_cpu_seconds}, run.step)
        bar.update(1)
        bar.set_postfix(loss=f"{out['loss']:.4f}")
        if run.step % cfg.eval_every == 0 or run.step == cfg.max_steps:
            if d.is_main:
                with strategy.evaluation_weights():
                    _validate(ctx, val_data)
            run.stopped_early = d.broadcast(run.stopped_early)
        if run.step % cfg.checkpoint_every == 0 and run.step < cfg.max_steps:
            _guard_weights(model, run.step, root, strategy)
            rngs = d.gather(ckpt.rng_state())
            if d.is_main:
                state = {"run": {k: v for k, v in vars(run).items() if k != "started_at"},
                         "strategy": strategy.state_dict(),
                         "loader": loader.state_dict(), "stopper": stopper.state_dict(),
                         "rng": rngs[0], "rng_ranks": rngs[1:], "params_hash": params.hash()}
                ckpt.save_checkpoint(root, run.step, model, state, ctx.best,
                                     cfg.keep_checkpoints)
    bar.close()
    # Every rank must end with the same weights; the digests show it (32 bytes a rank).
    digests = d.gather(weights_digest(model)) if d.active else None
    metrics = _finish(ctx, save=d.is_main)
    if digests is not None:
        metrics.update(ranks=d.world, ranks_agree=len(set(digests)) == 1,
                       rank_weight_digests=digests)
    return metrics


def _over_budget(ctx: RunContext) -> bool:
    """`finetune.budget_cpu_s` used up (the same answer on every rank)."""
    budget = ctx.params.finetune.budget_cpu_s
    over = bool(budget) and ctx.run.train_cpu_seconds >= budget
    if over and not ctx.run.stopped_by_budget:
        ctx.run.stopped_by_budget = True
    return bool(ctx.d.broadcast(over)) if ctx.d.active else over


def weights_digest(model: nn.Module) -> str:
    """sha256 of the trainable weights' bytes, in parameter order."""
    h = hashlib.sha256()
    for name, p in trainable_parameters(model):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _with_precision(loss_fn: LossFn, d: Dist) -> LossFn:
    """`loss_fn` with its forward under autocast (bf16 / fp16), the loss back in fp32."""
    if d.precision == "fp32":
        return loss_fn

    def autocast_loss(model: nn.Module, batch: dict) -> torch.Tensor:
        with d.autocast():
            loss = loss_fn(model, batch)
        return loss.float()

    return autocast_loss


def _same_start(model: nn.Module, d: Dist) -> None:
    """Make sure every rank starts from rank 0's trainable weights.

    The ranks build and initialise the model identically, so normally only one checksum
    per rank is exchanged; weights are sent only if they differ.
    """
    if not d.active:
        return
    with torch.no_grad():
        sums = [float(p.double().sum()) + float(p.double().abs().sum())
                for _, p in trainable_parameters(model)]
    if len(set(map(tuple, d.gather(sums)))) > 1:
        import torch.distributed as tdist

        progress_log.warning("ranks built different starting weights; using rank 0's")
        with torch.no_grad():
            for _, p in trainable_parameters(model):
                tdist.broadcast(p.data, src=0)


def _encode_split(tokenizer: Any, prepared_dir: str | Path, split: str,
                  params: Params) -> Encoded:
    return task_type(params.task.type).encode_split(tokenizer, prepared_dir, split, params)


def _one_step(model: nn.Module, strategy: Strategy, batch: dict, step: int,
              loss_fn: LossFn) -> dict[str, float]:
    if strategy.uses_grad:
        return strategy.step(model, batch, loss_fn, step)
    # Zeroth-order strategies: no autograd graph is ever built.
    with torch.inference_mode():
        return strategy.step(model, batch, loss_fn, step)


def _validate(ctx: RunContext, val_data: Encoded) -> None:
    """Evaluate, log, update early stopping and, on a new best, the best weights."""
    cfg, run = ctx.params.finetune, ctx.run
    metrics = evaluate_split(ctx.model, val_data, cfg.eval_batch_size, len(ctx.labels),
                             cfg.eval_max_batches, ctx.d.device)
    run.last_eval = metrics
    ctx.log({f"val/{k}": v for k, v in metrics.items()}, run.step)
    _progress_line(run, cfg.max_steps, cfg.early_stopping.metric, metrics)
    if ctx.stopper.update(metrics, run.step):
        run.best_eval = metrics
        ctx.best = ckpt.trainable_state(ctx.model)
    run.stopped_early = ctx.stopper.should_stop


def _progress_line(run: RunState, max_steps: int, metric: str,
                   metrics: dict[str, float]) -> None:
    """One line per evaluation, for logs without a terminal (Prefect workers, CI, `> log`)."""
    done = run.step - run.resumed_from
    wall = time.perf_counter() - run.started_at
    eta = wall / done * (max_steps - run.step) if done else 0.0
    recent = run.losses[-min(len(run.losses), 20):]
    progress_log.info("step %d/%d  train loss %.4f  validation %s %.4f  elapsed %s  ETA %s",
                      run.step, max_steps, float(np.mean(recent)), metric, metrics[metric],
                      _clock(wall), _clock(eta))


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s"


def _guard_finite(loss: float, step: int, model: nn.Module, root: Path,
                  strategy: Strategy) -> None:
    if not math.isfinite(loss):
        _diverged(f"loss is {loss} at step {step + 1}", model, root, strategy)


def _guard_weights(model: nn.Module, step: int, root: Path, strategy: Strategy) -> None:
    """Never checkpoint NaN weights: the guard's whole point is a good state to return to."""
    for name, p in trainable_parameters(model):
        if not torch.isfinite(p).all():
            _diverged(f"weight {name} is not finite at step {step}", model, root, strategy)


def _diverged(reason: str, model: nn.Module, root: Path, strategy: Strategy) -> None:
    latest = ckpt.latest_checkpoint(root)
    hint = f"lower finetune.{strategy.name}.lr"
    if latest is None:
        raise TrainingDiverged(f"training diverged: {reason}; no checkpoint to restore yet "
                               f"({hint} and train again)")
    weights, _, _ = ckpt.load_checkpoint(latest)
    ckpt.load_trainable(model, weights)
    raise TrainingDiverged(f"training diverged: {reason}; restored the last good checkpoint "
                           f"{latest} ({hint}, or --resume from it)")


def _restore(ctx: RunContext, path: Path) -> None:
    """Weights, strategy, loader, stopper, loop state and RNG from a checkpoint."""
    params, run = ctx.params, ctx.run
    weights, state, ctx.best = ckpt.load_checkpoint(path)
    if state["params_hash"] != params.hash():
        raise ValueError(f"checkpoint {path} was made with different params "
                         f"(hash {state['params_hash']} != {params.hash()}); "
                         "train without --resume to start over")
    ckpt.load_trainable(ctx.model, weights)
    ctx.strategy.load_state_dict(state["strategy"])
    ctx.loader.load_state_dict(state["loader"])
    ctx.stopper.load_state_dict(state["stopper"])
    for key, value in state["run"].items():
        setattr(run, key, value)
    run.resumed_from = run.step
    ranks = state.get("rng_ranks") or []
    rank = ctx.d.rank
    ckpt.set_rng_state(ranks[rank - 1] if 0 < rank <= len(ranks) else state["rng"])


def _init_head_linear_probe(model: nn.Module, data: Encoded, params: Params,
                            log: MetricsLogger, d: Dist | None = None) -> None:
    # Imported lazily: the probe belongs to the zeroth-order strategies' module set.
    from components.train.finetune.linear_probe import fit_linear_probe

    batches = list(sequential_batches(data, params.finetune.batch_size, by_length=True))
    if d is not None:
        batches = [d.to_device(b) for b in batches]
    metrics = fit_linear_probe(model, batches, params.finetune.linear_probe)
    log({f"probe/{k}": float(v) for k, v in metrics.items()}, 0)


def _finish(ctx: RunContext, save: bool = True) -> dict[str, Any]:
    """Load the best-validated weights, summarise the run and (rank 0) save the model."""
    model, run, params = ctx.model, ctx.run, ctx.params
    if ctx.best is not None:
        ckpt.load_trainable(model, ctx.best)  # ship the best-validated weights, not the last
    model.eval()
    model.to("cpu")  # the saved model loads on any device
    window = max(1, min(10, len(run.losses) // 2))
    n_total = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for _, p in trainable_parameters(model))
    metrics: dict[str, Any] = {
        **{f"val_{k}": v for k, v in run.best_eval.items()},
        "steps": run.step, "best_step": ctx.stopper.best_step,
        "peak_step": ctx.stopper.peak_step, "shipped_because": ctx.stopper.reason,
        "stopped_by_budget": run.stopped_by_budget,
        "stopped_early": run.stopped_early,
        "train_seconds": round(run.train_seconds, 3),
        "train_cpu_seconds": round(run.train_cpu_seconds, 3), "resumed_from": run.resumed_from,
        "train_loss_initial": float(np.mean(run.losses[:window])),
        "train_loss_final": float(np.mean(run.losses[-window:])),
        "trainable_params": n_train, "total_params": n_total,
        "strategy": params.finetune.strategy, "peft_method": params.peft.method,
        **{k: v for k, v in ctx.chosen.items() if not k.endswith("_auto")}}
    if save:  # rank 0 only
        save_trained(model, ctx.tokenizer, ctx.labels, params, ctx.out_dir,
                     extra={"metrics": metrics, "data_version": data_version(ctx.prepared_dir),
                            "init_dir": str(ctx.init_dir) if ctx.init_dir else None})
    return metrics
