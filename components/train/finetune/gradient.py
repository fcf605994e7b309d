"""Gradient strategies: AdamW over every trainable parameter (full model or PEFT adapters)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from components.config import AdamWConfig
from components.train.finetune.base import LossFn, Strategy, register_strategy

# Biases and LayerNorm weights are not decayed: shrinking them towards zero only hurts
# (they set offsets and scales, not feature weights).
_NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "LayerNorm.bias")
def param_groups(params: list[tuple[str, nn.Parameter]], cfg: AdamWConfig) -> list[dict]:
    """AdamW groups: weight decay on feature weights, off for biases and LayerNorms."""
    groups: dict[bool, dict] = {}
    for name, p in params:
        no_decay = name.endswith(_NO_DECAY)
        groups.setdefault(no_decay, {"params": [], "lr": cfg.lr,
                                     "weight_decay": 0.0 if no_decay else cfg.weight_decay}
                          )["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def warmup_linear(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear 0 -> 1 over `warmup` steps, then linear 1 -> 0 at `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


@register_strategy
class AdamWStrategy(Strategy):
    """AdamW with warmup + linear decay, gradient clipping, no decay on bias/LayerNorm."""

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
        lr = self.optimizer.param_groups[0]["lr"]
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
        return {"loss": value, "lr": lr, "grad_norm": float(norm)}

    def state_dict(self) -> dict[str, Any]:
        state = {"optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict()}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
