"""Zeroth-order strategies: train with forward passes only (MeZO/SPSA, ZO-sign, ES).

The algorithm shape follows "Fine-Tuning Language Models with Just Forward Passes"
(Malladi et al. 2023): one seed per sample, loss at theta + eps z and theta - eps z, one
scalar projected gradient g = (loss+ - loss-) / 2 eps, and an update that regenerates z
from the seed. No autograd graph, no optimizer state and no parameter-sized buffer exist,
so memory stays at inference level. Each strategy perturbs only its `target` (all
trainable parameters, BitFit's biases and LayerNorms, or the top layers; see
zo_target.py): fewer values perturbed, less variance per estimate. Two choices make a step
cost little more than its forward passes (see zo_noise.py and zo_perturb.py):

- z is sliced from a fixed table of normals by seed instead of drawn fresh, and
- theta is perturbed on the fly inside each module's forward, never in place, so nothing
  needs restoring and "perturb then restore" is exact by construction.

With several ranks (distributed.py) every rank draws the same seeds: mezo and zo_sign
evaluate their slice of the global batch and all-reduce only the losses (a few float64s
a step), es and cem split the population over the ranks and all-reduce the fitness
values; every rank then applies the same scalar coefficients, so the weights stay
bit-identical without a tensor of model size ever being sent.

Seeds are a pure function of (run seed, step, sample): a resumed run is bit-identical to
an uninterrupted one, and the seeds plus the scalar update coefficients in `history` are
a compact log that replays the whole run from the starting weights (`replay_history`).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from components.config import ZOGradSection, ZOSection
from components.train.finetune.base import LossFn, Strategy, register_strategy
from components.train.finetune.zo_noise import NoiseTable, ParamNoise, mix_seed
from components.train.finetune.zo_perturb import Perturbation
from components.train.finetune.zo_reuse import FrozenReuse
from components.train.finetune.zo_target import freeze_outside, select_target

Batch = dict[str, torch.Tensor]


class ZerothOrderStrategy(Strategy):
    """Shared machinery: seeded directions, perturbed forwards, in-place updates.

    Subclasses implement `step` from `sample_losses` and `apply_update`.
    """

    uses_grad = False
    # With several ranks: True = each evaluates its slice of the batch (mezo, zo_sign);
    # False = each evaluates its share of the population on the whole batch (es, cem).
    splits_batch: ClassVar[bool] = True

    def __init__(self, cfg: ZOSection, params: list[tuple[str, nn.Parameter]],
                 total_steps: int, seed: int) -> None:
        if not params:
            raise ValueError(f"{self.name}: the model has no trainable parameters")
        try:
            chosen = select_target(params, cfg.target, cfg.top_layers)
        except ValueError as exc:
            raise ValueError(f"finetune.{self.name}.target: {exc}") from None
        # Everything outside the target stays as it is for the whole run.
        freeze_outside(params, chosen)
        super().__init__(cfg, chosen, total_steps, seed)
        self.table = NoiseTable(cfg.noise_table_size, seed)
        self.noise = ParamNoise([p for _, p in chosen], self.table)
        self._perturbation: Perturbation | None = None
        self._reuse: FrozenReuse | None = None
        self._rows_agree = False  # every rank used the same embedding rows this step
        # One entry per applied sample: [step, sample, update coefficient]; with the run
        # seed, the starting weights and the batches' rows this replays the run.
        self.history: list[list[float]] = []
        # Per step, the embedding rows the update touched (int32: ~4 KB a step on MiniLM,
        # where Python int lists would grow the process by ~40 KB a step).
        self.rows_log: list[dict[int, torch.Tensor]] = []

    def perturbation(self, model: nn.Module) -> Perturbation:
        if self._perturbation is None or self._perturbation.model is not model:
            sparse = isinstance(self.cfg, ZOGradSection) and self.cfg.sparse_embeddings
            self._perturbation = Perturbation(model, self.noise, sparse)
        return self._perturbation

    def reuse(self, model: nn.Module) -> FrozenReuse:
        """Outputs of the untargeted sub-modules, computed once per step (zo_reuse.py)."""
        if self._reuse is None or self._reuse.model is not model:
            self._reuse = FrozenReuse(model, [p for _, p in self.params])
        return self._reuse

    def global_losses(self, local: list[float], share: float) -> list[float]:
        """Losses of the global batch from this rank's slice losses (mean over ranks
        weighted by slice size; one all-reduce of len(local) float64s).

        When embeddings are perturbed row-sparsely, two more values per such matrix ride
        along (count and hash-sum of the rows this rank used): if every rank used the same
        rows (the usual case: slices share the batch's width and only position rows are
        trained) nothing else is sent; otherwise `apply_update` merges the row sets.
        """
        if not self.dist.active:
            return local
        digest = self._rows_digest()
        total = self.dist.all_reduce_sum([v * share for v in local] + digest)
        self._rows_agree = all(t == v * self.dist.world
                               for t, v in zip(total[len(local):], digest, strict=True))
        return total[: len(local)]

    def _rows_digest(self) -> list[float]:
        pert = self._perturbation
        if pert is None or not pert.has_sparse:
            return []
        out = []
        for i in pert.sparse_indices:
            rows = pert.rows.get(i)
            if rows is None:
                out += [0.0, 0.0]
                continue
            # Exact in float64: < 2^31 per row, far fewer than 2^22 rows.
            mixed = (rows.to(torch.int64) * 2654435761 + 12345) % 2147483647
            out += [float(len(rows)), float(mixed.sum())]
        return out

    def population_losses(self, local: list[float]) -> list[float]:
        """Every rank's population losses: each slot is filled by the one rank that
        evaluated it (zeros elsewhere), so the sum over ranks is exact."""
        if not self.dist.active:
            return local
        return self.dist.all_reduce_sum(local)

    def sample_seed(self, step: int, sample: int) -> int:
        return mix_seed(self.seed, step, sample)

    def perturbed_loss(self, model: nn.Module, batch: Batch, loss_fn: LossFn, seed: int,
                       scale: float) -> float:
        """Loss at theta + scale * z(seed); theta itself is untouched."""
        with self.perturbation(model).applied(seed, scale), torch.inference_mode():
            return float(loss_fn(model, batch))

    def sample_losses(self, model: nn.Module, batch: Batch, loss_fn: LossFn, seed: int,
                      eps: float) -> tuple[float, float]:
        """(loss at theta + eps z, loss at theta - eps z) with identical dropout masks."""
        rng = torch.get_rng_state()
        plus = self.perturbed_loss(model, batch, loss_fn, seed, eps)
        # Same dropout masks on both sides: the difference then measures the
        # perturbation only, not two different random sub-networks.
        torch.set_rng_state(rng)
        minus = self.perturbed_loss(model, batch, loss_fn, seed, -eps)
        return plus, minus

    @torch.no_grad()
    def apply_update(self, model: nn.Module, step: int,
                     updates: list[tuple[int, float]], lr: float, weight_decay: float) -> None:
        """theta <- theta * (1 - lr * wd) + sum_k coef_k * z(seed of sample k)."""
        if weight_decay:
            for _, p in self.params:
                p.mul_(1.0 - lr * weight_decay)
        perturbation = self.perturbation(model)
        if (self.dist.active and self.splits_batch and perturbation.has_sparse
                and not self._rows_agree):
            # Each rank looked up the rows of its own slice; the update touches them all.
            perturbation.rows = self.dist.union_rows(perturbation.rows)
        for sample, coef in updates:
            perturbation.add_noise_(self.sample_seed(step, sample), coef)
            self.history.append([step, sample, coef])
        self.rows_log.append({i: r.to(torch.int32) for i, r in perturbation.rows.items()})

    def state_dict(self) -> dict[str, Any]:
        # Directions depend only on (seed, step, sample): nothing else is needed to resume.
        # The rows log is stored as one int32 tensor plus (param index, length) per entry.
        layout = [[[i, len(r)] for i, r in entry.items()] for entry in self.rows_log]
        parts = [r for entry in self.rows_log for r in entry.values()]
        flat = torch.cat(parts) if parts else torch.empty(0, dtype=torch.int32)
        return {"seed": self.seed, "history": self.history,
                "rows_layout": layout, "rows_flat": flat}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise ValueError(f"{self.name}: checkpoint was made with seed {state['seed']}, "
                             f"this run uses {self.seed}")
        self.history = [list(h) for h in state.get("history", [])]
        flat = state.get("rows_flat", torch.empty(0, dtype=torch.int32))
        self.rows_log, pos = [], 0
        for entry in state.get("rows_layout", []):
            rows = {}
            for index, length in entry:
                rows[int(index)] = flat[pos: pos + length]
                pos += length
            self.rows_log.append(rows)
        if pos != len(flat):
            raise ValueError(f"{self.name}: checkpoint rows log is inconsistent "
                             f"({len(flat) - pos} rows unaccounted for)")


def any_nonfinite(*values: float) -> bool:
    return not all(math.isfinite(v) for v in values)


@register_strategy
class MeZOStrategy(ZerothOrderStrategy):
    """MeZO (SPSA): theta -= lr * (mean_k g_k z_k + wd * theta), g_k = (l+_k - l-_k) / 2 eps,
    over `n_samples` seeds a step, 2 forwards per seed."""

    name = "mezo"

    def step(self, model: nn.Module, batch: Batch, loss_fn: LossFn,
             step: int) -> dict[str, float]:
        with self.reuse(model).active():
            return self._spsa_step(model, batch, loss_fn, step)

    def _spsa_step(self, model: nn.Module, batch: Batch, loss_fn: LossFn,
                   step: int) -> dict[str, float]:
        cfg, n = self.cfg, self.cfg.n_samples
        part, share = self.dist.shard(batch)
        losses: list[float] = []
        for k in range(n):
            losses += self.sample_losses(model, part, loss_fn, self.sample_seed(step, k),
                                         cfg.eps)
        losses = self.global_losses(losses, share)
        grads = [(losses[2 * k] - losses[2 * k + 1]) / (2 * cfg.eps) for k in range(n)]
        loss = sum(losses) / len(losses)
        if any_nonfinite(*losses):
            # Never apply an update computed from a NaN/inf loss; the loop stops the run.
            return {"loss": float("nan") if not math.isfinite(loss) else loss}
        self.apply_update(model, step, [(k, -cfg.lr * g / n) for k, g in enumerate(grads)],
                          cfg.lr, cfg.weight_decay)
        return {"loss": loss, "projected_grad": sum(grads) / n}


@register_strategy
class ZOSignStrategy(ZerothOrderStrategy):
    """ZO-sign: the MeZO estimate, but the step is lr * sign(g) * z (robust to loss scale)."""

    name = "zo_sign"

    def step(self, model: nn.Module, batch: Batch, loss_fn: LossFn,
             step: int) -> dict[str, float]:
        cfg = self.cfg
        part, share = self.dist.shard(batch)
        with self.reuse(model).active():
            local = self.sample_losses(model, part, loss_fn, self.sample_seed(step, 0), cfg.eps)
        plus, minus = self.global_losses(list(local), share)
        if any_nonfinite(plus, minus):
            return {"loss": float("nan")}
        g = (plus - minus) / (2 * cfg.eps)
        sign = (g > 0) - (g < 0)
        self.apply_update(model, step, [(0, -cfg.lr * sign)], cfg.lr, cfg.weight_decay)
        return {"loss": (plus + minus) / 2, "projected_grad": g}


def centered_ranks(values: list[float]) -> list[float]:
    """Ranks scaled to [-0.5, 0.5] (ties broken by position): fitness shaping of ES.

    Using ranks instead of raw losses makes the update invariant to the loss scale and
    robust to outlier batches (Salimans et al. 2017).
    """
    n = len(values)
    if n == 1:
        return [0.0]
    order = sorted(range(n), key=lambda i: values[i])
    ranks = [0.0] * n
    for rank, i in enumerate(order):
        ranks[i] = rank / (n - 1) - 0.5
    return ranks


@register_strategy
class ESStrategy(ZerothOrderStrategy):
    """Antithetic evolution strategies with centered-rank fitness shaping.

    Each of `population` seeds is evaluated at theta + sigma z and theta - sigma z; the
    update is theta -= lr * mean_k (u+_k - u-_k) z_k with u the centered ranks of all 2P
    losses. The 1/sigma of the raw estimator is folded into lr: with ranks the update
    size no longer depends on the loss scale, so lr is directly the step length.
    """

    name = "es"
    splits_batch = False

    def step(self, model: nn.Module, batch: Batch, loss_fn: LossFn,
             step: int) -> dict[str, float]:
        cfg, pop = self.cfg, self.cfg.population
        batch = self.dist.to_device(batch)
        losses = [0.0] * (2 * pop)
        with self.reuse(model).active():
            for k in range(pop):
                if self.dist.mine(k):
                    losses[2 * k: 2 * k + 2] = self.sample_losses(
                        model, batch, loss_fn, self.sample_seed(step, k), cfg.sigma)
        losses = self.population_losses(losses)
        loss = sum(losses) / len(losses)
        if any_nonfinite(*losses):
            return {"loss": float("nan")}
        u = centered_ranks(losses)
        updates = [(k, -cfg.lr * (u[2 * k] - u[2 * k + 1]) / pop) for k in range(pop)]
        self.apply_update(model, step, updates, cfg.lr, cfg.weight_decay)
        spread = max(losses) - min(losses)
        return {"loss": loss, "loss_spread": spread}


@torch.no_grad()
def replay_history(strategy: ZerothOrderStrategy, model: nn.Module) -> None:
    """Re-apply a run's logged updates to `model` (at its starting weights), in place.

    `strategy` must be built like the original (same params, seed and noise settings)
    and carry the original `history` / `rows_log` (e.g. from a checkpoint's state).
    Only seeds, scalar coefficients and the embedding rows each step touched are needed.
    """
    cfg = strategy.cfg
    lr, wd = cfg.lr, cfg.weight_decay
    by_step: dict[int, list[tuple[int, float]]] = {}
    for step, sample, coef in strategy.history:
        by_step.setdefault(int(step), []).append((int(sample), float(coef)))
    perturbation = strategy.perturbation(model)
    for (step, updates), rows in zip(sorted(by_step.items()), strategy.rows_log, strict=True):
        if wd:
            for _, p in strategy.params:
                p.mul_(1.0 - lr * wd)
        perturbation.rows = {i: r.to(torch.long) for i, r in rows.items()}
        for sample, coef in updates:
            perturbation.add_noise_(strategy.sample_seed(step, sample), coef)
