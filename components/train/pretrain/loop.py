"""The pretraining loop: a head-only warm-up, then the encoder at its own learning rate.

Phase "head" (`pretrain.head_warmup_steps`; only objectives with new parameters): every
backbone weight is frozen and the encoder runs without autograd, so the new head learns
what the encoder already says, at `pretrain.lr`, for the price of a forward pass.
Phase "encoder" (`pretrain.max_steps`): the encoder trains at `pretrain.encoder_lr` (the
head keeps `pretrain.lr`). Each phase warms its lr up over `warmup_ratio` of its steps,
then decays it linearly to zero. The held-out loss is measured on the same fixed batches
before, between and after the phases.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from components.config import Params
from components.model.modeling import resolve_backbone
from components.train.finetune.loggers import MetricsLogger, null_logger
from components.train.pretrain.base import OBJECTIVES, Objective, save_backbone, split_heldout

log = logging.getLogger("tuneline.pretrain")


class PretrainDiverged(RuntimeError):
    """The pretraining loss became NaN or infinite."""


class TextSampler:
    """Endless seeded shuffles of the texts, cut into batches (no text twice in a batch)."""

    def __init__(self, texts: list[str], batch_size: int, gen: torch.Generator) -> None:
        self.texts, self.size, self.gen = texts, min(batch_size, len(texts)), gen
        self.order: list[int] = []

    def next(self) -> list[str]:
        if len(self.order) < self.size:
            self.order = torch.randperm(len(self.texts), generator=self.gen).tolist()
        picked, self.order = self.order[: self.size], self.order[self.size:]
        return [self.texts[i] for i in picked]


def set_phase(objective: Objective, phase: str, params: Params) -> list[dict[str, Any]]:
    """Set requires_grad for `phase` ("head" | "encoder"); return the optimizer's groups.

    head: only the objective's new parameters train. encoder: the encoder too (minus the
    word embeddings with `pretrain.freeze_embeddings`), at `encoder_lr`.
    """
    cfg = params.pretrain
    head = objective.new_parameters()
    for p in objective.model.parameters():
        p.requires_grad_(False)
    groups = [("head", head, cfg.lr)]
    if phase == "encoder":
        frozen = {id(objective.encoder.get_input_embeddings().weight)
                  } if cfg.freeze_embeddings else set()
        encoder = [p for p in objective.encoder.parameters() if id(p) not in frozen]
        groups.append(("encoder", encoder, cfg.encoder_lr))
    elif phase != "head":
        raise ValueError(f"unknown pretraining phase {phase!r}")
    out = []
    for name, group, lr in groups:
        for p in group:
            p.requires_grad_(True)
        # No weight decay on biases and LayerNorm weights (one-dimensional tensors).
        for decay in (True, False):
            chosen = [p for p in group if (p.ndim >= 2) == decay]
            if chosen:
                out.append({"params": chosen, "lr": lr, "name": name,
                            "weight_decay": cfg.weight_decay if decay else 0.0})
    return out


def adapt_backbone(params: Params, texts: list[str], out_dir: str | Path,
                   logger: MetricsLogger | None = None) -> dict[str, Any]:
    """Adapt the backbone to `texts` with `pretrain.objective`; save it to `out_dir`.

    Returns:
        objective, heldout_loss_before / _after_head_warmup (when warmed up) / _after,
        head_warmup_steps, steps, head_warmup_seconds, train_seconds, n_train, n_heldout;
        also written to `out_dir/pretrain_metrics.json`.

    Raises:
        PretrainDiverged: the loss became NaN/inf (lower pretrain.lr / encoder_lr).
    """
    cfg, emit = params.pretrain, logger or null_logger
    torch.set_num_threads(params.model.num_threads)
    torch.manual_seed(cfg.seed)
    source = resolve_backbone(params.model.name_or_path)
    objective = OBJECTIVES[cfg.objective](params, source)
    train_texts, held_texts = split_heldout(texts, cfg.heldout_fraction, cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    size = cfg.batch_size
    held = [objective.make_batch(held_texts[i:i + size], gen)
            for i in range(0, len(held_texts), size)][: cfg.eval_batches]
    sampler = TextSampler(train_texts, size, gen)
    metrics: dict[str, Any] = {"objective": cfg.objective,
                               "heldout_loss_before": objective.heldout_loss(held)}
    emit({"pretrain/heldout_loss": metrics["heldout_loss_before"]}, 0)
    warm = cfg.head_warmup_steps if objective.new_parameters() else 0
    step = 0
    phases = [("head", warm, "heldout_loss_after_head_warmup", "head_warmup_seconds"),
              ("encoder", cfg.max_steps, "heldout_loss_after", "train_seconds")]
    for phase, steps, loss_key, seconds_key in phases:
        if steps == 0 and phase == "head":
            continue
        groups = set_phase(objective, phase, params)
        seconds = run_phase(objective, groups, steps, sampler, gen, params, emit, step)
        step += steps
        metrics[loss_key] = objective.heldout_loss(held)
        metrics[seconds_key] = round(seconds, 3)
        emit({"pretrain/heldout_loss": metrics[loss_key]}, step)
        log.info("%s phase: %d steps in %.0f s, held-out %s loss %.4f", phase, steps, seconds,
                 cfg.objective, metrics[loss_key])
    metrics.update({"head_warmup_steps": warm, "steps": cfg.max_steps,
                    "n_train": len(train_texts), "n_heldout": len(held_texts)})
    save_backbone(objective.encoder, objective.tokenizer, source, out_dir, metrics)
    return metrics


def run_phase(objective: Objective, groups: list[dict[str, Any]], steps: int,
              sampler: TextSampler, gen: torch.Generator, params: Params,
              emit: MetricsLogger, first_step: int) -> float:
    """`steps` optimizer steps on the trainable parameters of `groups`; returns seconds."""
    cfg = params.pretrain
    if steps == 0:
        return 0.0
    train_encoder = any(g["name"] == "encoder" for g in groups)
    trainable = [p for g in groups for p in g["params"]]
    optimizer = torch.optim.AdamW(groups)
    warmup = math.ceil(cfg.warmup_ratio * steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup
        else max(0.0, (steps - s) / max(1, steps - warmup)))
    objective.model.train()
    t0 = time.perf_counter()
    for i in tqdm(range(steps), desc=f"pretrain ({'encoder' if train_encoder else 'head'})",
                  disable=None):
        loss = objective.loss(objective.make_batch(sampler.next(), gen), train_encoder)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise PretrainDiverged(f"pretraining diverged: loss {value} at step "
                                   f"{first_step + i + 1} (lower pretrain.lr / encoder_lr)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
        optimizer.step()
        schedule.step()
        emit({"pretrain/loss": value}, first_step + i + 1)
    return time.perf_counter() - t0
