"""Gradient strategies: AdamW over every trainable parameter (full model or PEFT adapters)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from components.config import AdamWConfig
from components.finetune.base import LossFn, Strategy, register_strategy

# Biases and LayerNorm weights are not decayed: shrinking them towards zero only hurts
# (they set offsets and scales, not feature weights).
_NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "LayerNorm.bias")


def warmup_linear(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear 0 -> 1 over `warmup` steps, then linear 1 -> 0 at `total`."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


@register_strategy
class AdamWStrategy(Strategy):
    """AdamW with warmup + linear decay, gradient clipping, no decay on bias/LayerNorm."""

    name = "adamw"
    config_key = "adamw"
    uses_grad = True

    def __init__(self, cfg: AdamWConfig, params: list[tuple[str, nn.Parameter]],
                 total_steps: int, seed: int) -> None:
        super().__init__(cfg, params, total_steps, seed)
        if not params:
            raise ValueError("adamw: the model has no trainable parameters")
        decay = [p for n, p in params if not n.endswith(_NO_DECAY)]
        no_decay = [p for n, p in params if n.endswith(_NO_DECAY)]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr)
        warmup = int(math.ceil(cfg.warmup_ratio * total_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: warmup_linear(s, total_steps, warmup))

    def step(self, model: nn.Module, batch: dict[str, torch.Tensor], loss_fn: LossFn,
             step: int) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            # Never apply an update computed from a NaN/inf loss; the loop stops the run.
            return {"loss": value}
        loss.backward()
        grads = [p for _, p in self.params]
        # max_grad_norm 0 = no clipping; the norm is still reported.
        norm = torch.nn.utils.clip_grad_norm_(grads, self.cfg.max_grad_norm or float("inf"))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": value, "lr": lr, "grad_norm": float(norm)}

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
