"""The strategy plug-in interface: one training loop, strategies registered by name.

A strategy owns how parameters move in one step; the loop owns batching, evaluation,
early stopping, checkpoints and logging. Adding a strategy = one class + `@register_strategy`.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from components.config import FinetuneConfig, Section, strategy_names
from components.train.finetune.distributed import Dist

# loss_fn(model, batch) -> scalar loss tensor. Zeroth-order strategies call it under
# torch.inference_mode(); gradient strategies call it with autograd on.
LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]


class Strategy(ABC):
    """One way to turn a batch into a parameter update.

    Attributes:
        name: registry key, the value of `finetune.strategy`.
        uses_grad: False for forward-only (zeroth-order) strategies; the loop then never
            builds an autograd graph.
        dist: the ranks of the run; `step` receives the global batch and reads its own
            share of it (see distributed.py). One rank by default.
    """

    name: ClassVar[str]  # also the `FinetuneConfig` section holding its settings
    uses_grad: ClassVar[bool] = True

    def __init__(
        self,
        cfg: Section,
        params: list[tuple[str, nn.Parameter]],
        total_steps: int,
        seed: int,
    ) -> None:
        self.cfg = cfg
        self.params = params
        self.total_steps = total_steps
        self.seed = seed
        self.dist = Dist()

    @abstractmethod
    def step(self, model: nn.Module, batch: dict[str, torch.Tensor], loss_fn: LossFn,
             step: int) -> dict[str, float]:
        """Update the parameters in place; return metrics, at least {"loss": float}."""

    @contextlib.contextmanager
    def evaluation_weights(self) -> Iterator[None]:
        """Within the block the model holds the weights to evaluate and ship (default: the
        current ones; a strategy keeping an average of its weights swaps that in)."""
        yield

    def on_dist(self) -> None:  # noqa: B027 (optional hook)
        """Called once `dist` is set (a strategy may need the device or precision)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-identically (optimizer state, counters)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Restore what `state_dict` returned."""


STRATEGIES: dict[str, type[Strategy]] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: add `cls` to STRATEGIES under `cls.name`; duplicates are errors."""
    if cls.name in STRATEGIES:
        raise ValueError(f"strategy {cls.name!r} is already registered")
    if cls.name not in strategy_names():
        raise ValueError(f"strategy {cls.name!r}: finetune.{cls.name} is not a strategy "
                         "section (a StrategySection field of FinetuneConfig)")
    STRATEGIES[cls.name] = cls
    return cls


def build_strategy(cfg: FinetuneConfig, params: list[tuple[str, nn.Parameter]],
                   total_steps: int, dist: Dist | None = None) -> Strategy:
    """Instantiate the strategy named by `cfg.strategy` with its own config section."""
    try:
        cls = STRATEGIES[cfg.strategy]
    except KeyError:
        known = ", ".join(sorted(STRATEGIES)) or "none registered"
        raise ValueError(
            f"finetune.strategy: unknown strategy {cfg.strategy!r} (known: {known})"
        ) from None
    section = getattr(cfg, cls.name)
    dist = dist or Dist()
    population = getattr(section, "population", None)
    if dist.active and population is not None and population < dist.world:
        raise ValueError(f"finetune.{cls.name}.population ({population}) must be at "
                         f"least the number of ranks ({dist.world}): ranks split it")
    strategy = cls(section, params, total_steps, cfg.seed)
    strategy.dist = dist
    strategy.on_dist()
    return strategy
