"""Compute the frozen part of the network once per step, not once per forward.

A zeroth-order step runs the same batch through the model several times (2 for SPSA,
n + 1 for FZOO, the population for ES and CEM), changing only the targeted parameters.
Every module below the first targeted one sees the same input each time and so returns the
same output: with `target: top_layers` on a 6-layer model and 2 layers targeted, the
embeddings and 4 layers are two thirds of a forward, recomputed for nothing.

Within `FrozenReuse.active()`, each maximal sub-module holding no targeted parameter
returns its previous output when called again with equal inputs (the same tensors, or
tensors with identical values). Equal inputs and frozen weights give the same output, so
losses are bit-identical to recomputing; a module whose input changed (it sits above a
perturbed one) recomputes, at the cost of one comparison. Modules in training mode are
never reused (dropout would draw new masks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


class FrozenReuse:
    """The maximal frozen sub-modules of `model` (w.r.t. `targeted`), memoized per step."""

    def __init__(self, model: nn.Module, targeted: list[nn.Parameter]) -> None:
        self.model = model
        self.modules = _maximal_frozen(model, {id(p) for p in targeted})

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Within the block, a frozen module called twice with equal inputs computes once."""
        cache: dict[nn.Module, tuple[tuple, dict, Any]] = {}
        for module in self.modules:
            if not module.training:
                # An instance attribute shadows the class's forward; nn.Module calls it.
                module.forward = _memoized(module, module.forward, cache)
        try:
            yield
        finally:
            for module in self.modules:
                module.__dict__.pop("forward", None)
            cache.clear()


def _memoized(module: nn.Module, forward: Any, cache: dict) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        hit = cache.get(module)
        if hit is not None and _same(hit[0], args) and _same(hit[1], kwargs):
            return hit[2]
        out = forward(*args, **kwargs)
        cache[module] = (args, kwargs, out)
        return out
    return call


def _same(a: Any, b: Any) -> bool:
    """Equal inputs: the same object, or tensors / containers with identical values."""
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b))
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if a is None or b is None or isinstance(a, bool | int | float | str):
        return a == b
    return False  # unknown objects: only the identical object counts as equal


def _maximal_frozen(model: nn.Module, targeted: set[int]) -> list[nn.Module]:
    """Sub-modules with parameters, none targeted, whose parent holds a targeted one."""
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        params = list(module.parameters())
        if not params:
            return  # nothing worth memoizing (activations, dropout)
        container = isinstance(module, nn.ModuleList | nn.ModuleDict)  # never called itself
        if (module is not model and not container
                and not any(id(p) in targeted for p in params)):
            found.append(module)
            return
        for child in module.children():
            visit(child)

    visit(model)
    return found
