"""The cross-entropy method: samples, elite refit of mean and variance, the variance floor."""

from __future__ import annotations

import copy

import pytest
import torch

from components.config import CEMConfig
from components.model.modeling import trainable_parameters
from components.train.finetune import STRATEGIES
from tests.test_zeroth_order import loss_fn, micro_batch, micro_model, one_thread  # noqa: F401


def directions(strategy, seed):
    return [strategy.noise.direction(i, seed, torch.empty_like(p))
            for i, (_, p) in enumerate(strategy.params)]


def test_cem_samples_and_refits_the_elite_mean_and_variance():
    model, batch = micro_model(), micro_batch()
    cfg = CEMConfig(target="all", population=6, elite_fraction=0.5, sigma=0.05,
                    sigma_min=0.03, smoothing=0.7)
    strategy = STRATEGIES["cem"](cfg, trainable_parameters(model), 10, seed=3)
    start = [p.detach().clone() for _, p in strategy.params]
    zs = [directions(strategy, strategy.sample_seed(0, k)) for k in range(cfg.population)]

    # Each sample's loss is the loss of the model at mu + sigma * z, applied densely.
    losses = []
    for z in zs:
        ref = copy.deepcopy(model)
        ref_params = dict(ref.named_parameters())
        with torch.no_grad():
            for (name, _), zi in zip(strategy.params, z, strict=True):
                ref_params[name].add_(zi, alpha=cfg.sigma)
            losses.append(float(loss_fn(ref, batch)))
    with torch.inference_mode():
        hooked = [strategy.perturbed_loss(model, batch, loss_fn, strategy.sample_seed(0, k), 1.0)
                  for k in range(cfg.population)]
        metrics = strategy.step(model, batch, loss_fn, 0)
    assert hooked == pytest.approx(losses, rel=1e-5, abs=1e-6)

    elite = sorted(range(cfg.population), key=lambda k: losses[k])[: cfg.elite_count]
    assert metrics["elite_loss"] == pytest.approx(sum(losses[k] for k in elite) / len(elite),
                                                   rel=1e-5)
    for i, (_, p) in enumerate(strategy.params):
        z = torch.stack([zs[k][i] for k in elite])
        zbar = z.mean(0)
        expected_mu = start[i] + 0.7 * cfg.sigma * zbar
        spread = (z - zbar).pow(2).mean(0)
        expected_std = (cfg.sigma ** 2 * (0.3 + 0.7 * spread)).sqrt().clamp(min=cfg.sigma_min)
        torch.testing.assert_close(p.detach(), expected_mu, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(strategy.noise.std[i], expected_std, rtol=1e-5, atol=1e-7)
    # Selection shrinks the spread: some values already sit on the floor.
    floor = torch.cat([s.reshape(-1) for s in strategy.noise.std]) == cfg.sigma_min
    assert 0 < int(floor.sum()) < floor.numel()


def test_cem_lowers_the_loss_of_a_fixed_batch_and_keeps_the_floor():
    model, batch = micro_model(), micro_batch()
    cfg = CEMConfig(target="all", population=8, elite_fraction=0.25, sigma=0.05,
                    sigma_min=0.02, smoothing=1.0)
    strategy = STRATEGIES["cem"](cfg, trainable_parameters(model), 100, seed=1)
    with torch.inference_mode():
        before = float(loss_fn(model, batch))
        for step in range(60):
            strategy.step(model, batch, loss_fn, step)
        after = float(loss_fn(model, batch))
    assert after < 0.8 * before, (before, after)
    assert all(bool((s >= cfg.sigma_min).all()) for s in strategy.noise.std)

