"""Gradient strategies: AdamW over every trainable parameter (full model or PEFT adapters)."""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from components.config import AdamWConfig
from components.train.finetune.base import LossFn, Strategy, register_strategy

# Biases and LayerNorm weights are not decayed: shrinking them towards zero only hurts
# (they set offsets and scales, not feature weights).
_NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "LayerNorm.bias")
LAYER_NAME = re.compile(r"\.layers?\.(\d+)\.")


def layer_depths(names: list[str]) -> dict[str, int]:
    """Distance of each parameter from the output: 0 for the head, 1 for the last
    transformer layer, ..., num_layers + 1 for the embeddings.

    Parameters named neither `...layer.<i>...` nor `...embeddings...` (head, pooler,
    PEFT prompt encoders) count as the top.
    """
    layer = {n: int(m.group(1)) for n in names if (m := LAYER_NAME.search(n))}
    top = max(layer.values(), default=-1) + 1
    depths = {}
    for name in names:
        if name in layer:
            depths[name] = top - layer[name]
        elif "embeddings" in name and "prompt" not in name:
            depths[name] = top + 1
        else:
            depths[name] = 0
    return depths


def param_groups(params: list[tuple[str, nn.Parameter]], cfg: AdamWConfig) -> list[dict]:
    """AdamW groups: weight decay off for bias/LayerNorm; lr * layer_decay ** depth.

    Layer-wise decay keeps the lower layers (general language features) closer to the
    pretrained weights than the top ones, which matter most for the new task.
    """
    depths = layer_depths([n for n, _ in params])
    groups: dict[tuple[bool, int], dict] = {}
    for name, p in params:
        no_decay = name.endswith(_NO_DECAY)
        depth = depths[name] if cfg.layer_decay < 1.0 else 0
        group = groups.setdefault((no_decay, depth), {
            "params": [], "weight_decay": 0.0 if no_decay else cfg.weight_decay,
            "lr": cfg.lr * cfg.layer_decay ** depth})
        group["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def warmup_linear(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear 0 -> 1 over `warmup` steps, then linear 1 -> 0 at `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


@register_strategy
class AdamWStrategy(Strategy):
    """AdamW with warmup + linear decay, gradient clipping, no decay on bias/LayerNorm.

    With `ema_decay` > 0 it also keeps an exponential moving average of the trainable
    weights; evaluation and the shipped model use the average, which on small data is
    flatter and less tied to the last few batches than the raw iterate.
    """

    name = "adamw"
    uses_grad = True

    def __init__(self, cfg: AdamWConfig, params: list[tuple[str, nn.Parameter]],
                 total_steps: int, seed: int) -> None:
        super().__init__(cfg, params, total_steps, seed)
        if not params:
            raise ValueError("adamw: the model has no trainable parameters")
        self.optimizer = torch.optim.AdamW(param_groups(params, cfg), lr=cfg.lr)
        warmup = int(math.ceil(cfg.warmup_ratio * total_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_linear(s, total_steps, warmup))
        self.ema = ([p.detach().clone() for _, p in params] if cfg.ema_decay > 0 else None)
        self.scaler: torch.amp.GradScaler | None = None

    def on_dist(self) -> None:
        if self.dist.precision == "fp16" and self.dist.device.type == "cuda":
            # fp16 gradients underflow without loss scaling; bf16 has fp32's range.
            self.scaler = torch.amp.GradScaler("cuda")

    def step(self, model: nn.Module, batch: dict[str, torch.Tensor], loss_fn: LossFn,
             step: int) -> dict[str, float]:
        """`model` is wrapped in DDP when there are several ranks (gradients all-reduced)."""
        self.optimizer.zero_grad(set_to_none=True)
        part, share = self.dist.shard(batch)
        loss = loss_fn(model, part)
        value = float(loss.detach())
        if self.dist.active:
            # The global batch's mean loss, identical on every rank (so is the NaN check).
            value = self.dist.all_reduce_sum([value * share])[0]
            # DDP averages gradients over ranks; weighting by share * world makes that
            # average the gradient of the global mean even when slices differ in size.
            loss = loss * (share * self.dist.world)
        if not math.isfinite(value):
            # Never apply an update computed from a NaN/inf loss; the loop stops the run.
            return {"loss": value}
        grads = [p for _, p in self.params]
        clip = self.cfg.max_grad_norm or float("inf")  # 0 = no clipping; norm still reported
        first = self.optimizer.param_groups[0]
        lr = self.cfg.lr * first["lr"] / first["initial_lr"]  # the top layers' lr
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(grads, clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(grads, clip)
            self.optimizer.step()
        self.scheduler.step()
        self._update_ema()
        return {"loss": value, "lr": lr, "grad_norm": float(norm)}

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        updates = self.scheduler.last_epoch  # applied steps, this one included
        # Warm-up of the decay (as in tf.train.ExponentialMovingAverage's num_updates):
        # early on the average follows the weights instead of the pretrained start.
        decay = min(self.cfg.ema_decay, (1 + updates) / (10 + updates))
        for avg, (_, p) in zip(self.ema, self.params, strict=True):
            avg.lerp_(p.detach(), 1.0 - decay)

    @contextlib.contextmanager
    def evaluation_weights(self) -> Iterator[None]:
        if self.ema is None:
            yield
            return
        swap = [(p, p.data) for _, p in self.params]
        for avg, (p, _) in zip(self.ema, swap, strict=True):
            p.data = avg
        try:
            yield
        finally:
            for p, current in swap:
                p.data = current

    def state_dict(self) -> dict[str, Any]:
        state = {"optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if self.ema is not None:
            state["ema"] = list(self.ema)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if "ema" not in state:
                raise ValueError("adamw: the checkpoint has no weight average (ema_decay was 0)")
            for avg, saved in zip(self.ema, state["ema"], strict=True):
                avg.copy_(saved)
