"""Cross-entropy method (CEM): gradient-free search over a low-dimensional target.

The search distribution is a Gaussian N(mu, diag(s^2)) over the target values (see
zo_target.py). mu is the model's own weights, so evaluation, checkpoints and the shipped
model are the mean; s, one standard deviation per value, is the strategy's state. Each
step draws `population` samples theta_k = mu + s * z_k with z_k read from the noise table
by the seed of (step, k) (never stored; perturbed on the fly like MeZO's), scores each on
the batch, and refits the distribution to the elite (the `elite_fraction` lowest losses):

    mu  <- mu + a * s * zbar                               zbar = mean over the elite of z_k
    s^2 <- (1 - a) * s^2 + a * s^2 * mean_elite (z_k - zbar)^2
    s   <- max(s, sigma_min)

with a = `smoothing`. Selection shrinks the variance every step (the elite spread is
smaller than the population's), so without the floor the search would freeze; with it,
sigma_min sets the step length once the distribution has contracted.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
from torch import nn

from components.config import CEMConfig
from components.train.finetune.base import LossFn, register_strategy
from components.train.finetune.zeroth_order import Batch, ZerothOrderStrategy, any_nonfinite


@register_strategy
class CEMStrategy(ZerothOrderStrategy):
    """CEM with a diagonal Gaussian: `population` forwards a step, elite refit, std floor."""

    name = "cem"
    splits_batch = False

    def __init__(self, cfg: CEMConfig, params: list[tuple[str, nn.Parameter]],
                 total_steps: int, seed: int) -> None:
        super().__init__(cfg, params, total_steps, seed)
        self.noise.std = [torch.full(p.shape, cfg.sigma, dtype=p.dtype, device=p.device)
                          for _, p in self.params]

    def step(self, model: nn.Module, batch: Batch, loss_fn: LossFn,
             step: int) -> dict[str, float]:
        cfg = self.cfg
        batch = self.dist.to_device(batch)
        rng = torch.get_rng_state()
        losses = [0.0] * cfg.population
        with self.reuse(model).active():
            for k in range(cfg.population):
                if self.dist.mine(k):  # ranks split the population
                    torch.set_rng_state(rng)  # every sample sees the same dropout masks
                    losses[k] = self.perturbed_loss(model, batch, loss_fn,
                                                    self.sample_seed(step, k), 1.0)
        losses = self.population_losses(losses)
        if any_nonfinite(*losses):
            return {"loss": float("nan")}
        # Ties broken by sample index, so the elite is a pure function of the losses.
        elite = sorted(range(cfg.population), key=lambda k: (losses[k], k))[:cfg.elite_count]
        self._refit(step, elite)
        return {"loss": statistics.fmean(losses),
                "elite_loss": statistics.fmean(losses[k] for k in elite),
                "sigma": self.mean_std()}

    @torch.no_grad()
    def _refit(self, step: int, elite: list[int]) -> None:
        """Move mu to the (blended) elite mean and s to the (blended, floored) elite spread."""
        a = self.cfg.smoothing
        seeds = [self.sample_seed(step, k) for k in elite]
        for i, (_, p) in enumerate(self.params):
            std = self.noise.std[i]
            z, zbar, z2 = torch.empty_like(std), torch.zeros_like(std), torch.zeros_like(std)
            for seed in seeds:
                self.noise.direction(i, seed, z)
                zbar.add_(z)
                z2.addcmul_(z, z)
            zbar.div_(len(seeds))
            spread = z2.div_(len(seeds)).addcmul_(zbar, zbar, value=-1.0).clamp_(min=0.0)
            p.data.addcmul_(std, zbar, value=a)
            var = spread.mul_(a).add_(1.0 - a).mul_(std).mul_(std)
            torch.clamp(var.sqrt_(), min=self.cfg.sigma_min, out=std)

    def mean_std(self) -> float:
        total = sum(float(s.sum()) for s in self.noise.std)
        return total / sum(s.numel() for s in self.noise.std)

    def state_dict(self) -> dict[str, Any]:
        # mu is the weights (checkpointed by the loop); the samples follow from the seeds.
        return {"seed": self.seed, "std": list(self.noise.std)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError(f"cem: checkpoint was made with seed {state['seed']}, "
                             f"this run uses {self.seed}")
        saved = state["std"]
        if len(saved) != len(self.noise.std):
            raise ValueError(f"cem: checkpoint holds {len(saved)} std tensors, the target "
                             f"has {len(self.noise.std)} parameters")
        for std, value in zip(self.noise.std, saved, strict=True):
            std.copy_(value)
